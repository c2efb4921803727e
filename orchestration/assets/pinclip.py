"""PinCLIP slice: caption features → model (+ ablation) → eval → promotion → embeddings → index.

The eval judges the registered challenger before anything serves it: ``pinclip_champion``
moves ``pinclip@champion`` only when the challenger's primary metric is at least the
champion's, and ``pin_embeddings`` embeds with the champion alone.
"""

import json
import time

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import torch

from mmpipe.eval.pinclip_eval import MODEL_NAME, board_neighbors, evaluate_pinclip
from mmpipe.eval.report import write_report
from mmpipe.index.faiss_index import IndexConfig, PinIndex, measure_qps, recall_at_k_vs_exact
from mmpipe.layout import truth_path
from mmpipe.models.pinclip import PinCLIP, PinCLIPConfig
from mmpipe.models.text_encoder import TextFeatures
from mmpipe.params import load_params
from mmpipe.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    RunContext,
    configure,
    start_run,
    tracking_uri,
)
from mmpipe.registry.pinclip_gate import PRIMARY_METRIC, gate_evidence, load_version_model, version_uri
from mmpipe.registry.pinclip_pyfunc import REGISTERED_NAME, log_pinclip
from mmpipe.registry.promotion import (
    GateEvidence,
    alias_version,
    promote_from_evidence,
    record_eval_metric,
)
from mmpipe.search import read_pin_embeddings
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state
from mmpipe.train.pinclip_inputs import PinCLIPInputs, pinclip_inputs, update_caption_cache
from mmpipe.train.pinclip_train import PinCLIPTrainConfig, embed_pins, train_pinclip
from mmpipe.versioning import dvc_tracked_hash
from mmpipe.embeddings import embed_day, write_day_embeddings
from mmpipe.index.incremental import sync_pin_index
from orchestration.assets.validated import read_validated
from orchestration.automation import AFTER_MODEL, EAGER
from orchestration.metadata import png_metadata
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths

_PARAMS = load_params()
_PINCLIP = _PARAMS["pinclip"]
_INDEX = _PARAMS["index"]


class PinCLIPConfigDagster(dg.Config):
    """Training knobs exposed in the launchpad; defaults from params.yaml."""

    model_size: str = _PINCLIP["model_size"]
    steps: int = _PINCLIP["steps"]
    fusion_steps: int = _PINCLIP["fusion_steps"]
    neighbor_loss: str = _PINCLIP["neighbor_loss"]
    fusion_loss: str = _PINCLIP["fusion_loss"]
    proxy_temperature: float = _PINCLIP["proxy_temperature"]
    text_neighbor_weight: float = _PINCLIP["text_neighbor_weight"]
    batch_size: int = _PINCLIP["batch_size"]
    pair_batch_size: int = _PINCLIP["pair_batch_size"]
    lr: float = _PINCLIP["lr"]
    neighbor_weight: float = _PINCLIP["neighbor_weight"]
    neighbor_warmup_steps: int = _PINCLIP["neighbor_warmup_steps"]
    seed: int = _PINCLIP["seed"]
    resume: bool = True

    def pinclip_config(self) -> PinCLIPConfig:
        if self.model_size == "tiny":
            return PinCLIPConfig.tiny(text_hidden_size=384)
        if self.model_size != "default":
            raise ValueError(f"model_size must be 'default' or 'tiny', got {self.model_size!r}")
        return PinCLIPConfig()

    def trainer_config(self, neighbor_weight: float | None = None) -> PinCLIPTrainConfig:
        return PinCLIPTrainConfig(
            steps=self.steps, fusion_steps=self.fusion_steps, neighbor_loss=self.neighbor_loss,
            fusion_loss=self.fusion_loss,
            proxy_temperature=self.proxy_temperature, text_neighbor_weight=self.text_neighbor_weight,
            batch_size=self.batch_size,
            pair_batch_size=self.pair_batch_size,
            lr=self.lr, seed=self.seed, neighbor_warmup_steps=self.neighbor_warmup_steps,
            neighbor_weight=self.neighbor_weight if neighbor_weight is None else neighbor_weight,
        )


def _text_path(paths: PipelinePaths):
    return paths.storage("features") / "pin_text.safetensors"


def _inputs(paths: PipelinePaths, image_size: int, text: TextFeatures | None = None) -> PinCLIPInputs:
    return pinclip_inputs(
        read_validated(paths, "pins"), read_validated(paths, "board_pins"),
        read_validated(paths, "interactions"),
        pd.read_parquet(paths.storage("graph") / "neighbor_pairs.parquet"),
        paths.raw_root, TextFeatures.load(_text_path(paths)) if text is None else text, image_size,
    )


