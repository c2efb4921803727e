"""PinCLIP slice: caption features → model (+ ablation) → embeddings → FAISS index → eval."""

import json
import time

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import torch

from mmpipe.eval.pinclip_eval import board_neighbors, evaluate_pinclip
from mmpipe.eval.report import write_report
from mmpipe.index.faiss_index import IndexConfig, PinIndex, measure_qps, recall_at_k_vs_exact
from mmpipe.io import write_parquet_atomic
from mmpipe.layout import truth_path
from mmpipe.models.pinclip import PinCLIP, PinCLIPConfig
from mmpipe.models.text_encoder import TextFeatures
from mmpipe.params import load_params
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.registry.pinclip_pyfunc import log_pinclip
from mmpipe.search import read_pin_embeddings
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state
from mmpipe.train.pinclip_inputs import PinCLIPInputs, encode_pin_captions, pinclip_inputs
from mmpipe.train.pinclip_train import PinCLIPTrainConfig, embed_pins, train_pinclip
from mmpipe.versioning import dvc_tracked_hash
from orchestration.assets.validated import read_validated
from orchestration.metadata import png_metadata
from orchestration.resources import PipelinePaths

_PARAMS = load_params()
_PINCLIP = _PARAMS["pinclip"]
_INDEX = _PARAMS["index"]


class PinCLIPConfigDagster(dg.Config):
    """Training knobs exposed in the launchpad; defaults from params.yaml."""

    model_size: str = _PINCLIP["model_size"]
    steps: int = _PINCLIP["steps"]
    batch_size: int = _PINCLIP["batch_size"]
    pair_batch_size: int = _PINCLIP["pair_batch_size"]
    lr: float = _PINCLIP["lr"]
    neighbor_weight: float = _PINCLIP["neighbor_weight"]
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
            steps=self.steps, batch_size=self.batch_size, pair_batch_size=self.pair_batch_size,
            lr=self.lr, seed=self.seed,
            neighbor_weight=self.neighbor_weight if neighbor_weight is None else neighbor_weight,
        )


def _text_path(paths: PipelinePaths):
    return paths.storage("features") / "pin_text.safetensors"


def _inputs(paths: PipelinePaths, image_size: int) -> PinCLIPInputs:
    return pinclip_inputs(
        read_validated(paths, "pins"), read_validated(paths, "board_pins"),
        read_validated(paths, "interactions"),
        pd.read_parquet(paths.storage("graph") / "neighbor_pairs.parquet"),
        paths.raw_root, TextFeatures.load(_text_path(paths)), image_size,
    )


@dg.asset(group_name="features", kinds={"transformers", "safetensors"}, deps=["validated_pins"],
          code_version="1",
          description="Frozen MiniLM-L6 token states of every validated pin caption (the text tower cache).")
def pin_text_features(paths: PipelinePaths) -> dg.MaterializeResult:
    pins = read_validated(paths, "pins")
    started = time.perf_counter()
    text = encode_pin_captions(pins, max_length=_PINCLIP["text_max_length"])
    text.save(_text_path(paths), metadata={"rows": len(pins)})
    return dg.MaterializeResult(metadata={
        "captions": len(text), "tokens": int(text.mask.sum()),
        "empty_captions": int((~text.mask.any(1)).sum()),
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
    return dg.MaterializeResult(metadata=metadata)


_TRAINING_INPUTS = ["pin_text_features", "graph_neighbor_pairs", "validated_board_pins",
                    "validated_interactions"]


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"},
          deps=_TRAINING_INPUTS,
          code_version="1",
          description="PinCLIP trained on pins before the cut-off; registered in MLflow as `pinclip`.")
def pinclip_model(context: dg.AssetExecutionContext, config: PinCLIPConfigDagster,
                  paths: PipelinePaths) -> dg.MaterializeResult:
    return _train(context, config, paths, "pinclip", None)


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"},
          deps=_TRAINING_INPUTS,
          code_version="1",
          description="Ablation: the same PinCLIP training without the neighbor alignment loss.")
def pinclip_no_neighbor_model(context: dg.AssetExecutionContext, config: PinCLIPConfigDagster,
                              paths: PipelinePaths) -> dg.MaterializeResult:
    return _train(context, config, paths, "pinclip_no_neighbor", 0.0)


def _load_trained(paths: PipelinePaths, name: str) -> PinCLIP:
    checkpoint = paths.storage("models", name) / "checkpoint"
    model = PinCLIP(PinCLIPConfig.from_dict(read_trainer_state(checkpoint)["config"]["model"]))
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()


def _embeddings_path(paths: PipelinePaths):
    return paths.storage("embeddings", "pins") / "pins.parquet"


