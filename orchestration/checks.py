"""Asset checks: data quality gates on every validated table.

Blocking checks stop downstream assets when a table is invalid beyond the configured
threshold, or when rows were lost between raw and validated + quarantine.
"""


import dagster as dg
import pandas as pd

from mmpipe.layout import ID_COLUMN, RAW_TABLES, raw_table_path
from mmpipe.schemas.expectations import run_expectations
from mmpipe.schemas.validate import VALIDATION_PARENTS
from orchestration.assets.validated import read_validated
from orchestration.resources import PipelinePaths, ValidationPolicy


def _read_quarantine(paths: PipelinePaths, table: str) -> pd.DataFrame:
    return pd.read_parquet(paths.storage("quarantine") / f"{table}.parquet")


def _checks_for(table: str) -> list[dg.AssetChecksDefinition]:
    asset = f"validated_{table}"

    @dg.asset_check(asset=asset, name="rows_conserved", blocking=True,
                    description="raw rows = validated rows + quarantined rows, no row in both")
    def rows_conserved(paths: PipelinePaths) -> dg.AssetCheckResult:
        n_raw = len(pd.read_parquet(raw_table_path(paths.raw_root, table), columns=[]))
        valid, quarantine = read_validated(paths, table), _read_quarantine(paths, table)
        overlap = set(valid["row_index"]) & set(quarantine["row_index"])
        return dg.AssetCheckResult(
            passed=n_raw == len(valid) + len(quarantine) and not overlap,
            metadata={"raw": n_raw, "valid": len(valid), "quarantined": len(quarantine),
                      "in_both": len(overlap)},
        )

    @dg.asset_check(asset=asset, name="quarantine_rate", blocking=True,
                    description="quarantined share of rows at most the policy's max_quarantine_rate")
    def quarantine_rate(paths: PipelinePaths, policy: ValidationPolicy) -> dg.AssetCheckResult:
        n_valid, n_bad = len(read_validated(paths, table)), len(_read_quarantine(paths, table))
        rate = n_bad / max(n_valid + n_bad, 1)
        return dg.AssetCheckResult(
            passed=rate <= policy.max_quarantine_rate,
            metadata={"quarantine_rate": rate, "threshold": policy.max_quarantine_rate},
        )

    @dg.asset_check(asset=asset, name="expectations", blocking=True,
                    description="Great Expectations suite: null rates, lengths, ranges, uniqueness, references")
    def expectations(paths: PipelinePaths) -> dg.AssetCheckResult:
        parents = {parent: read_validated(paths, parent) for parent in VALIDATION_PARENTS[table]}
        report = run_expectations(table, read_validated(paths, table), parents)
        return dg.AssetCheckResult(
            passed=report.success,
            metadata={"results": dg.MetadataValue.json(report.to_dict())},
        )

    return [rows_conserved, quarantine_rate, expectations]


validation_checks = [check for table in RAW_TABLES for check in _checks_for(table)]
