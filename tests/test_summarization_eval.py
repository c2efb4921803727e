"""The QFVS protocol (mmpipe.eval.summarization) on hand-computed cases, the matching against
a brute-force reference, the length budget, and the summary files' round trip."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from mmpipe.eval.summarization import (
    LengthBudget,
    SummaryShot,
    VideoSummary,
    concept_iou,
    concept_similarity,
    matched_weight,
    mean_metrics,
    qfvs_score,
    read_summaries,
    reference_shots,
    score_summaries,
    select_shots,
    uniform_selection,
    write_summaries,
)

# Shots of one video, by position: what each shows.
SHOTS = [{"a", "b", "c", "d"}, {"a", "e"}, {"a", "b", "c", "e"}, {"a", "b", "c", "d", "f"}, set()]


def test_concept_iou_by_hand():
    assert concept_iou({"red", "star"}, {"red", "star"}) == 1.0
    assert concept_iou({"red", "star", "striped"}, {"red"}) == pytest.approx(1 / 3)
    assert concept_iou({"red"}, {"blue"}) == 0.0
    assert concept_iou(set(), {"red"}) == 0.0
    assert concept_iou(set(), set()) == 0.0  # a shot showing nothing matches nothing
    assert concept_similarity([{"a"}], []).shape == (1, 0)


def test_the_matching_pairs_shots_one_to_one_for_the_most_weight():
    # Selected shots 2 and 3 against reference shots 0 and 1 (positions in SHOTS):
    #   2-0: |abc|/|abcde| = 0.6   2-1: |ae|/|abce| = 0.5
    #   3-0: |abcd|/|abcdf| = 0.8  3-1: |a|/|abcdef| = 1/6
    # Pairing 2-1 and 3-0 weighs 1.3, the other pairing 0.6 + 1/6; shot 3 cannot be
    # matched to both references. P = R = 1.3 / 2.
    similarity = concept_similarity([SHOTS[2], SHOTS[3]], [SHOTS[0], SHOTS[1]])
    np.testing.assert_allclose(similarity, [[0.6, 0.5], [0.8, 1 / 6]])
    assert matched_weight(similarity) == pytest.approx(1.3)
    score = qfvs_score([2, 3], [0, 1], SHOTS)
    assert (score.precision, score.recall, score.f1) == pytest.approx((0.65, 0.65, 0.65))


def test_precision_and_recall_divide_by_their_own_counts():
    # A third selected shot that shows nothing adds no weight: P = 1.3/3, R = 1.3/2,
    # F1 = 2PR/(P+R) = 338/650 = 0.52.
    score = qfvs_score([4, 2, 3], [0, 1], SHOTS)
    assert score.precision == pytest.approx(13 / 30)
    assert score.recall == pytest.approx(13 / 20)
    assert score.f1 == pytest.approx(0.52)


def test_edge_cases():
    assert qfvs_score([0, 1], [1, 0], SHOTS).as_dict() == {"precision": 1.0, "recall": 1.0, "F1": 1.0}
    assert qfvs_score([0, 0, 0], [0], SHOTS).f1 == 1.0  # a shot listed twice counts once
    assert qfvs_score([], [0], SHOTS).as_dict() == {"precision": 0.0, "recall": 0.0, "F1": 0.0}
    assert qfvs_score([4], [0], SHOTS).f1 == 0.0  # nothing in common: P + R = 0
    with pytest.raises(ValueError, match="at least one reference shot"):
        qfvs_score([0], [], SHOTS)
    with pytest.raises(ValueError, match=r"shots \[7\] are not among the video's 5 shots"):
        qfvs_score([7], [0], SHOTS)


def brute_force_matching(similarity: np.ndarray) -> float:
    """The obvious reference: the best of every way to pair rows with distinct columns."""
    rows, cols = similarity.shape
    if rows > cols:
        return brute_force_matching(similarity.T)
    return max(sum(similarity[r, c] for r, c in zip(range(rows), perm))
               for perm in itertools.permutations(range(cols), rows))


def test_matching_equals_the_brute_force_reference_on_random_concept_sets():
    rng = np.random.default_rng(0)
    words = list("abcdefgh")
    for _ in range(60):
        shots = [set(rng.choice(words, size=rng.integers(0, 5), replace=False)) for _ in range(7)]
        selected = rng.choice(7, size=rng.integers(1, 5), replace=False)
        reference = rng.choice(7, size=rng.integers(1, 5), replace=False)
        similarity = concept_similarity([shots[s] for s in selected], [shots[r] for r in reference])
        assert matched_weight(similarity) == pytest.approx(brute_force_matching(similarity))
        score = qfvs_score(selected, reference, shots)
        assert score.precision == pytest.approx(brute_force_matching(similarity) / len(selected))


def test_share_budget_rounds_half_up_and_keeps_at_least_one_shot():
    budget = LengthBudget(shots_share=0.4)
    assert [budget.max_shots(n) for n in (1, 2, 4, 5, 6, 10)] == [1, 1, 2, 2, 2, 4]
    assert LengthBudget(shots_share=0.25).max_shots(2) == 1  # 0.5 rounds up
    assert LengthBudget(shots_share=0.3).max_shots(5) == 2  # 1.5 rounds up
    assert LengthBudget(shots_share=1.0).max_shots(3) == 3


def test_budget_settings_are_checked():
    with pytest.raises(ValueError, match="give exactly one"):
        LengthBudget()
    with pytest.raises(ValueError, match="give exactly one"):
        LengthBudget(shots_share=0.4, seconds=5.0)
    with pytest.raises(ValueError, match=r"shots_share must be in \(0, 1\]"):
        LengthBudget(shots_share=1.5)
    with pytest.raises(ValueError, match="seconds must be positive"):
        LengthBudget(seconds=0)
    with pytest.raises(ValueError, match="unknown budget keys"):
        LengthBudget.from_dict({"percent": 40})
    assert LengthBudget.from_dict({"seconds": 6.0}) == LengthBudget(seconds=6.0)


def test_selection_keeps_the_best_scores_in_time_order_ties_to_the_earlier_shot():
    ones = [1.0] * 6
    assert select_shots([0.2, 0.9, 0.1, 0.8, 0.3, 0.7], ones, LengthBudget(shots_share=0.5)).tolist() == [1, 3, 5]
    assert select_shots([0.5] * 6, ones, LengthBudget(shots_share=0.5)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="finite"):
        select_shots([np.nan, 1.0], [1.0, 1.0], LengthBudget(shots_share=0.5))


def test_seconds_budget_skips_shots_that_do_not_fit_and_never_returns_nothing():
    durations = [4.0, 1.0, 2.0, 1.5]
    scores = [0.9, 0.8, 0.7, 0.6]
    # 4 s does not fit in 3.6 s; then 1 + 2 = 3; 1.5 more would be 4.5.
    assert select_shots(scores, durations, LengthBudget(seconds=3.6)).tolist() == [1, 2]
    assert select_shots(scores, durations, LengthBudget(seconds=0.5)).tolist() == [0]


def test_uniform_selection_spreads_the_budget_over_the_video():
    assert uniform_selection([1.0] * 10, LengthBudget(shots_share=0.3)).tolist() == [1, 5, 8]
    assert uniform_selection([1.0] * 4, LengthBudget(shots_share=0.25)).tolist() == [2]
    # seconds: the most evenly spaced shots that fit (3 of 1 s each)
    assert uniform_selection([1.0] * 6, LengthBudget(seconds=3.2)).tolist() == [1, 3, 5]


def _summary(video_id="v1", query_id="v1_s1", ids=(0, 2), budget=LengthBudget(shots_share=0.4)):
    starts = {0: 0.0, 1: 2.0, 2: 3.5, 3: 5.0, 4: 6.0}
    return VideoSummary(video_id, "red, striped",
                        tuple(SummaryShot(i, starts[i], starts[i] + 1.0, score=0.5 + i / 10) for i in ids),
                        query_id, budget)


def test_summary_files_round_trip_and_say_what_is_wrong(tmp_path):
    summaries = [_summary(), _summary("v2", None, (1,), LengthBudget(seconds=6.0)), _summary(ids=(3,), budget=None)]
    path = write_summaries(tmp_path / "s.json", summaries, model="chan version 3")
    document = json.loads(path.read_text())
    assert document["format"] == "mmpipe.video_summaries" and document["model"] == "chan version 3"
    assert document["summaries"][0]["shots"][1] == {"shot_id": 2, "start_s": 3.5, "end_s": 4.5, "score": 0.7}
    assert read_summaries(path) == summaries

    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a mmpipe.video_summaries file"):
        read_summaries(path)
    path.write_text(json.dumps({"format": "mmpipe.video_summaries", "version": 9, "summaries": []}))
    with pytest.raises(ValueError, match="version 9"):
        read_summaries(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_summaries(path)
    with pytest.raises(ValueError, match="in time order"):
        VideoSummary("v1", "q", (SummaryShot(2, 3.5, 4.5), SummaryShot(0, 0.0, 1.0)))
    with pytest.raises(ValueError, match="a shot needs shot_id, start_s and end_s"):
        VideoSummary.from_dict({"video_id": "v1", "query": "q", "shots": [{"shot_id": 1}]})


def test_score_summaries_scores_a_file_by_shot_ids_against_the_references():
    video_shots = pd.DataFrame({"video_id": ["v1"] * 5, "shot_index": [0, 1, 2, 3, 4],
                                "start_s": [0.0, 2.0, 3.5, 5.0, 6.0],
                                "concepts": [sorted(s) for s in SHOTS]}).sample(frac=1, random_state=0)
    shots = reference_shots(video_shots)  # back in time order
    assert shots["v1"].shot_ids == (0, 1, 2, 3, 4)
    relevant = {("v1", "v1_s1"): [0, 1], ("v1", "v1_s2"): [3]}
    # second query: shots 2, 3, 4 against shot 3 alone: 3 matches itself (1.0), W = 1,
    # P = 1/3, R = 1, F1 = 0.5
    table = score_summaries([_summary(ids=(2, 3)), _summary(query_id="v1_s2", ids=(2, 3, 4))], relevant, shots)
    assert table["F1"].tolist() == pytest.approx([0.65, 0.5])
    assert mean_metrics(table)["F1"] == pytest.approx(table["F1"].mean())
    with pytest.raises(KeyError, match="no reference for video 'v1' query 'v1_s9'"):
        score_summaries([_summary(query_id="v1_s9")], relevant, shots)
    with pytest.raises(ValueError, match=r"summary v1/v1_s1: shots \[9\] are not shots of the video"):
        score_summaries([VideoSummary("v1", "q", (SummaryShot(9, 7.0, 8.0),), "v1_s1")], relevant, shots)


def test_doctests():
    import doctest

    import mmpipe.eval.summarization as summarization

    assert doctest.testmod(summarization).failed == 0
