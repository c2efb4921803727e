"""pandera models of the raw tables: types, missing values, ranges, dates, uniqueness, text.

One ``DataFrameModel`` per table holds every rule that a row can be judged by on its own
(or against the rows above it, for duplicate ids). Rules that need the world outside the
table, the parent tables' ids or the accepted date window, are built per call by
``with_runtime_checks``. Media files are checked in ``media_checks``.

A failing check becomes the quarantine rule ``"<column>.<check name>"`` (``"<check name>"``
for checks across columns); ``explain`` turns a check into the sentence a person reads.
"""

from __future__ import annotations

import copy
import datetime as dt
import re

import pandas as pd
import pandera.pandas as pa
from pandera import extensions
from pandera.typing import Series

from mmpipe.schemas.text_checks import looks_garbled

MAX_SHORT_TEXT_CHARS = 300  # titles, board names, moment queries
MAX_DESCRIPTION_CHARS = 2000
MAX_VIDEO_SECONDS = 24 * 3600.0
MAX_FPS = 1000.0

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -----------------------------------------------------------------------------
# reusable checks, registered so models can name them in Field(...)


@extensions.register_check_method()
def unique_id(series: pd.Series) -> pd.Series:
    """The first row with an id keeps it; every later row with the same id fails."""
    return ~(series.duplicated(keep="first") & series.notna())


def parse_iso_dates(series: pd.Series) -> pd.Series:
    """Timestamps of strictly ``YYYY-MM-DD`` strings that are real dates; NaT otherwise."""
    text = series.astype("string")
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


def iso_date_strings(series: pd.Series) -> pd.Series:
    """Dates a user's Parquet stores as timestamps or dates, as the ISO strings partitions use."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.strftime("%Y-%m-%d")
    if series.dtype == object:
        return series.map(lambda value: value.strftime("%Y-%m-%d") if isinstance(value, dt.date) else value)
    return series


# -----------------------------------------------------------------------------
# one model per raw table (columns as in mmpipe.layout.RAW_COLUMNS)


class _RawTable(pa.DataFrameModel):
    class Config:
        coerce = True
        strict = False  # extra columns (and the row_index we add) pass through


class PinsModel(_RawTable):
    pin_id: Series[str] = pa.Field(unique_id=())
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
    board_id: Series[str] = pa.Field(unique_id=())
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

    @pa.dataframe_check(name="unique_pair")
    def _saved_once(cls, df: pd.DataFrame) -> pd.Series:
        """A pin is saved to a board once; later saves of the same pair fail."""
        return ~df.duplicated(subset=["board_id", "pin_id"], keep="first")


class UsersModel(_RawTable):
    user_id: Series[str] = pa.Field(unique_id=())
    country: Series[str] = pa.Field(nullable=True)
    signup_date: Series[str] = pa.Field(iso_date=())

    @pa.parser("signup_date")
    def _dates(cls, series: pd.Series) -> pd.Series:
        return iso_date_strings(series)


class InteractionsModel(_RawTable):
    impression_id: Series[str] = pa.Field(unique_id=())
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
    video_id: Series[str] = pa.Field(unique_id=())
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
    query_id: Series[str] = pa.Field(unique_id=())
    video_id: Series[str]
    query: Series[str] = pa.Field(not_blank=(), max_chars=MAX_SHORT_TEXT_CHARS, not_garbled=())
    start_s: Series[float] = pa.Field(ge=0, le=MAX_VIDEO_SECONDS)
    end_s: Series[float] = pa.Field(ge=0, le=MAX_VIDEO_SECONDS)

    @pa.parser("start_s", "end_s")
    def _numbers(cls, series: pd.Series) -> pd.Series:
        return real_numbers(series)

    @pa.dataframe_check(name="end_after_start")
    def _positive_length(cls, df: pd.DataFrame) -> pd.Series:
        # rows with a missing bound fail their own column checks; do not blame them twice
        return (df["end_s"] > df["start_s"]) | df["end_s"].isna() | df["start_s"].isna()


MODELS: dict[str, type[pa.DataFrameModel]] = {
    "pins": PinsModel,
    "boards": BoardsModel,
    "board_pins": BoardPinsModel,
    "users": UsersModel,
    "interactions": InteractionsModel,
    "videos": VideosModel,
    "moment_queries": MomentQueriesModel,
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


def within_video(videos: pd.DataFrame) -> pa.Check:
    """A moment's end lies inside its video (half a frame of slack for rounding)."""
    videos = videos.drop_duplicates("video_id").set_index("video_id")
    limit_s = videos["duration_s"] + 0.5 / videos["fps"]

    def check(df: pd.DataFrame) -> pd.Series:
        limit = df["video_id"].map(limit_s)
        # unknown videos and missing ends fail their own checks
        return limit.isna() | df["end_s"].isna() | (df["end_s"] <= limit)

    return pa.Check(check, name="within_video")


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
    "not_blank": "is empty",
    "max_chars": "is longer than {limit} characters",
    "not_garbled": "looks garbled",
    "known": "is not the id of a valid row of {parent}",
    "greater_than": "must be greater than {min_value}",
    "greater_than_or_equal_to": "must be at least {min_value}",
    "less_than_or_equal_to": "must be at most {max_value}",
    "isin": "must be one of {allowed_values}",
    "has_text": "title and description are both empty",
    "unique_pair": "saves the same pin to the same board again",
    "end_after_start": "end_s is not after start_s",
    "within_video": "end_s lies beyond the end of the video",
}


def explain(check_name: str, statistics: dict | None = None) -> str:
    template = _EXPLANATIONS.get(check_name, f"fails {check_name}")
    return template.format(**(statistics or {}))
