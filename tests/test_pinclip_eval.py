"""PinCLIP's evaluation protocol: split, neighbors, oracle and baselines, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mmpipe.systems.pinclip.data import HoldoutSplit, holdout_split
from mmpipe.systems.pinclip.eval import (
    EmbeddingSet,
    attribute_oracle,
    attribute_weights,
    board_neighbors,
    evaluate_embeddings,
    minilm_caption_baseline,
    pinclip_report,
    random_baseline,
)
from mmpipe.eval.report import write_report
from mmpipe.eval.retrieval import relative_gain
from mmpipe.graph.pairs import derive_cutoff_date
from mmpipe.world.attributes import ATTRIBUTE_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# split and neighbors


def _pins(dates: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"pin_id": list(dates), "created_at": list(dates.values())})


def test_holdout_split_by_date_without_leakage():
    pins = _pins({
        "p1": "2026-01-01", "p2": "2026-01-02", "p3": "2026-01-03",
        "p4": "2026-01-04", "p5": "2026-01-04", "p6": "2026-01-05",
    })
    # p4 was shown (never clicked): warm. p2 was never shown but is a training pin: not cold.
    interactions = pd.DataFrame({
        "pin_id": ["p1", "p1", "p4"], "clicked": [1, 0, 0], "date": ["2026-01-05"] * 3,
    })
    split = holdout_split(pins, interactions, cutoff_date="2026-01-04")

    assert split == HoldoutSplit(
        cutoff_date="2026-01-04",
        train_ids=["p1", "p2", "p3"],
        heldout_ids=["p4", "p5", "p6"],
        cold_ids=["p5", "p6"],
    )
    created = pins.set_index("pin_id")["created_at"]
    assert created[split.train_ids].max() < split.cutoff_date <= created[split.heldout_ids].min()


def test_holdout_split_defaults_to_the_pair_cutoff():
    dates = {f"p{i}": f"2026-01-{1 + i // 2:02d}" for i in range(20)}  # 10 days, 2 pins a day
    pins = _pins(dates)
    split = holdout_split(pins, pd.DataFrame({"pin_id": ["p19"]}))

    assert split.cutoff_date == derive_cutoff_date(pins) == "2026-01-09"
    assert split.heldout_ids == ["p16", "p17", "p18", "p19"]
    assert split.cold_ids == ["p16", "p17", "p18"]
    with pytest.raises(ValueError, match="unique"):
        holdout_split(pd.concat([pins, pins.head(1)]), pd.DataFrame({"pin_id": []}))


def test_board_neighbors_are_symmetric_and_exclude_self():
    board_pins = pd.DataFrame({
        "board_id": ["b1", "b1", "b1", "b2", "b2", "b1", "b3"],
        "pin_id": ["p1", "p2", "p3", "p3", "p4", "p1", "p5"],  # p1 saved twice; p5 alone
    })
    neighbors = board_neighbors(board_pins)

    assert neighbors == {
        "p1": {"p2", "p3"},
        "p2": {"p1", "p3"},
        "p3": {"p1", "p2", "p4"},
        "p4": {"p3"},
    }
    for pin, others in neighbors.items():
        assert pin not in others
        assert all(pin in neighbors[other] for other in others)


# ---------------------------------------------------------------------------------------
# scoring


def _two_boards():
    """Pins a* on one board, b* on another; the cluster vectors find every neighbor."""
    ids = ["a1", "a2", "a3", "b1", "b2", "b3"]
    neighbors = board_neighbors(pd.DataFrame({"board_id": [i[0] for i in ids], "pin_id": ids}))
    split = HoldoutSplit("2026-01-02", ["a1", "a2", "b1", "b2"], ["a3", "b3"], ["b3"])
    clusters = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3) + 0.01 * np.arange(6)[:, None]
    return ids, neighbors, split, clusters


def test_evaluate_embeddings_on_a_hand_worked_case():
    ids, neighbors, split, clusters = _two_boards()
    # The image tower sees the clusters, the text tower the opposite: text never finds its image.
    perfect = EmbeddingSet("perfect", ids, clusters, image=clusters, text=clusters[::-1])
    # a3 sits among the b pins and b3 among the a pins: neither finds a board mate.
    swapped = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3 + [[1.0, 0.0]])
    inverted = EmbeddingSet("inverted", ids, swapped)

    metrics = evaluate_embeddings([perfect, inverted], split, neighbors, k=2)

    assert metrics["perfect"]["neighbor_R@2/heldout"] == 1.0
    assert metrics["perfect"]["neighbor_hit@2/cold"] == 1.0
    assert metrics["perfect"]["neighbor_queries/heldout"] == 2
    assert metrics["perfect"]["neighbor_queries/cold"] == 1
    assert metrics["inverted"]["neighbor_R@2/heldout"] == 0.0
    assert metrics["perfect"]["text_to_image/R@1"] == 0.0  # a3's caption lands on b3's image
    assert metrics["perfect"]["image_to_text/median_rank"] == 2.0
    assert "text_to_image/R@1" not in metrics["inverted"]  # no towers, no text <-> image rows


def test_evaluate_embeddings_demands_the_whole_corpus():
    ids, neighbors, split, clusters = _two_boards()
    partial = EmbeddingSet("partial", ids[:-1], clusters[:-1])
    with pytest.raises(ValueError, match="exactly the split's 6 pins: 1 missing"):
        evaluate_embeddings([partial], split, neighbors)
    with pytest.raises(ValueError, match="one row per id"):
        EmbeddingSet("short", ids, clusters[:3])


def test_embeddings_equal_to_the_oracle_score_exactly_the_oracle(tiny_eval):
    ids, split, neighbors = tiny_eval["ids"], tiny_eval["split"], tiny_eval["neighbors"]
    oracle = tiny_eval["oracle"]
    # Same vectors in another row order, under another name: the row lookup must not care.
    order = np.random.default_rng(1).permutation(len(ids))
    copy = EmbeddingSet("copy", [ids[i] for i in order], oracle.pin[order],
                        image=oracle.pin[order], text=oracle.pin[order])
    with_towers = EmbeddingSet("oracle_towers", ids, oracle.pin, image=oracle.pin, text=oracle.pin)

    metrics = evaluate_embeddings([with_towers, copy], split, neighbors)

    assert metrics["copy"] == metrics["oracle_towers"]
    assert {k: v for k, v in metrics["copy"].items() if k.startswith("neighbor")} == \
        evaluate_embeddings([oracle], split, neighbors)[oracle.name]
    assert metrics["copy"]["text_to_image/R@1"] == 1.0  # identical towers find their own pin


# ---------------------------------------------------------------------------------------
# oracle


def test_attribute_oracle_weights_board_attributes_and_breaks_ties_only():
    base = dict(shape="circle", color="red", pattern="solid", size="small", outline="none")
    objects = pd.DataFrame([
        {"pin_id": "q", "object_index": 0, **base},
        {"pin_id": "q", "object_index": 1, **base, "color": "blue"},  # not the main object
        {"pin_id": "twin1", "object_index": 0, **base},
        {"pin_id": "twin2", "object_index": 0, **base},
        {"pin_id": "same_pattern", "object_index": 0, **base, "shape": "star", "color": "blue"},
        {"pin_id": "same_colors", "object_index": 0, **base, "pattern": "dotted"},
    ])
    themes = pd.DataFrame({"board_id": ["b1", "b2", "b3"],
                           "attribute": ["pattern", "pattern", "size"],
                           "value": ["solid", "dotted", "tiny"]})
    assert attribute_weights(themes) == {name: {"pattern": 2 / 3, "size": 1 / 3}.get(name, 0.0)
                                         for name in ATTRIBUTE_NAMES}

    ids = ["q", "twin1", "twin2", "same_pattern", "same_colors"]
    oracle = attribute_oracle(ids, objects, themes)
    scores = dict(zip(ids, oracle.pin @ oracle.pin[0]))

    np.testing.assert_allclose(np.linalg.norm(oracle.pin, axis=1), 1.0, rtol=1e-6)
    assert scores["twin1"] != scores["twin2"]  # identical truth, yet no tie
    # Agreeing on pattern (a theme attribute) beats agreeing on shape and colour (none).
    assert min(scores["twin1"], scores["twin2"], scores["same_pattern"]) > scores["same_colors"]
    np.testing.assert_allclose(scores["same_pattern"], scores["twin1"], atol=0.1)
    with pytest.raises(ValueError, match="no main object"):
        attribute_oracle(["q", "ghost"], objects, themes)


# ---------------------------------------------------------------------------------------
# the tiny world: oracle >> chance, and MiniLM above it


@pytest.fixture(scope="module")
def tiny_eval(tiny_world):
    from mmpipe.layout import truth_path
    from mmpipe.nn.text_tower import encode_texts, load_text_encoder
    from mmpipe.schemas.validate import validate_world
    from mmpipe.systems.pinclip.data import caption_text

    tables = validate_world(tiny_world)
    pins = tables["pins"].valid
    split = holdout_split(pins, tables["interactions"].valid)
    tokenizer, model = load_text_encoder()
    captions = [caption_text(t, d) for t, d in zip(pins["title"], pins["description"])]
    ids = pins["pin_id"].tolist()
    return {
        "pins": pins,
        "ids": ids,
        "interactions": tables["interactions"].valid,
        "split": split,
        "neighbors": board_neighbors(tables["board_pins"].valid),
        "oracle": attribute_oracle(ids, pd.read_parquet(truth_path(tiny_world, "pin_objects")),
                                   pd.read_parquet(truth_path(tiny_world, "board_themes"))),
        "minilm": minilm_caption_baseline(pins, encode_texts(captions, tokenizer, model)),
        "random": random_baseline(ids, 384, seed=0),
    }


def test_tiny_world_oracle_beats_chance_and_minilm_carries_signal(tiny_eval):
    ids, neighbors, split = tiny_eval["ids"], tiny_eval["neighbors"], tiny_eval["split"]
    sets = [tiny_eval["random"], tiny_eval["minilm"], tiny_eval["oracle"]]
    metrics = evaluate_embeddings(sets, split, neighbors)
    random, minilm, oracle = (metrics[s.name] for s in sets)

    # A uniformly random ranking puts each neighbor in the top 10 with chance 10 / (N - 1).
    chance = 10 / (len(ids) - 1)
    assert split.cold_ids and set(split.cold_ids) <= set(split.heldout_ids)
    for subset in ("heldout", "cold"):
        key = f"neighbor_R@10/{subset}"
        assert metrics["random"][f"neighbor_queries/{subset}"] >= 10
        assert random[key] == pytest.approx(chance, abs=0.03)
        # The truth finds board mates: the board structure is learnable from content.
        assert oracle[key] > 3 * max(random[key], chance)
        assert oracle[key] <= oracle[f"neighbor_max_R@10/{subset}"]
    assert minilm["neighbor_R@10/heldout"] > chance
    # Captions rarely name the attributes boards theme on, so MiniLM's edge is small and
    # 33 held-out queries are too few to show it reliably; every pin as a query does.
    everyone = holdout_split(tiny_eval["pins"], tiny_eval["interactions"],
                             cutoff_date=min(tiny_eval["pins"]["created_at"]))
    assert everyone.heldout_ids == ids and not everyone.train_ids
    over_all = evaluate_embeddings(sets, everyone, neighbors)
    assert over_all["minilm_captions"]["neighbor_queries/heldout"] > 150
    assert over_all["minilm_captions"]["neighbor_R@10/heldout"] > 1.2 * chance
    assert over_all["attribute_oracle"]["neighbor_R@10/heldout"] > 3 * chance


# ---------------------------------------------------------------------------------------
# report


METRICS = {
    "pinclip": {"neighbor_R@10/heldout": 0.30, "neighbor_R@10/cold": 0.24,
                "neighbor_hit@10/heldout": 0.9, "neighbor_queries/heldout": 90,
                "neighbor_max_R@10/heldout": 0.5, "text_to_image/R@1": 0.4},
    "random": {"neighbor_R@10/heldout": 0.05, "neighbor_R@10/cold": 0.05},
    "minilm_captions": {"neighbor_R@10/heldout": 0.20, "neighbor_R@10/cold": 0.12},
    "pinclip_no_neighbor_loss": {"neighbor_R@10/heldout": 0.15, "neighbor_R@10/cold": 0.16},
    "attribute_oracle": {"neighbor_R@10/heldout": 0.40, "neighbor_R@10/cold": 0.40},
    "extra": {"neighbor_R@10/heldout": math.nan},
}


def test_report_gains_are_over_the_best_baseline_not_the_oracle(tmp_path):
    baselines = ["random", "minilm_captions", "pinclip_no_neighbor_loss"]
    markdown, plots, summary = pinclip_report(
        METRICS, "pinclip", baselines, "attribute_oracle",
        descriptions={"pinclip_no_neighbor_loss": "ablation: λ = 0."},
    )

    # The best baseline differs per subset; the oracle is better than both but never counts.
    assert summary["best_baseline"] == {"neighbor_R@10/heldout": "minilm_captions",
                                        "neighbor_R@10/cold": "pinclip_no_neighbor_loss"}
    assert summary["gains"]["neighbor_R@10/heldout"] == pytest.approx(relative_gain(0.30, 0.20))
    assert summary["gains"]["neighbor_R@10/cold"] == pytest.approx(0.5)
    assert summary["gap_closed"]["neighbor_R@10/heldout"] == pytest.approx(0.5)

    for method in METRICS:
        assert f"| {method} |" in markdown or f"| **{method}** |" in markdown
    assert "| **pinclip** | **30.000** | **90.000** | **24.000** | **–** |" in markdown
    assert ("relative gain of pinclip over the best baseline (minilm_captions) on "
            "neighbor_R@10/heldout: +50.0%") in markdown
    assert ("relative gain of pinclip over the best baseline (pinclip_no_neighbor_loss) on "
            "neighbor_R@10/cold: +50.0%") in markdown
    assert "ablation: λ = 0." in markdown and "chance level" in markdown
    assert set(plots) == {"neighbor_recall_heldout", "neighbor_recall_cold"}
    assert all(png.startswith(PNG_MAGIC) for png in plots.values())

    paths = write_report(tmp_path, "pinclip_eval", markdown, plots, summary)
    written = json.loads(paths["metrics"].read_text())
    assert written["metrics"]["extra"]["neighbor_R@10/heldout"] is None  # NaN -> null
    assert written["gains"]["neighbor_R@10/cold"] == pytest.approx(0.5)


def test_report_refuses_unknown_or_overlapping_methods():
    with pytest.raises(ValueError, match="no metrics"):
        pinclip_report(METRICS, "pinclip", ["missing"], "attribute_oracle")
    with pytest.raises(ValueError, match="different methods"):
        pinclip_report(METRICS, "pinclip", ["pinclip"], "attribute_oracle")


def test_report_on_tiny_world_embeddings(tiny_eval):
    sets = [tiny_eval["minilm"], tiny_eval["random"], tiny_eval["oracle"]]
    metrics = evaluate_embeddings(sets, tiny_eval["split"], tiny_eval["neighbors"])
    markdown, plots, summary = pinclip_report(
        metrics, "minilm_captions", ["random"], "attribute_oracle", split=tiny_eval["split"]
    )
    assert f"held out ({len(tiny_eval['split'].heldout_ids)} pins" in markdown
    assert summary["best_baseline"]["neighbor_R@10/heldout"] == "random"
    assert "text_to_image/R@1" in markdown  # the random baseline has both towers
    assert len(plots) == 2


def test_report_gain_intervals_from_per_query_recalls(tiny_eval):
    sets = [tiny_eval["oracle"], tiny_eval["random"], tiny_eval["minilm"]]
    per_query: dict = {}
    metrics = evaluate_embeddings(sets, tiny_eval["split"], tiny_eval["neighbors"], per_query=per_query)
    for name, row in metrics.items():
        for subset in ("heldout", "cold"):
            recalls = per_query[name][subset]
            assert len(recalls) == row[f"neighbor_queries/{subset}"]
            assert np.mean(recalls) == pytest.approx(row[f"neighbor_R@10/{subset}"])

    # The oracle plays the model here; a copy of its row stands in as the ceiling.
    with_ceiling = {**metrics, "ceiling": metrics["attribute_oracle"]}
    markdown, _, summary = pinclip_report(with_ceiling, "attribute_oracle", ["random", "minilm_captions"],
                                          "ceiling", per_query=per_query)
    for key in ("neighbor_R@10/heldout", "neighbor_R@10/cold"):
        low, high = summary["gain_ci"][key]
        assert low <= summary["gains"][key] <= high
        assert low > 0  # the truth beats chance on every resample of a tiny world
    assert "(90% CI +" in markdown

    # Without per-query recalls the report has no interval, and says none.
    markdown, _, summary = pinclip_report(with_ceiling, "attribute_oracle",
                                          ["random", "minilm_captions"], "ceiling")
    assert "90% CI" not in markdown
    assert all(math.isnan(low) for low, _ in summary["gain_ci"].values())
