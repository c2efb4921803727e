"""Daily partitions of the landing zone: which day every raw row belongs to, and the
per-day files of the derived tables.

Raw data arrives by day. Pins, interactions and videos are partitioned by their own date
(``DAY_COLUMN``). A row whose date is unusable (missing, malformed, outside the window the
manifest declares) still needs exactly one home, so that validation can quarantine it and
no row is lost: it goes to the day it was *delivered*, read from the manifest's
``deliveries`` history (``mmpipe world advance`` records the cumulative row counts after
each delivery); a row past every recorded delivery, or a world without that history, goes
to the manifest's ``end_date``. So each raw row has exactly one day, a pure function of
the row and the manifest.

Per-day files are written whole and atomically, so recomputing one day never touches
another: ``<dir>/<YYYY-MM-DD>.parquet`` (``day_file``), read back in day order with
``read_days``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mmpipe.layout import MANIFEST_FILE, RAW_TABLES
from mmpipe.schemas.raw_tables import RawTableError, missing_columns_problem, read_raw_table
from mmpipe.schemas.tables import iso_date_strings, parse_iso_dates

# The date column each partitioned table is split by.
DAY_COLUMN: dict[str, str] = {"pins": "created_at", "interactions": "date", "videos": "created_at"}
PARTITIONED_TABLES = tuple(DAY_COLUMN)
UNPARTITIONED_TABLES = tuple(table for table in RAW_TABLES if table not in DAY_COLUMN)


def read_manifest(raw_root: Path) -> dict:
    path = Path(raw_root) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: generate data with `mmpipe world generate` "
                                "or fetch it with `dvc pull`")
    return json.loads(path.read_text())


def date_range(start: str, end: str) -> list[str]:
    """ISO days from ``start`` to ``end`` inclusive.

    >>> date_range("2026-01-30", "2026-02-01")
    ['2026-01-30', '2026-01-31', '2026-02-01']
    """
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(first + dt.timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def manifest_days(raw_root: Path) -> list[str]:
    """Every day of the window the landing zone's manifest declares: the partition keys."""
    manifest = read_manifest(raw_root)
    return date_range(manifest["start_date"], manifest["end_date"])


def delivery_days(manifest: dict, table: str, n_rows: int) -> np.ndarray:
    """The day each of the first ``n_rows`` rows of ``table`` was delivered (object array)."""
    days = np.full(n_rows, manifest["end_date"], dtype=object)
    start = 0
    for delivery in manifest.get("deliveries", []):
        end = min(int(delivery["rows"].get(table, start)), n_rows)
        if end > start:
            days[start:end] = delivery["date"]
            start = end
    return days


def row_days(table: str, raw: pd.DataFrame, manifest: dict) -> pd.Series:
    """The day partition of every row of the raw ``table`` (index: row position)."""
    if table not in DAY_COLUMN:
        raise KeyError(f"{table} is not partitioned by day; partitioned: {PARTITIONED_TABLES}")
    problem = missing_columns_problem(table, raw.columns, required=[DAY_COLUMN[table]])
    if problem is not None:  # a KeyError on the date column would name neither table nor rename
        raise RawTableError(problem)
    raw = raw.reset_index(drop=True)
    # the same reading of the date the validation's parser gives (timestamps to their UTC day)
    parsed = parse_iso_dates(iso_date_strings(raw[DAY_COLUMN[table]]))
    low, high = pd.Timestamp(manifest["start_date"]), pd.Timestamp(manifest["end_date"])
    usable = parsed.notna() & parsed.between(low, high)
    days = pd.Series(delivery_days(manifest, table, len(raw)), index=raw.index, dtype=object)
    days[usable] = parsed[usable].dt.strftime("%Y-%m-%d")
    return days


def raw_rows_by_day(raw_root: Path, table: str) -> tuple[pd.DataFrame, pd.Series]:
    """(the raw table, the day of each row)."""
    raw = read_raw_table(raw_root, table).reset_index(drop=True)
    return raw, row_days(table, raw, read_manifest(raw_root))


def day_file(directory: Path, day: str, suffix: str = ".parquet", prefix: str = "") -> Path:
    dt.date.fromisoformat(day)  # a partition key is a date: never a path piece
    return Path(directory) / f"{prefix}{day}{suffix}"


def stored_days(directory: Path, suffix: str = ".parquet", prefix: str = "") -> list[str]:
    """The days with a file in ``directory``, in order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    days = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        key = path.name[len(prefix): len(path.name) - len(suffix)]
        try:
            dt.date.fromisoformat(key)
        except ValueError:
            continue
        days.append(key)
    return sorted(days)


def read_days(directory: Path, days: Iterable[str] | None = None, prefix: str = "",
              columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The per-day parquet files of ``directory`` (all, or ``days``), concatenated in day order."""
    wanted = stored_days(directory, prefix=prefix) if days is None else sorted(days)
    frames = [pd.read_parquet(day_file(directory, day, prefix=prefix), columns=columns) for day in wanted
              if day_file(directory, day, prefix=prefix).exists()]
    if not frames:
        raise FileNotFoundError(f"no day partitions in {directory}" + ("" if days is None else f" for {sorted(days)}"))
    frames = [frame for frame in frames if len(frame)] or frames[:1]
    return pd.concat(frames, ignore_index=True)


def days_up_to(days: Iterable[str], last: str) -> list[str]:
    return sorted(day for day in days if day <= last)
