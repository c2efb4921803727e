"""pandera models of the raw tables: types, missing values, ranges, dates, uniqueness, text.

One ``DataFrameModel`` per table holds every rule that a row can be judged by on its own
(or against the rows above it, for duplicate ids). Rules that need the world outside the
table, the parent tables' ids or the accepted date window, are built per call by
``with_runtime_checks``. Media files are checked in ``media_checks``.

A failing check becomes the quarantine rule ``"<column>.<check name>"`` (``"<check name>"``
for checks across columns); ``explain`` turns a check into the sentence a person reads.
Checks on list values (windows, concepts, shot lists) and on several tables at once also say
*which* element failed: they keep a detail function in their statistics (``DETAIL``).

List columns arrive in two shapes: a hand-built frame holds Python lists, a Parquet file
reads back as numpy arrays (of arrays, for a list of lists). ``plain`` makes both Python
lists, and every list check and parser goes through it.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
from typing import Callable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera import extensions
from pandera.typing import Series

from mmpipe.schemas.text_checks import looks_garbled

MAX_SHORT_TEXT_CHARS = 300  # titles, board names, moment queries, video captions
MAX_DESCRIPTION_CHARS = 2000
MAX_VIDEO_SECONDS = 24 * 3600.0
MAX_FPS = 1000.0

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SHOWN_CHARS = 60

# The statistics key under which a check keeps its detail function: given one failing value
# (a column check) or row (a check across columns, as a dict), it names the element that
# failed, for the quarantine message.
DETAIL = "detail"


# -----------------------------------------------------------------------------
# reusable checks, registered so models can name them in Field(...)


@extensions.register_check_method()
def unique_id(series: pd.Series) -> pd.Series:
    """The first row with an id keeps it; every later row with the same id fails."""
    return ~(series.duplicated(keep="first") & series.notna())


def _text_only(series: pd.Series) -> pd.Series:
    """The strings of ``series`` as a string column, anything else (bytes, numbers, lists)
    as missing: casting those to text could fail (undecodable bytes) or invent a date."""
    if pd.api.types.is_string_dtype(series) and series.dtype != object:
        return series.astype("string")
    return series.map(lambda value: value if isinstance(value, str) else None).astype("string")


def parse_iso_dates(series: pd.Series) -> pd.Series:
    """Timestamps of strictly ``YYYY-MM-DD`` strings that are real dates; NaT otherwise."""
    text = _text_only(series)
    well_formed = text.str.fullmatch(_ISO_DATE).fillna(False).astype(bool)
    parsed = pd.to_datetime(text.where(well_formed), format="%Y-%m-%d", errors="coerce")
    return parsed


@extensions.register_check_method()
def iso_date(series: pd.Series) -> pd.Series:
    return parse_iso_dates(series).notna()


@extensions.register_check_method()
def not_blank(series: pd.Series) -> pd.Series:
    return series.str.strip().str.len() > 0


@extensions.register_check_method(statistics=["limit"])
def max_chars(series: pd.Series, *, limit: int) -> pd.Series:
    return series.str.len() <= limit


@extensions.register_check_method()
def not_garbled(series: pd.Series) -> pd.Series:
    return ~series.map(looks_garbled).astype(bool)


# -----------------------------------------------------------------------------
# parsers: bring stored values to the column's type so the checks see what was meant


def whole_numbers(series: pd.Series) -> pd.Series:
    """Numbers, with text and fractions (``"x"``, ``1.5``) as missing, so that the integer
    type check reports exactly those rows instead of silently truncating ``1.5`` to 1."""
    numbers = pd.to_numeric(series, errors="coerce")
    return numbers.where(numbers % 1 == 0)


def real_numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


# An ISO 8601 timestamp written as text: a date, a time of day, maybe seconds, fractions
# and an offset ("2026-01-05T13:45:00.123+01:00", "2026-01-05 13:45", "...Z").
_ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?\s?(Z|[+-]\d{2}:?\d{2})?$")


def _utc_day(value: dt.date) -> str | None:
    if pd.isna(value):  # NaT is a datetime too
        return None
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%d")


def iso_date_strings(series: pd.Series) -> pd.Series:
    """Dates as the ISO ``YYYY-MM-DD`` strings partitions key on, however the file holds them:
    strings, dates, or timestamps with a time of day (typed, or ISO 8601 text). A timestamp
    counts for the day it falls on in UTC, the clock the daily partitions and the "not in
    the future" bound use; a timestamp without an offset is taken as UTC. Anything else
    stays as it is, for ``iso_date`` to report."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC")
        return series.dt.strftime("%Y-%m-%d")
    if not (series.dtype == object or pd.api.types.is_string_dtype(series)):
        return series
    series = series.map(lambda value: _utc_day(value) if isinstance(value, dt.date) else value)
    text = _text_only(series)
    stamped = text.str.fullmatch(_ISO_TIMESTAMP).fillna(False).astype(bool)
    if not stamped.any():
        return series
    # an impossible timestamp ("2026-02-30 10:00") stays text, and fails iso_date
    days = pd.to_datetime(text[stamped], format="ISO8601", utc=True, errors="coerce").dt.strftime("%Y-%m-%d")
    series = series.astype(object)
    series[stamped & days.reindex(series.index).notna()] = days.dropna()
    return series


