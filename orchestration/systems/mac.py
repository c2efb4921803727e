"""MAC in the asset graph: what it trains on (the validated videos' stored frames, their
captions' and moment queries' text-tower states, and the image encoder's frame features for the eval's
baseline), and what its champion feeds (per-day video embeddings, the FAISS video index).
Its lifecycle comes from the factory."""

import time

import dagster as dg

from mmpipe.embeddings import write_day_embeddings
from mmpipe.index.faiss_index import IndexConfig
from mmpipe.media.features import read_frame_features, text_states_of
from mmpipe.params import load_params
from mmpipe.systems.mac import SPEC
from mmpipe.systems.mac.data import frame_store_loader, frame_store_times, mac_inputs
from mmpipe.systems.mac.serve import (VIDEO_ID, embed_day, load_embedder, sync_video_index, version_uri,
                                      video_index_quality)
from mmpipe.systems.mac.train import MACSettings
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.checks import finite_embeddings_check
from orchestration.lifecycle import SystemInputs, champion_or_note, lifecycle, nothing_to_do
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths


def embeddings_dir(paths: PipelinePaths):
    """The video_embeddings partitions: one ``created_at=<day>.parquet`` per day."""
    return paths.storage("embeddings", "videos")


def load_inputs(paths: PipelinePaths, settings: MACSettings):
    captions = read_validated(paths, "video_captions").reset_index(drop=True)
    text = text_states_of(paths.storage(), "video_captions", captions["caption_id"].tolist())
    queries = read_validated(paths, "moment_queries").reset_index(drop=True)
    return mac_inputs(read_validated(paths, "videos"), frame_store_loader(paths.storage("frames")),
                      captions[["caption_id", "video_id", "caption"]], text,
                      read_frame_features(paths.storage()),  # video_features.encoder's current version
                      queries[["query_id", "video_id", "windows"]],
                      text_states_of(paths.storage(), "moment_queries", queries["query_id"].tolist()),
                      frame_store_times(paths.storage("frames")))


INPUTS = SystemInputs(
    deps=[names.VALIDATED_FRAMES, names.QUERY_TEXT_FEATURES, names.FRAME_FEATURES, names.validated("video_captions"),
          names.validated("moment_queries"), names.validated("videos")],
    load=load_inputs,
    # Day-partitioned inputs (frames, frame features) cannot join an unpartitioned training
    # run's selection; the daily ingest keeps them current.
    refresh=[names.QUERY_TEXT_FEATURES],
)
LIFECYCLE = lifecycle(SPEC, INPUTS)


@dg.asset(name=names.VIDEO_EMBEDDINGS, group_name="embeddings", kinds={"pytorch", "parquet"},
          deps=[SPEC.champion_asset, names.VALIDATED_FRAMES, names.validated("videos")], code_version="1",
          partitions_def=DAY, backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Embeddings of the day's validated videos by the promoted MAC (mac@champion): each video's "
                      "middle clip, unmasked, and each stored frame as a one-frame clip (for the best-matching "
                      "second), in storage/embeddings/videos/created_at=<day>.parquet with the model version "
                      "that made them; a day never recomputes another.")
def video_embeddings(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    started = time.perf_counter()
    version, note = champion_or_note(SPEC, INPUTS, paths)  # resolved once: the alias may move while we embed
    if note:
        return dg.MaterializeResult(metadata={"note": note})
    embedder = load_embedder(version_uri(version))  # knows the clip length this version was trained with
    videos = {}
    for day in sorted(context.partition_keys):
        day_videos = read_validated(paths, "videos", [day])
        try:
            frame = embed_day(embedder.model, day_videos, paths.storage("frames"), embedder.n_frames, version,
                              n_clips=embedder.n_clips)
        except FileNotFoundError as error:  # the day's frame store is missing
            raise dg.Failure(description=str(error)) from error
        write_day_embeddings(frame, embeddings_dir(paths), day)
        videos[day] = len(frame)
        context.add_asset_metadata({"videos": len(frame), "frames": int(frame["frame_t_s"].map(len).sum()),
                                    "videos_without_frames": day_videos["video_id"].nunique() - len(frame),
                                    "dagster/row_count": len(frame)}, partition_key=day)
    # Per-day counts above; what holds for the whole run here (its keys must not repeat them).
    return dg.MaterializeResult(metadata={
        "videos_per_day": dg.MetadataValue.json(videos), "dim": embedder.embed_dim,
        "clip_frames": embedder.n_frames, "model_version": version, "model_uri": version_uri(version),
        "seconds": round(time.perf_counter() - started, 1),
    })


@dg.asset(name=names.FAISS_VIDEO_INDEX, group_name="index", kinds={"faiss"}, deps=[names.VIDEO_EMBEDDINGS],
          code_version="1", automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="FAISS index of the video embeddings (index type chosen by size; `mmpipe search --videos` "
                      "reads it): new days are added without a rebuild; a new champion's embeddings or a changed "
                      "day rebuild it. The model version and days indexed are in "
                      "storage/index/videos/partitions.json.")
def faiss_video_index(paths: PipelinePaths) -> dg.MaterializeResult:
    index = load_params()["index"]
    cfg = IndexConfig(**index)  # every IndexConfig field params.yaml sets (nprobe, quantize_below, ...)
    try:
        report = sync_video_index(paths.storage("index", "videos"), embeddings_dir(paths), cfg)
    except (FileNotFoundError, ValueError) as error:
        if note := nothing_to_do(SPEC, INPUTS, paths):  # no embeddings because there are no videos
            return dg.MaterializeResult(metadata={"note": note})
        raise dg.Failure(description=str(error)) from error
    return dg.MaterializeResult(metadata={
        "sync": report.mode, "sync_reason": report.reason, "days_added": ", ".join(report.days_added) or "none",
        "vectors_added": report.vectors_added, "model_version": report.model_version or "none",
        "vectors": report.ntotal, **video_index_quality(paths.storage("index", "videos"), embeddings_dir(paths)),
    })


assets = [*LIFECYCLE.assets, video_embeddings, faiss_video_index]
asset_checks = [*LIFECYCLE.asset_checks, finite_embeddings_check(names.VIDEO_EMBEDDINGS, embeddings_dir, VIDEO_ID)]
# No retraining sensor yet: the shared one (orchestration.sensors.retraining_sensor over
# mmpipe.registry.retraining) counts new *pins* and drift of *fused pin* embeddings. MAC
# retrains on its weekly schedule (LIFECYCLE.schedules) or by its training job.
sensors = []
