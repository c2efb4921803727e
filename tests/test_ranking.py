"""Related-item ranking: exact chunked top-k against a naive sort, and hand-computed metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from mmpipe.eval.ranking import (
    metric_key,
    ranking_metrics_per_query,
    summarise,
    top_k,
    top_k_from_group_scores,
    top_k_from_scores,
)

LOG2_3 = math.log2(3)


def naive_top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
    """The obvious reference: sort each row by (-score, column), drop the excluded column."""
    ranked = []
    for q, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        ranked.append([c for c in order if exclude is None or c != exclude[q]][:k])
    return np.array(ranked, dtype=np.int64)


# --- top_k -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_chunked_top_k_equals_naive_sort_with_ties_and_exclusion(chunk_size):
    rng = np.random.default_rng(0)
    # Small integers make inner products exact and full of ties.
    queries = rng.integers(-2, 3, size=(40, 4)).astype(np.float64)
    corpus = rng.integers(-2, 3, size=(60, 4)).astype(np.float64)
    exclude = rng.integers(-1, 60, size=40)
    scores = queries @ corpus.T
    assert len(np.unique(scores)) < scores.size / 10  # the case really is tie-heavy
    for k in (1, 5, 59):
        got = top_k(queries, corpus, k, exclude=exclude, chunk_size=chunk_size)
        np.testing.assert_array_equal(got, naive_top_k(scores, k, exclude))
    np.testing.assert_array_equal(top_k(queries, corpus, 60, chunk_size=chunk_size), naive_top_k(scores, 60, None))


def test_excluded_row_is_never_returned_even_when_it_scores_best():
    corpus = np.eye(4)
    queries = corpus.copy()  # each query's best match is itself
    ranked = top_k(queries, corpus, 3, exclude=np.arange(4))
    assert not (ranked == np.arange(4)[:, None]).any()
    # All remaining scores tie at 0, so the lower rows come first.
    np.testing.assert_array_equal(ranked, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


def test_top_k_from_scores_calls_each_chunk_once_and_matches_top_k():
    rng = np.random.default_rng(1)
    queries, corpus = rng.normal(size=(10, 3)), rng.normal(size=(30, 3))
    calls = []

    def block(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return queries[start:stop] @ corpus.T

    ranked = top_k_from_scores(block, 10, 5, chunk_size=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(ranked, top_k(queries, corpus, 5))


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_grouped_top_k_equals_the_full_scores_path_with_ties_and_exclusion(chunk_size):
    """Rows scoring through their group (the ceiling's pins alike) rank exactly as the full
    [queries, corpus] scores do: ties to the lower row, the query's own row excluded, groups
    smaller than k, empty groups, a query whose own group is the best, -inf scores."""
    rng = np.random.default_rng(2)
    n_rows, n_groups = 80, 12
    group_of_row = rng.integers(0, n_groups, size=n_rows)
    group_of_row[group_of_row == 5] = 6  # group 5 has no rows: it must never be returned
    group_scores = rng.integers(0, 4, size=(30, n_groups)).astype(np.float64)  # few values: many ties
    group_scores[3, :] = 1.0  # one query with every group tied
    group_scores[4, 2] = -np.inf
    exclude = rng.integers(-1, n_rows, size=30)
    exclude[7] = int(np.flatnonzero(group_of_row == group_of_row[0])[0])
    group_scores[7, group_of_row[exclude[7]]] = 10.0  # the excluded row's group is the best
    full = group_scores[:, group_of_row]
    calls = []

    def block(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return group_scores[start:stop]

    for k in (1, 3, 10, n_rows - 1):
        got = top_k_from_group_scores(block, group_of_row, 30, k, exclude=exclude, chunk_size=chunk_size)
        np.testing.assert_array_equal(got, top_k_from_scores(lambda start, stop: full[start:stop], 30, k,
                                                             exclude=exclude, chunk_size=chunk_size))
        np.testing.assert_array_equal(got, naive_top_k(full, k, exclude))
    assert calls[: -(-30 // chunk_size)] == [(s, min(s + chunk_size, 30)) for s in range(0, 30, chunk_size)]
    np.testing.assert_array_equal(top_k_from_group_scores(block, group_of_row, 30, n_rows),
                                  naive_top_k(full, n_rows, None))
    with pytest.raises(ValueError, match="rankable"):
        top_k_from_group_scores(block, group_of_row, 30, n_rows, exclude=exclude)
    with pytest.raises(ValueError, match="NaN"):
        top_k_from_group_scores(lambda start, stop: np.full((stop - start, n_groups), np.nan), group_of_row, 2, 1)


def test_top_k_refuses_what_it_cannot_rank():
    corpus = np.eye(3)
    with pytest.raises(ValueError, match="rankable"):
        top_k(corpus, corpus, 3, exclude=np.arange(3))  # only 2 rows left per query
    with pytest.raises(ValueError, match="NaN"):
        top_k_from_scores(lambda start, stop: np.full((stop - start, 3), np.nan), 2, 1)
    with pytest.raises(ValueError, match="exclude has shape"):
        top_k(corpus, corpus, 1, exclude=np.arange(2))


# --- metrics by hand ---------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    # 3 relevant items (0, 2, 5); the ranking hits them at ranks 1 and 3 of 3.
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    # IDCG = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.6309 + 0.5 = 2.1309
    metrics = ranking_metrics_per_query(np.array([[0, 1, 2]]), [{0: 1, 2: 1, 5: 1}], k=3)
    assert metrics["ndcg"][0] == pytest.approx(1.5 / (1.5 + 1 / LOG2_3))
    assert metrics["precision"][0] == pytest.approx(2 / 3)
    assert metrics["recall"][0] == pytest.approx(2 / 3)
    assert metrics["hit"][0] == 1.0


def test_ideal_dcg_uses_all_relevant_items_truncated_at_k():
    # 4 relevant, k = 2, one hit at rank 2: DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (top 2 of 4).
    metrics = ranking_metrics_per_query(np.array([[9, 0]]), [{0: 1, 1: 1, 2: 1, 3: 1}], k=2)
    assert metrics["ndcg"][0] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    assert metrics["precision"][0] == pytest.approx(1 / 2)
    assert metrics["recall"][0] == pytest.approx(1 / 4)


def test_graded_ndcg_by_hand_differs_from_binary():
    # Grades {0: 1, 1: 3, 7: 2}; ranking [0, 1, 2] puts grade 1, grade 3, nothing.
    # graded DCG = 1/1 + 3/log2(3) = 2.8928; ideal order 3, 2, 1: 3 + 2/log2(3) + 1/2 = 4.7619
    # binary DCG = 1 + 1/log2(3) = 1.6309;   ideal (3 relevant): 1 + 1/log2(3) + 1/2 = 2.1309
    metrics = ranking_metrics_per_query(np.array([[0, 1, 2]]), [{0: 1, 1: 3, 7: 2}], k=3)
    graded = (1 + 3 / LOG2_3) / (3 + 2 / LOG2_3 + 0.5)
    binary = (1 + 1 / LOG2_3) / (1 + 1 / LOG2_3 + 0.5)
    assert metrics["ndcg_graded"][0] == pytest.approx(graded)
    assert metrics["ndcg"][0] == pytest.approx(binary)
    assert graded != pytest.approx(binary)


def test_perfect_ranking_scores_one_and_missing_everything_scores_zero():
    relevance = [{3: 2, 1: 1}, {0: 1}]
    perfect = ranking_metrics_per_query(np.array([[3, 1, 0], [0, 1, 2]]), relevance, k=3)
    assert perfect["ndcg"].tolist() == [1.0, 1.0]
    assert perfect["ndcg_graded"].tolist() == [1.0, 1.0]
    assert perfect["recall"].tolist() == [1.0, 1.0]
    assert perfect["precision"].tolist() == pytest.approx([2 / 3, 1 / 3])
    useless = ranking_metrics_per_query(np.array([[0, 2, 4], [1, 2, 3]]), relevance, k=3)
    for name in ("ndcg", "ndcg_graded", "precision", "hit", "recall"):
        assert useless[name].tolist() == [0.0, 0.0]


def test_sparse_and_dict_relevance_agree_and_zero_grades_are_not_relevant():
    dicts = [{0: 2, 4: 1, 3: 0}, {2: 1}]
    matrix = sp.csr_matrix(np.array([[2, 0, 0, 0, 1], [0, 0, 1, 0, 0]], dtype=float))
    ranked = np.array([[3, 4, 0], [2, 0, 1]])
    from_dicts = ranking_metrics_per_query(ranked, dicts, k=3)
    from_matrix = ranking_metrics_per_query(ranked, matrix, k=3)
    for name in from_dicts:
        np.testing.assert_allclose(from_dicts[name], from_matrix[name])
    assert from_dicts["precision"][0] == pytest.approx(2 / 3)  # item 3 (grade 0) is not a hit


def test_ndcg_matches_sklearn():
    ndcg_score = pytest.importorskip("sklearn.metrics").ndcg_score
    rng = np.random.default_rng(2)
    grades = rng.integers(0, 4, size=(5, 30)).astype(float)
    scores = rng.normal(size=(5, 30))  # continuous: no ties, which sklearn would average
    ranked = top_k_from_scores(lambda start, stop: scores[start:stop], 5, 10)
    relevance = [{c: g for c, g in enumerate(row) if g > 0} for row in grades]
    ours = ranking_metrics_per_query(ranked, relevance, k=10)
    for q in range(5):
        assert ours["ndcg_graded"][q] == pytest.approx(ndcg_score(grades[q : q + 1], scores[q : q + 1], k=10))
        binary = (grades[q : q + 1] > 0).astype(float)
        assert ours["ndcg"][q] == pytest.approx(ndcg_score(binary, scores[q : q + 1], k=10))


# --- errors, summary, names --------------------------------------------------------------------


def test_query_without_relevant_items_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"2 of 3 queries have no relevant item \(positions \[0, 2\]\)"):
        ranking_metrics_per_query(np.array([[0], [1], [2]]), [{}, {1: 1}, {5: 0}], k=1)


def test_ranking_with_a_repeated_row_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        ranking_metrics_per_query(np.array([[1, 1]]), [{1: 1}], k=2)


def test_summarise_means_and_metric_keys():
    per_query = {"ndcg": np.array([1.0, 0.0, 0.5]), "hit": np.array([1.0, 0.0, 1.0])}
    assert summarise(per_query) == pytest.approx({"ndcg": 0.5, "hit": 2 / 3})
    assert metric_key("ndcg", "test", 10) == "nDCG@10/test"
    assert metric_key("ndcg_graded", "test", 10) == "nDCG_graded@10/test"
    assert metric_key("precision", "cold", 10) == "P@10/cold"
    assert metric_key("hit", "test", 10) == "hit@10/test"
    assert metric_key("recall", "test", 10) == "R@10/test"
    with pytest.raises(KeyError):
        metric_key("mrr", "test", 10)


def test_ideal_dcg_of_whole_and_fractional_grades_equals_a_sort_per_query():
    """The per-grade count path (whole grades, e.g. shared boards) and the sort path agree
    with the obvious reference: each query's grades sorted, the top k discounted."""
    from mmpipe.eval.ranking import _ideal_dcg

    rng = np.random.default_rng(3)
    dense = rng.integers(0, 4, size=(25, 40)) * (rng.random((25, 40)) < 0.3)
    dense[0] = 0  # a query without relevant items: ideal DCG 0
    for grades in (dense.astype(np.float64), dense * 0.5):
        matrix = sp.csr_matrix(grades)
        for k in (1, 3, 10, 40):
            expected = [sum(g / math.log2(i + 2) for i, g in enumerate(sorted(row[row > 0], reverse=True)[:k]))
                        for row in grades]
            binary = [sum(1 / math.log2(i + 2) for i in range(min(k, int((row > 0).sum())))) for row in grades]
            np.testing.assert_allclose(_ideal_dcg(matrix, k, binary=False), expected, rtol=1e-12)
            np.testing.assert_allclose(_ideal_dcg(matrix, k, binary=True), binary, rtol=1e-12)