# -----------------------------------------------------------------------------
# list values: moment windows, concept words, shot indices


def plain(value):
    """Nested Python lists of Python scalars, whatever list type held them.

    >>> plain(np.array([np.array([0.5, 1.5]), np.array([3.0, 4.0])], dtype=object))
    [[0.5, 1.5], [3.0, 4.0]]
    >>> plain(("red", np.str_("star")))
    ['red', 'star']
    """
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else [plain(item) for item in value]
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def shown(value) -> str:
    """A value as a message quotes it: lists as lists, long ones cut."""
    text = repr(plain(value))
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 4] + " ..."


def _finite_number(value) -> bool:
    # bool is an int to Python, but True is no time stamp and no shot index
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _not_a_list(value) -> str | None:
    return None if isinstance(plain(value), list) else f"it is not a list (type {type(value).__name__})"


WINDOWS_SHAPE = "a non-empty list of [start_s, end_s] pairs of finite numbers"


def window_list_problem(value) -> str | None:
    """What keeps ``value`` from being a list of windows (None: nothing).

    >>> window_list_problem([[0.5, 1.5], [3.0, 4.0]]) is None
    True
    >>> window_list_problem([[0.5, 1.5], [3.0, "end"]])
    "window 1 is [3.0, 'end']"
    """
    windows = plain(value)
    if not isinstance(windows, list):
        return _not_a_list(value)
    if not windows:
        return "it holds no window"
    for number, window in enumerate(windows):
        if not (isinstance(window, list) and len(window) == 2 and all(map(_finite_number, window))):
            return f"window {number} is {shown(window)}"
    return None


def windows_of(value) -> list[tuple[float, float]]:
    """The (start_s, end_s) windows of a well-formed value; none of a malformed one, so that
    the other window checks pass it and only ``well_formed`` reports it."""
    if window_list_problem(value) is not None:
        return []
    return [(float(start), float(end)) for start, end in plain(value)]


def window_text(start: float, end: float) -> str:
    return f"[{start}, {end}]"


def as_windows(value):
    """Parser: well-formed windows as ``[[start_s, end_s], ...]`` floats (one Parquet type,
    ``list<list<double>>``, whatever the input held); anything else as plain lists for the
    checks to report."""
    windows = windows_of(value)
    return [[start, end] for start, end in windows] if windows else plain(value)


def backwards_window(value) -> str | None:
    """The first window that does not end after it starts."""
    for start, end in windows_of(value):
        if not end > start:
            return f"window {window_text(start, end)}"
    return None


