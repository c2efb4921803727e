"""PinCLIP's evaluation protocol: windows, related-pins queries, the ceiling, text search, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mmpipe.eval.report import write_report
from mmpipe.eval.retrieval import relative_gain
from mmpipe.graph.pairs import derive_cutoff_date
from mmpipe.systems.pinclip.data import holdout_split
from mmpipe.systems.pinclip.eval import (
    CEILING_NAME,
    COLD,
    TEST,
    UNSEEN,
    VALIDATION,
    EmbeddingSet,
    attribute_match,
    attribute_queries,
    ceiling_ranked,
    main_objects,
    pinclip_report,
    random_baseline,
    related_pins_protocol,
    score_methods,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _day(i: int) -> str:
    return f"2026-01-{i:02d}"


# ---------------------------------------------------------------------------------------
# windows


def test_holdout_split_has_three_date_windows_and_test_is_the_pair_cutoff():
    pins = pd.DataFrame({"pin_id": [f"p{i:02d}" for i in range(30)], "created_at": [_day(1 + i) for i in range(30)]})
    pins.loc[5, "created_at"] = None  # undated: cannot be shown to predate anything
    split = holdout_split(pins)

    assert split.windows.train_end == _day(22) and split.cutoff_date == _day(22)
    assert split.windows.test_start == _day(25) == derive_cutoff_date(pins)
    assert split.train_ids == [f"p{i:02d}" for i in range(21) if i != 5]
    assert split.validation_ids == ["p21", "p22", "p23"]
    assert split.test_ids == ["p05", *[f"p{i}" for i in range(24, 30)]]
    with pytest.raises(ValueError, match="unique"):
        holdout_split(pd.concat([pins, pins.head(1)]))


# ---------------------------------------------------------------------------------------
# the related-pins protocol on a hand-worked world


def _world():
    """Ten days, two pins a day: a-pins (even) on board A, b-pins (odd) on board B; the
    last test pin also on board C with one train pin, and one validation pin on no board.
    With 10 days the windows are 7 train days, 1 validation day, 2 test days."""
    ids = [f"{'ab'[i % 2]}{i:02d}" for i in range(20)]
    pins = pd.DataFrame({"pin_id": ids, "created_at": [_day(1 + i // 2) for i in range(20)]})
    saves = [("A", pin) for pin in ids if pin.startswith("a")] + [("B", pin) for pin in ids if pin.startswith("b")]
    saves = [save for save in saves if save[1] != "a14"]  # a validation pin no one saved
    saves += [("C", "b19"), ("C", "a00")]
    board_pins = pd.DataFrame(saves, columns=["board_id", "pin_id"])
    board_pins["saved_at"] = board_pins["pin_id"].map(pins.set_index("pin_id")["created_at"])  # saved when made
    # Only b17 and a16 were ever shown to a user.
    interactions = pd.DataFrame({"pin_id": ["b17", "a16"], "date": [_day(10), _day(10)], "clicked": [0, 1]})
    return ids, pins, board_pins, interactions


def test_protocol_queries_relevance_and_subsets():
    ids, pins, board_pins, interactions = _world()
    protocol = related_pins_protocol(pins, board_pins, interactions)

    assert protocol.windows.train_end == _day(8) and protocol.windows.test_start == _day(9)
    rows = {name: [ids[r] for r in qs.rows] for name, qs in protocol.query_sets.items()}
    assert rows[VALIDATION] == ["b15"]  # a14 has no board-mate: not evaluable
    assert protocol.query_sets[VALIDATION].candidates == 2
    assert rows[TEST] == ["a16", "b17", "a18", "b19"]
    assert rows[COLD] == rows[TEST]  # created after the cut-off: nothing dated before it
    assert rows[UNSEEN] == ["a18", "b19"]  # never shown
    # b19 shares board B with every other b-pin and boards B and C with nobody twice; a00 via C.
    relevance = protocol.query_sets[TEST].relevance[3].toarray()[0]
    expected = {pin: 1.0 for pin in ids if pin.startswith("b") and pin != "b19"} | {"a00": 1.0}
    assert {ids[c]: g for c, g in enumerate(relevance) if g} == expected


def test_scores_of_a_perfect_and_an_inverted_embedding():
    ids, pins, board_pins, interactions = _world()
    protocol = related_pins_protocol(pins, board_pins, interactions)
    # Dims 0/1: board A/B; dim 2: a14 (on no board); dims 3-6: one per test pin, below.
    board = np.zeros((len(ids), 7))
    board[:, 0] = [pin.startswith("a") for pin in ids]
    board[:, 1] = [pin.startswith("b") for pin in ids]
    board[ids.index("a14")] = [0, 0, 1, 0, 0, 0, 0]  # on no board: far from everyone
    board[:, 1:3] += 0.001 * (20 - np.arange(len(ids)))[:, None]  # no ties; a00 least like [1, 0, ...]
    perfect = EmbeddingSet("perfect", ids, board, image=board, text=board[::-1])
    # Every test pin moved to the other board's cluster, on an axis of its own so test pins
    # are not close to each other: its top 3 are strangers (b19's are a12, a10, a08, not a00).
    moved = board.copy()
    for axis, pin in enumerate(("a16", "b17", "a18", "b19")):
        row = ids.index(pin)
        moved[row] = 0.0
        moved[row, 1 if pin.startswith("a") else 0] = 1.0
        moved[row, 3 + axis] = 2.0
    inverted = EmbeddingSet("inverted", ids, moved)

    scores = score_methods([perfect, inverted], protocol, k=3)
    good, bad = scores.metrics["perfect"], scores.metrics["inverted"]
    assert good["nDCG@3/test"] == 1.0 and good["hit@3/test"] == 1.0 and good["P@3/test"] == 1.0
    # b19's nine relevant pins: three found, R@3 = 3/10 (a00 via board C counts too).
    assert scores.per_query["perfect"][TEST]["recall"][3] == pytest.approx(3 / 10)
    assert bad["nDCG@3/test"] == 0.0 and bad["hit@3/test"] == 0.0
    assert good["queries/validation"] == 1 and good["queries/unseen"] == 2
    # Text search over the 4 test pins: every caption lands on another pin's image.
    assert good["text_to_image/R@1"] == 0.0
    assert "text_to_image/R@1" not in bad  # no towers, no text search

    with pytest.raises(ValueError, match="exactly the protocol's 20 pins"):
        score_methods([EmbeddingSet("partial", ids[:-1], board[:-1])], protocol)
    with pytest.raises(ValueError, match="one row per id"):
        EmbeddingSet("short", ids, board[:3])


def test_attribute_queries_compose_attributes_and_find_the_matching_pins():
    main = pd.DataFrame({"color": ["blue", "blue", "red", "blue"], "pattern": ["striped"] * 4,
                         "shape": ["star", "star", "star", "circle"]})
    queries = attribute_queries(main, min_relevant=1)
    assert queries.texts == ["a blue striped circle", "a blue striped star", "a red striped star"]
    assert queries.relevance.toarray().tolist() == [[0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0]]
    assert attribute_queries(main, min_relevant=2).texts == ["a blue striped star"]


# ---------------------------------------------------------------------------------------
# the tiny world: ceiling > attribute reference > chance


@pytest.fixture(scope="module")
def tiny_eval(tiny_world):
    from mmpipe.eval.related_ceiling import load_save_probabilities
    from mmpipe.layout import truth_path
    from mmpipe.schemas.validate import validate_world

    tables = validate_world(tiny_world)
    pins = tables["pins"].valid.reset_index(drop=True)
    protocol = related_pins_protocol(pins, tables["board_pins"].valid, tables["interactions"].valid)
    truth = pd.read_parquet(truth_path(tiny_world, "pin_objects"))
    themes = pd.read_parquet(truth_path(tiny_world, "board_themes"))
    ids = protocol.ids
    sets = [attribute_match(ids, truth, themes), random_baseline(ids, 32, seed=0)]
    ceiling = ceiling_ranked(protocol, load_save_probabilities(tiny_world))
    queries = attribute_queries(main_objects(truth, [ids[r] for r in protocol.window_pins[TEST]]), min_relevant=1)
    return {"protocol": protocol, "scores": score_methods(sets, protocol, ceiling, queries), "queries": queries}


def test_tiny_world_ceiling_beats_the_attribute_reference_which_beats_chance(tiny_eval):
    metrics = tiny_eval["scores"].metrics
    for subset in (VALIDATION, TEST):
        key = f"nDCG@10/{subset}"
        assert metrics["random"][f"queries/{subset}"] >= 10
        assert metrics[CEILING_NAME][key] > metrics["attribute_match"][key] > 1.5 * metrics["random"][key]
        assert metrics[CEILING_NAME][f"hit@10/{subset}"] > 0.8
    # Random text queries find the composed attributes about as often as chance allows.
    assert metrics["random"]["attribute_query/nDCG@10"] < 0.5
    assert tiny_eval["queries"].texts[0].startswith("a ")


# ---------------------------------------------------------------------------------------
# the report


def test_report_gains_are_over_the_best_baseline_with_intervals_and_the_gap_to_the_ceiling(tiny_eval, tmp_path):
    scores, protocol = tiny_eval["scores"], tiny_eval["protocol"]
    # The attribute reference plays the model here, random the only baseline.
    markdown, plots, summary = pinclip_report(scores, protocol, model="attribute_match", baselines=["random"],
                                              descriptions={"random": "chance, as given."})
    key = "nDCG@10/test"
    model, baseline = scores.metrics["attribute_match"][key], scores.metrics["random"][key]
    ceiling = scores.metrics[CEILING_NAME][key]
    assert summary["best_baseline"][key] == "random"
    assert summary["gains"][key] == pytest.approx(relative_gain(model, baseline))
    assert summary["gap_closed"][key] == pytest.approx((model - baseline) / (ceiling - baseline))
    low, high = summary["gain_ci"][key]
    assert 0 < low <= summary["gains"][key] <= high
    assert summary["primary_metrics"][0] == key and "nDCG@10/validation" in summary["primary_metrics"]
    assert markdown.startswith("# PinCLIP evaluation: attribute_match")
    assert f"**Related pins, test window: nDCG@10 {model:.3f}**" in markdown
    assert "chance, as given." in markdown and f"**{CEILING_NAME}** (ceiling)" in markdown
    assert set(plots) == {"related_ndcg_test", "related_ndcg_unseen"}
    assert all(png.startswith(PNG_MAGIC) for png in plots.values())

    paths = write_report(tmp_path, "pinclip_eval", markdown, plots, summary)
    written = json.loads(paths["metrics"].read_text())
    assert written["gains"][key] == pytest.approx(summary["gains"][key])
    assert written["windows"] == {"train_end": protocol.windows.train_end, "test_start": protocol.windows.test_start}

    with pytest.raises(ValueError, match="no metrics"):
        pinclip_report(scores, protocol, model="attribute_match", baselines=["missing"])
    with pytest.raises(ValueError, match="own baselines"):
        pinclip_report(scores, protocol, model="random", baselines=["random"])
    assert math.isfinite(summary["gains"]["hit@10/unseen"])
