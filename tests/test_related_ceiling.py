"""The related-pins ceiling: the save model's probabilities by hand, against the generator's own
draws, and its ranking on the tiny world against random and attribute-equality rankings."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from mmpipe import layout
from mmpipe.eval.ranking import ranking_metrics_per_query, summarise, top_k, top_k_from_scores
from mmpipe.eval.related_ceiling import (
    SaveProbabilities,
    board_mate_relevance,
    board_membership,
    ceiling_scores,
    cohort_save_probabilities,
    inclusion_probabilities,
    load_save_probabilities,
    related_pins_ceiling,
    save_probabilities,
    saves_so_far_popularity,
)
from mmpipe.eval.splits import date_windows
from mmpipe.world.advance import advance, good_rows, value_index
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from mmpipe.world.pins import EXTRA_BOARDS_PER_PIN, SAVED_PIN_FRACTION, pick_boards

LAMBDA = EXTRA_BOARDS_PER_PIN  # a saved pin goes to K = 1 + Poisson(0.7) boards
P_ONE_BOARD = math.exp(-LAMBDA)  # P(K = 1) = e^-0.7 = 0.4966
P_TWO_BOARDS = LAMBDA * math.exp(-LAMBDA)  # P(K = 2) = 0.3476


# --- the save model by hand ----------------------------------------------------------------


def test_two_candidate_boards_by_hand():
    # Weights 2 and 1. K = 1: board 0 with 2/3, board 1 with 1/3; K >= 2: both.
    # P0 = e^-0.7 * 2/3 + (1 - e^-0.7) = 0.8345;  P1 = e^-0.7 * 1/3 + (1 - e^-0.7) = 0.6689
    expected = [P_ONE_BOARD * 2 / 3 + 1 - P_ONE_BOARD, P_ONE_BOARD / 3 + 1 - P_ONE_BOARD]
    np.testing.assert_allclose(inclusion_probabilities(np.array([2.0, 1.0])), expected, rtol=1e-9)
    np.testing.assert_allclose(inclusion_probabilities(np.array([5.0])), [1.0], rtol=1e-9)


def test_three_candidate_boards_by_hand():
    # Weights 3, 2, 1 (total 6). Two boards drawn without replacement include board j with
    #   P2(j) = w_j/6 + sum_{i != j} (w_i/6) * w_j / (6 - w_i)
    #   P2(0) = 3/6 + (2/6)(3/4) + (1/6)(3/5) = 0.5 + 0.25 + 0.1 = 0.85
    #   P2(1) = 2/6 + (3/6)(2/3) + (1/6)(2/5) = 0.3333 + 0.3333 + 0.0667 = 0.7333
    #   P2(2) = 1/6 + (3/6)(1/3) + (2/6)(1/4) = 0.1667 + 0.1667 + 0.0833 = 0.4167
    # and P(j) = P(K=1) w_j/6 + P(K=2) P2(j) + P(K>=3) * 1.
    one, two = np.array([3, 2, 1]) / 6, np.array([0.85, 0.7 + 1 / 30, 5 / 12])
    expected = P_ONE_BOARD * one + P_TWO_BOARDS * two + (1 - P_ONE_BOARD - P_TWO_BOARDS)
    np.testing.assert_allclose(inclusion_probabilities(np.array([3.0, 2.0, 1.0])), expected, rtol=1e-9)


def test_inclusion_probabilities_add_up_to_the_expected_number_of_boards():
    weights = 1.0 / (1.0 + np.random.default_rng(0).permutation(300)) ** 1.1  # Zipf, as the world's
    assert inclusion_probabilities(weights).sum() == pytest.approx(1 + LAMBDA, rel=1e-9)


def test_inclusion_probabilities_match_the_generators_own_board_picks():
    # 20000 pins with the same main object: pick_boards' pick frequencies converge to the model.
    themes = np.full((4, len(ATTRIBUTE_NAMES)), -1)  # four boards every pin fits
    popularity = np.array([1.0, 0.5, 0.3, 0.05])
    members = pick_boards(np.zeros((20_000, len(ATTRIBUTE_NAMES)), dtype=np.int64), themes, popularity,
                          np.random.default_rng(0))
    frequency = np.array([len(m) for m in members]) / 20_000
    # The binomial standard error is below 0.0036; allow about four of them.
    np.testing.assert_allclose(frequency, SAVED_PIN_FRACTION * inclusion_probabilities(popularity), atol=0.015)


def hand_world() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three boards and three pins: board 0 is shape 0, board 1 color 0, board 2 shape 1.
    Pin A (shape 0, color 0) fits boards 0 and 1, pin B (shape 0, color 1) fits board 0,
    pin C (shape 1, color 1) fits board 2. Popularity 2, 1, 1."""
    themes = np.full((3, len(ATTRIBUTE_NAMES)), -1)
    themes[0, 0], themes[1, 1], themes[2, 0] = 0, 0, 1
    main_values = np.zeros((3, len(ATTRIBUTE_NAMES)), dtype=np.int64)
    main_values[1, 1] = 1
    main_values[2, :2] = 1
    return main_values, themes, np.array([2.0, 1.0, 1.0])


