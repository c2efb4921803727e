"""Atomic file writes: a reader never sees a half-written table, array or checkpoint.

Every writer of a file another step reads (tables, arrays, indexes, reports, embeddings)
goes through :func:`atomic_path`: the bytes go to a temporary file beside the target, which
``os.replace`` swaps in only once complete, so a crash mid-write leaves the previous
version. Two writers of one target each write their own temporary file, and the last swap
wins whole. A write that is a read-modify-write of several files (an index directory)
also takes :func:`file_lock`, so two materializations of it run one after the other.

A swap survives a power loss too: the temporary's bytes are flushed to disk (``fsync``)
before the rename, and its directory after it, so the new name never points at data the
disk has not got, and the rename itself is on disk when the write returns.
"""

from __future__ import annotations

import fcntl
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
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (the renames in it), to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """``fsync_path`` every file and directory under ``root`` (``root`` included), files first."""
    root = Path(root)
    for path in sorted(root.rglob("*"), key=lambda p: p.is_dir()):
        fsync_path(path)
    fsync_path(root)


LOCK_SUFFIX = ".lock"


def lock_file(target: Path) -> Path:
    """The lock file of ``target``: beside it, hidden, so a directory listing of the target's
    contents (an index directory, a checkpoint) never shows it."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


@contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``target``'s lock file for the block: writers of
    one target take turns (readers need none: every file they read is swapped in whole).

    The lock belongs to the open file, so the kernel releases it when the holder dies
    (SIGKILL included): a crashed writer never leaves the target locked. Local filesystems
    only (flock over NFS is not reliable).
    """
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


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
