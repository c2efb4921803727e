"""The embedding store: one parquet file of vectors per day, for any system's items.

A day's file holds one row per item: its id, its date, one list-of-floats column per
embedding kind (PinCLIP writes ``image``, ``text`` and ``fused``) and the registered model
version that produced it, so an index or a drift check can tell days embedded by an older
champion from the current one. Files (see ``mmpipe.layout``)::

    embeddings/<items>/created_at=<YYYY-MM-DD>.parquet   <id>, created_at, <kind>..., model_version

:func:`read_embeddings` is the one reader: the index, the search, the retraining sensor
and the eval all read vectors through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmpipe.io import write_parquet_atomic
from mmpipe.partitions import day_file, stored_days

EMBEDDING_PREFIX = "created_at="
MODEL_VERSION = "model_version"


class EmbeddingsNotFoundError(FileNotFoundError):
    """No embedding files where some were expected (the pipeline has not embedded yet)."""


def embedding_file(directory: Path, day: str) -> Path:
    return day_file(directory, day, prefix=EMBEDDING_PREFIX)


def embedded_days(directory: Path) -> list[str]:
    return stored_days(directory, prefix=EMBEDDING_PREFIX)


def embedding_frame(ids: Sequence[str], created_at: Sequence[str], vectors: Mapping[str, np.ndarray],
                    model_version: str, id_column: str = "pin_id") -> pd.DataFrame:
    """One day's rows: ``id_column``, created_at, one column per kind in ``vectors``, model_version."""
    for kind, matrix in vectors.items():
        if len(matrix) != len(ids):
            raise ValueError(f"{len(matrix)} {kind} vectors for {len(ids)} ids")
    return pd.DataFrame({
        id_column: pd.Series(list(map(str, ids)), dtype=object),
        "created_at": pd.Series(list(map(str, created_at)), dtype=object),
        **{kind: pd.Series([np.asarray(v, np.float32) for v in matrix], dtype=object)
           for kind, matrix in vectors.items()},
        MODEL_VERSION: pd.Series([str(model_version)] * len(ids), dtype=object),
    })


def write_day_embeddings(frame: pd.DataFrame, directory: Path, day: str) -> Path:
    return write_parquet_atomic(frame, embedding_file(directory, day))


def embedding_files(source: Path | str | Sequence[Path]) -> list[Path]:
    """The files behind ``source``: a file, a list of files, or a directory's day files
    (``created_at=<day>.parquet``, in date order; any ``*.parquet`` when it has none)."""
    if not isinstance(source, (str, os.PathLike)):
        return [Path(path) for path in source]
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    files = sorted(source.glob("*.parquet"))
    days = [path for path in files if path.name.startswith(EMBEDDING_PREFIX)]
    return days or files


def read_embeddings(
    source: Path | str | Sequence[Path],
    kind: str,
    ids: Sequence[str] | None = None,
    model_version: str | None = None,
    id_column: str = "pin_id",
) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [N, D] vectors of ``kind``) from embedding files, in file order.

    ``ids`` restricts the rows (a filter pushed into parquet; ids not found are absent);
    ``model_version`` keeps only the rows that version embedded (files written before the
    column existed are taken whole). An id found in two files counts once, the later.
    Raises :class:`EmbeddingsNotFoundError` when ``source`` holds no file.
    """
    files = embedding_files(source)
    if not files:
        raise EmbeddingsNotFoundError(f"no embeddings at {source}: the pipeline has not embedded yet")
    if ids is not None and not len(ids):
        return [], np.zeros((0, 0), dtype=np.float32)
    filters = None if ids is None else [(id_column, "in", [str(item) for item in ids])]
    frames = []
    for path in files:
        # One open file for schema and rows: pyarrow opens a path several times (footer,
        # then row groups), and a writer replacing the day in between would pair one
        # version's footer with the other's bytes. An open file keeps its version.
        with open(path, "rb") as handle:
            names = pq.read_schema(handle).names
            if kind not in names:
                raise ValueError(f"{path} has no {kind!r} embeddings; it has {names}")
            versioned = model_version is not None and MODEL_VERSION in names
            columns = [id_column, kind] + ([MODEL_VERSION] if versioned else [])
            handle.seek(0)
            frame = pd.read_parquet(handle, columns=columns, filters=filters)
        if versioned:
            frame = frame[frame[MODEL_VERSION].astype(str) == str(model_version)]
        frames.append(frame[[id_column, kind]])
    table = pd.concat(frames, ignore_index=True).drop_duplicates(id_column, keep="last")
    if table.empty:
        return [], np.zeros((0, 0), dtype=np.float32)
    return (table[id_column].astype(str).tolist(),
            np.stack([np.asarray(vector, dtype=np.float32) for vector in table[kind]]))


def _leaf_values(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """The innermost values of a (nested) list column and the row each comes from."""
    array = column.combine_chunks()
    rows = np.arange(len(array))
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(
            array.type):
        rows = rows[pc.list_parent_indices(array).to_numpy()]
        array = pc.list_flatten(array)
    return array, rows


def non_finite_embeddings(files: Sequence[Path], id_column: str = "pin_id") -> tuple[int, dict[str, list[str]]]:
    """(rows read, per vector column: the ids of the rows holding a NaN, an inf or a null).

    Every column of floats or (nested) lists of floats is checked, whatever its name: the
    vectors an index reads (``fused``, ``video``) and those a search reads beside it
    (a video's ``frame_embeddings``)."""
    rows, bad = 0, {}
    for path in files:
        with open(path, "rb") as handle:  # one version of the file, see read_embeddings
            table = pq.read_table(handle)
        rows += table.num_rows
        ids = table.column(id_column).to_pylist()
        for name in table.column_names:
            values, parents = _leaf_values(table.column(name))
            if not pa.types.is_floating(values.type):
                continue
            finite = np.isfinite(values.to_numpy(zero_copy_only=False))  # a null reads as NaN
            for row in np.unique(parents[~finite]).tolist():
                bad.setdefault(name, []).append(str(ids[row]))
    return rows, bad
