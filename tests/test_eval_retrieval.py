"""Retrieval metrics checked against obvious full-matrix references, plus hand-worked cases."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mmpipe.eval.retrieval as retrieval
from mmpipe.eval.report import bar_plot_png, metrics_table_markdown, write_report
from mmpipe.eval.retrieval import (
    bidirectional_retrieval,
    neighbor_hits_per_query,
    neighbor_recall_at_k,
    neighbors_from_pairs,
    paired_bootstrap_gain,
    paired_ranks,
    relative_gain,
    retrieval_metrics,
    temporal_iou,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def naive_retrieval_metrics(query: np.ndarray, target: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Whole score matrix, argsort each row, find where the true target landed."""
    scores = query @ target.T
    ranking = np.argsort(-scores, axis=1)
    ranks = np.nonzero(ranking == np.arange(len(query))[:, None])[1] + 1
    metrics = {f"R@{k}": np.mean(ranks <= k) for k in ks}
    return {**metrics, "median_rank": np.median(ranks), "mean_rank": np.mean(ranks)}


def naive_neighbor_recall(query, query_ids, corpus, corpus_ids, neighbors, k, exclude_self):
    scores = query @ corpus.T
    recalls, hits, ceilings = [], [], []
    for row, pin in enumerate(query_ids):
        wanted = {n for n in neighbors.get(pin, ()) if n != pin and n in set(corpus_ids)}
        if not wanted:
            continue
        order = [corpus_ids[j] for j in np.argsort(-scores[row])]
        if exclude_self:
            order = [other for other in order if other != pin]
        found = wanted & set(order[:k])
        recalls.append(len(found) / len(wanted))
        hits.append(bool(found))
        ceilings.append(min(k, len(wanted)) / len(wanted))
    return {
        f"recall@{k}": np.mean(recalls),
        f"hit_rate@{k}": np.mean(hits),
        f"max_recall@{k}": np.mean(ceilings),
        "n_queries": len(recalls),
    }


def correlated_pair(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies, so ranks spread over 1..n instead of all being 1 or all random."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim))
    b = a + noise * rng.standard_normal((n, dim))
    return a, b


def assert_metrics_close(fast: dict, reference: dict) -> None:
    assert fast.keys() == reference.keys()
    for key in reference:
        assert fast[key] == pytest.approx(reference[key], abs=1e-12), key


# -- paired retrieval -----------------------------------------------------------------


# N = 97: chunks of 1 and 97 divide it, 7 and 32 leave a ragged last chunk, 1000 exceeds it.
@pytest.mark.parametrize("chunk", [1, 7, 32, 97, 1000])
def test_retrieval_metrics_match_full_matrix_reference(chunk):
    query, target = correlated_pair(97, 16, noise=1.5, seed=chunk)
    fast = retrieval_metrics(query, target, ks=(1, 5, 10), chunk=chunk)
    assert_metrics_close(fast, naive_retrieval_metrics(query, target))
    assert 0.0 < fast["R@1"] < fast["R@10"] < 1.0  # the data exercises the whole range


def test_retrieval_metrics_accepts_torch_and_float32():
    query, target = correlated_pair(50, 8, noise=1.0, seed=1)
    reference = naive_retrieval_metrics(query, target, ks=(1, 3))
    query32, target32 = torch.from_numpy(query).float(), torch.from_numpy(target).float()
    as_torch = retrieval_metrics(query32, target32, ks=(1, 3), chunk=16)
    assert_metrics_close(as_torch, reference)


def test_perfect_embeddings_rank_first():
    eye = np.eye(20)
    assert retrieval_metrics(eye, eye) == {
        "R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mean_rank": 1.0,
    }


def test_adversarial_embeddings_have_known_ranks():
    # Every query is the same direction and target i scores i, so query i is beaten by
    # every target j > i: rank N - i, i.e. ranks N, N-1, ..., 1.
    n = 10
    query = np.ones((n, 1))
    target = np.arange(n, dtype=np.float64)[:, None]
    np.testing.assert_array_equal(paired_ranks(query, target, chunk=3), np.arange(n, 0, -1))
    metrics = retrieval_metrics(query, target, ks=(1, 5, 10))
    assert metrics == {"R@1": 0.1, "R@5": 0.5, "R@10": 1.0, "median_rank": 5.5, "mean_rank": 5.5}


def test_ties_count_against_the_model():
    # A collapsed model: every score ties, so every true target is ranked last.
    collapsed = np.ones((8, 4))
    assert retrieval_metrics(collapsed, collapsed, ks=(1, 7, 8)) == {
        "R@1": 0.0, "R@7": 0.0, "R@8": 1.0, "median_rank": 8.0, "mean_rank": 8.0,
    }
    # Items 0 and 1 are the same vector: queries 0 and 1 each tie with the other's
    # target, so both sit at rank 2; the others stay at rank 1. Integer vectors make the
    # dot products exact, so the tie is a real tie in any summation order.
    emb = np.eye(5)
    emb[1] = emb[0]
    np.testing.assert_array_equal(paired_ranks(emb, emb, chunk=2), [2, 2, 1, 1, 1])


def test_retrieval_metrics_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="as many queries as targets"):
        retrieval_metrics(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="dims differ"):
        retrieval_metrics(np.ones((3, 2)), np.ones((3, 5)))