@dg.asset(group_name="features", kinds={"transformers", "safetensors"}, deps=["validated_pins"],
          code_version="2", automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="Frozen MiniLM-L6 token states of every validated pin caption (the text tower cache); "
                      "captions already in the cache are copied, so a new day encodes only its own.")
def pin_text_features(paths: PipelinePaths) -> dg.MaterializeResult:
    pins = read_validated(paths, "pins")
    started = time.perf_counter()
    text, counts = update_caption_cache(pins, _text_path(paths), max_length=_PINCLIP["text_max_length"])
    return dg.MaterializeResult(metadata={
        "captions": len(text), "tokens": int(text.mask.sum()),
        "empty_captions": int((~text.mask.any(1)).sum()),
        "encoded_captions": counts["encoded"], "reused_rows": counts["reused"],
        "seconds": round(time.perf_counter() - started, 1),
    })


def _train(context: dg.AssetExecutionContext, config: PinCLIPConfigDagster, paths: PipelinePaths,
           name: str, neighbor_weight: float | None):
    inputs = _inputs(paths, config.pinclip_config().image_size)
    train_cfg = config.trainer_config(neighbor_weight)
    run_context = RunContext(
        data_version=dvc_tracked_hash(paths.dvc_path) or "untracked",
        orchestrator_run_id=context.run_id, asset_key=context.asset_key.to_user_string(),
    )
    out_dir = paths.storage("models", name)
    with start_run("pinclip", name, run_context, params={
        **config.pinclip_config().to_dict(), **train_cfg.__dict__,
        "train_pins": len(inputs.train_rows), "train_pairs": len(inputs.pairs),
        "cutoff_date": inputs.split.cutoff_date,
    }) as run:
        result = train_pinclip(
            config.pinclip_config(), train_cfg, inputs.dataset, inputs.text, inputs.train_rows,
            inputs.pairs, out_dir=out_dir, resume=config.resume,
            log=lambda step, metrics: mlflow.log_metrics(metrics, step=step),
        )
        mlflow.log_metric("train_seconds", result.seconds)
        version = None
        if neighbor_weight is None:
            _, version = log_pinclip(result.model, None, run_context,
                                     text_max_length=_PINCLIP["text_max_length"])
    metadata = {
        "mlflow_run_id": run.info.run_id,
        "steps": result.steps,
        "train_pins": len(inputs.train_rows),
        "train_pairs": len(inputs.pairs),
        "train_seconds": round(result.seconds, 1),
        **{f"final_{k}": float(v) for k, v in result.final.items() if k != "step"},
    }
    if version is not None:
        metadata["registered_model"] = f"pinclip version {version} (alias challenger)"
        metadata["registered_version"] = version
    return dg.MaterializeResult(metadata=metadata)


_TRAINING_INPUTS = ["pin_text_features", "graph_neighbor_pairs", "validated_board_pins",
                    "validated_interactions"]


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"},
          deps=_TRAINING_INPUTS,
          code_version="2", backfill_policy=SINGLE_RUN,
          description="PinCLIP trained on pins before the cut-off; registered in MLflow as `pinclip`.")
def pinclip_model(context: dg.AssetExecutionContext, config: PinCLIPConfigDagster,
                  paths: PipelinePaths) -> dg.MaterializeResult:
    return _train(context, config, paths, "pinclip", None)


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"},
          deps=_TRAINING_INPUTS,
          code_version="2", backfill_policy=SINGLE_RUN,
          description="Ablation: the same PinCLIP training without the neighbor alignment loss.")
def pinclip_no_neighbor_model(context: dg.AssetExecutionContext, config: PinCLIPConfigDagster,
                              paths: PipelinePaths) -> dg.MaterializeResult:
    return _train(context, config, paths, "pinclip_no_neighbor", 0.0)


def _load_trained(paths: PipelinePaths, name: str) -> PinCLIP:
    checkpoint = paths.storage("models", name) / "checkpoint"
    model = PinCLIP(PinCLIPConfig.from_dict(read_trainer_state(checkpoint)["config"]["model"]))
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()


def _registered_version(alias: str) -> str:
    """The ``pinclip`` version holding ``alias``; a clear failure when none does."""
    version = alias_version(configure(), REGISTERED_NAME, alias)
    if version is None:
        producer = "pinclip_model" if alias == CHALLENGER else "pinclip_champion"
        raise dg.Failure(description=f"no {REGISTERED_NAME}@{alias} in the MLflow registry at "
                                     f"{tracking_uri()}: materialize {producer} first")
    return version


def _report_dir(paths: PipelinePaths):
    return paths.storage("reports", "pinclip")


def _embeddings_path(paths: PipelinePaths):
    """The pin_embeddings partitions: one ``created_at=<day>.parquet`` per day."""
    return paths.storage("embeddings", "pins")


