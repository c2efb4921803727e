"""Property-based tests of validation: whatever rows and bytes a user brings, validation
does not crash, every row ends valid or quarantined (never both, never lost), every
quarantine record names its table, row, rule and reason, and the rows that are plainly bad
(no id, a path out of the data root, no date) are among the quarantined. The library path
(``mmpipe.schemas.validate``) and the Dagster path (the ``validated_*`` assets and their
``rows_conserved`` checks) alike."""

from __future__ import annotations

import io
import json
import math
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmpipe.layout import ID_COLUMN, QUARANTINE_COLUMNS, RAW_COLUMNS, RAW_TABLES, resolve_inside
from mmpipe.schemas import validate as v
from mmpipe.schemas.media_checks import check_images, check_videos
from mmpipe.schemas.quarantine import ValidationResult

MIN_DATE, MAX_DATE = "2026-01-01", "2026-01-10"
# Every example builds frames and runs pandera (and, on the Dagster path, a materialization):
# modest counts keep the file under a minute; no deadline, as 2 shared cores vary a lot.
LIBRARY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                   HealthCheck.function_scoped_fixture], database=None)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    """A raw root with one good image, one that starts like a JPEG and breaks, and a file
    outside the root reached through a link."""
    root = tmp_path_factory.mktemp("props") / "raw"
    (root / "images").mkdir(parents=True)
    (root / "images" / "p0.jpg").write_bytes(_jpeg())
    (root / "images" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 then nothing")
    (root.parent / "outside.jpg").write_bytes(_jpeg())
    (root / "images" / "out.jpg").symlink_to(root.parent / "outside.jpg")
    return root


# -----------------------------------------------------------------------------
# values: plausible ones of each column's kind, and anything at all

ANYTHING = st.one_of(
    st.none(), st.just(float("nan")), st.just(pd.NaT), st.just(pd.NA), st.booleans(), st.integers(),
    st.floats(), st.text(max_size=12), st.binary(max_size=6), st.lists(st.integers(), max_size=2),
    st.datetimes(), st.dates(),
)
PLAUSIBLE = {
    "id": st.sampled_from(["p0", "p1", "u0", "b0", "v0", "q0", "c0", "", " "]),
    "date": st.sampled_from(["2026-01-02", "2026-01-05", "2026-02-30", "2030-01-01", "soon",
                             "2026-01-03T10:00:00Z", "2026-01-03 23:30:00-05:00", "2025-12-31"]),
    "text": st.text(max_size=40),
    "number": st.one_of(st.floats(), st.integers(-3, 40)),
    "windows": st.lists(st.lists(st.one_of(st.floats(-1, 5), ANYTHING), max_size=3), max_size=3),
    "concepts": st.lists(st.one_of(st.sampled_from(["red", "star", ""]), ANYTHING), max_size=3),
    "shots": st.lists(st.one_of(st.integers(-1, 3), ANYTHING), max_size=3),
    "path": st.sampled_from(["images/p0.jpg", "images/bad.jpg", "images/out.jpg", "../x.jpg", "/etc/passwd",
                             "images/../images/p0.jpg", "images\\p0.jpg", "", "images/none.jpg"]),
}
DATE_COLUMNS = {"created_at", "date", "signup_date", "saved_at"}
NUMBER_COLUMNS = {"position", "clicked", "duration_s", "fps", "shot_index", "start_s", "end_s"}


def kind(column: str) -> str:
    if column in DATE_COLUMNS:
        return "date"
    if column in NUMBER_COLUMNS:
        return "number"
    if column.endswith("_path"):
        return "path"
    if column.endswith("_id"):
        return "id"
    return {"windows": "windows", "concepts": "concepts", "relevant_shots": "shots"}.get(column, "text")


def raw_rows(table: str, max_rows: int = 6):
    row = st.fixed_dictionaries({c: st.one_of(PLAUSIBLE[kind(c)], ANYTHING) for c in RAW_COLUMNS[table]})
    return st.lists(row, max_size=max_rows).map(lambda rows: pd.DataFrame(rows, columns=RAW_COLUMNS[table]))


VIDEOS = pd.DataFrame({"video_id": ["v0"], "duration_s": [2.0], "fps": [8.0]})
SHOTS = pd.DataFrame({"video_id": ["v0"], "shot_index": [0], "concepts": [["red"]]})


def validators(root: Path) -> dict:
    return {
        "pins": lambda raw: v.validate_pins(raw, root, MIN_DATE, MAX_DATE),
        "boards": lambda raw: v.validate_boards(raw, MAX_DATE),
        "board_pins": lambda raw: v.validate_board_pins(raw, {"p0"}, {"b0"}, MAX_DATE),
        "users": lambda raw: v.validate_users(raw, MAX_DATE),
        "interactions": lambda raw: v.validate_interactions(raw, {"u0"}, {"p0"}, MIN_DATE, MAX_DATE,
                                                            pin_created={"p0": "2026-01-03"}),
        "videos": lambda raw: v.validate_videos(raw, root, MIN_DATE, MAX_DATE),
        "moment_queries": lambda raw: v.validate_moment_queries(raw, VIDEOS),
        "video_captions": lambda raw: v.validate_video_captions(raw, {"v0"}),
        "video_shots": lambda raw: v.validate_video_shots(raw, VIDEOS),
        "summary_queries": lambda raw: v.validate_summary_queries(raw, {"v0"}, SHOTS),
    }


# -----------------------------------------------------------------------------
# what must hold of any result


def _missing(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _plainly_bad_reasons(table: str, row: dict) -> list[str]:
    """What certainly makes ``row`` invalid, judged without the validator: the words its
    quarantine message must hold."""
    reasons = []
    id_column = ID_COLUMN[table]
    if id_column is not None:
        value = row[id_column]
        if _missing(value):
            reasons.append(f"{id_column} is missing")
        elif isinstance(value, str) and not value.strip():
            reasons.append(f"{id_column}={value!r} is empty")
    for column in RAW_COLUMNS[table]:
        value = row[column]
        if column.endswith("_path") and isinstance(value, str) and (value.startswith("/") or ".." in value.split("/")):
            reasons.append(f"{column}: path {value!r}")
        if column in DATE_COLUMNS and isinstance(value, str) and value in ("soon", "2026-02-30"):
            reasons.append(f"{column}={value!r} is not a valid YYYY-MM-DD date")
    return reasons


def assert_sound(table: str, raw: pd.DataFrame, result: ValidationResult) -> None:
    result.check_invariant()  # every row in exactly one of valid and quarantine
    assert len(result.valid) + len(result.quarantine) == len(raw)
    quarantine = result.quarantine
    assert list(quarantine.columns) == QUARANTINE_COLUMNS
    assert (quarantine["table"] == table).all() and (quarantine["source_file"] == f"{table}.parquet").all()
    columns = set(RAW_COLUMNS[table])
    for record in quarantine.to_dict("records"):
        assert 0 <= record["row_index"] < len(raw)
        rule, message = record["rule"], record["message"]
        # a rule is "<column>.<check>", or a check across columns named by itself
        assert rule and (rule.split(".")[0] in columns or "." not in rule), rule
        assert isinstance(message, str) and message.strip(), record
    messages = dict(zip(quarantine["row_index"], quarantine["message"]))
    for position, row in enumerate(raw.to_dict("records")):
        for reason in _plainly_bad_reasons(table, row):
            assert position in messages, (table, row, reason)
            assert reason in messages[position], (reason, messages[position])


@pytest.mark.parametrize("table", RAW_TABLES)
def test_arbitrary_rows_never_crash_validation_and_every_row_is_accounted_for(table, media_root):
    validate = validators(media_root)[table]

    @LIBRARY
    @given(raw=raw_rows(table))
    def check(raw):
        assert_sound(table, raw, validate(raw))

    check()


@LIBRARY
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
                                                               b"\x00\x00\x00\x18ftypmp42"]))
