"""The semantic-ID model as an MLflow pyfunc, and the two daily outputs of its champion.

**Serving input**: a DataFrame with a ``fused`` column, each row a pin's PinCLIP fused
embedding (a list of floats, the width of the space the model was trained on: the
``pinclip_version`` it records). **Output**: ``behavior`` (the unit behavior embedding)
and ``level_1`` ... ``level_L`` (its nearest code at each level, before any collision
resolution: uniqueness is a property of a set of pins, see :func:`day_semantic_ids`).

Artifacts of a logged model: ``weights`` (model.safetensors) and ``config``
(semantic_id.json: {"model": SemanticIDConfig, "pinclip_version"}), the mmpipe source as
``code_paths``.

**Files** (one per day, written atomically):

    embeddings/behavior/created_at=<day>.parquet   pin_id, created_at, behavior, model_version
    semantic_ids/pins/created_at=<day>.parquet     pin_id, created_at, level_1..level_L, collided,
                                                   codebook_version
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
from mmpipe.embeddings import embedding_file, embedding_frame
from mmpipe.io import write_parquet_atomic
from mmpipe.partitions import day_file, stored_days
from mmpipe.registry.mlflow_registry import RunContext, configure, register_logged_model
from mmpipe.registry.pyfunc import copy_package_source, pinned
from mmpipe.registry.serving import version_uri as registered_version_uri
from mmpipe.spec import Trained
from mmpipe.systems.semantic_id.model import SemanticIDConfig, SemanticIDModel, resolve_collisions
from mmpipe.systems.semantic_id.train import SemanticIDSettings, behavior_embeddings
from mmpipe.train.checkpoint import MODEL_FILE

REGISTERED_NAME = "semantic_id"
CONFIG_FILE = "semantic_id.json"
FUSED, BEHAVIOR = "fused", "behavior"
CODEBOOK_VERSION = "codebook_version"
COLLIDED = "collided"  # the pin kept an ID another pin holds: all K codes under its prefix were taken
SEMANTIC_ID_PREFIX = "created_at="


def level_column(level: int) -> str:
    """Levels are numbered from 1 in files and outputs: ``level_1`` is the coarsest."""
    return f"level_{level + 1}"


class SemanticIDCoder:
    """A loaded model with the PinCLIP version whose space it reads."""

    def __init__(self, model: SemanticIDModel, pinclip_version: str):
        self.model, self.pinclip_version = model.eval(), str(pinclip_version)

    @classmethod
    def from_files(cls, weights: Path, config_path: Path) -> SemanticIDCoder:
        record = json.loads(Path(config_path).read_text())
        model = SemanticIDModel(settings_from_dict(SemanticIDConfig, record["model"]))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, record["pinclip_version"])

    @property
    def levels(self) -> int:
        return self.model.config.codebook.levels

    def check(self, fused: np.ndarray) -> np.ndarray:
        fused = np.asarray(fused, np.float32)
        dim = self.model.config.encoder.dim
        if fused.ndim != 2 or fused.shape[1] != dim:
            raise ValueError(f"fused embeddings must be [N, {dim}] (PinCLIP version {self.pinclip_version}'s "
                             f"space), got {fused.shape}")
        return fused

    def behavior(self, fused: np.ndarray) -> np.ndarray:
        return behavior_embeddings(self.model, self.check(fused))

    @torch.no_grad()
    def codes(self, behavior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest codes [N, L], last-level squared distances [N, K]) of behavior embeddings."""
        self.model.eval()
        codes, distances = self.model.rqvae.codes_and_distances(torch.from_numpy(np.asarray(behavior, np.float32)))
        return codes.numpy(), distances.numpy()


class SemanticIDPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.coder = SemanticIDCoder.from_files(Path(context.artifacts["weights"]), Path(context.artifacts["config"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if FUSED not in model_input.columns:
            raise ValueError(f"input needs a {FUSED!r} column (PinCLIP fused embeddings); got {list(model_input)}")
        fused = np.stack([np.asarray(v, np.float32) for v in model_input[FUSED]]) if len(model_input) else \
            np.zeros((0, self.coder.model.config.encoder.dim), np.float32)
        behavior = self.coder.behavior(fused)
        codes, _ = self.coder.codes(behavior)
        return pd.DataFrame({BEHAVIOR: [row.tolist() for row in behavior],
                             **{level_column(level): codes[:, level] for level in range(self.coder.levels)}})


def default_input_example(dim: int) -> pd.DataFrame:
    vectors = np.sin(np.arange(2 * dim, dtype=np.float32).reshape(2, dim) / 5)
    return pd.DataFrame({FUSED: [row.tolist() for row in vectors]})


def log_semantic_id(model: SemanticIDModel, pinclip_version: str, run_context: RunContext,
                    registered_name: str = REGISTERED_NAME) -> tuple[str, str]:
    """Log ``model`` as a pyfunc into the active run and register it (``challenger``);
    returns (model_uri, version). The example's output is computed from the files as
    serving reads them, so a version whose artifacts do not load is never logged."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_semantic_id logs into the active MLflow run")
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        tmp = Path(tmp)
        weights, config = tmp / MODEL_FILE, tmp / CONFIG_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
        config.write_text(json.dumps({"model": asdict(model.config), "pinclip_version": str(pinclip_version)},
                                     indent=2, sort_keys=True))
        served = SemanticIDPyfunc()
        served.coder = SemanticIDCoder.from_files(weights, config)
        example = default_input_example(model.config.encoder.dim)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=SemanticIDPyfunc(), artifacts={"weights": str(weights), "config": str(config)},
            code_paths=[str(copy_package_source(tmp / "code"))],
            signature=infer_signature(example, served.predict(None, example)), input_example=example,
            pip_requirements=[pinned(name) for name in ("torch", "safetensors", "numpy", "pandas")],
            metadata={"pinclip_version": str(pinclip_version), "levels": model.config.codebook.levels,
                      "codes": model.config.codebook.codes})
    return info.model_uri, register_logged_model(info.model_uri, registered_name, run_context)


def register(trained: Trained, settings: SemanticIDSettings, run_context: RunContext) -> str:
    return log_semantic_id(trained.model, trained.params["pinclip_version"], run_context)[1]


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_version_coder(version: str, name: str = REGISTERED_NAME) -> SemanticIDCoder:
    configure()  # resolve registry URIs against the project's tracking store
    return mlflow.pyfunc.load_model(version_uri(version, name)).unwrap_python_model().coder


# ---------------------------------------------------------------------------------------
# the daily outputs of the champion


def day_behavior_embeddings(coder: SemanticIDCoder, ids: list[str], created_at: list[str], fused: np.ndarray,
                            fused_versions: list[str], version: str) -> pd.DataFrame:
    """One day's behavior embeddings, refused when its pins were embedded by another PinCLIP
    version than the model was trained on (another space: retrain semantic_id)."""
    foreign = sorted(set(map(str, fused_versions)) - {coder.pinclip_version})
    if foreign:
        raise ValueError(f"these pins were embedded by PinCLIP version(s) {foreign}; semantic_id version {version} "
                         f"reads version {coder.pinclip_version}'s space: retrain semantic_id")
    return embedding_frame(ids, created_at, {BEHAVIOR: coder.behavior(fused)}, version)


def semantic_id_file(directory: Path, day: str) -> Path:
    return day_file(directory, day, prefix=SEMANTIC_ID_PREFIX)


def taken_ids(directory: Path, version: str, levels: int, except_days: set[str] = frozenset()) -> set[tuple]:
    """The IDs the pins of other stored days hold under codebook ``version``: a new day's
    pins resolve their collisions against them. Days coded by another version are stale
    (they are recomputed) and hold nothing."""
    taken: set[tuple] = set()
    columns = [level_column(level) for level in range(levels)]
    for day in stored_days(directory, prefix=SEMANTIC_ID_PREFIX):
        if day in except_days:
            continue
        frame = pd.read_parquet(semantic_id_file(directory, day))
        if set(columns) <= set(frame.columns) and (frame[CODEBOOK_VERSION].astype(str) == str(version)).all():
            taken.update(map(tuple, frame[columns].to_numpy(np.int64).tolist()))
    return taken


def day_semantic_ids(coder: SemanticIDCoder, ids: list[str], created_at: list[str], behavior: np.ndarray,
                     version: str, taken: set[tuple]) -> pd.DataFrame:
    """One day's semantic IDs: nearest codes, collisions resolved against ``taken`` and
    each other (:func:`resolve_collisions`); ``taken`` grows by the day's IDs."""
    codes, distances = coder.codes(behavior)
    codes, _ = resolve_collisions(codes, distances, taken)
    rows = list(map(tuple, codes.tolist()))
    counts = pd.Series(rows, dtype=object).value_counts() if rows else pd.Series(dtype=int)
    collided = [(row in taken) or counts[row] > 1 for row in rows]
    taken.update(rows)
    return pd.DataFrame({
        "pin_id": pd.Series(list(map(str, ids)), dtype=object),
        "created_at": pd.Series(list(map(str, created_at)), dtype=object),
        **{level_column(level): codes[:, level].astype(np.int32) for level in range(coder.levels)},
        COLLIDED: np.asarray(collided, dtype=bool),
        CODEBOOK_VERSION: pd.Series([str(version)] * len(ids), dtype=object),
    })


def write_day_semantic_ids(frame: pd.DataFrame, directory: Path, day: str) -> Path:
    return write_parquet_atomic(frame, semantic_id_file(directory, day))


def write_day_behavior(frame: pd.DataFrame, directory: Path, day: str) -> Path:
    return write_parquet_atomic(frame, embedding_file(directory, day))
