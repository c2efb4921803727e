"""Related-item ranking: exact top-k retrieval and the metrics of a ranked list, one definition each.

Every system's related-items report goes through these functions, so "nDCG@10" means the
same thing in every table:

- ``top_k`` / ``top_k_from_scores``: the k highest-scoring corpus rows per query, in
  query chunks so memory stays at ``chunk_size x n_corpus`` scores whatever the number of
  queries. Ties go to the lower corpus row, so a ranking is reproducible across runs,
  chunk sizes and machines.
- ``top_k_from_group_scores``: the same ranking when corpus rows fall into groups that
  score alike (a ceiling that only sees a pin's true attributes), at the cost of the
  groups instead of the corpus: the exact ``top_k_from_scores`` result, ties included.
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


def _top_k_of_block(scores: np.ndarray, k: int, excluded: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The k best columns of each row, best first, ties to the lower column.

    ``excluded`` (rows, columns): at most one entry per row that must not be returned.
    A full sort per row would cost O(n log n). Instead the k-th best score of each row (the
    excluded entry left out) is read off the k + 2 largest values (``torch.topk``: multi-
    threaded, and exact in its values whatever order it gives ties in), and only the entries
    at or above it are sorted by (score, column). Those are nearly always among the k + 2
    returned; a row whose ties at the k-th score run past them (all-zero embeddings) is
    compared in full. Exact and deterministic, about one pass over the block per row.
    """
    import torch

    n_rows, n = scores.shape
    rows, columns = excluded
    m = min(n, k + 2)
    if not scores.flags.writeable or any(stride < 0 for stride in scores.strides):
        scores = np.ascontiguousarray(scores).copy()  # torch wraps the array, it must be writable
    values, indices = (part.numpy() for part in torch.topk(torch.from_numpy(scores), m, dim=1))
    kth_best = values[:, k - 1].copy()
    # Leaving out the excluded entry moves the k-th best to the (k+1)-th value when it was one
    # of the k best (as a value: with ties, any of the equal entries).
    if len(rows):  # then k < n: there is a (k+1)-th value
        own_in_top = scores[rows, columns] >= values[rows, k - 1]
        kth_best[rows[own_in_top]] = values[rows[own_in_top], k]
    own_column = np.full(n_rows, -1, dtype=np.int64)
    own_column[rows] = columns
    # Every entry >= the k-th best was returned unless the m-th value still reaches it.
    complete = values[:, m - 1] < kth_best if m < n else np.ones(n_rows, dtype=bool)
    keep = (values >= kth_best[:, None]) & (indices != own_column[:, None]) & complete[:, None]
    row_of, position = np.nonzero(keep)
    column_of = indices[row_of, position]
    tied = np.flatnonzero(~complete)
    if len(tied):
        candidates = scores[tied] >= kth_best[tied, None]
        candidates[np.arange(len(tied)), np.maximum(own_column[tied], 0)] &= own_column[tied] < 0
        tied_row, tied_column = np.nonzero(candidates)
        row_of, column_of = np.concatenate([row_of, tied[tied_row]]), np.concatenate([column_of, tied_column])
    order = np.lexsort((column_of, -scores[row_of, column_of], row_of))
    row_of, column_of = row_of[order], column_of[order]
    first_of_row = np.searchsorted(row_of, np.arange(n_rows))
    rank_in_row = np.arange(len(row_of)) - first_of_row[row_of]
    return column_of[rank_in_row < k].reshape(n_rows, k)


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
    boolean array of the block's size beside the scores (a row whose ties at the k-th score
    run past the k + 2 best is compared in full): lower ``chunk_size`` for very large corpora.
    """
    exclude = _check_chunking(n_queries, chunk_size, exclude)
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
        rows = np.flatnonzero(exclude[start:stop] >= 0) if exclude is not None else np.zeros(0, np.int64)
        excluded = (rows, exclude[start:stop][rows] if exclude is not None else rows)
        if np.isnan(scores).any():
            raise ValueError(f"score_block({start}, {stop}) returned NaN scores")
        ranked[start:stop] = _top_k_of_block(scores, k, excluded)
    return ranked


def _check_chunking(n_queries: int, chunk_size: int, exclude: np.ndarray | None) -> np.ndarray | None:
    if n_queries < 0 or chunk_size < 1:
        raise ValueError(f"need n_queries >= 0 and chunk_size >= 1, got {n_queries} and {chunk_size}")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_queries,):
            raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_queries},)")
    return exclude


def top_k_from_group_scores(
    group_block: ScoreBlock,
    group_of_row: np.ndarray,
    n_queries: int,
    k: int,
    exclude: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """``top_k_from_scores`` of scores that depend on a corpus row only through its group:
    score[q, row] = ``group_block(start, stop)``[q - start, ``group_of_row[row]``].

    The same [n_queries, k] rows, best first, ties to the lower row, without ever forming
    the [queries, corpus] scores: per query, the groups are sorted by score and walked
    until they hold k rows (the query's own row not counted); every group scoring above
    the last one walked gives all its rows, and the groups tied with it their lowest rows,
    so only the first k + 1 rows of each group (k once the query's own is dropped) can be
    chosen. Cost per query: a sort of the groups and a selection among at most
    (tied groups) x (k + 1) rows, against a pass over the whole corpus.
    """
    exclude = _check_chunking(n_queries, chunk_size, exclude)
    group_of_row = np.asarray(group_of_row, dtype=np.int64)
    if group_of_row.ndim != 1 or (group_of_row < 0).any():
        raise ValueError("group_of_row must be a vector of non-negative group numbers, one per corpus row")
    n_rows = len(group_of_row)
    n_excluded = int(exclude is not None and (exclude >= 0).any())
    if not 1 <= k <= n_rows - n_excluded:
        raise ValueError(f"k={k} must be between 1 and the {n_rows - n_excluded} rankable corpus rows")
    n_groups = int(group_of_row.max()) + 1 if n_rows else 0
    size = np.bincount(group_of_row, minlength=n_groups)
    used = np.flatnonzero(size)  # groups without rows never compete
    # head[g]: the k + 1 lowest rows of group g in increasing order, -1 past its end
    by_group = np.argsort(group_of_row, kind="stable")
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    head = np.full((n_groups, k + 1), -1, dtype=np.int64)
    for j in range(k + 1):
        has = size > j
        head[has, j] = by_group[first[has] + j]
    ranked = np.empty((n_queries, k), dtype=np.int64)
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        scores = np.asarray(group_block(start, stop))
        if scores.ndim != 2 or scores.shape[0] != stop - start or scores.shape[1] < n_groups:
            raise ValueError(f"group_block({start}, {stop}) returned shape {scores.shape}, "
                             f"expected ({stop - start}, >= {n_groups} groups)")
        scores = scores[:, used]
        if np.isnan(scores).any():
            raise ValueError(f"group_block({start}, {stop}) returned NaN scores")
        own = exclude[start:stop] if exclude is not None else np.full(stop - start, -1)
        own_group = np.where(own >= 0, group_of_row[np.maximum(own, 0)], -1)
        order = np.argsort(-scores, axis=1, kind="stable")  # positions in ``used``, best first
        rows_walked = np.cumsum(size[used][order] - (used[order] == own_group[:, None]), axis=1)
        last = (rows_walked < k).sum(axis=1)  # the walk reaches k rows at this group
        block = np.arange(stop - start)
        threshold = scores[block, order[block, last]]  # the score of the group that completes k
        for i in block:
            competing = used[scores[i] >= threshold[i]]
            rows = head[competing].ravel()
            rows = rows[(rows >= 0) & (rows != own[i])]
            row_scores = scores[i][np.searchsorted(used, group_of_row[rows])]
            ranked[start + i] = rows[np.lexsort((rows, -row_scores))[:k]]
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
        # No copy of a matrix that is already what the metrics read (100M entries at 100k pins),
        # and never a change to the caller's: the cleaning below works on a copy.
        matrix = sp.csr_matrix(relevance, dtype=np.float64)
        if not matrix.has_canonical_format or (matrix.data <= 0).any():
            matrix = matrix.copy()
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
    n_relevant = np.diff(relevance.indptr)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    if binary:  # min(k, n_relevant) ones
        return np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, k)]
    query = np.repeat(np.arange(n_queries), n_relevant)
    grades = relevance.data
    whole = len(grades) and np.array_equal(grades, np.round(grades)) and grades.max() <= 64
    if whole:
        # Small whole grades (shared boards): the count of each grade per query gives the sorted
        # top k in one pass, where a sort of every entry took seconds at 100M entries.
        levels = int(grades.max())
        counts = np.bincount(query * (levels + 1) + grades.astype(np.int64),
                             minlength=n_queries * (levels + 1)).reshape(n_queries, levels + 1)
        ideal, placed = np.zeros(n_queries), np.zeros(n_queries, dtype=np.int64)
        cumulative = np.concatenate([[0.0], np.cumsum(discount)])
        for grade in range(levels, 0, -1):  # best grade first, each filling the next ranks up to k
            taken = np.minimum(counts[:, grade], k - placed)
            ideal += grade * (cumulative[placed + taken] - cumulative[placed])
            placed += taken
        return ideal
    order = np.lexsort((-grades, query))  # by query, best grade first
    rank = np.arange(len(order)) - relevance.indptr[query[order]]  # 0-based rank within the query
    top = rank < k
    return np.bincount(query[order][top], weights=grades[order][top] / np.log2(rank[top] + 2.0),
                       minlength=n_queries)


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
