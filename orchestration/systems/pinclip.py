"""PinCLIP in the asset graph: what it trains on, its caption cache, and what its champion
feeds (per-day pin embeddings, the FAISS pin indexes). Its lifecycle comes from the factory."""

import time

import dagster as dg
import pandas as pd

from mmpipe.config import resolve_settings
from mmpipe.embeddings import write_day_embeddings
from mmpipe.index.faiss_index import IndexConfig
from mmpipe.index.incremental import index_quality, sync_pin_index
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.params import load_params
from mmpipe.registry.mlflow_registry import CHAMPION
from mmpipe.systems.pinclip import SPEC
from mmpipe.systems.pinclip.data import day_text_features, pinclip_inputs, update_caption_cache
from mmpipe.systems.pinclip.serve import embed_day, load_version_model, version_uri
from mmpipe.systems.pinclip.train import PinCLIPSettings
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.checks import finite_embeddings_check
from orchestration.lifecycle import SystemInputs, lifecycle, registered_version
from orchestration.names import (FAISS_PIN_INDEX, GRAPH_NEIGHBOR_PAIRS, PIN_EMBEDDINGS, PIN_TEXT_FEATURES,
                                 validated)
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths
from orchestration.sensors import retraining_sensor


def text_features_path(paths: PipelinePaths):
    return paths.storage("features") / "pin_text.safetensors"


def embeddings_dir(paths: PipelinePaths):
    """The pin_embeddings partitions: one ``created_at=<day>.parquet`` per day."""
    return paths.storage("embeddings", "pins")


def load_inputs(paths: PipelinePaths, settings: PinCLIPSettings):
    return pinclip_inputs(
        read_validated(paths, "pins"), read_validated(paths, "board_pins"), read_validated(paths, "interactions"),
        pd.read_parquet(paths.storage("graph") / "neighbor_pairs.parquet"), paths.raw_root,
        TextFeatures.load(text_features_path(paths)), settings.model.image_size,
    )


INPUTS = SystemInputs(
    deps=[PIN_TEXT_FEATURES, GRAPH_NEIGHBOR_PAIRS, validated("board_pins"), validated("interactions")],
    load=load_inputs,
    refresh=[PIN_TEXT_FEATURES, GRAPH_NEIGHBOR_PAIRS],
)
LIFECYCLE = lifecycle(SPEC, INPUTS)


@dg.asset(name=PIN_TEXT_FEATURES, group_name="features", kinds={"transformers", "safetensors"},
          deps=[validated("pins")], code_version="2", automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="Frozen MiniLM-L6 token states of every validated pin caption (the text tower cache); "
                      "captions already in the cache are copied, so a new day encodes only its own.")
def pin_text_features(paths: PipelinePaths) -> dg.MaterializeResult:
    started = time.perf_counter()
    max_length = resolve_settings(PinCLIPSettings, SPEC.name).text_max_length
    text, counts = update_caption_cache(read_validated(paths, "pins"), text_features_path(paths), max_length)
    return dg.MaterializeResult(metadata={
        "captions": len(text), "tokens": int(text.mask.sum()), "empty_captions": int((~text.mask.any(1)).sum()),
        "encoded_captions": counts["encoded"], "reused_rows": counts["reused"],
        "seconds": round(time.perf_counter() - started, 1),
    })


@dg.asset(name=PIN_EMBEDDINGS, group_name="embeddings", kinds={"pytorch", "parquet"},
          deps=[SPEC.champion_asset, PIN_TEXT_FEATURES, validated("pins")], code_version="3",
          partitions_def=DAY, backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Image, text and fused embeddings of the day's validated pins by the promoted PinCLIP "
                      "(pinclip@champion): storage/embeddings/pins/created_at=<day>.parquet, each row with "
                      "the model version that made it; a day never recomputes another.")
def pin_embeddings(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    version = registered_version(SPEC, CHAMPION)  # resolved once: the alias may move while we embed
    settings = resolve_settings(PinCLIPSettings, SPEC.name)
    text = TextFeatures.load(text_features_path(paths))
    model = load_version_model(version, text, settings.text_max_length)
    all_pins = read_validated(paths, "pins")
    counts = {}
    for day in sorted(context.partition_keys):
        day_pins = read_validated(paths, "pins", [day])
        frame = embed_day(model, day_pins, day_text_features(text, all_pins, day_pins), paths.raw_root, version)
        write_day_embeddings(frame, embeddings_dir(paths), day)
        counts[day] = len(frame)
    return dg.MaterializeResult(metadata={
        "pins": sum(counts.values()), "dim": int(model.config.embed_dim),
        "pins_per_day": dg.MetadataValue.json(counts), "dagster/row_count": sum(counts.values()),
        "model_version": version, "model_uri": version_uri(version),
    })


@dg.asset(name=FAISS_PIN_INDEX, group_name="index", kinds={"faiss"}, deps=[PIN_EMBEDDINGS], code_version="2",
          automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="FAISS indexes of the fused and image pin embeddings (index type chosen by size): new "
                      "days are added without a rebuild; a new model or a changed day rebuilds. The days "
                      "indexed are recorded in storage/index/pins/partitions.json.")
def faiss_pin_index(paths: PipelinePaths) -> dg.MaterializeResult:
    index = load_params()["index"]
    cfg = IndexConfig(**index)  # every IndexConfig field params.yaml sets (nprobe, quantize_below, ...)
    try:
        report = sync_pin_index(paths.storage("index", "pins"), embeddings_dir(paths), cfg)
    except ValueError as error:
        raise dg.Failure(description=str(error)) from error
    return dg.MaterializeResult(metadata={
        "sync": report.mode, "sync_reason": report.reason, "days_added": ", ".join(report.days_added) or "none",
        "vectors_added": report.vectors_added, "model_version": report.model_version or "none",
        "vectors": report.ntotal, **index_quality(paths.storage("index", "pins"), embeddings_dir(paths)),
    })


assets = [pin_text_features, *LIFECYCLE.assets, pin_embeddings, faiss_pin_index]
asset_checks = [*LIFECYCLE.asset_checks, finite_embeddings_check(PIN_EMBEDDINGS, embeddings_dir, "pin_id")]
sensors = [retraining_sensor(SPEC, LIFECYCLE.training_job)]