def _read_embeddings(paths: PipelinePaths) -> tuple[list[str], dict[str, np.ndarray]]:
    vectors = {}
    for kind in ("image", "text", "fused"):
        ids, vectors[kind] = read_pin_embeddings(_embeddings_path(paths), kind)
    return ids, vectors


def _finite_or_none(value):
    # Dagster float metadata and strict JSON both choke on NaN; "no number" reads as None.
    return None if value is None or not np.isfinite(value) else float(value)


@dg.asset(group_name="eval", kinds={"mlflow", "markdown"},
          deps=["pinclip_model", "pinclip_no_neighbor_model", *_TRAINING_INPUTS],
          code_version="3", automation_condition=AFTER_MODEL, backfill_policy=SINGLE_RUN,
          description="The registered challenger (pinclip@challenger) on held-out pins vs baselines, "
                      "ablation, oracle and the current champion; its primary metric is tagged on "
                      "its version.")
def eval_pinclip(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    challenger = _registered_version(CHALLENGER)
    text = TextFeatures.load(_text_path(paths))
    model = load_version_model(challenger, text, _PINCLIP["text_max_length"])
    ablation_model = _load_trained(paths, "pinclip_no_neighbor")
    if ablation_model.config.image_size != model.config.image_size:
        raise dg.Failure(description="the ablation checkpoint reads other image sizes than the challenger: "
                                     "rematerialize pinclip_no_neighbor_model with the same config")
    inputs = _inputs(paths, model.config.image_size, text)
    ids = inputs.dataset.pin_ids
    trained = embed_pins(model, inputs.dataset, inputs.text)
    ablation = embed_pins(ablation_model, inputs.dataset, inputs.text)
    torch.manual_seed(0)
    untrained = embed_pins(PinCLIP(ablation_model.config), inputs.dataset, inputs.text)
    neighbors = board_neighbors(read_validated(paths, "board_pins"))
    metrics, markdown, plots, summary = evaluate_pinclip(
        trained, ablation, untrained, ids, read_validated(paths, "pins"), inputs.text, inputs.split,
        neighbors, pd.read_parquet(truth_path(paths.raw_root, "pin_objects")),
        pd.read_parquet(truth_path(paths.raw_root, "board_themes")),
    )
    evidence = gate_evidence(configure(), challenger, metrics[MODEL_NAME][PRIMARY_METRIC], inputs, neighbors,
                             _PINCLIP["text_max_length"])
    markdown = f"{markdown}\n{evidence.markdown()}"
    summary["promotion"] = evidence.to_dict()
    files = write_report(_report_dir(paths), "pinclip_eval", markdown, plots, summary)

    data_version = dvc_tracked_hash(paths.dvc_path) or "untracked"
    run_context = RunContext(data_version=data_version, orchestrator_run_id=context.run_id,
                             asset_key="eval_pinclip")
    with start_run("pinclip", "eval_pinclip", run_context) as run:
        mlflow.set_tag("registered_version", challenger)
        mlflow.log_metrics({f"{method}/{key}".replace("@", "_at_"): value
                            for method, row in metrics.items() for key, value in row.items()
                            if np.isfinite(value)})
        mlflow.log_artifacts(str(files["markdown"].parent), artifact_path="eval")
    record_eval_metric(configure(), REGISTERED_NAME, challenger, PRIMARY_METRIC, evidence.challenger_value,
                       extra={"data_version": data_version, "mlflow_run_id": run.info.run_id,
                              "dagster_run_id": context.run_id})
    gains = summary.get("gains", {})
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(markdown),
        "gains_over_best_baseline": dg.MetadataValue.json(json.loads(json.dumps(gains, default=float))),
        "gain_90pct_interval": dg.MetadataValue.json(
            json.loads(json.dumps(summary.get("gain_ci", {}), default=float))),
        **{f"plot_{name}": png_metadata(png, name) for name, png in plots.items()},
        "report_path": dg.MetadataValue.path(str(files["markdown"])),
        "mlflow_run_id": run.info.run_id,
        "challenger_version": challenger,
        "primary_metric": PRIMARY_METRIC,
        "challenger_value": _finite_or_none(evidence.challenger_value),
        "champion_version": evidence.champion_version or "none",
        "champion_value_rescored": _finite_or_none(evidence.champion_value),
    })


@dg.asset(group_name="models", kinds={"mlflow"}, deps=["eval_pinclip"], code_version="1",
          automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="The promotion gate: moves pinclip@champion to the evaluated challenger only when its "
                      "held-out fused neighbor R@10 is at least the champion's; every decision is tagged "
                      "on the version (promotion.*).")