def window_before_zero(value) -> str | None:
    """The first window that starts before the video does."""
    for start, end in windows_of(value):
        if start < 0:
            return f"window {window_text(start, end)}"
    return None


# A shot in which no object is visible shows no concept (QFVS has such shots too); it stays a
# candidate for a summary, so an empty list is valid for a shot, though not for a query.
SHOT_CONCEPTS_SHAPE = "a list of non-blank concept words (empty when the shot shows none)"
QUERY_CONCEPTS_SHAPE = "a list of 1 or 2 non-blank concept words"
MAX_QUERY_CONCEPTS = 2


def concept_list_problem(value, least: int = 0, most: int | None = None) -> str | None:
    """What keeps ``value`` from being a list of ``least`` to ``most`` concept words.

    >>> concept_list_problem(["red", "star"]) is None
    True
    >>> concept_list_problem(["red", " "])
    "concept 1 is ' '"
    """
    concepts = plain(value)
    if not isinstance(concepts, list):
        return _not_a_list(value)
    if len(concepts) < least:
        return "it holds no concept" if not concepts else f"it holds only {len(concepts)} concepts"
    if most is not None and len(concepts) > most:
        return f"it holds {len(concepts)} concepts"
    for number, concept in enumerate(concepts):
        if not isinstance(concept, str) or not concept.strip():
            return f"concept {number} is {shown(concept)}"
    return None


def query_concept_list_problem(value) -> str | None:
    return concept_list_problem(value, least=1, most=MAX_QUERY_CONCEPTS)


def concepts_of(value) -> list[str]:
    """The concept words of a well-formed value; none of a malformed one."""
    return [] if concept_list_problem(value) is not None else plain(value)


SHOTS_SHAPE = "a non-empty list of shot_index integers"


def shot_list_problem(value) -> str | None:
    """What keeps ``value`` from being a list of shot indices. Whole floats (``2.0``, as a
    JSON loader may deliver) count as integers, as in the integer columns."""
    shots = plain(value)
    if not isinstance(shots, list):
        return _not_a_list(value)
    if not shots:
        return "it holds no shot"
    for number, shot in enumerate(shots):
        if not (_finite_number(shot) and shot % 1 == 0):
            return f"entry {number} is {shown(shot)}"
    return None


def shots_of(value) -> list[int]:
    """The shot indices of a well-formed value; none of a malformed one."""
    return [] if shot_list_problem(value) is not None else [int(shot) for shot in plain(value)]


def as_shot_list(value):
    """Parser: well-formed shot lists as Python ints, anything else as plain lists."""
    shots = shots_of(value)
    return shots if shots else plain(value)


def _real(value) -> float | None:
    """A scalar as the ``real_numbers`` parser reads it; None when it is no finite number."""
    try:
        number = float(pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0])
    except (TypeError, ValueError):  # a list or a mapping where a number belongs
        return None
    return number if math.isfinite(number) else None


# Checks that say which element failed: the check passes exactly the values (rows) whose
# detail function finds nothing, so the verdict and the message cannot disagree.


def _values_pass(detail: Callable) -> Callable[[pd.Series], pd.Series]:
    return lambda series: series.map(detail).isna()


def _rows_pass(detail: Callable) -> Callable[[pd.DataFrame], pd.Series]:
    def passes(frame: pd.DataFrame) -> pd.Series:
        return pd.Series([detail(row) is None for row in frame.to_dict("records")], index=frame.index, dtype=bool)
    return passes


def value_check(detail: Callable, name: str, **statistics) -> pa.Check:
    """A column check failing the values ``detail`` finds something wrong with."""
    return pa.Check(_values_pass(detail), name=name, statistics={**statistics, DETAIL: detail})


def row_check(detail: Callable, name: str, **statistics) -> pa.Check:
    """A check across columns failing the rows (dicts) ``detail`` finds something wrong with."""
    return pa.Check(_rows_pass(detail), name=name, statistics={**statistics, DETAIL: detail})


