"""Asset checks: data quality gates on every validated table, and on every embeddings
asset that feeds an index.

Blocking checks stop downstream assets when a table is invalid beyond the configured
threshold, or when rows were lost between raw and validated + quarantine. On a table
partitioned by day, a check runs once per run: rows are conserved for the run's days (the
raw rows filed under them), while the quarantine rate and the expectations judge the
table as a whole (a single day is too small a sample for a distribution).

``finite_embeddings`` (:func:`finite_embeddings_check`) blocks the index when any
embedding of the run's days holds a NaN or an inf, and names those rows.
"""

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from mmpipe.embeddings import embedding_file, non_finite_embeddings
from mmpipe.layout import RAW_TABLES
from mmpipe.partitions import DAY_COLUMN, raw_rows_by_day
from mmpipe.schemas.expectations import run_expectations
from mmpipe.schemas.quarantine import quarantine_rate_verdict
from mmpipe.schemas.raw_tables import raw_row_count
from mmpipe.schemas.validate import VALIDATION_PARENTS
from orchestration.assets.validated import read_quarantine as _read_quarantine
from orchestration.assets.validated import read_validated
from orchestration.partitions import context_days
from orchestration.resources import PipelinePaths, ValidationPolicy


def _conservation(paths: PipelinePaths, table: str, days: list[str] | None) -> dg.AssetCheckResult:
    if days is None:
        expected = set(range(raw_row_count(paths.raw_root, table)))
    else:
        _, row_days = raw_rows_by_day(paths.raw_root, table)
        expected = set(row_days.index[row_days.isin(days)])
    valid, quarantine = read_validated(paths, table, days), _read_quarantine(paths, table, days)
    valid_rows, rejected_rows = list(valid["row_index"]), list(quarantine["row_index"])
    overlap = set(valid_rows) & set(rejected_rows)
    found = set(valid_rows) | set(rejected_rows)
    metadata = {"raw": len(expected), "valid": len(valid), "quarantined": len(quarantine),
                "in_both": len(overlap), "lost": len(expected - found), "foreign": len(found - expected)}
    if days is not None:
        metadata["days"] = ", ".join(days)
    return dg.AssetCheckResult(
        passed=len(expected) == len(valid_rows) + len(rejected_rows) and not overlap and found == expected,
        metadata=metadata,
    )


def _checks_for(table: str) -> list[dg.AssetChecksDefinition]:
    asset = f"validated_{table}"

    @dg.asset_check(asset=asset, name="rows_conserved", blocking=True,
                    description="raw rows = validated rows + quarantined rows, no row in both")
    def rows_conserved(context: dg.AssetCheckExecutionContext, paths: PipelinePaths) -> dg.AssetCheckResult:
        return _conservation(paths, table, context_days(context) if table in DAY_COLUMN else None)

    @dg.asset_check(asset=asset, name="quarantine_rate", blocking=True,
                    description="the quarantined rows are no evidence (95% confidence) of a source worse "
                                "than the policy's max_quarantine_rate")
    def quarantine_rate(paths: PipelinePaths, policy: ValidationPolicy) -> dg.AssetCheckResult:
        n_valid, n_bad = len(read_validated(paths, table)), len(_read_quarantine(paths, table))
        verdict = quarantine_rate_verdict(n_bad, n_valid + n_bad, policy.max_quarantine_rate)
        passed = verdict.pop("passed")
        return dg.AssetCheckResult(passed=passed, metadata=verdict)

    @dg.asset_check(asset=asset, name="expectations", blocking=True,
                    description="Great Expectations suite: null rates, lengths, ranges, uniqueness, references")
    def expectations(paths: PipelinePaths) -> dg.AssetCheckResult:
        valid = read_validated(paths, table)
        if valid.empty and raw_row_count(paths.raw_root, table) == 0:
            # Nothing delivered (a landing zone without videos, say) is no broken table: the
            # suite's "at least one row" is for rows that came in and all failed.
            return dg.AssetCheckResult(passed=True, metadata={"note": f"the raw {table} table is empty: "
                                                                      "nothing to check"})
        parents = {parent: read_validated(paths, parent) for parent in VALIDATION_PARENTS[table]}
        report = run_expectations(table, valid, parents)
        return dg.AssetCheckResult(
            passed=report.success,
            metadata={"results": dg.MetadataValue.json(report.to_dict())},
        )

    return [rows_conserved, quarantine_rate, expectations]


validation_checks = [check for table in RAW_TABLES for check in _checks_for(table)]


SHOWN_IDS = 20  # ids named per column in the check's description; the metadata lists up to 1,000


def finite_embeddings_check(asset: str, embeddings_dir: Callable[[PipelinePaths], Path],
                            id_column: str) -> dg.AssetChecksDefinition:
    """A blocking check on the per-day embeddings ``asset`` (files under
    ``embeddings_dir(paths)``, rows named by ``id_column``): every vector of the run's days
    is finite. A NaN embedding scores NaN against every query, and faiss ranks NaN
    arbitrarily, so one would surface in any result list; blocked, it never reaches the index."""

    @dg.asset_check(asset=asset, name="finite_embeddings", blocking=True,
                    description="every embedding of the run's days is finite (no NaN or inf); "
                                "the index is not built from a day that fails")
    def finite_embeddings(context: dg.AssetCheckExecutionContext, paths: PipelinePaths) -> dg.AssetCheckResult:
        days = context_days(context)
        files = [path for day in days if (path := embedding_file(embeddings_dir(paths), day)).exists()]
        rows, bad = non_finite_embeddings(files, id_column)
        named = {column: ids[:1000] for column, ids in bad.items()}
        description = "; ".join(f"{len(ids)} {id_column} with non-finite {column}: {ids[:SHOWN_IDS]}"
                                + (" ..." if len(ids) > SHOWN_IDS else "") for column, ids in bad.items())
        return dg.AssetCheckResult(
            passed=not bad,
            description=description or f"all {rows} rows finite",
            metadata={"days": ", ".join(days), "rows": rows,
                      "non_finite_rows": len({i for ids in bad.values() for i in ids}),
                      "non_finite": dg.MetadataValue.json(named)},
        )

    return finite_embeddings
