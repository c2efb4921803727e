"""Reading a raw table of the landing zone: the one place a file becomes a frame.

A user's table can be unreadable (a corrupt or truncated Parquet file) or drift from the
contract (a column missing or renamed). Either is a problem of the whole file, not of a
row, so it cannot be quarantined: it stops the table here, with an error naming the table,
the file and the columns, before partitioning or validation index a column that is not
there.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmpipe.layout import RAW_COLUMNS, raw_table_path


class RawTableError(ValueError):
    """A raw table that cannot be read, or lacks columns of the contract (``RAW_COLUMNS``)."""


_READ_ERRORS = (OSError, ValueError, pa.ArrowException)


def _unreadable(table: str, path: Path, error: Exception) -> RawTableError:
    # pyarrow's own message ("Corrupt snappy compressed data") names neither table nor file
    return RawTableError(f"{table}: cannot read {path}, it is not a readable Parquet file "
                         f"({type(error).__name__}: {error})")


def missing_columns_problem(table: str, columns: Iterable[str], required: Iterable[str] | None = None) -> str | None:
    """What ``columns`` lack of ``table``'s contract (or of its ``required`` columns), naming a
    likely rename; None if nothing.

    >>> missing_columns_problem("users", ["user_id", "country", "signup"])
    "users lacks the column 'signup_date' (renamed to 'signup'?); expected user_id, country, signup_date; found user_id, country, signup"
    """
    columns = [str(column) for column in columns]
    expected = RAW_COLUMNS[table]
    missing = [column for column in (expected if required is None else required) if column not in columns]
    if not missing:
        return None
    extra = [column for column in columns if column not in expected]
    named = []
    for column in missing:
        guess = difflib.get_close_matches(column, extra, n=1, cutoff=0.5)
        if not guess and len(missing) == len(extra) == 1:
            guess = extra  # one column gone and one unknown in its place: a rename, however spelt
        named.append(f"{column!r}" + (f" (renamed to {guess[0]!r}?)" if guess else ""))
    noun = "column" if len(missing) == 1 else "columns"
    return (f"{table} lacks the {noun} {', '.join(named)}; expected {', '.join(expected)}; "
            f"found {', '.join(columns) or 'no column'}")


def read_raw_table(raw_root: Path, table: str) -> pd.DataFrame:
    """``raw_root/<table>.parquet`` with every column of its contract (extra columns pass).

    Raises FileNotFoundError when the file is absent and RawTableError, naming the table
    and the file, when it cannot be read or lacks a column."""
    path = raw_table_path(raw_root, table)
    if not path.exists():
        raise FileNotFoundError(f"{table}: {path} does not exist: generate data with `mmpipe world generate` "
                                "or fetch it with `dvc pull`")
    try:
        frame = pd.read_parquet(path)
    except _READ_ERRORS as error:
        raise _unreadable(table, path, error) from error
    problem = missing_columns_problem(table, frame.columns)
    if problem is not None:
        raise RawTableError(f"{problem} (in {path})")
    return frame


def raw_row_count(raw_root: Path, table: str) -> int:
    """Rows of ``raw_root/<table>.parquet`` from its footer. (Reading no column with pandas
    gives 0 rows for a file written without its index, whatever it holds.)"""
    path = raw_table_path(raw_root, table)
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except _READ_ERRORS as error:
        raise _unreadable(table, path, error) from error