def test_bidirectional_retrieval_matches_reference_both_ways():
    image, text = correlated_pair(40, 8, noise=1.2, seed=7)
    both = bidirectional_retrieval(image, text, ks=(1, 5))
    t2i = naive_retrieval_metrics(text, image, ks=(1, 5))
    i2t = naive_retrieval_metrics(image, text, ks=(1, 5))
    expected = {
        **{f"text_to_image/{key}": value for key, value in t2i.items()},
        **{f"image_to_text/{key}": value for key, value in i2t.items()},
    }
    assert_metrics_close(both, expected)


# -- neighbor recall ------------------------------------------------------------------

# Six unit vectors at these angles; similarity falls with the angle between them.
ANGLES = {"p0": 0, "p1": 10, "p2": 30, "p3": 90, "p4": 100, "p5": 210}
# Nearest first, self excluded (worked out from the angle differences):
#   p0: p1 p2 p3 p4 p5      p3: p4 p2 p1 p0 p5
#   p1: p0 p2 p3 p4 p5      p4: p3 p2 p1 p0 p5
#   p2: p1 p0 p3 p4 p5      p5: p4 p3 p0 p1 p2
# Boards {p0, p1, p5} and {p3, p4}; p2 is on no board with anyone.
BOARD_PAIRS = pd.DataFrame({"pin_a": ["p0", "p0", "p1", "p3"], "pin_b": ["p1", "p5", "p5", "p4"]})


def six_points() -> tuple[np.ndarray, list[str]]:
    ids = list(ANGLES)
    radians = np.deg2rad([ANGLES[pin] for pin in ids])
    return np.stack([np.cos(radians), np.sin(radians)], axis=1), ids


def test_neighbors_from_pairs_is_symmetric_and_drops_self_pairs():
    pairs = pd.concat([BOARD_PAIRS, pd.DataFrame({"pin_a": ["p2"], "pin_b": ["p2"]})])
    assert neighbors_from_pairs(pairs) == {
        "p0": {"p1", "p5"},
        "p1": {"p0", "p5"},
        "p5": {"p0", "p1"},
        "p3": {"p4"},
        "p4": {"p3"},
    }


def test_neighbor_recall_hand_computed():
    emb, ids = six_points()
    neighbors = neighbors_from_pairs(BOARD_PAIRS)
    # k=1: p0 finds p1 (1/2), p1 finds p0 (1/2), p3 and p4 find each other (1, 1),
    # p5's nearest is p4 (0). p2 has no neighbors and is not scored.
    assert neighbor_recall_at_k(emb, ids, emb, ids, neighbors, k=1) == {
        "recall@1": pytest.approx(0.6),
        "hit_rate@1": 0.8,
        "max_recall@1": pytest.approx(0.7),  # p0, p1 and p5 have 2 neighbors but 1 slot
        "n_queries": 5,
    }
    # Keeping self, every pin's top-1 is itself and nothing is found.
    kept = neighbor_recall_at_k(emb, ids, emb, ids, neighbors, k=1, exclude_self=False)
    assert kept["recall@1"] == 0.0 and kept["hit_rate@1"] == 0.0
    # Two queries searched against the whole corpus, not against each other: p0's top 3
    # is p1 p2 p3 (1/2 of {p1, p5}); p5's is p4 p3 p0 (1/2 of {p0, p1}).
    subset = [ids.index("p0"), ids.index("p5")]
    assert neighbor_recall_at_k(emb[subset], ["p0", "p5"], emb, ids, neighbors, k=3) == {
        "recall@3": 0.5, "hit_rate@3": 1.0, "max_recall@3": 1.0, "n_queries": 2,
    }


def test_neighbor_recall_ignores_neighbors_outside_the_corpus():
    emb, ids = six_points()
    neighbors = {"p3": {"p4", "not-indexed"}, "p2": {"also-missing"}}
    assert neighbor_recall_at_k(emb, ids, emb, ids, neighbors, k=1) == {
        "recall@1": 1.0, "hit_rate@1": 1.0, "max_recall@1": 1.0, "n_queries": 1,
    }
    empty = neighbor_recall_at_k(emb, ids, emb, ids, {"p2": {"missing"}}, k=1)
    assert empty["n_queries"] == 0 and math.isnan(empty["recall@1"])


