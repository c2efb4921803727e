"""Validate the raw tables: every row ends up valid, or quarantined with every reason.

A table is checked by its pandera model (``tables``), plus the checks that need the
validated parent tables or the accepted date window, plus its media files
(``media_checks``). Children are checked against *validated* parents, so a save of a
quarantined pin is itself quarantined: nothing downstream can reach a bad record.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mmpipe.layout import ID_COLUMN, RAW_COLUMNS, RAW_TABLES, declared_date_window
from mmpipe.schemas.media_checks import check_images, check_videos
from mmpipe.schemas.quarantine import (
    ROW_INDEX,
    Issue,
    ValidationResult,
    quarantine_records,
    write_result,
)
from mmpipe.schemas.raw_tables import RawTableError, missing_columns_problem, read_raw_table
from mmpipe.schemas.tables import (
    DETAIL,
    MAX_FPS,
    BoardPinsModel,
    BoardsModel,
    InteractionsModel,
    MomentQueriesModel,
    PinsModel,
    SummaryQueriesModel,
    UsersModel,
    VideoCaptionsModel,
    VideoShotsModel,
    VideosModel,
    concept_vocabulary,
    date_window,
    explain,
    iso_date_strings,
    known_concepts,
    known_ids,
    known_shots,
    not_in_future,
    parse_iso_dates,
    pin_existed,
    real_numbers,
    shot_end,
    shown,
    window_ends,
    with_runtime_checks,
    within_video,
)
from mmpipe.schemas.text_checks import garbled_reason

__all__ = [
    "VALIDATION_PARENTS", "ValidationResult", "validate_board_pins", "validate_boards",
    "validate_interactions", "validate_moment_queries", "validate_pins", "validate_summary_queries",
    "validate_table", "validate_users", "validate_video_captions", "validate_video_shots",
    "validate_videos", "validate_world", "write_result", "validate_day",
]

# The validated tables each table's references are checked against (dependency order).
VALIDATION_PARENTS: dict[str, tuple[str, ...]] = {
    "pins": (),
    "boards": (),
    "board_pins": ("pins", "boards"),
    "users": (),
    "interactions": ("users", "pins"),
    "videos": (),
    "moment_queries": ("videos",),
    "video_captions": ("videos",),
    "video_shots": ("videos",),
    "summary_queries": ("videos", "video_shots"),
}

_SHOWN_CHARS = 60


# -----------------------------------------------------------------------------
# pandera failure cases -> issues


def _missing(value) -> bool:
    """None, NA, NaN, and NaT (what an empty cell of a timestamp column reads back as)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _row_message(column: str, check_name: str, explanation: str, value, detail: str | None = None) -> str:
    """``column=value explanation``, short enough for a log line; ``: detail`` when the check
    names the element of the value that failed."""
    if isinstance(value, np.generic):
        value = value.item()
    if detail is not None:
        return f"{column}={shown(value)} {explanation}: {detail}"
    if check_name == "not_garbled":
        # the text itself would garble the log too: show its start escaped
        return f"{column} (starting {ascii(str(value)[:20])}) {explanation}: {garbled_reason(str(value))}"
    if _missing(value):
        return f"{column} {explanation}"
    if not isinstance(value, str) and pd.api.types.is_list_like(value):
        return f"{column}={shown(value)} {explanation}"
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{column} ({len(value)} chars, starting {value[:30]!r}) {explanation}"
    return f"{column}={value!r} {explanation}"


def _checks_by_identifier(schema: pa.DataFrameSchema) -> dict[tuple[str | None, str], pa.Check]:
    """pandera names a failed check by its ``error`` (or its name): map that back to the check."""
    found = {}
    for column_name, column in schema.columns.items():
        for check in column.checks:
            found[(column_name, check.error or check.name)] = check
    for check in schema.checks:
        found[(None, check.error or check.name)] = check
    return found


def _detail(statistics: dict, frame: pd.DataFrame, row: int, column: str | None) -> str | None:
    """What the check's detail function says about the failing value (or row), if it has one."""
    detail = statistics.get(DETAIL)
    if detail is None:
        return None
    return detail(frame.loc[row].to_dict() if column is None else frame.at[row, column])


def _failed_check(identifier: str, column: str | None, checks) -> tuple[str, dict]:
    """The check's name and the statistics its explanation needs."""
    if identifier.startswith(("coerce_dtype(", "dtype(")):
        return "dtype", {"dtype": identifier.split("'")[1] if "'" in identifier else identifier}
    check = checks.get((column, identifier))
    if check is None:  # pandera's own checks (not_nullable, ...) are not Check objects
        return identifier, {}
    return check.name, check.statistics


