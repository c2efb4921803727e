"""The semantic-ID system in the asset graph: it trains on PinCLIP's stored fused pin
embeddings (the ``pin_embeddings`` partitions, not PinCLIP's code) and the validated
interactions; its champion writes each day's behavior embeddings and semantic IDs. Its
lifecycle comes from the factory, its model asset named ``semantic_id_codebook``."""

import dagster as dg
import numpy as np
import pandas as pd

from mmpipe.embeddings import embedding_file, embedding_files, read_embeddings
from mmpipe.registry.mlflow_registry import CHAMPION
from mmpipe.systems.semantic_id import SPEC
from mmpipe.systems.semantic_id.data import semantic_id_inputs
from mmpipe.systems.semantic_id.serve import (BEHAVIOR, COLLIDED, day_behavior_embeddings, day_semantic_ids,
                                              load_version_coder, taken_ids, version_uri, write_day_behavior,
                                              write_day_semantic_ids)
from mmpipe.systems.semantic_id.train import SemanticIDSettings
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.lifecycle import SystemInputs, lifecycle, registered_version
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths

FUSED = "fused"


def pin_embeddings_dir(paths: PipelinePaths):
    """Where PinCLIP's champion writes pin_embeddings (orchestration/systems/pinclip.py)."""
    return paths.storage("embeddings", "pins")


def behavior_dir(paths: PipelinePaths):
    return paths.storage("embeddings", "behavior")


def semantic_ids_dir(paths: PipelinePaths):
    return paths.storage("semantic_ids", "pins")


def read_fused(paths: PipelinePaths, files=None) -> tuple[list[str], object, list[str]]:
    """(pin ids, fused vectors, the PinCLIP version of each row) of the stored pin embeddings."""
    source = files if files is not None else pin_embeddings_dir(paths)
    ids, fused = read_embeddings(source, FUSED)
    frames = [pd.read_parquet(path, columns=["pin_id", "model_version"]) for path in embedding_files(source)]
    versions = pd.concat(frames).drop_duplicates("pin_id", keep="last").set_index("pin_id")["model_version"]
    return ids, fused, versions.loc[ids].astype(str).tolist()


def load_inputs(paths: PipelinePaths, settings: SemanticIDSettings):
    ids, fused, versions = read_fused(paths)
    return semantic_id_inputs(read_validated(paths, "pins"), read_validated(paths, "interactions"), ids, fused,
                              versions, settings.pairs)


INPUTS = SystemInputs(deps=[names.PIN_EMBEDDINGS, names.validated("pins"), names.validated("interactions")],
                      load=load_inputs)
LIFECYCLE = lifecycle(SPEC, INPUTS)


@dg.asset(name=names.BEHAVIOR_ITEM_EMBEDDINGS, group_name="embeddings", kinds={"pytorch", "parquet"},
          deps=[SPEC.champion_asset, names.PIN_EMBEDDINGS], code_version="1", partitions_def=DAY,
          backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Behavior-aware embeddings of the day's pins by the promoted semantic-ID encoder "
                      "(semantic_id@champion) on their PinCLIP fused embeddings: "
                      "storage/embeddings/behavior/created_at=<day>.parquet with the model version; a day "
                      "embeds only its own pins.")
def behavior_item_embeddings(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    version = registered_version(SPEC, CHAMPION)  # resolved once: the alias may move while we embed
    coder = load_version_coder(version)
    counts = {}
    for day in sorted(context.partition_keys):
        source = embedding_file(pin_embeddings_dir(paths), day)
        if not source.exists():
            raise dg.Failure(description=f"no pin_embeddings for {day} at {source}: materialize pin_embeddings first")
        ids, fused, versions = read_fused(paths, [source])
        created = pd.read_parquet(source, columns=["pin_id", "created_at"]).set_index("pin_id")["created_at"]
        try:
            frame = day_behavior_embeddings(coder, ids, created.loc[ids].astype(str).tolist(), fused, versions, version)
        except ValueError as error:
            raise dg.Failure(description=str(error)) from error
        write_day_behavior(frame, behavior_dir(paths), day)
        counts[day] = len(frame)
    return dg.MaterializeResult(metadata={
        "pins": sum(counts.values()), "pins_per_day": dg.MetadataValue.json(counts),
        "dagster/row_count": sum(counts.values()), "model_version": version, "model_uri": version_uri(version)})


@dg.asset(name=names.PIN_SEMANTIC_IDS, group_name="embeddings", kinds={"pytorch", "parquet"},
          deps=[SPEC.champion_asset, names.BEHAVIOR_ITEM_EMBEDDINGS], code_version="1", partitions_def=DAY,
          backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Each pin's semantic ID, one column per codebook level (level_1 the coarsest), by the "
                      "promoted codebook (semantic_id@champion) on the day's behavior embeddings: "
                      "storage/semantic_ids/pins/created_at=<day>.parquet with codebook_version. Collisions are "
                      "resolved against the IDs other days already hold under the same codebook (balanced "
                      "re-assignment on the last level), so a new day never changes an earlier pin's ID.")
def pin_semantic_ids(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    version = registered_version(SPEC, CHAMPION)
    coder = load_version_coder(version)
    days = sorted(context.partition_keys)
    taken = taken_ids(semantic_ids_dir(paths), version, coder.levels, except_days=set(days))
    counts, collided = {}, 0
    for day in days:
        source = embedding_file(behavior_dir(paths), day)
        frame = pd.read_parquet(source)
        stale = sorted(set(frame["model_version"].astype(str)) - {str(version)})
        if stale:
            raise dg.Failure(description=f"{source} was embedded by semantic_id version(s) {stale}, the champion is "
                                         f"{version}: rematerialize behavior_item_embeddings for {day}")
        behavior = (np.stack([np.asarray(v, np.float32) for v in frame[BEHAVIOR]]) if len(frame)
                    else np.zeros((0, coder.model.config.encoder.dim), np.float32))
        ids = day_semantic_ids(coder, frame["pin_id"].astype(str).tolist(), frame["created_at"].astype(str).tolist(),
                               behavior, version, taken)
        write_day_semantic_ids(ids, semantic_ids_dir(paths), day)
        counts[day], collided = len(ids), collided + int(ids[COLLIDED].sum())
    return dg.MaterializeResult(metadata={
        "pins": sum(counts.values()), "pins_per_day": dg.MetadataValue.json(counts), "levels": coder.levels,
        "codes_per_level": coder.model.config.codebook.codes, "pins_left_colliding": collided,
        "dagster/row_count": sum(counts.values()), "codebook_version": version, "model_uri": version_uri(version)})


assets = [*LIFECYCLE.assets, behavior_item_embeddings, pin_semantic_ids]
asset_checks = LIFECYCLE.asset_checks
# No retraining sensor: the shared one watches new pins for PinCLIP; the codebook retrains
# on its weekly schedule (LIFECYCLE.schedules) or by its training job.
sensors = []
