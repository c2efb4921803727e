"""Whole-file problems of a user's landing zone: an unreadable Parquet file, a missing or
renamed column. They stop the table with an error naming the table, the file and the column,
before partitioning or validation reach for the column."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mmpipe.partitions import raw_rows_by_day, row_days
from mmpipe.schemas.raw_tables import RawTableError, read_raw_table
from mmpipe.schemas.validate import validate_pins, validate_table
from tests.conftest import VIDEO_TABLES, pins_only_landing_zone

MANIFEST = {"start_date": "2026-01-01", "end_date": "2026-01-10"}


@pytest.fixture
def landing(tiny_world, tmp_path) -> Path:
    """A copy of the tiny world's tables and manifest (no media: these tests read tables)."""
    root = tmp_path / "raw"
    root.mkdir()
    for path in tiny_world.glob("*.parquet"):
        shutil.copy(path, root / path.name)
    shutil.copy(tiny_world / "manifest.json", root / "manifest.json")
    return root


def _corrupt_pages(path: Path) -> None:
    """Flip bytes inside the column data, as a bad disk or an interrupted copy would, keeping
    the footer (so the file still opens as Parquet and fails while decompressing)."""
    data = bytearray(path.read_bytes())
    for position in range(64, min(len(data) // 2, 4096)):
        data[position] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_corrupt_parquet_file_is_named_with_its_table(landing):
    _corrupt_pages(landing / "interactions.parquet")
    with pytest.raises(OSError, match="Corrupt"):  # what pandas alone says: no table, no file
        pd.read_parquet(landing / "interactions.parquet")
    expected = rf"interactions: cannot read {landing / 'interactions.parquet'}, it is not a readable Parquet file"
    with pytest.raises(RawTableError, match=expected):
        raw_rows_by_day(landing, "interactions")
    with pytest.raises(RawTableError, match=expected):
        validate_table("interactions", landing, {"users": pd.DataFrame({"user_id": []}),
                                                 "pins": pd.DataFrame({"pin_id": []})})


def test_a_file_that_is_not_parquet_at_all_is_named(landing):
    (landing / "boards.parquet").write_text("board_id,name\nb1,blue things\n")  # a CSV under the name
    with pytest.raises(RawTableError, match=r"^boards: cannot read .*boards\.parquet, it is not a readable Parquet"):
        read_raw_table(landing, "boards")


@pytest.mark.parametrize("table, renamed, message", [
    ("interactions", {"date": "day"}, "interactions lacks the column 'date' (renamed to 'day'?)"),
    ("pins", {"created_at": "created"}, "pins lacks the column 'created_at' (renamed to 'created'?)"),
    ("videos", {"created_at": "upload_date", "fps": "frame_rate"}, "videos lacks the columns 'fps', 'created_at'"),
])
def test_a_renamed_date_column_is_named_before_partitioning(landing, table, renamed, message):
    path = landing / f"{table}.parquet"
    pd.read_parquet(path).rename(columns=renamed).to_parquet(path)
    with pytest.raises(RawTableError) as raised:
        raw_rows_by_day(landing, table)
    assert message in str(raised.value) and str(path) in str(raised.value)
    with pytest.raises(RawTableError, match="lacks the column"):
        row_days(table, pd.read_parquet(path), MANIFEST)  # a frame handed over directly: same words


def test_a_dropped_column_is_named_by_validation(landing):
    path = landing / "users.parquet"
    pd.read_parquet(path).drop(columns=["country"]).to_parquet(path)
    with pytest.raises(RawTableError, match=r"users lacks the column 'country'; expected user_id, country, "
                                            r"signup_date; found user_id, signup_date"):
        validate_table("users", landing, {})


def test_a_frame_without_its_columns_is_refused_by_name(tmp_path):
    with pytest.raises(RawTableError, match="pins lacks the column 'created_at'; expected"):
        validate_pins(pd.DataFrame({"pin_id": ["p0"], "image_path": ["x.jpg"], "title": ["t"],
                                    "description": ["d"]}), tmp_path)


def test_row_count_comes_from_the_footer_whatever_the_index(tmp_path):
    """The rows_conserved check counts raw rows; pandas reading no column of a file written
    without its index says 0 rows, and the check then failed on a table of one null row."""
    from mmpipe.schemas.raw_tables import raw_row_count

    frame = pd.DataFrame({"user_id": pd.Series([None], dtype="string"), "country": pd.Series([None], dtype="string"),
                          "signup_date": pd.Series([None], dtype="string")})
    frame.to_parquet(tmp_path / "users.parquet", index=False)
    assert len(pd.read_parquet(tmp_path / "users.parquet", columns=[])) == 0  # the trap
    assert raw_row_count(tmp_path, "users") == 1
    (tmp_path / "boards.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RawTableError, match="boards: cannot read"):
        raw_row_count(tmp_path, "boards")


def test_a_landing_zone_without_videos_validates_to_empty_tables_and_decodes_nothing(tiny_world, tmp_path):
    """Pins only, no video at all (empty video tables, as a user without videos delivers):
    validation writes empty validated tables, its checks pass, and the frames say there is
    nothing to decode."""
    import dagster as dg

    from mmpipe.partitions import manifest_days, read_days
    from orchestration import definitions
    from orchestration.ingest import register_days
    from orchestration.resources import PipelinePaths, ValidationPolicy

    root = pins_only_landing_zone(tiny_world, tmp_path / "raw")
    storage = tmp_path / "storage"

    instance = dg.DagsterInstance.ephemeral()
    days = manifest_days(root)
    register_days(instance, days)
    video_assets = [dg.AssetKey(f"validated_{table}") for table in VIDEO_TABLES]
    selection = (dg.AssetSelection.assets(*video_assets, dg.AssetKey("validated_frames"))
                 | dg.AssetSelection.assets(*[dg.AssetKey(f"raw_{table}") for table in VIDEO_TABLES]))
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks], selection=selection,
        resources={"paths": PipelinePaths(raw_dir=str(root), storage_dir=str(storage)), "policy": ValidationPolicy()},
        instance=instance,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    assert result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(checks) == 3 * len(VIDEO_TABLES) and all(e.passed for e in checks.values())
    assert checks[("validated_videos", "expectations")].metadata["note"].value == \
        "the raw videos table is empty: nothing to check"
    assert read_days(storage / "validated" / "videos").empty
    for table in VIDEO_TABLES[1:]:
        assert pd.read_parquet(storage / "validated" / f"{table}.parquet").empty
    videos = instance.get_latest_materialization_event(dg.AssetKey("validated_videos")).asset_materialization
    assert videos.metadata["rows_in"].value == 0
    assert videos.metadata["note"].value == "no videos rows delivered: nothing to validate"
    frames = instance.get_latest_materialization_event(dg.AssetKey("validated_frames")).asset_materialization
    assert frames.metadata["videos"].value == 0
    assert frames.metadata["note"].value == "no valid video on these days: nothing to decode"


def test_a_renamed_column_fails_the_raw_asset_by_name(landing, tmp_path):
    """On the Dagster path the first asset to read the table stops, naming the column."""
    import dagster as dg

    from orchestration import definitions
    from orchestration.resources import PipelinePaths

    path = landing / "interactions.parquet"
    pd.read_parquet(path).rename(columns={"date": "event_time"}).to_parquet(path)
    result = dg.materialize(
        definitions.assets, selection=dg.AssetSelection.assets("raw_interactions"),
        resources={"paths": PipelinePaths(raw_dir=str(landing), storage_dir=str(tmp_path / "storage"))},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error
    causes = [error]
    while causes[-1].cause is not None:
        causes.append(causes[-1].cause)
    assert "raw_interactions" in error.message
    assert causes[-1].cls_name == "RawTableError"
    assert "interactions lacks the column 'date' (renamed to 'event_time'?)" in causes[-1].message