def test_arbitrary_bytes_as_media_are_a_problem_never_a_crash(media_root, data, prefix):
    for name in ("fuzz.jpg", "fuzz.mp4"):
        (media_root / name).write_bytes(prefix + data)
    [image] = check_images(media_root, ["fuzz.jpg"])
    [video] = check_videos(media_root, ["fuzz.mp4"], [1.0], [8.0])
    # no random bytes make a whole, decodable JPEG or a one-second MP4
    assert image is not None and image.rule in ("image_path.decodes", "image_path.format", "image_path.size")
    assert video is not None and video.rule == "video_path.decodes"
    assert "'fuzz.jpg'" in image.message and "'fuzz.mp4'" in video.message


@LIBRARY
@given(path=st.text(alphabet=string.ascii_letters + "./\\~ \x00", max_size=16))
def test_an_accepted_path_is_inside_the_root_and_free_of_dot_dot(media_root, path):
    try:
        resolved = resolve_inside(media_root, path)
    except ValueError as error:
        assert repr(path) in str(error)
        return
    assert resolved.is_relative_to(media_root.resolve())
    assert ".." not in path.split("/") and "\\" not in path and not path.startswith("/")


# -----------------------------------------------------------------------------
# the Dagster path: a landing zone of arbitrary tables through the validated_* assets

