"""Related-item ranking: exact top-k retrieval and the metrics of a ranked list, one definition each.

Every system's related-items report goes through these functions, so "nDCG@10" means the
same thing in every table:

- ``top_k`` / ``top_k_from_scores``: the k highest-scoring corpus rows per query, in
  query chunks so memory stays at ``chunk_size x n_corpus`` scores whatever the number of
  queries. Ties go to the lower corpus row, so a ranking is reproducible across runs,
  chunk sizes and machines.
- ``ranking_metrics_per_query``: nDCG (binary and graded), precision, hit and recall at k,
  per query, so callers can bootstrap confidence intervals or cut by subset.
- ``summarise`` and ``metric_key``: the means, and the names they are logged under.

nDCG uses linear gain and the log2 discount, DCG = sum_i gain_i / log2(i + 1) over ranks
i = 1..k, normalised by the DCG of the ideal ordering of all the query's relevant items
(not just the retrieved ones), as ``sklearn.metrics.ndcg_score`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

DEFAULT_CHUNK_SIZE = 1024

# How each per-query metric is named in reports: metric_key("ndcg", "test", 10) == "nDCG@10/test".
METRIC_LABELS = {
    "ndcg": "nDCG",
    "ndcg_graded": "nDCG_graded",
    "precision": "P",
    "hit": "hit",
    "recall": "R",
}

# A score block: (start, stop) -> scores [stop - start, n_corpus] of queries start..stop-1.
ScoreBlock = Callable[[int, int], np.ndarray]
# Relevance of query q: {corpus row: grade}, or row q of a [n_queries, n_corpus] sparse matrix.
Relevance = sp.csr_matrix | sp.csr_array | Sequence[dict[int, float]]


def _top_k_of_block(scores: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
    """The k best columns of each row, best first, ties to the lower column.

    ``excluded`` [rows, n] marks columns that must not be returned. A full sort per row
    would cost O(n log n); instead the k-th best score is found with a partition, every
    column strictly above it is taken, and the remaining places go to the lowest columns
    equal to it, so the selection is exact and deterministic in O(n) per row.
    """
    n_rows, n = scores.shape
    scores = np.where(excluded, -np.inf, scores)
    kth_best = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]
    above = scores > kth_best
    at_kth = (scores == kth_best) & ~excluded
    still_needed = k - above.sum(axis=1, keepdims=True)
    chosen = above | (at_kth & (np.cumsum(at_kth, axis=1) <= still_needed))
    # Exactly k per row; nonzero lists them row by row in column order ...
    columns = np.nonzero(chosen)[1].reshape(n_rows, k)
    # ... so a stable sort on the score keeps ties in column order.
    order = np.argsort(-np.take_along_axis(scores, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def top_k_from_scores(
    score_block: ScoreBlock,
    n_queries: int,
    k: int,
    exclude: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """[n_queries, k] corpus rows with the highest scores, best first, ties to the lower row.

    ``score_block(start, stop)`` returns the scores of queries start..stop-1 against the
    whole corpus; it is called once per chunk of at most ``chunk_size`` queries, so any
    scorer (an inner product, a ceiling's probabilities) shares this selection code.
    ``exclude[q]`` is a corpus row never returned for query q (usually the query itself),
    -1 for none. Scores must not be NaN: NaN has no place in an order. Selection holds a
    few arrays of the block's size, about 40 bytes per score: lower ``chunk_size`` for
    corpora of 100k rows and more.
    """
    if n_queries < 0 or chunk_size < 1:
        raise ValueError(f"need n_queries >= 0 and chunk_size >= 1, got {n_queries} and {chunk_size}")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_queries,):
            raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_queries},)")
    # An excluded row leaves one fewer candidate; asking for more would have to return it.
    n_excluded = int(exclude is not None and (exclude >= 0).any())
    ranked = np.empty((n_queries, k), dtype=np.int64)
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        scores = np.asarray(score_block(start, stop))
        if scores.ndim != 2 or scores.shape[0] != stop - start:
            raise ValueError(f"score_block({start}, {stop}) returned shape {scores.shape}, "
                             f"expected ({stop - start}, n_corpus)")
        if not 1 <= k <= scores.shape[1] - n_excluded:
            raise ValueError(f"k={k} must be between 1 and the {scores.shape[1] - n_excluded} rankable corpus rows")
        excluded = np.zeros(scores.shape, dtype=bool)
        if exclude is not None:
            rows = np.flatnonzero(exclude[start:stop] >= 0)
            excluded[rows, exclude[start:stop][rows]] = True
        if np.isnan(scores).any():
            raise ValueError(f"score_block({start}, {stop}) returned NaN scores")
        ranked[start:stop] = _top_k_of_block(scores, k, excluded)
    return ranked


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """[Q, k] rows of ``corpus`` [N, D] with the largest inner product with each of
    ``queries`` [Q, D], best first, ties to the lower row; see ``top_k_from_scores``."""
    queries, corpus = np.asarray(queries), np.asarray(corpus)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries {queries.shape} and corpus {corpus.shape} must be [Q, D] and [N, D]")
    return top_k_from_scores(lambda start, stop: queries[start:stop] @ corpus.T, len(queries), k, exclude,
                             chunk_size)


def _relevance_matrix(relevance: Relevance, n_queries: int, n_corpus_seen: int) -> sp.csr_matrix:
    """Relevance as a [n_queries, n_corpus] CSR matrix without stored zeros."""
    if sp.issparse(relevance):
        matrix = sp.csr_matrix(relevance, dtype=np.float64, copy=True)
    else:
        if len(relevance) != n_queries:
            raise ValueError(f"relevance has {len(relevance)} queries, the ranking {n_queries}")
        rows = np.repeat(np.arange(n_queries), [len(grades) for grades in relevance])
        columns = np.fromiter((c for grades in relevance for c in grades), dtype=np.int64, count=len(rows))
        values = np.fromiter((g for grades in relevance for g in grades.values()), dtype=np.float64,
                             count=len(rows))
        n_corpus = max(n_corpus_seen, int(columns.max()) + 1 if len(columns) else 0)
        matrix = sp.csr_matrix((values, (rows, columns)), shape=(n_queries, n_corpus))
    if matrix.shape[0] != n_queries:
        raise ValueError(f"relevance has {matrix.shape[0]} queries, the ranking {n_queries}")
    if (matrix.data < 0).any():
        raise ValueError("relevance grades must be non-negative")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()  # a grade of 0 means "not relevant", as if absent
    return matrix


def _discounted_sum(gains: np.ndarray) -> np.ndarray:
    """DCG of [Q, k] gains in rank order: sum_i gain_i / log2(i + 1), i = 1..k."""
    return gains @ (1.0 / np.log2(np.arange(2, gains.shape[1] + 2)))


def _ideal_dcg(relevance: sp.csr_matrix, k: int, binary: bool) -> np.ndarray:
    """DCG of each query's best possible top k: all its grades, sorted, truncated at k."""
    n_queries = relevance.shape[0]
    query = np.repeat(np.arange(n_queries), np.diff(relevance.indptr))
    grades = np.ones_like(relevance.data) if binary else relevance.data
    order = np.lexsort((-grades, query))  # by query, best grade first
    rank = np.arange(len(order)) - relevance.indptr[query[order]]  # 0-based rank within the query
    top = rank < k
    discount = 1.0 / np.log2(rank[top] + 2.0)
    return np.bincount(query[order][top], weights=grades[order][top] * discount, minlength=n_queries)


def ranking_metrics_per_query(ranked: np.ndarray, relevance: Relevance, k: int) -> dict[str, np.ndarray]:
    """Per-query metrics at k of ``ranked`` [Q, >=k] corpus rows against ``relevance``.

    ``relevance`` is a [Q, N] sparse matrix or a list of {corpus row: grade} per query;
    grade > 0 is relevant (binary metrics count it as 1, ``ndcg_graded`` uses the grade,
    e.g. the number of boards two pins share). Returns float arrays [Q]: ``ndcg``,
    ``ndcg_graded``, ``precision`` (relevant in top k / k), ``hit`` (any relevant in top
    k) and ``recall`` (relevant in top k / all relevant).

    A query with no relevant item has no defined nDCG or recall, and averaging it in as 0
    (or dropping it silently) would make systems incomparable, so it is an error: the
    caller decides which queries are evaluable.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[1] < k or k < 1:
        raise ValueError(f"ranked has shape {ranked.shape}; need [Q, >= k] with k={k} >= 1")
    ranked = ranked[:, :k].astype(np.int64)
    n_queries = len(ranked)
    if (ranked < 0).any():
        raise ValueError("ranked holds negative corpus rows")
    sorted_rows = np.sort(ranked, axis=1)
    if (sorted_rows[:, 1:] == sorted_rows[:, :-1]).any():
        raise ValueError("a ranked list holds the same corpus row twice")
    matrix = _relevance_matrix(relevance, n_queries, int(ranked.max()) + 1 if ranked.size else 0)
    if ranked.size and ranked.max() >= matrix.shape[1]:
        raise ValueError(f"ranked holds corpus row {ranked.max()}, relevance has {matrix.shape[1]} columns")

    n_relevant = np.diff(matrix.indptr)
    empty = np.flatnonzero(n_relevant == 0)
    if len(empty):
        raise ValueError(
            f"{len(empty)} of {n_queries} queries have no relevant item (positions "
            f"{empty[:10].tolist()}{' ...' if len(empty) > 10 else ''}); exclude them before evaluating"
        )

    grades = np.asarray(matrix[np.repeat(np.arange(n_queries), k), ranked.ravel()]).reshape(n_queries, k)
    is_relevant = (grades > 0).astype(np.float64)
    hits = is_relevant.sum(axis=1)
    return {
        "ndcg": _discounted_sum(is_relevant) / _ideal_dcg(matrix, k, binary=True),
        "ndcg_graded": _discounted_sum(grades) / _ideal_dcg(matrix, k, binary=False),
        "precision": hits / k,
        "hit": (hits > 0).astype(np.float64),
        "recall": hits / n_relevant,
    }


def summarise(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """The mean of each per-query metric, every query weighing the same."""
    return {name: float(np.mean(values)) for name, values in per_query.items()}


def metric_key(name: str, subset: str, k: int) -> str:
    """The report name of a metric: metric_key("precision", "cold", 10) == "P@10/cold"."""
    if name not in METRIC_LABELS:
        raise KeyError(f"unknown ranking metric {name!r}; expected one of {sorted(METRIC_LABELS)}")
    return f"{METRIC_LABELS[name]}@{k}/{subset}"
