"""Validated tables: every raw row ends in `storage/validated` or `storage/quarantine`.

Pins, interactions and videos are partitioned by day (``mmpipe.partitions``): a day's
partition validates the raw rows filed under that day and writes
``validated/<table>/<day>.parquet`` and ``quarantine/<table>/<day>.parquet``; references
are checked against the valid pins of that day and earlier. Boards, users, board_pins and
the videos' annotations (moment_queries, video_captions, video_shots, summary_queries) are
dimension tables, validated whole against every validated partition.
"""


import dagster as dg
import pandas as pd

from mmpipe.io import write_parquet_atomic
from mmpipe.layout import RAW_TABLES, declared_date_window, resolve_inside
from mmpipe.media.preview import image_files_grid_png
from mmpipe.partitions import DAY_COLUMN, day_file, days_up_to, raw_rows_by_day, read_days, stored_days
from mmpipe.schemas.validate import VALIDATION_PARENTS, validate_day, validate_table, write_result
from orchestration import names
from orchestration.automation import EAGER
from orchestration.metadata import png_metadata, preview_table
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths


def read_validated(paths: PipelinePaths, table: str, days: list[str] | None = None) -> pd.DataFrame:
    """The validated table: every day partition (or ``days``) of a partitioned table."""
    if table in DAY_COLUMN:
        return read_days(paths.storage("validated", table), days)
    return pd.read_parquet(paths.storage("validated") / f"{table}.parquet")


def read_quarantine(paths: PipelinePaths, table: str, days: list[str] | None = None) -> pd.DataFrame:
    if table in DAY_COLUMN:
        return read_days(paths.storage("quarantine", table), days)
    return pd.read_parquet(paths.storage("quarantine") / f"{table}.parquet")


def _metadata(table: str, paths: PipelinePaths, valid: pd.DataFrame, quarantine: pd.DataFrame, n_in: int,
              rule_counts: dict) -> dict:
    metadata = {
        "rows_in": n_in,
        "rows_valid": len(valid),
        "rows_quarantined": len(quarantine),
        "quarantine_by_rule": dg.MetadataValue.json(rule_counts),
        "preview": preview_table(valid.drop(columns=["row_index"], errors="ignore")),
        "dagster/row_count": len(valid),
    }
    if n_in == 0:
        metadata["note"] = f"no {table} rows delivered: nothing to validate"
    if len(quarantine):
        metadata["quarantine_preview"] = preview_table(quarantine)
    if table == "pins" and len(valid):
        sample = valid.head(32)["image_path"]
        grid = image_files_grid_png([resolve_inside(paths.raw_root, p) for p in sample])
        metadata["sample_images"] = png_metadata(grid, "sample of validated pin images")
    return metadata


def _validate_whole_table(table: str, paths: PipelinePaths, parents: tuple[str, ...]) -> dict:
    result = validate_table(
        table, paths.raw_root, {parent: read_validated(paths, parent) for parent in parents}
    )
    result.check_invariant()
    write_result(result, paths.storage())
    return _metadata(table, paths, result.valid, result.quarantine, result.n_in, result.rule_counts())


def _validate_days(table: str, paths: PipelinePaths, parents: tuple[str, ...], days_to_run: list[str]) -> dict:
    raw, days = raw_rows_by_day(paths.raw_root, table)
    min_date, max_date = declared_date_window(paths.raw_root)
    users = read_validated(paths, "users") if "users" in parents else None
    valid_parts, quarantine_parts, rules, n_in = [], [], {}, 0
    for day in sorted(days_to_run):
        day_parents = {}
        if "pins" in parents:
            pins_dir = paths.storage("validated", "pins")
            day_parents["pins"] = read_days(pins_dir, days_up_to(stored_days(pins_dir), day))
        if users is not None:
            day_parents["users"] = users
        result = validate_day(table, raw, days, day, paths.raw_root, day_parents, min_date, max_date)
        write_parquet_atomic(result.valid, day_file(paths.storage("validated", table), day))
        write_parquet_atomic(result.quarantine, day_file(paths.storage("quarantine", table), day))
        valid_parts.append(result.valid)
        quarantine_parts.append(result.quarantine)
        n_in += result.n_in
        for rule, count in result.rule_counts().items():
            rules[rule] = rules.get(rule, 0) + count
    valid = pd.concat(valid_parts, ignore_index=True)
    quarantine = pd.concat(quarantine_parts, ignore_index=True)
    metadata = _metadata(table, paths, valid, quarantine, n_in, rules)
    metadata["days"] = ", ".join(sorted(days_to_run))
    return metadata


def _validated_asset(table: str) -> dg.AssetsDefinition:
    """validated_<table>: one day partition per run key for the dated tables
    (``DAY_COLUMN``), the whole table for the dimension tables."""
    parents = VALIDATION_PARENTS[table]
    by_day = table in DAY_COLUMN
    scope = (f"One day of `{table}` (by `{DAY_COLUMN[table]}`; rows with an unusable date under the day "
             "they were delivered): rows" if by_day else f"`{table}` rows")

    @dg.asset(
        name=names.validated(table),
        group_name="validation",
        kinds={"pandera", "great_expectations", "parquet"},
        deps=[names.raw(table), *map(names.validated, parents)],
        description=(
            f"{scope} that pass the pandera schema, media and referential checks; "
            "the rest go to `storage/quarantine` with row index, rule and message."
        ),
        code_version="2",
        partitions_def=DAY if by_day else None,
        automation_condition=EAGER,
        backfill_policy=SINGLE_RUN,
    )
    def validated_table(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        if by_day:
            return dg.MaterializeResult(metadata=_validate_days(table, paths, parents, context.partition_keys))
        return dg.MaterializeResult(metadata=_validate_whole_table(table, paths, parents))

    return validated_table


validated_assets = [_validated_asset(table)
                    for table in RAW_TABLES]