def test_neighbor_recall_counts_ties_against_the_model():
    # p1 and p2 are the same vector: for query p0, with k=1 neither is surely first.
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    ids = ["p0", "p1", "p2", "p3"]
    assert neighbor_recall_at_k(emb[[1]], ["p0"], emb, ids, {"p0": {"p1"}}, k=1)["recall@1"] == 0.0
    assert neighbor_recall_at_k(emb[[1]], ["p0"], emb, ids, {"p0": {"p1"}}, k=2)["recall@2"] == 1.0


def test_neighbor_recall_with_k_at_least_the_corpus_finds_everything():
    emb, ids = six_points()
    neighbors = neighbors_from_pairs(BOARD_PAIRS)
    for k in (5, 6, 50):  # 5 = every other pin; beyond that the top-k is the whole corpus
        assert neighbor_recall_at_k(emb, ids, emb, ids, neighbors, k=k)[f"recall@{k}"] == 1.0


@pytest.mark.parametrize("chunk", [1, 16, 60, 500])  # 60 = queries; 16 leaves a ragged chunk
@pytest.mark.parametrize("exclude_self", [True, False])
def test_neighbor_recall_matches_full_matrix_reference(chunk, exclude_self):
    rng = np.random.default_rng(chunk)
    corpus = rng.standard_normal((150, 12))
    corpus_ids = [f"pin{i:03d}" for i in rng.permutation(150)]
    # Queries: 60 corpus pins (searched with a noisy view of themselves) and 5 pins not in it.
    chosen = rng.choice(150, size=60, replace=False)
    query = np.concatenate(
        [corpus[chosen] + 0.5 * rng.standard_normal((60, 12)), rng.standard_normal((5, 12))]
    )
    query_ids = [corpus_ids[i] for i in chosen] + [f"new{i}" for i in range(5)]
    # Neighbors: the 8 nearest corpus pins under a noisy copy of the corpus (so the
    # embeddings find some but not all), for most queries; a few get none.
    noisy = corpus + 0.8 * rng.standard_normal(corpus.shape)
    neighbors = {}
    for row, pin in enumerate(query_ids[:-2]):
        nearest = np.argsort(-(noisy @ query[row]))[: rng.integers(1, 9)]
        neighbors[pin] = {corpus_ids[j] for j in nearest} | {"not-indexed"}

    for k in (1, 5, 10):
        args = (query, query_ids, corpus, corpus_ids, neighbors)
        fast = neighbor_recall_at_k(*args, k=k, exclude_self=exclude_self, chunk=chunk)
        reference = naive_neighbor_recall(*args, k=k, exclude_self=exclude_self)
        assert fast["n_queries"] == reference["n_queries"] > 50  # a few have only themselves
        assert_metrics_close(fast, reference)
    assert 0.0 < fast["recall@10"] < 1.0


def test_per_query_hits_average_to_the_recall():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 6))
    ids = [f"p{i}" for i in range(40)]
    neighbors = {f"p{i}": {f"p{j}" for j in rng.choice(40, size=rng.integers(1, 6), replace=False)}
                 for i in range(0, 40, 2)}
    found, total = neighbor_hits_per_query(emb[::2], ids[::2], emb, ids, neighbors, k=5)
    summary = neighbor_recall_at_k(emb[::2], ids[::2], emb, ids, neighbors, k=5)
    assert len(found) == len(total) == summary["n_queries"]
    assert np.all((0 <= found) & (found <= total))
    assert np.mean(found / total) == pytest.approx(summary["recall@5"])
    assert np.mean(found > 0) == pytest.approx(summary["hit_rate@5"])