# Values of one Parquet type per column (a file cannot mix them), often wrong.
FILE_VALUES = {
    "id": st.one_of(st.none(), st.sampled_from(["p0", "p1", "u0", "b0", "v0", "q0", "", "p0 "])),
    "date": st.one_of(st.none(), PLAUSIBLE["date"]),
    "text": st.one_of(st.none(), st.text(max_size=20)),
    "number": st.one_of(st.none(), st.floats(-2, 40)),
    "windows": st.one_of(st.none(), st.lists(st.lists(st.floats(-1, 5), max_size=3), max_size=2)),
    "concepts": st.one_of(st.none(), st.lists(st.sampled_from(["red", "star", ""]), max_size=3)),
    "shots": st.one_of(st.none(), st.lists(st.integers(-1, 3), max_size=3)),
    "path": st.one_of(st.none(), PLAUSIBLE["path"]),
}


def landing_zone():
    def table(name):
        row = st.fixed_dictionaries({c: FILE_VALUES[kind(c)] for c in RAW_COLUMNS[name]})
        return st.lists(row, max_size=5).map(lambda rows: pd.DataFrame(rows, columns=RAW_COLUMNS[name]))
    return st.fixed_dictionaries({name: table(name) for name in RAW_TABLES})


def _write_landing_zone(root: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        # an all-missing column has no type to infer: store it as text, as a writer would
        frame = frame.astype({c: "string" for c in frame.columns if frame[c].isna().all()})
        frame.to_parquet(root / f"{name}.parquet")
    (root / "manifest.json").write_text(json.dumps({"start_date": MIN_DATE, "end_date": MAX_DATE}))


@settings(max_examples=4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(tables=landing_zone())
def test_arbitrary_landing_zones_through_the_dagster_assets(media_root, tmp_path_factory, tables):
    import dagster as dg

    from orchestration import definitions
    from orchestration.ingest import register_days
    from orchestration.resources import PipelinePaths, ValidationPolicy

    from mmpipe.partitions import manifest_days, read_days, DAY_COLUMN

    base = tmp_path_factory.mktemp("zone")
    root, storage = base / "raw", base / "storage"
    root.mkdir()
    (root / "images").symlink_to(media_root / "images", target_is_directory=True)  # a link out: refused
    (root / "local").mkdir()
    (root / "local" / "p0.jpg").write_bytes(_jpeg())
    _write_landing_zone(root, tables)

    instance = dg.DagsterInstance.ephemeral()
    days = manifest_days(root)
    register_days(instance, days)
    conserved = [check for check in definitions.asset_checks
                 if {key.name for key in check.check_keys} == {"rows_conserved"}]
    selection = dg.AssetSelection.groups("raw", "validation")
    result = dg.materialize(
        [*definitions.assets, *conserved], selection=selection | dg.AssetSelection.checks(*conserved),
        resources={"paths": PipelinePaths(raw_dir=str(root), storage_dir=str(storage)),
                   "policy": ValidationPolicy()},
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )
    failures = [event.step_key for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert result.success, failures
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(RAW_TABLES) and all(e.passed for e in evaluations)
    for name in RAW_TABLES:
        read = (lambda kind: read_days(storage / kind / name)) if name in DAY_COLUMN else (
            lambda kind: pd.read_parquet(storage / kind / f"{name}.parquet"))
        valid, quarantine = read("validated"), read("quarantine")
        assert len(valid) + len(quarantine) == len(tables[name]), name
        assert (quarantine["table"] == name).all() and quarantine["rule"].str.len().gt(0).all()
        assert quarantine["message"].str.len().gt(0).all()
