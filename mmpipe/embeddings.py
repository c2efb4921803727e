"""Per-day pin embeddings.

A day's embeddings are computed from that day's validated pins (and their rows of the
caption cache) alone, so materializing one day never recomputes another. Files (see
``mmpipe.layout``)::

    embeddings/pins/created_at=<YYYY-MM-DD>.parquet     pin_id, created_at, image, text, fused, model_version
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from mmpipe.io import write_parquet_atomic
from mmpipe.models.text_encoder import TextFeatures
from mmpipe.partitions import day_file, stored_days

EMBEDDING_PREFIX = "created_at="
EMBEDDING_COLUMNS = ["pin_id", "created_at", "image", "text", "fused", "model_version"]


def embedding_file(directory: Path, day: str) -> Path:
    return day_file(directory, day, prefix=EMBEDDING_PREFIX)


def embedded_days(directory: Path) -> list[str]:
    return stored_days(directory, prefix=EMBEDDING_PREFIX)


def concat_text_features(parts: Iterable[TextFeatures]) -> TextFeatures:
    """Row-wise concatenation (every part is padded to the same max_length)."""
    parts = list(parts)
    if not parts:
        raise ValueError("no caption caches to concatenate")
    return TextFeatures(hidden=torch.cat([p.hidden for p in parts]), mask=torch.cat([p.mask for p in parts]),
                        pooled=torch.cat([p.pooled for p in parts]))


def pin_embedding_frame(pin_ids: list[str], created_at: list[str], emb: dict[str, np.ndarray],
                        model_version: str) -> pd.DataFrame:
    return pd.DataFrame({
        "pin_id": pd.Series(pin_ids, dtype=object), "created_at": pd.Series(created_at, dtype=object),
        **{kind: pd.Series([np.asarray(v, np.float32) for v in emb[kind]], dtype=object)
           for kind in ("image", "text", "fused")},
        "model_version": pd.Series([str(model_version)] * len(pin_ids), dtype=object),
    })[EMBEDDING_COLUMNS]


def embed_day(model, pins: pd.DataFrame, text: TextFeatures, raw_root: Path, model_version: str) -> pd.DataFrame:
    """Image, text and fused embeddings of one day's validated ``pins`` (row i: caption cache row i)."""
    from mmpipe.train.pin_data import PinDataset
    from mmpipe.train.pinclip_train import embed_pins

    pins = pins.reset_index(drop=True)
    if len(text) != len(pins):
        raise ValueError(f"caption cache has {len(text)} rows but the day has {len(pins)} pins: "
                         "rematerialize the day's pin_text_features")
    dim = model.config.embed_dim
    if len(pins) == 0:
        emb = {kind: np.zeros((0, dim), np.float32) for kind in ("image", "text", "fused")}
    else:
        dataset = PinDataset(pins, raw_root, model.config.image_size).predecode()
        with torch.no_grad():
            emb = embed_pins(model, dataset, text)
    return pin_embedding_frame(pins["pin_id"].astype(str).tolist(), pins["created_at"].astype(str).tolist(),
                               emb, model_version)


def write_day_embeddings(frame: pd.DataFrame, directory: Path, day: str) -> Path:
    return write_parquet_atomic(frame, embedding_file(directory, day))