def _model_value_check(column: str, name: str, detail: Callable, **statistics):
    """``value_check`` as a model method, for rules a value can be judged by on its own."""
    passes = _values_pass(detail)
    return pa.check(column, name=name, statistics={**statistics, DETAIL: detail})(lambda cls, series: passes(series))


def _model_row_check(name: str, detail: Callable, **statistics):
    """``row_check`` as a model method."""
    passes = _rows_pass(detail)
    return pa.dataframe_check(name=name, statistics={**statistics, DETAIL: detail})(lambda cls, frame: passes(frame))


# -----------------------------------------------------------------------------
# one model per raw table (columns as in mmpipe.layout.RAW_COLUMNS)


class _RawTable(pa.DataFrameModel):
    """Every id column is non-blank (an empty id names nothing a reference could find) and
    unique."""

    class Config:
        coerce = True
        strict = False  # extra columns (and the row_index we add) pass through


class PinsModel(_RawTable):
    pin_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    image_path: Series[str]
    title: Series[str] = pa.Field(nullable=True, max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())
    description: Series[str] = pa.Field(nullable=True, max_chars=MAX_DESCRIPTION_CHARS, not_garbled=())
    created_at: Series[str] = pa.Field(iso_date=())

    @pa.parser("created_at")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)

    @pa.dataframe_check(name="has_text")
    def _title_or_description(cls, df: pd.DataFrame) -> pd.Series:
        return df["title"].str.strip().str.len().gt(0) | df["description"].str.strip().str.len().gt(0)


class BoardsModel(_RawTable):
    board_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    name: Series[str] = pa.Field(not_blank=(), max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())
    description: Series[str] = pa.Field(nullable=True, max_chars=MAX_DESCRIPTION_CHARS, not_garbled=())
    created_at: Series[str] = pa.Field(iso_date=())

    @pa.parser("created_at")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)


class BoardPinsModel(_RawTable):
    board_id: Series[str]
    pin_id: Series[str]
    saved_at: Series[str] = pa.Field(iso_date=())

    @pa.parser("saved_at")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)

    @pa.dataframe_check(name="unique_pair", statistics={"pair": "board_id, pin_id"})
    def _saved_once(cls, df: pd.DataFrame) -> pd.Series:
        """A pin is saved to a board once; later saves of the same pair fail."""
        return ~df.duplicated(subset=["board_id", "pin_id"], keep="first")


class UsersModel(_RawTable):
    user_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    country: Series[str] = pa.Field(nullable=True)
    signup_date: Series[str] = pa.Field(iso_date=())

    @pa.parser("signup_date")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)


class InteractionsModel(_RawTable):
    impression_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    user_id: Series[str]
    pin_id: Series[str]
    date: Series[str] = pa.Field(iso_date=())
    position: Series[int] = pa.Field(ge=0)
    clicked: Series[int] = pa.Field(isin=[0, 1])

    @pa.parser("position", "clicked")
    def _integers(cls, series: pd.Series) -> pd.Series:
        return whole_numbers(series)

    @pa.parser("date")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)


class VideosModel(_RawTable):
    video_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    video_path: Series[str]
    title: Series[str] = pa.Field(nullable=True, max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())
    duration_s: Series[float] = pa.Field(gt=0, le=MAX_VIDEO_SECONDS)
    fps: Series[float] = pa.Field(gt=0, le=MAX_FPS)
    created_at: Series[str] = pa.Field(iso_date=())

    @pa.parser("duration_s", "fps")
    def _numbers(cls, series: pd.Series) -> pd.Series:
        return real_numbers(series)

    @pa.parser("created_at")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)


