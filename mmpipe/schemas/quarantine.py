"""Splitting a table into valid rows and quarantine records, and writing both.

Every check, tabular or media, reports ``Issue``s: a row, the rule it broke and a message.
``split_rows`` turns the issues of a table into exactly one quarantine record per rejected
row, and keeps every other row as valid, so that rows in = valid + quarantined, always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmpipe.io import write_parquet_atomic
from mmpipe.layout import ID_COLUMN, QUARANTINE_COLUMNS

ROW_INDEX = "row_index"


@dataclass(frozen=True)
class Issue:
    row_index: int
    column: str | None  # None: the rule spans several columns
    rule: str
    message: str


@dataclass
class ValidationResult:
    table: str
    valid: pd.DataFrame  # validated rows, original columns typed, plus row_index
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, one record per rejected row
    n_in: int
    # The raw row positions this result covers (one day's rows of a partitioned table);
    # None: the whole table, rows 0 .. n_in - 1.
    row_indices: list[int] | None = None

    def check_invariant(self) -> None:
        """Raise unless every input row is in exactly one of valid and quarantine."""
        valid_rows = self.valid[ROW_INDEX].tolist()
        rejected_rows = self.quarantine[ROW_INDEX].tolist()
        problems = []
        if len(valid_rows) + len(rejected_rows) != self.n_in:
            problems.append(f"{self.n_in} rows in but {len(valid_rows)} valid + {len(rejected_rows)} quarantined")
        if len(set(valid_rows)) != len(valid_rows) or len(set(rejected_rows)) != len(rejected_rows):
            problems.append("a row_index appears twice on one side")
        in_both = set(valid_rows) & set(rejected_rows)
        if in_both:
            problems.append(f"rows both valid and quarantined: {sorted(in_both)[:10]}")
        expected = set(range(self.n_in)) if self.row_indices is None else set(self.row_indices)
        unknown = (set(valid_rows) | set(rejected_rows)) - expected
        if unknown:
            problems.append(f"rows not in the input: {sorted(unknown)[:10]}")
        missing = expected - set(valid_rows) - set(rejected_rows)
        if missing:
            problems.append(f"rows neither valid nor quarantined: {sorted(missing)[:10]}")
        if problems:
            raise AssertionError(f"{self.table}: " + "; ".join(problems))

    def rule_counts(self) -> dict[str, int]:
        """Quarantined rows per (first) rule, most frequent first."""
        return {str(rule): int(n) for rule, n in self.quarantine["rule"].value_counts().items()}


# How sure the quarantine-rate check must be that a source is worse than the threshold.
RATE_CONFIDENCE = 0.95


def quarantine_rate_verdict(n_quarantined: int, n_rows: int, max_rate: float,
                            confidence: float = RATE_CONFIDENCE) -> dict:
    """Is a table's source worse than ``max_rate`` bad records? ``passed`` is False only when
    ``n_quarantined`` of ``n_rows`` is evidence of it: under a source at exactly
    ``max_rate``, so many or more bad rows would happen less than ``1 - confidence`` of
    the time (a one-sided exact binomial test).

    Why not the plain share: the threshold describes a source, and a table of a few rows
    cannot show it. A 13-row table with 3 bad rows (the tiny world plants one of each of
    the boards' three defect kinds) is 23% bad, yet a source at 20% gives 3 or more bad rows
    in 13 half the time. On a large table the test is the plain share with a sliver of
    slack: at 100,000 rows and 20%, it fails from about 20.2%.

    >>> quarantine_rate_verdict(3, 13, 0.2)["passed"]
    True
    >>> quarantine_rate_verdict(8, 13, 0.2)["passed"], quarantine_rate_verdict(20_500, 100_000, 0.2)["passed"]
    (False, False)
    """
    from scipy.stats import binom

    rate = n_quarantined / max(n_rows, 1)
    # P(X >= n_quarantined) for X ~ Binomial(n_rows, max_rate); 1 for an empty table
    p_value = float(binom.sf(n_quarantined - 1, n_rows, max_rate)) if n_rows else 1.0
    return {"passed": p_value >= 1 - confidence, "quarantine_rate": rate, "threshold": max_rate,
            "p_value_above_threshold": p_value, "confidence": confidence, "rows": n_rows}


# The columns whose pair identifies a row of a table without an id column.
PAIR_COLUMNS: dict[str, tuple[str, str]] = {
    "board_pins": ("board_id", "pin_id"),
    "video_shots": ("video_id", "shot_index"),
}


def record_ids(table: str, frame: pd.DataFrame) -> pd.Series:
    """The id a person would search for: the id column, or the identifying pair joined by a
    colon (``board_id:pin_id`` for a save, ``video_id:shot_index`` for a shot)."""
    id_column = ID_COLUMN[table]
    if id_column is not None:
        ids = frame[id_column]
    else:
        first, second = PAIR_COLUMNS[table]
        ids = frame[first].astype("string") + ":" + frame[second].astype("string")
    return ids.astype("string")


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({
        "table": pd.Series(dtype="string"),
        ROW_INDEX: pd.Series(dtype="int64"),
        "record_id": pd.Series(dtype="string"),
        "source_file": pd.Series(dtype="string"),
        "rule": pd.Series(dtype="string"),
        "message": pd.Series(dtype="string"),
    })[QUARANTINE_COLUMNS]


def quarantine_records(table: str, frame: pd.DataFrame, issues: list[Issue], column_order: list[str]) -> pd.DataFrame:
    """One record per row with issues: the first rule (in column order, then rules spanning
    columns) names it, the message lists every issue of the row."""
    if not issues:
        return empty_quarantine()
    position = {column: i for i, column in enumerate(column_order)}
    ranked = pd.DataFrame(
        [(issue.row_index, position.get(issue.column, len(position)), n, issue.rule, issue.message)
         for n, issue in enumerate(issues)],
        columns=[ROW_INDEX, "column_rank", "found", "rule", "message"],
    )
    ranked = ranked.sort_values([ROW_INDEX, "column_rank", "found"]).drop_duplicates([ROW_INDEX, "rule", "message"])
    per_row = ranked.groupby(ROW_INDEX, sort=True).agg(rule=("rule", "first"), message=("message", "; ".join))
    ids = record_ids(table, frame).reindex(per_row.index)
    records = pd.DataFrame({
        "table": table,
        ROW_INDEX: per_row.index.astype("int64"),
        "record_id": ids.to_numpy(),
        "source_file": f"{table}.parquet",
        "rule": per_row["rule"].to_numpy(),
        "message": per_row["message"].to_numpy(),
    })
    return records.astype(empty_quarantine().dtypes.to_dict())[QUARANTINE_COLUMNS]


def write_result(result: ValidationResult, out_dir: Path) -> dict:
    """Write ``validated/<table>.parquet`` and ``quarantine/<table>.parquet`` under ``out_dir``,
    each atomically (a reader sees the old file or the new one, never half of one)."""
    result.check_invariant()
    out_dir = Path(out_dir)
    valid_path = write_parquet_atomic(result.valid, out_dir / "validated" / f"{result.table}.parquet")
    quarantine_path = write_parquet_atomic(result.quarantine, out_dir / "quarantine" / f"{result.table}.parquet")
    return {
        "table": result.table,
        "rows_in": result.n_in,
        "rows_valid": len(result.valid),
        "rows_quarantined": len(result.quarantine),
        "validated_path": str(valid_path),
        "quarantine_path": str(quarantine_path),
    }