def schema_issues(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> list[Issue]:
    """Every failure of ``schema`` on ``frame``, one issue per (row, check).

    Failures without a row (``index`` None) concern a whole column; a column whose type
    coercion failed row by row also reports itself as a whole, which the row-level failures
    already explain. Any other whole-column failure is charged to every row.
    """
    try:
        schema.validate(frame, lazy=True)
        return []
    except pa.errors.SchemaErrors as errors:
        failures = errors.failure_cases
    checks = _checks_by_identifier(schema)
    columns_failing_per_row = set(failures.loc[failures["index"].notna(), "column"])
    issues = []
    for failure in failures.itertuples(index=False):
        spans_columns = failure.schema_context == "DataFrameSchema"
        column = None if spans_columns else failure.column
        check_name, statistics = _failed_check(str(failure.check), column, checks)
        rule = check_name if spans_columns else f"{column}.{check_name}"
        explanation = explain(check_name, statistics)

        if failure.index is None or pd.isna(failure.index):
            if check_name == "dtype" and failure.column in columns_failing_per_row:
                continue
            message = f"the whole column {failure.column!r} fails: {explanation} ({failure.failure_case})"
            issues += [Issue(int(row), column, rule, message) for row in frame[ROW_INDEX]]
            continue

        row = int(failure.index)
        if spans_columns:
            detail = _detail(statistics, frame, row, None)
            issues.append(Issue(row, None, rule, explanation if detail is None else f"{explanation}: {detail}"))
            continue
        value = frame.at[row, column]
        if check_name == "not_nullable" and not _missing(value):
            # the parser emptied a value that is not a number: a type problem, not a gap
            check_name, rule = "dtype", f"{column}.dtype"
            explanation = explain("dtype", {"dtype": str(schema.columns[column].dtype)})
        elif check_name == "dtype" and _missing(value):
            continue  # reported as missing
        detail = _detail(statistics, frame, row, column)
        issues.append(Issue(row, column, rule, _row_message(column, check_name, explanation, value, detail)))
    return issues


# -----------------------------------------------------------------------------
# media files -> issues


def _image_issues(frame: pd.DataFrame, raw_root: Path) -> list[Issue]:
    rows = frame[frame["image_path"].notna()]
    problems = check_images(raw_root, rows["image_path"].astype(str))
    return [Issue(row, "image_path", p.rule, p.message) for row, p in zip(rows[ROW_INDEX], problems) if p]


def _video_issues(frame: pd.DataFrame, raw_root: Path) -> list[Issue]:
    rows = frame[frame["video_path"].notna()]
    durations = [None if pd.isna(d) else float(d) for d in real_numbers(rows["duration_s"])]
    # an fps the schema rejects (0, negative, absurd) is reported there, not compared to the stream
    fps_values = [float(f) if 0 < f <= MAX_FPS else None for f in real_numbers(rows["fps"]).fillna(0)]
    problems = check_videos(raw_root, rows["video_path"].astype(str), durations, fps_values)
    return [Issue(row, "video_path", p.rule, p.message) for row, p in zip(rows[ROW_INDEX], problems) if p]


# -----------------------------------------------------------------------------
# one table


def _numbered(table: str, raw: pd.DataFrame, positions: Sequence[int] | None = None) -> pd.DataFrame:
    """The raw rows with their position in the raw file as ``row_index`` (and as the index):
    ``positions`` when the rows are a part (one day) of the file, else 0, 1, 2, ..."""
    problem = missing_columns_problem(table, raw.columns)
    if problem is not None:
        raise RawTableError(problem)
    frame = raw.reset_index(drop=True)
    if positions is None:
        frame[ROW_INDEX] = pd.RangeIndex(len(frame), dtype="int64")
    else:
        frame[ROW_INDEX] = np.asarray(positions, dtype=np.int64)
        frame.index = pd.Index(frame[ROW_INDEX].to_numpy())
    return frame


def _text_from_bytes(table: str, frame: pd.DataFrame) -> list[Issue]:
    """Decode bytes values in place, returning an issue for each that is not UTF-8.

    Some Parquet writers store text as plain byte arrays (no UTF-8 annotation), which read
    back as ``bytes``: as text they are what the writer meant. Bytes that are not UTF-8 are
    kept, escaped (``\\x80``), for the message and quarantined; left as bytes, they would
    crash the string coercion of the whole table.
    """
    issues = []
    for column in RAW_COLUMNS[table]:
        values = frame[column]
        if values.dtype != object:
            continue
        is_bytes = values.map(lambda value: isinstance(value, (bytes, bytearray, memoryview)))
        if not is_bytes.any():
            continue
        decoded = {}
        for row, value in values[is_bytes].items():
            data = bytes(value)
            try:
                decoded[row] = data.decode("utf-8")
            except UnicodeDecodeError as error:
                decoded[row] = data.decode("utf-8", errors="backslashreplace")
                issues.append(Issue(int(frame.at[row, ROW_INDEX]), column, f"{column}.utf8",
                                    f"{column} holds bytes that are not UTF-8 text "
                                    f"({error.reason} at byte {error.start}: {decoded[row][:30]!r})"))
        frame[column] = values.where(~is_bytes, pd.Series(decoded, dtype=object))
    return issues


def _validate(
    table: str,
    raw: pd.DataFrame,
    schema: pa.DataFrameSchema,
    media_issues: Callable[[pd.DataFrame], list[Issue]] | None = None,
    positions: Sequence[int] | None = None,
    extra_issues: Callable[[pd.DataFrame], list[Issue]] | None = None,
) -> ValidationResult:
    frame = _numbered(table, raw, positions)
    issues = _text_from_bytes(table, frame)
    issues += schema_issues(schema, frame)
    if media_issues is not None:
        issues += media_issues(frame)
    if extra_issues is not None:
        issues += extra_issues(frame)
    quarantine = quarantine_records(table, frame, issues, RAW_COLUMNS[table])
    kept = frame[~frame[ROW_INDEX].isin(quarantine[ROW_INDEX])]
    try:
        # Validating the kept rows again gives them their types, and proves the split right.
        valid = schema.validate(kept, lazy=True).reset_index(drop=True)
    except pa.errors.SchemaErrors as errors:
        raise RuntimeError(f"{table}: rows judged valid fail the schema:\n{errors.failure_cases}") from errors
    result = ValidationResult(table=table, valid=valid, quarantine=quarantine, n_in=len(frame),
                              row_indices=None if positions is None else frame[ROW_INDEX].tolist())
    result.check_invariant()
    return result


def _latest_date(max_date: str | None) -> str:
    """Dates after ``max_date`` are rejected; by default, dates in the future (UTC)."""
    return max_date or dt.datetime.now(dt.timezone.utc).date().isoformat()


def validate_pins(
    raw: pd.DataFrame, raw_root: Path, min_date: str | None = None, max_date: str | None = None
) -> ValidationResult:
    schema = with_runtime_checks(PinsModel, {"created_at": [date_window(min_date, _latest_date(max_date))]})
    return _validate("pins", raw, schema, lambda frame: _image_issues(frame, Path(raw_root)))


def validate_boards(raw: pd.DataFrame, max_date: str | None = None) -> ValidationResult:
    schema = with_runtime_checks(BoardsModel, {"created_at": [not_in_future(_latest_date(max_date))]})
    return _validate("boards", raw, schema)


def validate_board_pins(
    raw: pd.DataFrame, valid_pin_ids: Iterable[str], valid_board_ids: Iterable[str], max_date: str | None = None
) -> ValidationResult:
    schema = with_runtime_checks(BoardPinsModel, {
        "board_id": [known_ids(valid_board_ids, "boards")],
        "pin_id": [known_ids(valid_pin_ids, "pins")],
        "saved_at": [not_in_future(_latest_date(max_date))],
    })
    return _validate("board_pins", raw, schema)


def validate_users(raw: pd.DataFrame, max_date: str | None = None) -> ValidationResult:
    """Sign-ups may predate any delivery (no lower bound), but not follow the latest one."""
    schema = with_runtime_checks(UsersModel, {"signup_date": [not_in_future(_latest_date(max_date))]})
    return _validate("users", raw, schema)


def _interactions_schema(
    user_ids: Iterable[str],
    pin_ids: Iterable[str],
    min_date: str | None,
    max_date: str | None,
    pin_created: Mapping[str, str] | None,
) -> pa.DataFrameSchema:
    return with_runtime_checks(
        InteractionsModel,
        {
            "user_id": [known_ids(user_ids, "users")],
            "pin_id": [known_ids(pin_ids, "pins")],
            "date": [date_window(min_date, _latest_date(max_date))],
        },
        [] if pin_created is None else [pin_existed(pin_created)],
    )


def validate_interactions(
    raw: pd.DataFrame,
    valid_user_ids: Iterable[str],
    valid_pin_ids: Iterable[str],
    min_date: str | None = None,
    max_date: str | None = None,
    pin_created: Mapping[str, str] | None = None,
) -> ValidationResult:
    """``pin_created``: the creation date of pins (by id); an impression dated before its
    pin's is quarantined as ``pin_existed``."""
    schema = _interactions_schema(valid_user_ids, valid_pin_ids, min_date, max_date, pin_created)
    return _validate("interactions", raw, schema)


def _creation_dates(pins: pd.DataFrame) -> dict[str, str]:
    return dict(zip(pins["pin_id"], pins["created_at"]))


def _videos_schema(min_date: str | None, max_date: str | None) -> pa.DataFrameSchema:
    return with_runtime_checks(VideosModel, {"created_at": [date_window(min_date, _latest_date(max_date))]})


def validate_videos(
    raw: pd.DataFrame, raw_root: Path, min_date: str | None = None, max_date: str | None = None
) -> ValidationResult:
    """Decodes every frame of every video: cheap at the sizes this pipeline handles. Dates
    as for pins: a video is partitioned by its created_at as a pin is."""
    return _validate("videos", raw, _videos_schema(min_date, max_date), lambda frame: _video_issues(frame, Path(raw_root)))


def validate_moment_queries(raw: pd.DataFrame, valid_videos: pd.DataFrame) -> ValidationResult:
    """``valid_videos``: the validated videos (ids, and duration_s and fps for ``within_video``)."""
    schema = with_runtime_checks(
        MomentQueriesModel,
        {"video_id": [known_ids(valid_videos["video_id"], "videos")]},
        [within_video(valid_videos, window_ends)],
    )
    return _validate("moment_queries", raw, schema)


def validate_video_captions(raw: pd.DataFrame, valid_video_ids: Iterable[str]) -> ValidationResult:
    schema = with_runtime_checks(VideoCaptionsModel, {"video_id": [known_ids(valid_video_ids, "videos")]})
    return _validate("video_captions", raw, schema)


def validate_video_shots(raw: pd.DataFrame, valid_videos: pd.DataFrame) -> ValidationResult:
    """``valid_videos``: the validated videos (ids, and duration_s and fps for ``within_video``)."""
    schema = with_runtime_checks(
        VideoShotsModel,
        {"video_id": [known_ids(valid_videos["video_id"], "videos")]},
        [within_video(valid_videos, shot_end)],
    )
    return _validate("video_shots", raw, schema)


def validate_summary_queries(
    raw: pd.DataFrame, valid_video_ids: Iterable[str], valid_shots: pd.DataFrame
) -> ValidationResult:
    """Concepts must be words some validated shot shows, relevant shots validated shots of the
    query's video: a query can only be judged on shots that reach the summarizer."""
    valid_video_ids = set(valid_video_ids)
    schema = with_runtime_checks(
        SummaryQueriesModel,
        {
            "video_id": [known_ids(valid_video_ids, "videos")],
            "concepts": [known_concepts(concept_vocabulary(valid_shots))],
        },
        [known_shots(valid_shots, valid_video_ids)],
    )
    return _validate("summary_queries", raw, schema)


# -----------------------------------------------------------------------------
# the whole raw landing zone


def validate_table(
    table: str,
    raw_root: Path,
    parents: dict[str, pd.DataFrame],
    min_date: str | None = None,
    max_date: str | None = None,
) -> ValidationResult:
    """Validate ``raw_root/<table>.parquet``; ``parents`` holds the validated tables named
    in ``VALIDATION_PARENTS[table]``. Dates of pins and interactions must lie within
    [min_date, max_date]; when neither is given, the window the delivery's manifest
    declares (without a manifest: any date not in the future)."""
    if min_date is None and max_date is None:
        min_date, max_date = declared_date_window(raw_root)
    absent = [parent for parent in VALIDATION_PARENTS[table] if parent not in parents]
    if absent:
        raise ValueError(f"validating {table} needs the validated {absent} tables")
    raw_root = Path(raw_root)
    raw = read_raw_table(raw_root, table)

    def ids(parent: str) -> set[str]:
        return set(parents[parent][ID_COLUMN[parent]])

    if table == "pins":
        return validate_pins(raw, raw_root, min_date, max_date)
    if table == "boards":
        return validate_boards(raw, max_date)
    if table == "board_pins":
        return validate_board_pins(raw, ids("pins"), ids("boards"), max_date)
    if table == "users":
        return validate_users(raw, max_date)
    if table == "interactions":
        return validate_interactions(raw, ids("users"), ids("pins"), min_date, max_date,
                                     _creation_dates(parents["pins"]))
    if table == "videos":
        return validate_videos(raw, raw_root, min_date, max_date)
    if table == "moment_queries":
        return validate_moment_queries(raw, parents["videos"])
    if table == "video_captions":
        return validate_video_captions(raw, ids("videos"))
    if table == "video_shots":
        return validate_video_shots(raw, parents["videos"])
    if table == "summary_queries":
        return validate_summary_queries(raw, ids("videos"), parents["video_shots"])
    raise KeyError(f"unknown table {table!r}; expected one of {RAW_TABLES}")


def validate_world(
    raw_root: Path, min_date: str | None = None, max_date: str | None = None
) -> dict[str, ValidationResult]:
    """Validate every raw table, parents before children."""
    results: dict[str, ValidationResult] = {}
    for table in RAW_TABLES:  # listed parents first
        parents = {parent: results[parent].valid for parent in VALIDATION_PARENTS[table]}
        results[table] = validate_table(table, raw_root, parents, min_date, max_date)
    return results


# -----------------------------------------------------------------------------
# one day of a partitioned table


def _earlier_duplicates(table: str, raw: pd.DataFrame) -> pd.Series:
    """Rows whose id an earlier row of the *whole* raw table already has (the first row keeps
    an id, whatever day either row is filed under), with that earlier row's position."""
    first_row: dict = {}
    duplicates: dict[int, int] = {}
    for position, value in enumerate(raw[ID_COLUMN[table]].tolist()):
        if _missing(value):
            continue
        if value in first_row:
            duplicates[position] = first_row[value]
        else:
            first_row[value] = position
    return pd.Series(duplicates, dtype=np.int64)


def validate_day(
    table: str,
    raw: pd.DataFrame,
    days: pd.Series,
    day: str,
    raw_root: Path,
    parents: dict[str, pd.DataFrame],
    min_date: str | None = None,
    max_date: str | None = None,
) -> ValidationResult:
    """Validate the rows of the partitioned raw ``table`` filed under ``day`` (``days``: the
    day of every row, see ``mmpipe.partitions.row_days``); ``row_index`` stays the row's
    position in the whole raw file. The same rules as ``validate_table``, plus: an id that an
    earlier row of the whole table holds is a duplicate, even when that row is another day's.
    ``parents`` holds the validated parents as of this day (pins of this and earlier days)."""
    raw = raw.reset_index(drop=True)
    positions = np.flatnonzero((days == day).to_numpy())
    part = raw.iloc[positions]
    duplicates = _earlier_duplicates(table, raw)
    id_column = ID_COLUMN[table]

    def global_duplicates(frame: pd.DataFrame) -> list[Issue]:
        local = frame[id_column].duplicated(keep="first") & frame[id_column].notna()
        return [Issue(int(row), id_column, f"{id_column}.unique_id",
                      f"{id_column}={frame.at[row, id_column]!r} was already delivered in row {duplicates[row]}")
                for row in frame.index if row in duplicates.index and not local[row]]

    raw_root = Path(raw_root)
    if table == "pins":
        schema = with_runtime_checks(PinsModel, {"created_at": [date_window(min_date, _latest_date(max_date))]})
        media = lambda frame: _image_issues(frame, raw_root)  # noqa: E731
    elif table == "interactions":
        # An impression may name a pin that a later day creates: not an unknown pin but one
        # that did not exist yet. The raw pins table says which pins those are (whatever has
        # been validated so far), so the verdict does not depend on which days ran first.
        pin_created = _creation_dates(parents["pins"])
        raw_pins = read_raw_table(raw_root, "pins")
        raw_days = iso_date_strings(raw_pins["created_at"])
        later = parse_iso_dates(raw_days) > pd.Timestamp(day)
        for pin_id, created in zip(raw_pins.loc[later, "pin_id"], raw_days[later]):
            if isinstance(pin_id, str):
                pin_created.setdefault(pin_id, created)
        schema = _interactions_schema(parents["users"]["user_id"], list(pin_created), min_date, max_date, pin_created)
        media = None
    elif table == "videos":
        schema = _videos_schema(min_date, max_date)
        media = lambda frame: _video_issues(frame, raw_root)  # noqa: E731
    else:
        raise KeyError(f"{table} is not validated by day")
    return _validate(table, part, schema, media, positions=positions, extra_issues=global_duplicates)