def test_paired_bootstrap_gain_interval():
    rng = np.random.default_rng(0)
    baseline = rng.exponential(size=400)
    # A model exactly twice as good on every query: every resample says +100%.
    assert paired_bootstrap_gain(2 * baseline, baseline) == pytest.approx((1.0, 1.0))
    assert paired_bootstrap_gain(baseline, baseline) == pytest.approx((0.0, 0.0))

    # A model 10% better in expectation, with per-query noise: a 90% interval holds the
    # true gain in about 90% of held-out samples, and narrows as the sample grows (~1/sqrt n).
    def interval(n, seed):
        base = rng.exponential(size=n)
        model = base * 1.1 * rng.lognormal(-0.125, 0.5, n)  # mean of the factor: 1.1
        return paired_bootstrap_gain(model, base, n_resamples=400, seed=seed)
    intervals = np.array([interval(300, seed) for seed in range(60)])
    coverage = np.mean((intervals[:, 0] < 0.1) & (0.1 < intervals[:, 1]))
    assert 0.75 <= coverage <= 0.99
    width_small = np.mean(intervals[:, 1] - intervals[:, 0])
    width_large = np.mean([np.subtract(*interval(4800, seed)[::-1]) for seed in range(5)])
    assert 2.5 < width_small / width_large < 6
    assert paired_bootstrap_gain(np.zeros(0), np.zeros(0)) == pytest.approx((math.nan, math.nan), nan_ok=True)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap_gain(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_gain(np.ones(3), np.ones(3), level=1.5)


def test_neighbor_recall_rejects_bad_ids():
    emb, ids = six_points()
    with pytest.raises(ValueError, match="unique"):
        neighbor_recall_at_k(emb, ids, emb, ids[:-1] + ["p0"], {}, k=1)
    with pytest.raises(ValueError, match="one id"):
        neighbor_recall_at_k(emb, ids[:-1], emb, ids, {}, k=1)


# -- small helpers --------------------------------------------------------------------


def test_relative_gain():
    assert relative_gain(0.6, 0.4) == pytest.approx(0.5)
    assert relative_gain(0.3, 0.4) == pytest.approx(-0.25)
    assert relative_gain(-1.0, -2.0) == pytest.approx(0.5)  # higher is still a gain
    assert relative_gain(0.0, 0.0) == 0.0
    assert relative_gain(0.2, 0.0) == math.inf


def test_temporal_iou_known_values():
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (2, 4)) == pytest.approx(0.2)  # one inside the other
    assert temporal_iou((0, 1), (3, 4)) == 0.0  # disjoint
    assert temporal_iou((3, 3), (3, 3)) == 0.0  # empty union, not NaN
    pred = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0]])
    gt = np.array([[0.0, 10.0], [10.0, 20.0]])
    pairwise = temporal_iou(pred[:, None], gt[None])
    np.testing.assert_allclose(pairwise, [[1.0, 0.0], [1 / 3, 1 / 3], [0.0, 0.0]])
    with pytest.raises(ValueError, match="ends before it starts"):
        temporal_iou((5, 1), (0, 10))


def test_retrieval_doctests():
    result = doctest.testmod(retrieval, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# -- report ---------------------------------------------------------------------------

ROWS = {
    "pinclip": {"R@1": 0.41234, "R@10": 0.8, "n_queries": 120},
    "random": {"R@1": 0.01, "R@10": 0.1, "n_queries": 120},
    "oracle|ceiling": {"R@1": 1.0},
}


def test_metrics_table_markdown():
    table = metrics_table_markdown(ROWS, highlight="pinclip")
    assert table.splitlines() == [
        "| method | R@1 | R@10 | n_queries |",
        "|---|---:|---:|---:|",
        "| **pinclip** | **0.412** | **0.800** | **120** |",
        "| random | 0.010 | 0.100 | 120 |",
        r"| oracle\|ceiling | 1.000 | – | – |",
    ]
    assert metrics_table_markdown(ROWS, columns=["R@10"]).splitlines()[2] == "| pinclip | 0.800 |"
    with pytest.raises(ValueError, match="highlight"):
        metrics_table_markdown(ROWS, highlight="missing")


def test_write_report_round_trips(tmp_path):
    png = bar_plot_png(ROWS, "R@10", "Text → image R@10")
    assert png.startswith(PNG_MAGIC)
    assert bar_plot_png(ROWS, "R@10", "Text → image R@10") == png  # same numbers, same bytes
    metrics = {"pinclip": {"R@1": np.float32(0.5), "n": np.int64(3), "recall@10": math.nan}}
    table = metrics_table_markdown(ROWS)
    paths = write_report(tmp_path / "pinclip", "pinclip_eval", table, {"r_at_10": png}, metrics)

    assert paths == {
        "markdown": tmp_path / "pinclip" / "pinclip_eval.md",
        "metrics": tmp_path / "pinclip" / "pinclip_eval.json",
        "r_at_10": tmp_path / "pinclip" / "r_at_10.png",
    }
    assert paths["markdown"].read_text(encoding="utf-8") == table
    # numpy scalars become plain numbers, NaN becomes null: strict JSON that DVC can read.
    assert json.loads(paths["metrics"].read_text()) == {
        "pinclip": {"R@1": 0.5, "n": 3, "recall@10": None}
    }
    assert paths["r_at_10"].read_bytes() == png
    written = sorted(path.name for path in (tmp_path / "pinclip").iterdir())
    assert written == ["pinclip_eval.json", "pinclip_eval.md", "r_at_10.png"]  # no temp files left


def test_write_report_rejects_unsafe_names(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        write_report(tmp_path, "../escape", "", {}, {})
    with pytest.raises(ValueError, match="reserved"):
        write_report(tmp_path, "report", "", {"metrics": b""}, {})
    with pytest.raises(ValueError, match="no method"):
        bar_plot_png(ROWS, "mean_rank", "nothing to plot")