def test_cohort_save_probabilities_by_hand():
    main_values, themes, popularity = hand_world()
    table, row_of_pin = cohort_save_probabilities(main_values, themes, popularity, off_theme_rate=0.1)
    probs = table[row_of_pin]
    # Pin A: 0.9 x (0.8345, 0.6689) from the two-board case; B and C: their only board, 0.9.
    a0 = SAVED_PIN_FRACTION * (P_ONE_BOARD * 2 / 3 + 1 - P_ONE_BOARD)  # 0.7510
    a1 = SAVED_PIN_FRACTION * (P_ONE_BOARD / 3 + 1 - P_ONE_BOARD)  # 0.6020
    # Off theme: a board's expected on-theme saves x 0.1/0.9, spread over the pins that don't fit:
    #   board 0: (0.7510 + 0.9)/9 over pin C;  board 1: 0.6020/9 over B and C;  board 2: 0.9/9 over A and B.
    expected = np.array([
        [a0, a1, 0.9 / 9 / 2],
        [0.9, a1 / 9 / 2, 0.9 / 9 / 2],
        [(a0 + 0.9) / 9, a1 / 9 / 2, 0.9],
    ])
    np.testing.assert_allclose(probs, expected, rtol=1e-9)
    fits = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=bool)
    for b in range(3):  # every board prefers the pins that fit it
        assert probs[fits[:, b], b].min() > probs[~fits[:, b], b].max()


def test_ceiling_scores_by_hand_and_the_query_is_excluded():
    main_values, themes, popularity = hand_world()
    table, row_of_pin = cohort_save_probabilities(main_values, themes, popularity, off_theme_rate=0.1)
    probs = SaveProbabilities(pin_ids=["A", "B", "C"], board_ids=["b0", "b1", "b2"], row_of_pin=row_of_pin,
                              table=table)
    p = probs.dense()
    # A query on boards 0 and 1: score = 1 - (1 - P(c, b0)) (1 - P(c, b1)).
    scores = ceiling_scores([[0, 1]], probs)
    np.testing.assert_allclose(scores[0], 1 - (1 - p[:, 0]) * (1 - p[:, 1]), rtol=1e-12)
    # Pin A (row 0) on board 0 and 1: B fits board 0, C fits neither.
    np.testing.assert_array_equal(related_pins_ceiling(np.array([0]), [[0, 1]], probs, k=2), [[1, 2]])


def test_board_mates_are_graded_by_shared_boards_and_exclude_the_query():
    saves = pd.DataFrame({"board_id": ["b0", "b0", "b0", "b1", "b1", "b0", "bX"],
                          "pin_id": ["A", "B", "C", "A", "B", "A", "C"]})  # a repeat and an unknown board
    membership = board_membership(saves, ["A", "B", "C", "D"], ["b0", "b1"])
    assert membership.toarray().tolist() == [[1, 1], [1, 1], [1, 0], [0, 0]]
    relevance = board_mate_relevance(membership, np.array([0, 2]))
    assert relevance.toarray().tolist() == [[0, 2, 1, 0], [1, 1, 0, 0]]


def test_saves_so_far_popularity_ranks_by_saves_ties_to_the_earlier_board():
    # Saves 5, 9, 5, 0: ranks 1, 0, 2, 3; Zipf 1 / (1 + rank)^1.1.
    expected = 1.0 / (1.0 + np.array([1, 0, 2, 3])) ** 1.1
    np.testing.assert_allclose(saves_so_far_popularity(np.array([5, 9, 5, 0])), expected)