def pinclip_champion(paths: PipelinePaths) -> dg.MaterializeResult:
    report = _report_dir(paths) / "pinclip_eval.json"
    summary = json.loads(report.read_text())
    if "promotion" not in summary:
        raise dg.Failure(description=f"{report} has no promotion section: rematerialize eval_pinclip")
    decision = promote_from_evidence(configure(), GateEvidence.from_dict(summary["promotion"]))
    files = write_report(_report_dir(paths), "pinclip_promotion", decision.markdown(), {}, decision.to_dict())
    return dg.MaterializeResult(metadata={
        "decision": decision.outcome,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metric": decision.metric,
        "challenger_version": decision.version,
        "challenger_value": _finite_or_none(decision.challenger_value),
        "champion_value": _finite_or_none(decision.champion_value),
        "previous_champion_version": decision.previous_champion or "none",
        "champion_version": decision.champion or "none",
        "decision_path": dg.MetadataValue.path(str(files["metrics"])),
    })


def _day_text(text: TextFeatures, all_pins: pd.DataFrame, day_pins: pd.DataFrame) -> TextFeatures:
    """The caption-cache rows of one day's pins (the cache has one row per validated pin)."""
    rows = pd.Index(all_pins["pin_id"]).get_indexer(day_pins["pin_id"])
    if (rows < 0).any():
        raise dg.Failure(description="the caption cache lacks pins of this day: rematerialize pin_text_features")
    return text.take(rows)


@dg.asset(group_name="embeddings", kinds={"pytorch", "parquet"},
          deps=["pinclip_champion", "pin_text_features", "validated_pins"], code_version="3",
          partitions_def=DAY, backfill_policy=SINGLE_RUN, automation_condition=EAGER,
          description="Image, text and fused embeddings of the day's validated pins by the promoted PinCLIP "
                      "(pinclip@champion): storage/embeddings/pins/created_at=<day>.parquet; a day never "
                      "recomputes another.")
def pin_embeddings(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    version = _registered_version(CHAMPION)  # resolved once: the alias may move while we embed
    text = TextFeatures.load(_text_path(paths))
    model = load_version_model(version, text, _PINCLIP["text_max_length"])
    all_pins = read_validated(paths, "pins")
    if len(text) != len(all_pins):
        raise dg.Failure(description=f"the caption cache has {len(text)} rows for {len(all_pins)} validated pins: "
                                     "rematerialize pin_text_features")
    counts = {}
    for day in sorted(context.partition_keys):
        day_pins = read_validated(paths, "pins", [day])
        frame = embed_day(model, day_pins, _day_text(text, all_pins, day_pins), paths.raw_root, version)
        write_day_embeddings(frame, _embeddings_path(paths), day)
        counts[day] = len(frame)
    return dg.MaterializeResult(metadata={
        "pins": sum(counts.values()), "dim": int(model.config.embed_dim),
        "pins_per_day": dg.MetadataValue.json(counts), "dagster/row_count": sum(counts.values()),
        "model_version": version, "model_uri": version_uri(version),
    })


@dg.asset(group_name="index", kinds={"faiss"}, deps=["pin_embeddings"], code_version="2",
          automation_condition=EAGER, backfill_policy=SINGLE_RUN,
          description="FAISS indexes of the fused and image pin embeddings (index type chosen by size): new "
                      "days are added without a rebuild; a new model or a changed day rebuilds. The days "
                      "indexed are recorded in storage/index/pins/partitions.json.")
def faiss_pin_index(paths: PipelinePaths) -> dg.MaterializeResult:
    cfg = IndexConfig(exact_below=_INDEX["exact_below"], nprobe=_INDEX["nprobe"],
                      ef_search=_INDEX["ef_search"])
    try:
        report = sync_pin_index(paths.storage("index", "pins"), _embeddings_path(paths), cfg)
    except ValueError as error:
        raise dg.Failure(description=str(error)) from error
    ids, emb = _read_embeddings(paths)
    metadata = {"sync": report.mode, "sync_reason": report.reason,
                "days_added": ", ".join(report.days_added) or "none", "vectors_added": report.vectors_added,
                "model_version": report.model_version or "none"}
    rng = np.random.default_rng(0)
    queries_rows = rng.choice(len(ids), size=min(500, len(ids)), replace=False)
    for kind in ("fused", "image"):
        index = PinIndex.load(paths.storage("index", "pins", kind))
        queries = emb[kind][queries_rows]
        metadata[f"{kind}_factory"] = index.factory
        metadata[f"{kind}_recall@10_vs_exact"] = recall_at_k_vs_exact(index, emb[kind], ids, queries, k=10)
        metadata[f"{kind}_qps"] = round(measure_qps(index, queries, k=10), 1)
    metadata["vectors"] = report.ntotal
    return dg.MaterializeResult(metadata=metadata)


pinclip_assets = [pin_text_features, pinclip_model, pinclip_no_neighbor_model, eval_pinclip,
                  pinclip_champion, pin_embeddings, faiss_pin_index]