class MomentQueriesModel(_RawTable):
    query_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    video_id: Series[str]
    query: Series[str] = pa.Field(not_blank=(), max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())
    windows: Series[object]

    @pa.parser("windows")
    def _windows(cls, series: pd.Series) -> pd.Series:
        return series.map(as_windows)

    _windows_well_formed = _model_value_check("windows", "well_formed", window_list_problem, expected=WINDOWS_SHAPE)
    _windows_forward = _model_value_check("windows", "end_after_start", backwards_window)
    _windows_after_zero = _model_value_check("windows", "start_not_negative", window_before_zero)


class VideoCaptionsModel(_RawTable):
    caption_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    video_id: Series[str]
    caption: Series[str] = pa.Field(not_blank=(), max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())


def _shot_span(row: dict) -> tuple[float, float] | None:
    start, end = _real(row["start_s"]), _real(row["end_s"])
    return None if start is None or end is None else (start, end)


def backwards_shot(row: dict) -> str | None:
    span = _shot_span(row)
    if span is None:  # a missing or non-numeric bound fails its own column's checks
        return None
    start, end = span
    return None if end > start else f"start_s={start}, end_s={end}"


def repeated_shot(row: dict) -> str:
    return f"video_id={row['video_id']!r}, shot_index={plain(row['shot_index'])!r}"


class VideoShotsModel(_RawTable):
    video_id: Series[str]
    shot_index: Series[int] = pa.Field(ge=0)
    start_s: Series[float] = pa.Field(ge=0, le=MAX_VIDEO_SECONDS)
    end_s: Series[float] = pa.Field(ge=0, le=MAX_VIDEO_SECONDS)
    concepts: Series[object]

    @pa.parser("shot_index")
    def _integers(cls, series: pd.Series) -> pd.Series:
        return whole_numbers(series)

    @pa.parser("start_s", "end_s")
    def _numbers(cls, series: pd.Series) -> pd.Series:
        return real_numbers(series)

    @pa.parser("concepts")
    def _concept_lists(cls, series: pd.Series) -> pd.Series:
        return series.map(plain)

    _concepts_well_formed = _model_value_check(
        "concepts", "well_formed", concept_list_problem, expected=SHOT_CONCEPTS_SHAPE
    )
    _forward = _model_row_check("end_after_start", backwards_shot)

    @pa.dataframe_check(name="unique_pair", statistics={"pair": "video_id, shot_index", DETAIL: repeated_shot})
    def _shot_once(cls, df: pd.DataFrame) -> pd.Series:
        """A video has one shot of each index; later rows with the same pair fail. A missing
        (or non-integer) index fails its own column's checks, so it repeats nothing."""
        return ~(df.duplicated(subset=["video_id", "shot_index"], keep="first") & df["shot_index"].notna())


class SummaryQueriesModel(_RawTable):
    query_id: Series[str] = pa.Field(not_blank=(), unique_id=())
    video_id: Series[str]
    concepts: Series[object]
    relevant_shots: Series[object]

    @pa.parser("concepts")
    def _concept_lists(cls, series: pd.Series) -> pd.Series:
        return series.map(plain)

    @pa.parser("relevant_shots")
    def _shot_lists(cls, series: pd.Series) -> pd.Series:
        return series.map(as_shot_list)

    _concepts_well_formed = _model_value_check(
        "concepts", "well_formed", query_concept_list_problem, expected=QUERY_CONCEPTS_SHAPE
    )
    _shots_well_formed = _model_value_check("relevant_shots", "well_formed", shot_list_problem, expected=SHOTS_SHAPE)


MODELS: dict[str, type[pa.DataFrameModel]] = {
    "pins": PinsModel,
    "boards": BoardsModel,
    "board_pins": BoardPinsModel,
    "users": UsersModel,
    "interactions": InteractionsModel,
    "videos": VideosModel,
    "moment_queries": MomentQueriesModel,
    "video_captions": VideoCaptionsModel,
    "video_shots": VideoShotsModel,
    "summary_queries": SummaryQueriesModel,
}


# -----------------------------------------------------------------------------
# checks that need the world outside the table, built per call


