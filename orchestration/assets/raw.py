"""Raw landing-zone tables. Their data version is the content hash of the table and its media.

Reading the landing zone is I/O that can fail for a moment (a network filesystem, an object
store): the assets retry (``IO_RETRY``); a table that is absent or breaks its contract fails at
once, since reading it again gives the same answer."""


import dagster as dg

from mmpipe.layout import RAW_TABLES, raw_table_path
from mmpipe.schemas.raw_tables import RawTableError, read_raw_table
from mmpipe.versioning import dvc_tracked_hash, raw_table_version
from orchestration.metadata import preview_table
from orchestration.partitions import SINGLE_RUN
from orchestration.policies import IO_RETRY
from orchestration import names
from orchestration.resources import PipelinePaths


def _raw_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=names.raw(table),
        group_name="raw",
        kinds={"parquet", "dvc"},
        description=f"The `{table}` table of the raw landing zone (data/raw, versioned by DVC): observed "
                    "with the content hash of the table and its media as its data version.",
        code_version="1",
        backfill_policy=SINGLE_RUN,
        retry_policy=IO_RETRY,
    )
    def raw_table(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        path = raw_table_path(paths.raw_root, table)
        # an unreadable file or a missing column stops the table here, named, before any
        # partitioning or validation reaches for the column
        try:
            frame = read_raw_table(paths.raw_root, table)
        except (FileNotFoundError, RawTableError) as error:
            raise dg.Failure(description=f"{context.asset_key.to_user_string()}: {error}",
                             allow_retries=False) from error
        version = raw_table_version(paths.raw_root, table)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "rows": len(frame),
                "columns": ", ".join(frame.columns),
                "content_hash": version,
                "dvc_data_md5": dvc_tracked_hash(paths.dvc_path) or "untracked",
                "preview": preview_table(frame),
            },
        )

    return raw_table


raw_assets = [_raw_asset(table) for table in RAW_TABLES]
