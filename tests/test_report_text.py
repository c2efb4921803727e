"""The shared sentences of every eval report: their values, signs and wording."""

import math
from types import SimpleNamespace

from mmpipe.eval.report import comparison_line, methods_legend, signed_points, times, windows_sentence


def test_windows_sentence_names_the_cutoffs_counts_and_gate_metric():
    windows = SimpleNamespace(train_end="2026-01-22", test_start="2026-01-25")
    counts = {"train": "848 queries", "validation": "88 queries over 44 videos", "test": "264 queries over 132 videos"}
    assert windows_sentence(windows, "video", counts, "F1/validation") == (
        "Windows by video creation date: train before **2026-01-22** (848 queries, the only ones training saw), "
        "validation 2026-01-22 to 2026-01-25 (88 queries over 44 videos: the promotion gate reads `F1/validation`), "
        "test from **2026-01-25** (264 queries over 132 videos).")


def test_points_and_ratios_say_sign_and_not_a_number():
    assert signed_points(0.1496) == "+15.0" and signed_points(-0.004) == "-0.4"
    assert signed_points(math.nan) == "n/a" and signed_points(None) == "n/a"
    assert times(1.5) == "1.50x" and times(math.inf) == "inf" and times(math.nan) == "n/a"


def test_comparison_line_and_legend():
    c = {"metric": "R1@0.7/test", "best_baseline": "query_frame_similarity", "model": 0.288, "baseline": 0.138,
         "ratio": 2.087, "ratio_ci": (1.74, 2.53), "difference": 0.1496, "difference_ci": (0.116, 0.186)}
    assert comparison_line(c) == ("R1@0.7/test: 0.288 vs best baseline query_frame_similarity 0.138: 2.09x "
                                  "(90% CI 1.74x to 2.53x), +15.0 points (90% CI +11.6 to +18.6)")
    assert methods_legend(["moment", "random"], {"moment": "model"}, {"random": "two random points"}) == [
        "- **moment** (model)", "- **random** (other): two random points"]
