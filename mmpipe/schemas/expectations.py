"""Great Expectations suites on the *validated* tables: properties of a table as a whole.

pandera judges rows one by one; these suites judge distributions a single row cannot
break: null rates, caption length quantiles, click rate, uniqueness, references to the
parent tables. A failing suite means the data as a whole drifted or a rule upstream let
something through, so the Dagster check built on it blocks downstream assets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmpipe.layout import ID_COLUMN, RAW_TABLES
from mmpipe.schemas.tables import (
    MAX_QUERY_CONCEPTS,
    MAX_SHORT_TEXT_CHARS,
    concept_vocabulary,
    concepts_of,
    shots_of,
    windows_of,
)
from mmpipe.schemas.validate import VALIDATION_PARENTS

# GX is imported where it is used: importing it takes seconds, and Dagster imports this
# module whenever it loads the code location. It phones home unless told not to, and
# there is no network here.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

# Bounds of a healthy table. Loose on purpose: they catch a broken generator or loader
# (all captions empty, every impression clicked), not the variation of a healthy world.
CLICK_RATE = (0.01, 0.6)
CAPTION_CHARS_MEDIAN = (10, 500)
MAX_NULL_TITLE_SHARE = 0.5
VIDEO_FPS = (1, 240)
MIN_LABELLED_SHOT_SHARE = 0.5
_SHOWN_UNEXPECTED = 5


def _table(context: dict, parent: str) -> pd.DataFrame | None:
    """The validated ``parent`` table from the context; None when absent or given as ids."""
    value = context.get(parent)
    return value if isinstance(value, pd.DataFrame) else None


def _span_overrun_s(df: pd.DataFrame, ends: pd.Series, videos: pd.DataFrame) -> pd.Series:
    """How far past its video (beyond the half frame of slack) each row's last end lies;
    <= 0 for a row inside its video, NaN for a video ``videos`` lacks."""
    videos = videos.drop_duplicates("video_id").set_index("video_id")
    limit_s = df["video_id"].map(videos["duration_s"] + 0.5 / videos["fps"])
    return ends - limit_s.astype(float)


def _moment_columns(df: pd.DataFrame, context: dict) -> dict:
    windows = df["windows"].map(windows_of)
    columns = {
        "query_chars": df["query"].str.len(),
        "n_windows": windows.map(len),
        "min_window_start_s": windows.map(lambda spans: min((start for start, _ in spans), default=np.nan)),
        "min_window_length_s": windows.map(lambda spans: min((end - start for start, end in spans), default=np.nan)),
    }
    if _table(context, "videos") is not None:
        last_end = windows.map(lambda spans: max((end for _, end in spans), default=np.nan))
        columns["window_overrun_s"] = _span_overrun_s(df, last_end, _table(context, "videos"))
    return columns


def _shot_columns(df: pd.DataFrame, context: dict) -> dict:
    columns = {"n_concepts": df["concepts"].map(lambda value: len(concepts_of(value)))}
    if _table(context, "videos") is not None:
        columns["shot_overrun_s"] = _span_overrun_s(df, df["end_s"].astype(float), _table(context, "videos"))
    return columns


def _summary_query_columns(df: pd.DataFrame, context: dict) -> dict:
    columns = {
        "n_concepts": df["concepts"].map(lambda value: len(concepts_of(value))),
        "n_relevant_shots": df["relevant_shots"].map(lambda value: len(shots_of(value))),
    }
    shots = _table(context, "video_shots")
    if shots is not None:
        # video_shots is identified by a pair, so its reference is no value set but these counts
        known = set(zip(shots["video_id"], shots["shot_index"].astype(int)))
        vocabulary = concept_vocabulary(shots)
        columns["n_unknown_shots"] = pd.Series(
            [sum((video_id, shot) not in known for shot in shots_of(value))
             for video_id, value in zip(df["video_id"], df["relevant_shots"])],
            index=df.index, dtype="int64",
        )
        columns["n_unknown_concepts"] = df["concepts"].map(
            lambda value: sum(concept not in vocabulary for concept in concepts_of(value))
        )
    return columns


# Columns a suite reads that are computed from the table (and its parents in the context)
# rather than stored in it: list columns are judged through their lengths and extremes.
_DERIVED_COLUMNS = {
    "pins": lambda df, context: {
        "caption_chars": df["title"].fillna("").str.len() + df["description"].fillna("").str.len()
    },
    "moment_queries": _moment_columns,
    "video_captions": lambda df, context: {"caption_chars": df["caption"].str.len()},
    "video_shots": _shot_columns,
    "summary_queries": _summary_query_columns,
}


@dataclass
class ExpectationReport:
    table: str
    success: bool
    results: list[dict] = field(default_factory=list)  # expectation, column, success, observed

    def failed(self) -> list[dict]:
        return [result for result in self.results if not result["success"]]

    def to_dict(self) -> dict:
        return {"table": self.table, "success": self.success, "results": self.results}


def _ids(context: dict, parent: str) -> list | None:
    """The valid ids of ``parent`` from the context: its validated table, or its ids."""
    if parent not in context:
        return None
    value = context[parent]
    ids = value[ID_COLUMN[parent]] if isinstance(value, pd.DataFrame) else value
    return sorted(set(ids))


def _suite(table: str, context: dict) -> list:
    """The expectations of one table; references only to parents present in ``context``."""
    import great_expectations.expectations as gxe

    id_column = ID_COLUMN[table]
    expectations = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    if id_column is not None:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=id_column),
            gxe.ExpectColumnValuesToBeUnique(column=id_column),
        ]
    for parent in VALIDATION_PARENTS[table]:
        if ID_COLUMN[parent] is None:
            continue  # a parent identified by a pair (video_shots): see the derived columns
        parent_ids = _ids(context, parent)
        if parent_ids is not None:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=ID_COLUMN[parent], value_set=parent_ids))

    if table == "pins":
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column="image_path"),
            gxe.ExpectColumnValuesToNotBeNull(column="title", mostly=1 - MAX_NULL_TITLE_SHARE),
            gxe.ExpectColumnValuesToMatchRegex(column="created_at", regex=r"^\d{4}-\d{2}-\d{2}$"),
            gxe.ExpectColumnMedianToBeBetween(
                column="caption_chars", min_value=CAPTION_CHARS_MEDIAN[0], max_value=CAPTION_CHARS_MEDIAN[1]
            ),
            gxe.ExpectColumnQuantileValuesToBeBetween(
                column="caption_chars",
                quantile_ranges={"quantiles": [0.05, 0.95], "value_ranges": [[1, None], [None, 2300]]},
            ),
        ]
    elif table == "boards":
        expectations.append(gxe.ExpectColumnValueLengthsToBeBetween(column="name", min_value=1, max_value=300))
    elif table == "board_pins":
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["board_id", "pin_id"]))
    elif table == "users":
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column="signup_date"))
    elif table == "interactions":
        expectations += [
            gxe.ExpectColumnMeanToBeBetween(column="clicked", min_value=CLICK_RATE[0], max_value=CLICK_RATE[1]),
            gxe.ExpectColumnDistinctValuesToBeInSet(column="clicked", value_set=[0, 1]),
            gxe.ExpectColumnMinToBeBetween(column="position", min_value=0),
            gxe.ExpectColumnValuesToMatchRegex(column="date", regex=r"^\d{4}-\d{2}-\d{2}$"),
        ]
    elif table == "videos":
        expectations += [
            gxe.ExpectColumnMinToBeBetween(column="duration_s", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=VIDEO_FPS[0], max_value=VIDEO_FPS[1]),
        ]
    elif table == "moment_queries":
        expectations += [
            gxe.ExpectColumnMinToBeBetween(column="n_windows", min_value=1),
            gxe.ExpectColumnMinToBeBetween(column="min_window_start_s", min_value=0),
            gxe.ExpectColumnMinToBeBetween(column="min_window_length_s", min_value=0, strict_min=True),
            gxe.ExpectColumnMinToBeBetween(column="query_chars", min_value=1),
        ]
        if _table(context, "videos") is not None:
            expectations.append(gxe.ExpectColumnMaxToBeBetween(column="window_overrun_s", max_value=0))
    elif table == "video_captions":
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column="caption"),
            gxe.ExpectColumnValuesToBeBetween(column="caption_chars", min_value=1, max_value=MAX_SHORT_TEXT_CHARS),
            gxe.ExpectColumnMedianToBeBetween(
                column="caption_chars", min_value=CAPTION_CHARS_MEDIAN[0], max_value=CAPTION_CHARS_MEDIAN[1]
            ),
        ]
    elif table == "video_shots":
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column="video_id"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["video_id", "shot_index"]),
            gxe.ExpectColumnMinToBeBetween(column="shot_index", min_value=0),
            gxe.ExpectColumnMinToBeBetween(column="start_s", min_value=0),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s"),
            # most shots show something: a world (or loader) that lost the labels shows nothing
            gxe.ExpectColumnValuesToBeBetween(column="n_concepts", min_value=1, mostly=MIN_LABELLED_SHOT_SHARE),
        ]
        if _table(context, "videos") is not None:
            expectations.append(gxe.ExpectColumnMaxToBeBetween(column="shot_overrun_s", max_value=0))
    elif table == "summary_queries":
        expectations += [
            gxe.ExpectColumnValuesToBeBetween(column="n_concepts", min_value=1, max_value=MAX_QUERY_CONCEPTS),
            gxe.ExpectColumnMinToBeBetween(column="n_relevant_shots", min_value=1),
        ]
        if _table(context, "video_shots") is not None:
            expectations += [
                gxe.ExpectColumnMaxToBeBetween(column="n_unknown_shots", max_value=0),
                gxe.ExpectColumnMaxToBeBetween(column="n_unknown_concepts", max_value=0),
            ]
    return expectations


def _plain(value):
    """JSON-safe Python values: GX returns numpy scalars (even numpy booleans) in results."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _columns(kwargs: dict) -> str | list[str] | None:
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return kwargs.get("column") or kwargs.get("column_list")


