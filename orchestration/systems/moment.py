"""Moment retrieval in the asset graph: what it trains on (the shared frame features and
the moment queries' text-tower states, with their true windows) and what its champion
feeds (the held-out queries' predictions as QVHighlights-style JSONL). Its lifecycle comes
from the factory."""

import dagster as dg

from mmpipe.media.features import read_frame_features, text_states_of
from mmpipe.systems.moment import SPEC
from mmpipe.systems.moment.data import TEST, VALIDATION, moment_inputs
from mmpipe.systems.moment.serve import load_version, version_uri, write_predictions
from mmpipe.systems.moment.train import MomentSettings
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.lifecycle import SystemInputs, champion_or_note, lifecycle
from orchestration.partitions import SINGLE_RUN
from orchestration.resources import PipelinePaths


def load_inputs(paths: PipelinePaths, settings: MomentSettings):
    queries = read_validated(paths, "moment_queries").reset_index(drop=True)
    text = text_states_of(paths.storage(), "moment_queries", queries["query_id"].tolist())
    return moment_inputs(read_validated(paths, "videos"), queries, text,
                         read_frame_features(paths.storage()))  # video_features.encoder's current version


INPUTS = SystemInputs(
    deps=[names.FRAME_FEATURES, names.QUERY_TEXT_FEATURES, names.validated("moment_queries"),
          names.validated("videos")],
    load=load_inputs,
    # Day-partitioned frame features cannot join an unpartitioned training run's selection;
    # the daily ingest keeps them current.
    refresh=[names.QUERY_TEXT_FEATURES],
)
LIFECYCLE = lifecycle(SPEC, INPUTS)


@dg.asset(name=names.MOMENT_PREDICTIONS, group_name="predictions", kinds={"pytorch", "json"},
          deps=[SPEC.champion_asset, *INPUTS.deps], code_version="1", automation_condition=EAGER,
          backfill_policy=SINGLE_RUN,
          description="The promoted moment model's (moment@champion) top 10 spans of every held-out query "
                      "(validation and test windows) as QVHighlights-style JSONL, with their true windows beside "
                      "them: storage/predictions/moment/<window>.jsonl and <window>_gt.jsonl, for "
                      "`mmpipe eval-moments`.")
def moment_predictions(paths: PipelinePaths) -> dg.MaterializeResult:
    version, note = champion_or_note(SPEC, INPUTS, paths)  # resolved once: the alias may move while we predict
    if note:
        return dg.MaterializeResult(metadata={"note": note})
    inputs = load_inputs(paths, None)
    try:
        model, decode = load_version(version, inputs.encoder, inputs.encoder_version)
    except ValueError as error:  # the champion reads other frame features than the stored ones
        raise dg.Failure(description=str(error)) from error
    out_dir = paths.storage("predictions", SPEC.name)
    counts = write_predictions(model, decode, inputs, out_dir, (VALIDATION, TEST))
    return dg.MaterializeResult(metadata={
        "queries": dg.MetadataValue.json(counts), "dagster/row_count": sum(counts.values()),
        "model_version": version, "model_uri": version_uri(version), "path": dg.MetadataValue.path(str(out_dir))})


assets = [*LIFECYCLE.assets, moment_predictions]
asset_checks = LIFECYCLE.asset_checks
# No retraining sensor: the shared one counts new pins and pin-embedding drift. The moment
# model retrains on its weekly schedule (LIFECYCLE.schedules) or by its training job.
sensors = []
