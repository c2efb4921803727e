"""The video systems' shared inputs: frame and shot features by the champion image encoder
(day partitions, as validated_frames) and the text tower's states of every video text.
What they compute, where they store it and the readers: ``mmpipe/media/features.py``."""


import dagster as dg

from mmpipe.media.features import (
    TEXT_SOURCES,
    PyfuncImageEncoder,
    VideoFeaturesConfig,
    VideoFeaturesNotFoundError,
    current_version,
    read_frame_features,
    update_frame_features,
    update_query_text_features,
    update_shot_features,
    video_texts,
)
from mmpipe.registry.mlflow_registry import CHAMPION
from mmpipe.systems import SPECS
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.lifecycle import registered_version
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths

SETTINGS = VideoFeaturesConfig.from_params()


def encoder_spec(registered_model: str):
    """The system whose registered model embeds the frames: its champion asset is a dependency,
    so the features follow the champion (and go stale when it moves)."""
    for spec in SPECS:
        if spec.registered_model == registered_model:
            return spec
    raise ValueError(f"video_features.encoder {registered_model!r} is no system's registered model; "
                     f"the systems register {[spec.registered_model for spec in SPECS]}")


ENCODER = encoder_spec(SETTINGS.encoder)


@dg.asset(name=names.FRAME_FEATURES, group_name="features", kinds={"mlflow", "numpy"},
          deps=[names.VALIDATED_FRAMES, ENCODER.champion_asset], code_version="1", partitions_def=DAY,
          backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description=f"Embeddings of the day's stored frames by {ENCODER.registered_model}@{CHAMPION} through its "
                      "pyfunc (storage/features/frames/<encoder>/v<version>/<day>.npz); a video is encoded once "
                      "per encoder version, a new version writes its own folder.")
def frame_features(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    version = registered_version(ENCODER, CHAMPION)  # resolved once: the alias may move while we encode
    encoder = PyfuncImageEncoder(ENCODER.registered_model, version, SETTINGS.batch_size)
    try:
        report = update_frame_features(paths.storage(), context.partition_keys, encoder)
    except VideoFeaturesNotFoundError as error:  # a day without its frame store
        raise dg.Failure(description=str(error)) from error
    for day in report.days:
        context.add_asset_metadata({"videos": day.videos, "frames": day.frames, "encoded_frames": day.encoded_frames,
                                    "reused_videos": day.reused_videos, "dagster/row_count": day.frames},
                                   partition_key=day.day)
    stored = read_frame_features(paths.storage(), [day.day for day in report.days], encoder.name, version)
    speed = report.images_per_second
    return dg.MaterializeResult(
        tags={"mmpipe/encoder": encoder.name, "mmpipe/encoder_version": version},
        metadata={"encoder": encoder.name, "encoder_version": version, "model_uri": encoder.model_uri,
                  "dim": stored.dim, "predict_calls": report.predict_calls,
                  "images_per_second": round(speed, 1) if speed else None})


@dg.asset(name=names.SHOT_FEATURES, group_name="features", kinds={"numpy"},
          deps=[names.FRAME_FEATURES, names.VALIDATED_FRAMES], code_version="1", partitions_def=DAY,
          backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Per detected shot, the L2-normalised mean of its non-blank frames' features (all its frames "
                      "if every one is blank): storage/features/shots/<encoder>/v<version>/<day>.npz.")
def shot_features(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    try:
        version = current_version(paths.storage(), SETTINGS.encoder)
        shots = update_shot_features(paths.storage(), context.partition_keys, SETTINGS.encoder, version)
    except VideoFeaturesNotFoundError as error:
        raise dg.Failure(description=str(error)) from error
    for day, rows in shots.index.groupby("day"):
        pooled_from = {kind: int(n) for kind, n in rows["pooled_from"].value_counts().items()}
        context.add_asset_metadata({"shots": len(rows), "videos": rows["video_id"].nunique(),
                                    "pooled_from": dg.MetadataValue.json(pooled_from),
                                    "dagster/row_count": len(rows)}, partition_key=day)
    return dg.MaterializeResult(
        tags={"mmpipe/encoder": SETTINGS.encoder, "mmpipe/encoder_version": version},
        metadata={"encoder": SETTINGS.encoder, "encoder_version": version, "dim": shots.dim,
                  "mean_frames_per_shot": round(float(shots.index["n_frames"].mean()), 2) if len(shots) else None})


@dg.asset(name=names.QUERY_TEXT_FEATURES, group_name="features", kinds={"transformers", "safetensors"},
          deps=[names.validated(table) for table in TEXT_SOURCES], code_version="1", automation_condition=EAGER,
          backfill_policy=SINGLE_RUN,
          description="Frozen MiniLM-L6 token states of every validated video caption, moment query and "
                      "summarization query (its concepts as one phrase), keyed by (source table, id); texts "
                      "already in the cache are copied (storage/features/video_text.safetensors).")
def query_text_features(paths: PipelinePaths) -> dg.MaterializeResult:
    texts = video_texts({table: read_validated(paths, table) for table in TEXT_SOURCES})
    features, counts = update_query_text_features(paths.storage(), texts, SETTINGS.text_max_length)
    return dg.MaterializeResult(metadata={
        "texts": len(features), "encoded_texts": counts["encoded"], "reused_rows": counts["reused"],
        "texts_per_source": dg.MetadataValue.json({k: int(n) for k, n in texts["source"].value_counts().items()}),
        "tokens": int(features.text.mask.sum()), "dagster/row_count": len(features)})


video_feature_assets = [frame_features, shot_features, query_text_features]
