"""The date splits every system uses, and what "cold" means, defined once.

Each system trains on the train window, tunes, early-stops and passes the promotion gate
on the validation window, and reports on the test window; nothing is selected on test.
The windows are runs of whole distinct dates, oldest first: train, then validation, then
the last ``test_fraction`` of the dates as test. The test window is the one
``mmpipe.graph.pairs.derive_cutoff_date`` holds out (its first date is that cut-off), so
numbers computed before these splits existed stay comparable.

"Cold" is, for every system, an item with no interaction and no board save dated before
the training cut-off (``DateWindows.train_end``): nothing a model could have learned
about it from behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOWS = ("train", "validation", "test")


def _as_dates(dates: pd.Series | np.ndarray | Iterable[str]) -> pd.Series:
    """Dates as day-normalised timestamps; anything unparseable becomes NaT."""
    series = dates if isinstance(dates, pd.Series) else pd.Series(list(dates), dtype=object)
    return pd.to_datetime(series, format="ISO8601", errors="coerce").dt.normalize()


def _iso(day: pd.Timestamp) -> str:
    return day.strftime("%Y-%m-%d")


@dataclass(frozen=True)
class DateWindows:
    """Train is every date before ``train_end``, validation ``train_end`` up to (not
    including) ``test_start``, test from ``test_start`` on. Dates are ISO ``YYYY-MM-DD``."""

    train_end: str  # first date of validation
    test_start: str  # first date of test

    def __post_init__(self) -> None:
        if pd.Timestamp(self.train_end) > pd.Timestamp(self.test_start):
            raise ValueError(f"train_end {self.train_end} is after test_start {self.test_start}")

    def window_of(self, dates: pd.Series | np.ndarray | Iterable[str]) -> np.ndarray:
        """"train", "validation" or "test" for each date.

        A missing or unparseable date goes to "test": it cannot be shown to predate
        anything, and letting it into training could leak the future.
        """
        parsed = _as_dates(dates)
        before_train_end = (parsed < pd.Timestamp(self.train_end)).to_numpy(dtype=bool)  # NaT: False
        before_test = (parsed < pd.Timestamp(self.test_start)).to_numpy(dtype=bool)
        return np.where(before_train_end, "train", np.where(before_test, "validation", "test"))


def date_windows(
    dates: pd.Series | np.ndarray | Iterable[str], validation_fraction: float = 0.1, test_fraction: float = 0.2
) -> DateWindows:
    """Windows over the distinct (parseable) dates, sorted.

    Test is the last round(n * test_fraction) distinct dates, at least one; validation the
    round(n * validation_fraction) before them, and train the rest, each at least one
    when there are three or more dates. With 30 dates: 21 train, 3 validation, 6 test.
    With two dates there is no validation window (train_end == test_start); with one,
    only test. ``round`` is Python's, as in ``derive_cutoff_date``, so the test windows agree.
    """
    if not (0 < test_fraction < 1 and 0 < validation_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < fractions and validation + test < 1, got {validation_fraction} "
                         f"and {test_fraction}")
    distinct = np.sort(_as_dates(dates).dropna().unique())
    n = len(distinct)
    if n == 0:
        raise ValueError("cannot derive date windows: no parseable date")
    n_test = max(1, round(n * test_fraction))
    if n == 1:
        return DateWindows(train_end=_iso(pd.Timestamp(distinct[0])), test_start=_iso(pd.Timestamp(distinct[0])))
    if n == 2:
        n_test, n_validation = 1, 0
    else:  # leave at least one validation and one train date
        n_test = min(n_test, n - 2)
        n_validation = min(max(1, round(n * validation_fraction)), n - n_test - 1)
    first_test = n - n_test
    first_validation = first_test - n_validation
    return DateWindows(
        train_end=_iso(pd.Timestamp(distinct[first_validation])),
        test_start=_iso(pd.Timestamp(distinct[first_test])),
    )


def cold_items(
    item_ids: pd.Series | np.ndarray | Iterable[str],
    interactions: pd.DataFrame,
    saves: pd.DataFrame,
    cutoff: str,
    item_col: str = "pin_id",
    interaction_date_col: str = "date",
    save_date_col: str = "saved_at",
) -> np.ndarray:
    """Boolean mask over ``item_ids``: True where the item is cold.

    Cold means no interaction (an impression, clicked or not) and no board save dated
    before ``cutoff`` (the training cut-off, ``DateWindows.train_end``); this is the only
    definition of cold for every system. An event with a missing or unparseable date
    cannot be shown to predate the cut-off, so it does not warm its item.
    """
    cutoff_day = pd.Timestamp(cutoff).normalize()
    warm: set = set()
    for events, date_col in ((interactions, interaction_date_col), (saves, save_date_col)):
        before = (_as_dates(events[date_col]) < cutoff_day).to_numpy(dtype=bool)
        warm.update(events.loc[before, item_col])
    return ~pd.Series(list(item_ids), dtype=object).isin(warm).to_numpy(dtype=bool)