def known_ids(ids, parent: str) -> pa.Check:
    """Values must be ids of the (validated) ``parent`` table."""
    allowed = pd.Index(list(ids))
    return pa.Check(lambda series: series.isin(allowed), name="known", statistics={"parent": parent})


def date_window(min_date: str | None, max_date: str | None) -> pa.Check:
    """ISO dates within [min_date, max_date] (either bound may be open). Malformed dates pass
    here: ``iso_date`` reports them."""
    low = pd.Timestamp(min_date) if min_date else pd.Timestamp.min
    high = pd.Timestamp(max_date) if max_date else pd.Timestamp.max

    def within(series: pd.Series) -> pd.Series:
        parsed = parse_iso_dates(series)
        return parsed.isna() | parsed.between(low, high)

    return pa.Check(
        within, name="in_date_range", statistics={"min_date": min_date or "-", "max_date": max_date or "-"}
    )


def not_in_future(max_date: str) -> pa.Check:
    """ISO dates on or before ``max_date``: today (UTC), or the last day a delivery declares.
    A sign-up or a save dated later has not happened yet: a clock or a writer is wrong.
    Malformed dates pass here: ``iso_date`` reports them."""
    high = pd.Timestamp(max_date)

    def not_later(series: pd.Series) -> pd.Series:
        parsed = parse_iso_dates(series)
        return parsed.isna() | (parsed <= high)

    return pa.Check(not_later, name="not_in_future", statistics={"max_date": max_date})


def pin_existed(pin_created: dict[str, str]) -> pa.Check:
    """An interaction is dated on or after its pin's creation (``pin_created``: ISO date by
    pin id). A pin not in the map, or a malformed date, is left to ``pin_id.known`` and
    ``date.iso_date``."""
    def too_early(row: dict) -> str | None:
        created = pin_created.get(row["pin_id"]) if isinstance(row["pin_id"], str) else None
        date = row["date"]
        if created is None or not isinstance(date, str) or not _ISO_DATE.fullmatch(date):
            return None
        return f"date={date!r} but pin {row['pin_id']!r} was created on {created}" if date < created else None

    return row_check(too_early, "pin_existed")


def window_ends(row: dict) -> list[tuple[str, float]]:
    """The spans of a moment query row, as (how a message names it, end in seconds)."""
    return [(f"window {window_text(start, end)}", end) for start, end in windows_of(row["windows"])]


def shot_end(row: dict) -> list[tuple[str, float]]:
    """The span of a shot row, as ``window_ends``; none when its end is not a number."""
    end = _real(row["end_s"])
    return [] if end is None else [("the shot", end)]


def within_video(videos: pd.DataFrame, ends: Callable[[dict], list[tuple[str, float]]]) -> pa.Check:
    """Every span of a row (``ends``: ``window_ends`` or ``shot_end``) ends inside its video,
    with half a frame of slack for rounding: a span may end exactly where the video does."""
    lengths = {
        video_id: (float(duration_s), float(duration_s) + 0.5 / float(fps))
        for video_id, duration_s, fps in videos.drop_duplicates("video_id")[["video_id", "duration_s", "fps"]]
        .itertuples(index=False)
    }

    def overrun(row: dict) -> str | None:
        video_id = row["video_id"]
        if not isinstance(video_id, str) or video_id not in lengths:
            return None  # an unknown video fails video_id.known
        duration_s, limit_s = lengths[video_id]
        for name, end in ends(row):
            if end > limit_s:
                return f"{name} ends at {end} s, but video {video_id!r} is {duration_s} s long"
        return None

    return row_check(overrun, "within_video")


def concept_vocabulary(shots: pd.DataFrame) -> set[str]:
    """Every concept word some (validated) shot shows."""
    return {concept for value in shots["concepts"] for concept in concepts_of(value)}


