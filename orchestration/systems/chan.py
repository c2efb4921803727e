"""CHAN in the asset graph: what it trains on (the validated videos' annotated shots and
summarization queries, the shared shot and frame features and the queries' text-tower
states) and what its champion writes (the summaries of the held-out queries). Its lifecycle
comes from the factory."""

import dagster as dg
import numpy as np

from mmpipe.media.features import read_frame_features, read_shot_features, text_states_of
from mmpipe.systems.chan import SPEC
from mmpipe.systems.chan.data import TEST, VALIDATION, chan_inputs
from mmpipe.systems.chan.serve import load_version_summarizer, version_uri, write_query_summaries
from mmpipe.systems.chan.train import CHANSettings
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.lifecycle import SystemInputs, champion_or_note, lifecycle
from orchestration.partitions import SINGLE_RUN
from orchestration.resources import PipelinePaths


def read_inputs(paths: PipelinePaths, frame_extremes: bool):
    queries = read_validated(paths, "summary_queries").reset_index(drop=True)
    text = text_states_of(paths.storage(), "summary_queries", queries["query_id"].tolist())
    # video_features.encoder's current version; frame features for the shots' frame extremes
    frames = read_frame_features(paths.storage()) if frame_extremes else None
    return chan_inputs(read_validated(paths, "videos"), read_validated(paths, "video_shots"), queries,
                       read_shot_features(paths.storage()), text, frames)


def load_inputs(paths: PipelinePaths, settings: CHANSettings):
    return read_inputs(paths, settings.model.frame_extremes)


INPUTS = SystemInputs(
    deps=[names.SHOT_FEATURES, names.FRAME_FEATURES, names.QUERY_TEXT_FEATURES, names.validated("video_shots"),
          names.validated("summary_queries"), names.validated("videos")],
    load=load_inputs,
    # Shot and frame features are day-partitioned and cannot join an unpartitioned training
    # run's selection; the daily ingest keeps them current.
    refresh=[names.QUERY_TEXT_FEATURES],
)
LIFECYCLE = lifecycle(SPEC, INPUTS)


@dg.asset(name=names.VIDEO_SUMMARIES, group_name="predictions", kinds={"pytorch", "json"},
          deps=[SPEC.champion_asset, *INPUTS.deps], code_version="1", automation_condition=EAGER,
          backfill_policy=SINGLE_RUN,
          description="The promoted CHAN's (chan@champion) summaries of every validation- and test-window "
                      "summarization query under its length budget: the selected shots with their times and "
                      "scores, in storage/summaries/chan/video_summaries.json (format: "
                      "mmpipe.eval.summarization).")
def video_summaries(paths: PipelinePaths) -> dg.MaterializeResult:
    version, note = champion_or_note(SPEC, INPUTS, paths)  # resolved once: the alias may move while we summarise
    if note:
        return dg.MaterializeResult(metadata={"note": note})
    summarizer = load_version_summarizer(version)
    inputs = read_inputs(paths, summarizer.model.config.frame_extremes)
    path, summaries = write_query_summaries(paths.storage(), summarizer.model, inputs, (VALIDATION, TEST),
                                            summarizer.budget, f"{SPEC.registered_model} version {version}")
    return dg.MaterializeResult(metadata={
        "summaries": len(summaries), "videos": len({summary.video_id for summary in summaries}),
        "mean_shots": round(float(np.mean([len(s.shots) for s in summaries])), 2) if summaries else None,
        "mean_seconds": round(float(np.mean([s.seconds for s in summaries])), 2) if summaries else None,
        "budget": dg.MetadataValue.json(summarizer.budget.to_dict()), "model_version": version,
        "model_uri": version_uri(version), "path": dg.MetadataValue.path(str(path)),
        "dagster/row_count": len(summaries)})


assets = [*LIFECYCLE.assets, video_summaries]
asset_checks = LIFECYCLE.asset_checks
# No retraining sensor: the shared one counts new pins; CHAN retrains on its weekly schedule
# (LIFECYCLE.schedules) or by its training job.
sensors = []