# --- the tiny world ------------------------------------------------------------------------


def truth(root, name: str) -> pd.DataFrame:
    return pd.read_parquet(layout.truth_path(root, name))


def test_replay_refuses_a_world_whose_themes_it_cannot_reproduce(tiny_world):
    themes = truth(tiny_world, "board_themes")
    attribute, value = themes.loc[0, ["attribute", "value"]]
    themes.loc[0, "value"] = next(v for v in ATTRIBUTES[attribute] if v != value)
    world = json.loads(layout.truth_path(tiny_world, "world").read_text())
    with pytest.raises(ValueError, match="does not give back"):
        save_probabilities(truth(tiny_world, "pin_objects"), themes, truth(tiny_world, "board_saves"), world)


def test_probabilities_are_calibrated_on_the_tiny_world_and_an_advanced_one(tiny_world, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(tiny_world, root)
    advance(root, days=2, progress=False)
    n_generated = json.loads(layout.truth_path(tiny_world, "world").read_text())["config"]["n_pins"]
    for world_root, advanced in ((tiny_world, False), (root, True)):
        probs = load_save_probabilities(world_root)
        assert (len(probs.pin_ids) > n_generated) == advanced
        saved = board_membership(truth(world_root, "board_saves"), probs.pin_ids, probs.board_ids).toarray() > 0
        expected = probs.dense()
        # Expected saves match the realised ones, for the generated and the advanced pins alike.
        for rows in (slice(0, n_generated), slice(n_generated, None)):
            assert expected[rows].sum() == pytest.approx(saved[rows].sum(), rel=0.2, abs=1.0)
        assert expected[saved].mean() > 10 * expected[~saved].mean()


def test_ceiling_beats_random_and_attribute_equality_on_the_tiny_world(tiny_world):
    probs = load_save_probabilities(tiny_world)
    pins = good_rows(pd.read_parquet(layout.raw_table_path(tiny_world, "pins")), truth(tiny_world, "bad_records"),
                     "pins").set_index("pin_id").loc[probs.pin_ids]
    membership = board_membership(pd.read_parquet(layout.raw_table_path(tiny_world, "board_pins")), probs.pin_ids,
                                  probs.board_ids)
    test_pins = np.flatnonzero(date_windows(pins["created_at"]).window_of(pins["created_at"]) == "test")
    relevance = board_mate_relevance(membership, test_pins)
    has_mates = np.diff(relevance.indptr) > 0
    queries, relevance = test_pins[has_mates], relevance[has_mates]
    assert len(queries) >= 20
    k, n_pins = 10, len(probs.pin_ids)

    def metrics(ranked: np.ndarray) -> dict[str, float]:
        return summarise(ranking_metrics_per_query(ranked, relevance, k))

    ranked = related_pins_ceiling(queries, membership[queries], probs, k)
    # The grouped path (scores per row of the truth's table) is the full-scores path exactly.
    full = ceiling_scores(membership[queries], probs)
    np.testing.assert_array_equal(ranked, top_k_from_scores(lambda start, stop: full[start:stop], len(queries), k,
                                                            exclude=queries))
    ceiling = metrics(ranked)
    rng = np.random.default_rng(0)
    random = [metrics(top_k_from_scores(lambda start, stop: rng.random((stop - start, n_pins)), len(queries), k,
                                        exclude=queries)) for _ in range(10)]
    random_ndcg = float(np.mean([r["ndcg"] for r in random]))
    # Attribute equality: the number of main-object attributes a candidate shares with the query,
    # as the inner product of one-hot attribute vectors.
    objects = truth(tiny_world, "pin_objects")
    values = value_index(objects[objects["object_index"] == 0].set_index("pin_id").loc[probs.pin_ids])
    one_hot = np.concatenate([np.eye(values[:, a].max() + 1)[values[:, a]] for a in range(values.shape[1])], axis=1)
    attributes = metrics(top_k(one_hot[queries], one_hot, k, exclude=queries))

    assert ceiling["ndcg"] > 3 * random_ndcg
    assert ceiling["ndcg"] > attributes["ndcg"] + 0.1
    assert ceiling["precision"] > attributes["precision"]
    assert ceiling["hit"] >= attributes["hit"]