def known_concepts(vocabulary: set[str]) -> pa.Check:
    """Every concept word of a value is in ``vocabulary`` (``concept_vocabulary``): a summary
    query about a concept no shot shows has no relevant shot to find."""
    vocabulary = frozenset(vocabulary)

    def unknown(value) -> str | None:
        for concept in concepts_of(value):  # a malformed list fails concepts.well_formed
            if concept not in vocabulary:
                return repr(concept)
        return None

    return value_check(unknown, "known_concept")


def known_shots(shots: pd.DataFrame, video_ids) -> pa.Check:
    """Every shot a summary query lists is a (validated) shot of the query's video; queries on
    videos not in ``video_ids`` are left to ``video_id.known``."""
    videos = set(video_ids)
    shots_by_video: dict[str, set[int]] = {}
    for video_id, shot_index in zip(shots["video_id"], shots["shot_index"]):
        shots_by_video.setdefault(video_id, set()).add(int(shot_index))

    def missing(row: dict) -> str | None:
        video_id = row["video_id"]
        if not isinstance(video_id, str) or video_id not in videos:
            return None
        valid = shots_by_video.get(video_id, set())
        for shot in shots_of(row["relevant_shots"]):  # a malformed list fails relevant_shots.well_formed
            if shot not in valid:
                return f"shot {shot} of video {video_id!r} (its valid shots: {_index_ranges(valid)})"
        return None

    return row_check(missing, "known_shots")


def _index_ranges(indices: set[int]) -> str:
    """``0-3, 5`` for {0, 1, 2, 3, 5}; ``none`` for an empty set.

    >>> _index_ranges({0, 1, 2, 3, 5, 7, 8})
    '0-3, 5, 7-8'
    """
    if not indices:
        return "none"
    ordered = sorted(indices)
    runs, start = [], ordered[0]
    for previous, current in zip(ordered, ordered[1:] + [None]):
        if current != previous + 1:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(runs)


def with_runtime_checks(
    model: type[pa.DataFrameModel],
    column_checks: dict[str, list[pa.Check]] | None = None,
    frame_checks: list[pa.Check] | None = None,
) -> pa.DataFrameSchema:
    """The model's schema plus checks built for this call; the model itself is untouched."""
    schema = copy.deepcopy(model.to_schema())
    for column, checks in (column_checks or {}).items():
        schema = schema.update_column(column, checks=[*schema.columns[column].checks, *checks])
    schema.checks = [*schema.checks, *(frame_checks or [])]
    return schema


# -----------------------------------------------------------------------------
# what a failed check means, in words

_EXPLANATIONS = {
    "not_nullable": "is missing",
    "dtype": "is not a valid {dtype}",
    "unique_id": "repeats the id of an earlier row",
    "iso_date": "is not a valid YYYY-MM-DD date",
    "in_date_range": "is outside the accepted dates {min_date}..{max_date}",
    "pin_existed": "is dated before its pin was created",
    "not_in_future": "is in the future (after {max_date}, the latest accepted date)",
    "not_blank": "is empty",
    "max_chars": "is longer than {limit} characters",
    "not_garbled": "looks garbled",
    "known": "is not the id of a valid row of {parent}",
    "greater_than": "must be greater than {min_value}",
    "greater_than_or_equal_to": "must be at least {min_value}",
    "less_than_or_equal_to": "must be at most {max_value}",
    "isin": "must be one of {allowed_values}",
    "has_text": "title and description are both empty",
    "unique_pair": "repeats the ({pair}) of an earlier row",
    "well_formed": "is not {expected}",
    "end_after_start": "has a span that does not end after it starts",
    "start_not_negative": "has a window that starts before 0 s",
    "within_video": "has a span that ends after its video",
    "known_concept": "names a concept that no valid shot shows",
    "known_shots": "lists a shot that is not a valid shot of its video",
}


def explain(check_name: str, statistics: dict | None = None) -> str:
    template = _EXPLANATIONS.get(check_name, f"fails {check_name}")
    return template.format(**(statistics or {}))