def _exception_message(info: dict) -> str | None:
    """GX reports an expectation that crashed (rather than failed) in ``exception_info``,
    either flat or keyed by the metric that raised."""
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [entry.get("exception_message") for entry in entries
                if isinstance(entry, dict) and entry.get("raised_exception")]
    return "; ".join(messages) or None


def _observed(result: dict) -> object:
    if "observed_value" in result:
        return result["observed_value"]
    return {
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_percent": result.get("unexpected_percent"),
        "unexpected_sample": (result.get("partial_unexpected_list") or [])[:_SHOWN_UNEXPECTED],
    }


def run_expectations(table: str, df: pd.DataFrame, context: dict | None = None) -> ExpectationReport:
    """Run the suite of ``table`` on its validated rows.

    ``context`` maps parent table names (``VALIDATION_PARENTS[table]``) to their validated
    tables (or to their id collections); each parent given adds a reference expectation.
    The parents whose columns a suite reads (videos' durations, video_shots' shots and
    concepts) must be given as tables for their expectations to run.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if table not in RAW_TABLES:
        raise KeyError(f"unknown table {table!r}; expected one of {RAW_TABLES}")
    context = context or {}
    derived = _DERIVED_COLUMNS.get(table)
    frame = df.assign(**derived(df, context)) if derived else df

    # A fresh ephemeral context per run costs milliseconds and shares no state between runs.
    gx_context = gx.get_context(mode="ephemeral")
    gx_context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        gx_context.data_sources.add_pandas("mmpipe")
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe("validated")
    )
    suite = gx.ExpectationSuite(name=f"{table}_validated", expectations=_suite(table, context))
    # Batch.validate, not a ValidationDefinition: the latter stores its results as JSON and
    # fails on the numpy booleans some expectations return.
    outcome = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)

    results = []
    for result in outcome.results:
        config = result.expectation_config
        results.append(_plain({
            "expectation": config.type,
            "column": _columns(config.kwargs),
            "success": bool(result.success),
            "observed": _observed(result.result or {}),
            "exception": _exception_message(result.exception_info or {}),
        }))
    return ExpectationReport(table=table, success=all(r["success"] for r in results), results=results)
