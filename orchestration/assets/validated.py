"""Validated tables: every raw row ends in `storage/validated` or `storage/quarantine`."""


import dagster as dg
import pandas as pd

from mmpipe.layout import RAW_TABLES, resolve_inside
from mmpipe.media.preview import image_files_grid_png
from mmpipe.schemas.validate import VALIDATION_PARENTS, validate_table, write_result
from orchestration.metadata import png_metadata, preview_table
from orchestration.resources import PipelinePaths


def read_validated(paths: PipelinePaths, table: str) -> pd.DataFrame:
    return pd.read_parquet(paths.storage("validated") / f"{table}.parquet")


def _validated_asset(table: str) -> dg.AssetsDefinition:
    parents = VALIDATION_PARENTS[table]

    @dg.asset(
        name=f"validated_{table}",
        group_name="validation",
        kinds={"pandera", "great_expectations", "parquet"},
        deps=[f"raw_{table}", *(f"validated_{parent}" for parent in parents)],
        description=(
            f"`{table}` rows that pass the pandera schema, media and referential checks; "
            "the rest go to `storage/quarantine` with row index, rule and message."
        ),
        code_version="1",
    )
    def validated_table(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        result = validate_table(
            table, paths.raw_root, {parent: read_validated(paths, parent) for parent in parents}
        )
        result.check_invariant()
        write_result(result, paths.storage())
        metadata = {
            "rows_in": result.n_in,
            "rows_valid": len(result.valid),
            "rows_quarantined": len(result.quarantine),
            "quarantine_by_rule": dg.MetadataValue.json(result.rule_counts()),
            "preview": preview_table(result.valid.drop(columns=["row_index"], errors="ignore")),
            "dagster/row_count": len(result.valid),
        }
        if len(result.quarantine):
            metadata["quarantine_preview"] = preview_table(result.quarantine)
        if table == "pins" and len(result.valid):
            sample = result.valid.head(32)["image_path"]
            grid = image_files_grid_png([resolve_inside(paths.raw_root, p) for p in sample])
            metadata["sample_images"] = png_metadata(grid, "sample of validated pin images")
        return dg.MaterializeResult(metadata=metadata)

    return validated_table


validated_assets = [_validated_asset(table) for table in RAW_TABLES]
