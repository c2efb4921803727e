"""The fixed-span prior of mmpipe.eval.moment against hand-made query sets."""

import numpy as np
import pytest

from mmpipe.eval.moment import best_fixed_span_prior, best_window_iou


def test_a_query_scores_against_its_best_window():
    assert best_window_iou((2.0, 4.0), [[0.0, 1.0], [2.0, 5.0]]) == pytest.approx(2 / 3)
    assert best_window_iou((0.0, 1.0), [[0.0, 1.0], [2.0, 5.0]]) == 1.0
    with pytest.raises(ValueError, match="at least one true window"):
        best_window_iou((0.0, 1.0), [])


def test_windows_at_the_same_share_of_every_video_are_found_by_a_relative_span():
    durations = [10.0, 20.0, 40.0]
    windows = [[[2.0, 6.0]], [[4.0, 12.0]], [[8.0, 24.0]]]  # [0.2, 0.6] of each
    prior = best_fixed_span_prior(windows, durations)
    assert prior.relative and prior.recall == 1.0
    assert best_window_iou((prior.start, prior.end), [[0.2, 0.6]]) >= 0.7


def test_windows_at_the_same_seconds_are_found_by_an_absolute_span():
    prior = best_fixed_span_prior([[[1.0, 3.0]], [[1.0, 3.0]], [[1.0, 3.0]]], [4.0, 10.0, 30.0])
    assert not prior.relative and prior.recall == 1.0


def test_spread_out_windows_leave_any_fixed_span_low_and_the_span_scores_elsewhere():
    rng = np.random.default_rng(0)
    durations = rng.uniform(10, 20, 400)
    starts = rng.uniform(0, 0.8, 400) * durations
    lengths = np.exp(rng.uniform(np.log(1.0), np.log(6.0), 400))
    windows = [[[s, min(s + n, d)]] for s, n, d in zip(starts, lengths, durations)]
    prior = best_fixed_span_prior(windows[:200], durations[:200])
    assert prior.recall < 0.25
    held_out = prior.recall_on(windows[200:], durations[200:])
    assert 0.0 <= held_out <= prior.recall + 0.1
    # one query scored by hand: the prior's span on a video of one query
    span = np.array([prior.start, prior.end]) * (durations[0] if prior.relative else 1.0)
    expected = float(best_window_iou(span, windows[0]) >= 0.7)
    assert prior.recall_on(windows[:1], durations[:1]) == expected