def _read_embeddings(paths: PipelinePaths) -> tuple[list[str], dict[str, np.ndarray]]:
    vectors = {}
    for kind in ("image", "text", "fused"):
        ids, vectors[kind] = read_pin_embeddings(_embeddings_path(paths), kind)
    return ids, vectors


@dg.asset(group_name="embeddings", kinds={"pytorch", "parquet"}, deps=["pinclip_model"],
          code_version="1",
          description="Image, text and fused PinCLIP embeddings of every validated pin.")
def pin_embeddings(paths: PipelinePaths) -> dg.MaterializeResult:
    model = _load_trained(paths, "pinclip")
    inputs = _inputs(paths, model.config.image_size)
    emb = embed_pins(model, inputs.dataset, inputs.text)
    pins = read_validated(paths, "pins")
    frame = pd.DataFrame({"pin_id": inputs.dataset.pin_ids, "created_at": pins["created_at"].tolist(),
                          **{k: list(v) for k, v in emb.items()}})
    write_parquet_atomic(frame, _embeddings_path(paths))
    return dg.MaterializeResult(metadata={
        "pins": len(frame), "dim": int(emb["fused"].shape[1]),
        "days": frame["created_at"].nunique(), "dagster/row_count": len(frame),
    })


@dg.asset(group_name="index", kinds={"faiss"}, deps=["pin_embeddings"], code_version="1",
          description="FAISS indexes of the fused and image pin embeddings (index type chosen by size).")
def faiss_pin_index(paths: PipelinePaths) -> dg.MaterializeResult:
    ids, emb = _read_embeddings(paths)
    cfg = IndexConfig(exact_below=_INDEX["exact_below"], nprobe=_INDEX["nprobe"],
                      ef_search=_INDEX["ef_search"])
    metadata = {}
    rng = np.random.default_rng(0)
    for kind in ("fused", "image"):
        index = PinIndex.build(emb[kind], ids, cfg)
        index.save(paths.storage("index", "pins", kind))
        queries = emb[kind][rng.choice(len(ids), size=min(500, len(ids)), replace=False)]
        metadata[f"{kind}_factory"] = index.factory
        metadata[f"{kind}_recall@10_vs_exact"] = recall_at_k_vs_exact(index, emb[kind], ids, queries, k=10)
        metadata[f"{kind}_qps"] = round(measure_qps(index, queries, k=10), 1)
    metadata["vectors"] = len(ids)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(group_name="eval", kinds={"mlflow", "markdown"},
          deps=["pin_embeddings", "pinclip_no_neighbor_model", "validated_board_pins"],
          code_version="1",
          description="Held-out (by date) neighbor and text↔image retrieval of PinCLIP vs baselines vs oracle.")
def eval_pinclip(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    ids, trained = _read_embeddings(paths)
    ablation_model = _load_trained(paths, "pinclip_no_neighbor")
    inputs = _inputs(paths, ablation_model.config.image_size)
    if inputs.dataset.pin_ids != ids:
        raise ValueError("pin_embeddings is stale: its pins differ from validated_pins; rematerialize it")
    ablation = embed_pins(ablation_model, inputs.dataset, inputs.text)
    torch.manual_seed(0)
    untrained = embed_pins(PinCLIP(ablation_model.config), inputs.dataset, inputs.text)
    metrics, markdown, plots, summary = evaluate_pinclip(
        trained, ablation, untrained, ids, read_validated(paths, "pins"), inputs.text, inputs.split,
        board_neighbors(read_validated(paths, "board_pins")),
        pd.read_parquet(truth_path(paths.raw_root, "pin_objects")),
        pd.read_parquet(truth_path(paths.raw_root, "board_themes")),
    )
    files = write_report(paths.storage("reports", "pinclip"), "pinclip_eval", markdown, plots, summary)
    run_context = RunContext(data_version=dvc_tracked_hash(paths.dvc_path) or "untracked",
                             orchestrator_run_id=context.run_id, asset_key="eval_pinclip")
    with start_run("pinclip", "eval_pinclip", run_context) as run:
        mlflow.log_metrics({f"{method}/{key}".replace("@", "_at_"): value
                            for method, row in metrics.items() for key, value in row.items()
                            if np.isfinite(value)})
        mlflow.log_artifacts(str(files["markdown"].parent), artifact_path="eval")
    gains = summary.get("gains", {})
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(markdown),
        "gains_over_best_baseline": dg.MetadataValue.json(json.loads(json.dumps(gains, default=float))),
        **{f"plot_{name}": png_metadata(png, name) for name, png in plots.items()},
        "report_path": dg.MetadataValue.path(str(files["markdown"])),
        "mlflow_run_id": run.info.run_id,
    })


pinclip_assets = [pin_text_features, pinclip_model, pinclip_no_neighbor_model, pin_embeddings,
                  faiss_pin_index, eval_pinclip]
