"""Date windows and cold items: the one definition of train / validation / test and of "cold"."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from mmpipe.eval.splits import DateWindows, cold_items, date_windows
from mmpipe.graph.pairs import derive_cutoff_date


def days(n: int, start: str = "2026-01-01") -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=d)).isoformat() for d in range(n)]


def window_sizes(windows: DateWindows, distinct_dates: list[str]) -> dict[str, int]:
    labels = windows.window_of(distinct_dates)
    return {name: int((labels == name).sum()) for name in ("train", "validation", "test")}


def test_thirty_days_split_21_3_6_and_test_is_the_pairs_held_out_window():
    dates = days(30)
    repeated = pd.Series(dates * 3 + [None, "not-a-date"])  # several pins a day, some undated
    windows = date_windows(repeated)
    assert windows == DateWindows(train_end="2026-01-22", test_start="2026-01-25")
    assert window_sizes(windows, dates) == {"train": 21, "validation": 3, "test": 6}
    pins = pd.DataFrame({"pin_id": range(90), "created_at": dates * 3})
    assert windows.test_start == derive_cutoff_date(pins)


@pytest.mark.parametrize(
    ("n_dates", "expected"),
    [
        (1, {"train": 0, "validation": 0, "test": 1}),
        (2, {"train": 1, "validation": 0, "test": 1}),
        (3, {"train": 1, "validation": 1, "test": 1}),
        (10, {"train": 7, "validation": 1, "test": 2}),
    ],
)
def test_few_dates_keep_every_window_they_can(n_dates, expected):
    dates = days(n_dates)
    windows = date_windows(dates)
    assert window_sizes(windows, dates) == expected
    pins = pd.DataFrame({"pin_id": range(n_dates), "created_at": dates})
    assert windows.test_start == derive_cutoff_date(pins)


def test_large_fractions_still_leave_a_train_and_a_validation_date():
    assert window_sizes(date_windows(days(4), 0.45, 0.5), days(4)) == {"train": 1, "validation": 1, "test": 2}


def test_no_usable_date_and_bad_fractions_are_errors():
    with pytest.raises(ValueError, match="no parseable date"):
        date_windows(pd.Series([None, "yesterday"]))
    with pytest.raises(ValueError, match="fractions"):
        date_windows(days(10), validation_fraction=0.5, test_fraction=0.5)


def test_window_of_sends_missing_and_unparseable_dates_to_test():
    windows = DateWindows(train_end="2026-01-05", test_start="2026-01-08")
    labels = windows.window_of(pd.Series(["2026-01-04", "2026-01-05", "2026-01-07", "2026-01-08", None, "2026-02-30"]))
    assert labels.tolist() == ["train", "validation", "validation", "test", "test", "test"]
    # Timestamps with a time of day count by their day.
    assert windows.window_of(pd.Series(pd.to_datetime(["2026-01-04 23:59"]))).tolist() == ["train"]
    with pytest.raises(ValueError):
        DateWindows(train_end="2026-01-09", test_start="2026-01-08")


def test_cold_items_need_no_interaction_and_no_save_before_the_cutoff():
    cutoff = "2026-01-10"
    interactions = pd.DataFrame({
        "pin_id": ["clicked_early", "shown_late", "bad_date", "cutoff_day"],
        "date": ["2026-01-02", "2026-01-12", "not-a-date", "2026-01-10"],
    })
    saves = pd.DataFrame({
        "pin_id": ["saved_early", "saved_late", "shown_late"],
        "saved_at": ["2026-01-09", "2026-01-10", "2026-01-15"],
    })
    items = ["clicked_early", "shown_late", "bad_date", "cutoff_day", "saved_early", "saved_late", "never_seen"]
    cold = cold_items(items, interactions, saves, cutoff)
    assert dict(zip(items, cold.tolist())) == {
        "clicked_early": False,  # an impression before the cut-off
        "shown_late": True,  # shown and saved, but only after
        "bad_date": True,  # an undatable event cannot warm an item
        "cutoff_day": True,  # the cut-off day is not before the cut-off
        "saved_early": False,  # a board save before the cut-off
        "saved_late": True,
        "never_seen": True,
    }
    # Other column names, and an array of ids.
    renamed = cold_items(np.array(["a", "b"]), pd.DataFrame({"item": ["a"], "day": ["2026-01-01"]}),
                         pd.DataFrame({"item": [], "at": []}), cutoff, item_col="item",
                         interaction_date_col="day", save_date_col="at")
    assert renamed.tolist() == [False, True]
