"""Atomic file writes: a reader never sees a half-written table, array or checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet_atomic(df: pd.DataFrame, target: Path) -> Path:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def write_bytes_atomic(data: bytes, target: Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_npy_atomic(array: np.ndarray, target: Path) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return Path(target)


def append_jsonl(record: dict, target: Path) -> Path:
    """Append ``record`` as one JSON line in a single ``write`` on an ``O_APPEND`` file, so
    concurrent writers never interleave within a line (local filesystems)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return target
