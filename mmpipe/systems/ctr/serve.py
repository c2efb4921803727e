"""The CTR model as an MLflow pyfunc.

**Serving input**: a DataFrame with ``user_id``, ``pin_id`` (the target), ``position``,
``history`` (a list of the user's recently clicked pin ids, oldest first), and optionally
``country``, ``signup_date`` and ``date`` (ISO; the sign-up age). **Output**: ``p_click``.
Pins are scored from the item table the model was trained with (every pin embedded and
coded at training time, cold ones included); a pin outside it is scored as an item
without ID, semantic ID or content (a zero vector), so retrain when new pins arrive.

Artifacts: ``weights`` (model.safetensors, the item table in its buffers) and ``config``
(ctr.json: {"model": CTRConfig, "item_ids", "countries", "data", "embedding",
"codebook_version"}), the mmpipe source as ``code_paths``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from safetensors.torch import load_file, save_file

from mmpipe.config import settings_from_dict
from mmpipe.registry.mlflow_registry import RunContext, configure, register_logged_model
from mmpipe.registry.pyfunc import copy_package_source, pinned
from mmpipe.registry.serving import version_uri as registered_version_uri
from mmpipe.spec import Trained
from mmpipe.systems.ctr.data import CTRInputs, DataSettings, stable_bucket
from mmpipe.systems.ctr.model import CTRConfig, CTRModel
from mmpipe.systems.ctr.train import CTRSettings, TrainedCTR
from mmpipe.train.checkpoint import MODEL_FILE

REGISTERED_NAME = "ctr"
CONFIG_FILE = "ctr.json"
P_CLICK = "p_click"


class CTRScorer:
    """A loaded model with its item ids and countries: scores serving frames."""

    def __init__(self, model: CTRModel, item_ids: list[str], countries: list[str], data: DataSettings,
                 codebook_version: str | None = None, embedding: str = ""):
        self.model, self.item_ids, self.countries, self.data = model.eval(), list(item_ids), list(countries), data
        self.codebook_version, self.embedding = codebook_version, embedding
        self.item_index = pd.Index(self.item_ids)

    @classmethod
    def from_files(cls, weights: Path, config_path: Path) -> CTRScorer:
        record = json.loads(Path(config_path).read_text())
        model = CTRModel(settings_from_dict(CTRConfig, record["model"]))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, record["item_ids"], record["countries"], settings_from_dict(DataSettings, record["data"]),
                   record.get("codebook_version"), record.get("embedding", ""))

    def record(self) -> dict:
        return {"model": asdict(self.model.config), "item_ids": self.item_ids, "countries": self.countries,
                "data": asdict(self.data), "codebook_version": self.codebook_version, "embedding": self.embedding}

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in ("user_id", "pin_id", "position", "history") if c not in frame.columns]
        if missing:
            raise ValueError(f"serving input needs columns {missing}; got {list(frame.columns)}")
        n, length = len(frame), self.data.history_length
        history = np.full((n, length), -1, dtype=np.int64)
        for i, pins in enumerate(frame["history"]):
            rows = self.item_index.get_indexer([str(p) for p in list(pins)[-length:]])
            rows = rows[rows >= 0]
            if len(rows):
                history[i, length - len(rows):] = rows
        country_index = {c: i + 1 for i, c in enumerate(self.countries)}
        country = np.asarray([country_index.get(str(c), 0) for c in frame.get("country", pd.Series([None] * n))],
                             dtype=np.int64)
        tenure = np.zeros(n, np.float32)
        if "signup_date" in frame.columns and "date" in frame.columns:
            days = (pd.to_datetime(frame["date"], errors="coerce") - pd.to_datetime(frame["signup_date"], errors="coerce")
                    ).dt.days.to_numpy(dtype=np.float64)
            tenure = np.log1p(np.clip(np.nan_to_num(days, nan=0.0), 0, self.data.max_tenure_days)).astype(np.float32)
        logits = self.model(
            target=torch.from_numpy(self.item_index.get_indexer(frame["pin_id"].astype(str)).astype(np.int64)),
            history=torch.from_numpy(history),
            user=torch.from_numpy(stable_bucket(frame["user_id"], self.data.user_buckets)),
            country=torch.from_numpy(country), tenure=torch.from_numpy(tenure),
            position=torch.from_numpy(frame["position"].to_numpy(np.int64).copy()))
        return torch.sigmoid(logits).numpy()


class CTRPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.scorer = CTRScorer.from_files(Path(context.artifacts["weights"]), Path(context.artifacts["config"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame({P_CLICK: self.scorer.predict(model_input)})


def default_input_example(scorer: CTRScorer) -> pd.DataFrame:
    items = scorer.item_ids[:3] or ["unknown"]
    return pd.DataFrame({"user_id": ["u1", "u2"], "pin_id": [items[0], items[-1]], "position": [0, 3],
                         "history": [items[1:], []], "country": ["US", "FR"], "signup_date": ["2025-01-01"] * 2,
                         "date": ["2026-01-30"] * 2})


def log_ctr(scorer: CTRScorer, run_context: RunContext, registered_name: str = REGISTERED_NAME) -> tuple[str, str]:
    """Log ``scorer`` as a pyfunc into the active run and register it (``challenger``);
    returns (model_uri, version). The example's output is computed from the files as
    serving reads them, so a version whose artifacts do not load is never logged."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_ctr logs into the active MLflow run")
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        tmp = Path(tmp)
        weights, config = tmp / MODEL_FILE, tmp / CONFIG_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in scorer.model.state_dict().items()}, str(weights))
        config.write_text(json.dumps(scorer.record(), sort_keys=True))
        served = CTRPyfunc()
        served.scorer = CTRScorer.from_files(weights, config)
        example = default_input_example(served.scorer)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=CTRPyfunc(), artifacts={"weights": str(weights), "config": str(config)},
            code_paths=[str(copy_package_source(tmp / "code"))],
            signature=infer_signature(example, served.predict(None, example)), input_example=example,
            pip_requirements=[pinned(name) for name in ("torch", "safetensors", "numpy", "pandas")],
            metadata={"codebook_version": str(scorer.codebook_version), "embedding": scorer.embedding,
                      "items": len(scorer.item_ids)})
    return info.model_uri, register_logged_model(info.model_uri, registered_name, run_context)


def scorer_of(trained: TrainedCTR) -> CTRScorer:
    return CTRScorer(trained.model, trained.item_ids, trained.countries, trained.data, trained.codebook_version,
                     trained.embedding)


def register(trained: Trained, settings: CTRSettings, run_context: RunContext) -> str:
    return log_ctr(scorer_of(trained.model), run_context)[1]


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_version_scorer(version: str, name: str = REGISTERED_NAME) -> CTRScorer:
    configure()  # resolve registry URIs against the project's tracking store
    return mlflow.pyfunc.load_model(version_uri(version, name)).unwrap_python_model().scorer


def load_version_model(version: str, inputs: CTRInputs, name: str = REGISTERED_NAME) -> CTRModel:
    """The registered model, for scoring ``inputs`` row by row: refused when it was trained
    on another item table or codebook version (its rows and per-level tables would mean
    other items and codes)."""
    scorer = load_version_scorer(version, name)
    if scorer.item_ids != list(inputs.items.ids) or str(scorer.codebook_version) != str(inputs.items.codebook_version):
        raise ValueError(f"ctr version {version} was trained on another item table or codebook version "
                         f"({scorer.codebook_version}, now {inputs.items.codebook_version}): retrain it")
    return scorer.model
