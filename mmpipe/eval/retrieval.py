"""Retrieval metrics: one definition of each, shared by every model's evaluation.

Conventions, the same everywhere in this module:

* **Scores are inner products** of the embeddings as given, like a FAISS inner-product
  index. L2-normalise first if you mean cosine similarity.
* **Ranks are 1-based**: rank 1 is the top result.
* **Ties count against the model.** An item's rank is the number of candidates scoring
  at least as high as it, the item itself included, so a collapsed model that maps
  everything to one vector gets rank N for every query, never a lucky rank 1. Sorting
  would instead break ties by position, which rewards degenerate embeddings whose true
  target happens to come first.
* **Memory is O(chunk × N)**: queries are scored ``chunk`` rows at a time against all
  targets, so the N × N score matrix never exists. Each row's true score is read from
  the same matmul as its competitors, so an exact tie stays an exact tie.

Embeddings may be numpy arrays or torch tensors; tensors are scored on their own device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

DEFAULT_KS = (1, 5, 10)


def _as_matrix(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()  # memory-mapped .npy caches are read-only; torch warns on sharing them
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items, dim), got shape {tuple(t.shape)}")
    # Half precision matmuls are slow on CPU and coarse enough to invent ties.
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t


def _pair_up(query_emb, target_emb, query_name: str, target_name: str):
    q = _as_matrix(query_emb, query_name)
    t = _as_matrix(target_emb, target_name)
    if q.shape[1] != t.shape[1]:
        raise ValueError(
            f"{query_name} and {target_name} dims differ: {q.shape[1]} vs {t.shape[1]}"
        )
    dtype = torch.promote_types(q.dtype, t.dtype)
    return q.to(dtype), t.to(device=q.device, dtype=dtype)


def paired_ranks(
    query_emb: np.ndarray | torch.Tensor,
    target_emb: np.ndarray | torch.Tensor,
    chunk: int = 1024,
) -> np.ndarray:
    """Rank (1-based, ties pessimistic) of target i among all targets for query i."""
    q, t = _pair_up(query_emb, target_emb, "query_emb", "target_emb")
    n = q.shape[0]
    if n != t.shape[0]:
        raise ValueError(f"paired retrieval needs as many queries as targets: {n} vs {t.shape[0]}")
    if n == 0:
        raise ValueError("no queries to rank")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")

    ranks = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = q[start:stop] @ t.T  # (c, N)
        rows = torch.arange(stop - start, device=scores.device)
        true_scores = scores[rows, rows + start]
        ranks[start:stop] = (scores >= true_scores[:, None]).sum(dim=1).cpu()
    return ranks.numpy()


def _summarise_ranks(ranks: np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics["median_rank"] = float(np.median(ranks))
    metrics["mean_rank"] = float(np.mean(ranks))
    return metrics


def summarise_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"R@k" for each k, "median_rank", "mean_rank"}`` of 1-based ranks, one per query:
    the summary :func:`retrieval_metrics` gives, for ranks from any ranking function."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"need a non-empty 1-D array of ranks, got shape {ranks.shape}")
    return _summarise_ranks(ranks, ks)


def first_relevant_ranks(
    query_emb: np.ndarray | torch.Tensor,
    target_emb: np.ndarray | torch.Tensor,
    relevant: Sequence[Sequence[int]],
    chunk: int = 1024,
) -> np.ndarray:
    """Rank (1-based) of the best-ranked relevant target of each query: retrieval with
    several right answers, as MSR-VTT is evaluated with several captions per video.

    ``relevant[i]`` holds the target indices relevant to query i (at least one). Text to
    video: each caption is a query and its one video the relevant target; video to text:
    each video is a query and every one of its captions is relevant.

    Ties count against the model, as in :func:`paired_ranks`: the rank is one plus the
    number of *non-relevant* targets scoring at least as high as the query's best relevant
    target. With one relevant target per query it is exactly :func:`paired_ranks`'s rank;
    a collapsed model gets N - |relevant| + 1, the worst any ranking can give. Other
    relevant targets tied with the best one do not push it down: any of them would do.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> t = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> first_relevant_ranks(q, t, [[1], [0, 2]]).tolist()
    [2, 1]
    """
    q, t = _pair_up(query_emb, target_emb, "query_emb", "target_emb")
    n_queries, n_targets = q.shape[0], t.shape[0]
    if len(relevant) != n_queries:
        raise ValueError(f"need one list of relevant targets per query: {len(relevant)} for {n_queries} queries")
    if n_queries == 0:
        raise ValueError("no queries to rank")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")

    # Ragged (query, relevant target) pairs, flattened and sorted by query, so a chunk's
    # pairs are one slice and each chunk needs one gather.
    rows, cols = [], []
    for query, targets in enumerate(relevant):
        wanted = np.unique(np.asarray(targets, dtype=np.int64).ravel())  # a duplicate is one target
        if not len(wanted):
            raise ValueError(f"query {query} has no relevant target, so no rank; leave it out")
        if wanted[0] < 0 or wanted[-1] >= n_targets:
            raise ValueError(f"query {query}: relevant targets must be in [0, {n_targets}), got {wanted.tolist()}")
        rows.append(np.full(len(wanted), query, dtype=np.int64))
        cols.append(wanted)
    rows, cols = np.concatenate(rows), np.concatenate(cols)

    ranks = torch.empty(n_queries, dtype=torch.int64)
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        scores = q[start:stop] @ t.T  # (c, N)
        device = scores.device
        pairs = slice(*np.searchsorted(rows, [start, stop]))
        local = torch.from_numpy(rows[pairs] - start).to(device)
        relevant_scores = scores[local, torch.from_numpy(cols[pairs]).to(device)]
        best = scores.new_full((stop - start,), -math.inf).scatter_reduce(0, local, relevant_scores, reduce="amax")
        at_least = (scores >= best[:, None]).sum(dim=1)
        relevant_at_least = torch.zeros(stop - start, dtype=torch.int64, device=device).scatter_add(
            0, local, (relevant_scores >= best[local]).to(torch.int64))
        ranks[start:stop] = (at_least - relevant_at_least + 1).cpu()
    return ranks.numpy()


def retrieval_metrics(
    query_emb: np.ndarray | torch.Tensor,
    target_emb: np.ndarray | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> dict[str, float]:
    """Paired retrieval: query i's one true target is target i.

    Returns ``{"R@1", "R@5", "R@10", "median_rank", "mean_rank"}`` (one ``R@k`` per k).
    R@k is the fraction of queries whose true target ranks within the top k.
    """
    return _summarise_ranks(paired_ranks(query_emb, target_emb, chunk=chunk), ks)


def bidirectional_retrieval(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> dict[str, float]:
    """Retrieval both ways over paired (image i, text i).

    Keys are ``"text_to_image/R@1"`` (text queries, image corpus), ``"image_to_text/R@1"``
    and so on for every metric of :func:`retrieval_metrics`.
    """
    directions = {
        "text_to_image": retrieval_metrics(text_emb, image_emb, ks=ks, chunk=chunk),
        "image_to_text": retrieval_metrics(image_emb, text_emb, ks=ks, chunk=chunk),
    }
    return {
        f"{direction}/{key}": value
        for direction, metrics in directions.items()
        for key, value in metrics.items()
    }


def neighbor_recall_at_k(
    query_emb: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    corpus_emb: np.ndarray | torch.Tensor,
    corpus_ids: Sequence,
    neighbors: dict[str, set[str]],
    k: int = 10,
    exclude_self: bool = True,
    chunk: int = 1024,
) -> dict[str, float]:
    """How many of each pin's held-out neighbors its embedding retrieves in the top k.

    Every query is searched against the whole corpus, not just other queries, so the
    number is what a user of the index would see. A query's neighbors are
    ``neighbors[id]`` restricted to ids present in the corpus, minus the query itself;
    queries left with none are skipped. With ``exclude_self`` the corpus entry sharing
    the query's id never takes a top-k slot (a pin is trivially its own nearest match).

    A neighbor counts as found when its pessimistic rank (non-self candidates scoring
    at least as high, itself included) is at most k.

    Returns, averaged over the queries that have neighbors:

    * ``recall@k``: fraction of the query's neighbors found;
    * ``hit_rate@k``: whether at least one neighbor was found;
    * ``max_recall@k``: the best any ranking could score, min(k, |neighbors|) / |neighbors|,
      since a pin with more than k neighbors cannot find them all (the oracle);
    * ``n_queries``: how many queries were scored (the metrics are NaN when none).
    """
    found, total = neighbor_hits_per_query(query_emb, query_ids, corpus_emb, corpus_ids, neighbors,
                                           k=k, exclude_self=exclude_self, chunk=chunk)
    return summarise_neighbor_hits(found, total, k)


def summarise_neighbor_hits(found: np.ndarray, total: np.ndarray, k: int) -> dict[str, float]:
    """:func:`neighbor_recall_at_k`'s metrics from :func:`neighbor_hits_per_query`'s output."""
    keys = (f"recall@{k}", f"hit_rate@{k}", f"max_recall@{k}")
    if len(total) == 0:
        return {**dict.fromkeys(keys, math.nan), "n_queries": 0}
    return {
        f"recall@{k}": float(np.mean(found / total)),
        f"hit_rate@{k}": float(np.mean(found > 0)),
        f"max_recall@{k}": float(np.mean(np.minimum(total, k) / total)),
        "n_queries": len(total),
    }


def neighbor_hits_per_query(
    query_emb: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    corpus_emb: np.ndarray | torch.Tensor,
    corpus_ids: Sequence,
    neighbors: dict[str, set[str]],
    k: int = 10,
    exclude_self: bool = True,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query with neighbors, in query order: (neighbors found in the top k, neighbors).

    What :func:`neighbor_recall_at_k` averages; per query, so that two methods scored on
    the same queries can be compared query by query (:func:`paired_bootstrap_gain`).
    """
    q, c = _pair_up(query_emb, corpus_emb, "query_emb", "corpus_emb")
    query_ids = [str(i) for i in query_ids]
    corpus_ids = [str(i) for i in corpus_ids]
    if len(query_ids) != q.shape[0] or len(corpus_ids) != c.shape[0]:
        raise ValueError("each embedding row needs exactly one id")
    if k < 1 or chunk < 1:
        raise ValueError("k and chunk must be >= 1")
    column_of = {pin: j for j, pin in enumerate(corpus_ids)}
    if len(column_of) != len(corpus_ids):
        raise ValueError("corpus_ids must be unique")

    # Ragged (query row, neighbor column) pairs, flattened for one gather per chunk.
    rows, cols, counted_rows = [], [], []
    for row, pin in enumerate(query_ids):
        wanted = sorted(
            column_of[other]
            for other in map(str, neighbors.get(pin, ()))
            if other != pin and other in column_of
        )
        if wanted:
            counted_rows.append(row)
            rows.extend([row] * len(wanted))
            cols.extend(wanted)
    if not counted_rows:
        return np.zeros(0), np.zeros(0)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    self_col = np.array([column_of.get(pin, -1) for pin in query_ids], dtype=np.int64)

    hit = np.zeros(len(rows), dtype=bool)
    n_corpus = c.shape[0]
    for start in range(0, q.shape[0], chunk):
        stop = min(start + chunk, q.shape[0])
        in_chunk = slice(*np.searchsorted(rows, [start, stop]))
        if in_chunk.start == in_chunk.stop:
            continue  # no query in this chunk has neighbors: skip the matmul
        scores = q[start:stop] @ c.T  # (chunk, corpus)
        device = scores.device
        if exclude_self:
            local = np.flatnonzero(self_col[start:stop] >= 0)
            self_rows = torch.from_numpy(local).to(device)
            self_cols = torch.from_numpy(self_col[start + local]).to(device)
            scores[self_rows, self_cols] = -math.inf
        # rank(s) = #{candidates >= s} <= k  <=>  the (k+1)-th best score is below s.
        if n_corpus > k:
            threshold = scores.topk(k + 1, dim=1).values[:, k]
        else:
            threshold = scores.new_full((stop - start,), -math.inf)
        local_rows = torch.from_numpy(rows[in_chunk] - start).to(device)
        neighbor_scores = scores[local_rows, torch.from_numpy(cols[in_chunk]).to(device)]
        hit[in_chunk] = (neighbor_scores > threshold[local_rows]).cpu().numpy()

    total = np.bincount(rows, minlength=len(query_ids))[counted_rows]
    found = np.bincount(rows, weights=hit, minlength=len(query_ids))[counted_rows]
    return found, total.astype(np.float64)


def paired_bootstrap_gain(
    model: np.ndarray, baseline: np.ndarray, n_resamples: int = 2000, level: float = 0.9, seed: int = 0,
) -> tuple[float, float]:
    """Confidence interval of :func:`relative_gain` of mean(model) over mean(baseline).

    ``model`` and ``baseline`` are per-query scores of the same queries (e.g. each
    query's neighbor recall); queries are resampled with replacement, the same draw for
    both, so what the interval measures is how much the gain depends on which queries
    happened to be held out. A percentile interval at ``level``.
    """
    return _paired_interval(model, baseline, relative_gain, n_resamples, level, seed)


def _paired_interval(model, baseline, statistic, n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval at ``level`` of ``statistic(mean(model), mean(baseline))`` over
    ``n_resamples`` paired resamples of the queries, the draws fixed by ``seed``."""
    model, baseline = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if model.shape != baseline.shape or model.ndim != 1:
        raise ValueError(f"need two equally long 1-D arrays, got {model.shape} and {baseline.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if len(model) == 0:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(model), size=(n_resamples, len(model)))
    values = [statistic(m, b) for m, b in zip(model[draws].mean(1), baseline[draws].mean(1))]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap_difference(model: np.ndarray, baseline: np.ndarray, n_resamples: int = 2000,
                                level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(model) - mean(baseline) over paired resamples of the
    queries (say, each query's hit at R1, 0 or 1, so the interval is in points of recall).
    The draws are :func:`paired_bootstrap_gain`'s with the same seed, so a ratio and a
    difference reported side by side come from the same resamples."""
    return _paired_interval(model, baseline, lambda m, b: m - b, n_resamples, level, seed)


def paired_comparison(model: np.ndarray, baseline: np.ndarray, n_resamples: int = 2000, level: float = 0.9,
                      seed: int = 0) -> dict:
    """mean(model) against mean(baseline) over the same queries (per-query scores, such as
    hits): their values, the relative gain, the ratio (1 + gain: for metrics that are never
    negative) and the difference, each with its paired-bootstrap interval from the same draws."""
    model_value, baseline_value = float(np.mean(model)), float(np.mean(baseline))
    gain = relative_gain(model_value, baseline_value)
    gain_ci = paired_bootstrap_gain(model, baseline, n_resamples, level, seed)
    return {"model": model_value, "baseline": baseline_value, "gain": gain, "gain_ci": gain_ci,
            "ratio": 1 + gain, "ratio_ci": (1 + gain_ci[0], 1 + gain_ci[1]),
            "difference": model_value - baseline_value,
            "difference_ci": paired_bootstrap_difference(model, baseline, n_resamples, level, seed)}


def neighbors_from_pairs(pairs: pd.DataFrame) -> dict[str, set[str]]:
    """Symmetric neighbor sets from a ``pin_a``/``pin_b`` pair table; self pairs are dropped."""
    a = pairs["pin_a"].astype(str).to_numpy()
    b = pairs["pin_b"].astype(str).to_numpy()
    keep = a != b
    both_ways = pd.DataFrame(
        {"pin": np.concatenate([a[keep], b[keep]]), "other": np.concatenate([b[keep], a[keep]])}
    )
    return {pin: set(others) for pin, others in both_ways.groupby("pin", sort=True)["other"]}


def relative_gain(model: float, baseline: float) -> float:
    """(model - baseline) / |baseline|: +0.5 means the model's number is 50% higher.

    For lower-is-better metrics (rank, logloss) an improvement is negative. A zero
    baseline gives 0 when the model also scores 0, else ±inf.
    """
    model, baseline = float(model), float(baseline)
    if baseline == 0.0:
        return 0.0 if model == 0.0 else math.copysign(math.inf, model)
    return (model - baseline) / abs(baseline)


def temporal_iou(pred, gt):
    """IoU of 1-D segments ``[start, end]``, elementwise over the leading dimensions.

    ``pred`` and ``gt`` are ``(start, end)`` pairs or arrays of shape ``(..., 2)`` that
    broadcast; a single pair gives a float. For every prediction against every ground
    truth, pass ``pred[:, None]`` and ``gt[None]``. Touching segments and zero-length
    unions give 0.

    >>> temporal_iou((0, 2), (1, 3))
    0.3333333333333333
    >>> temporal_iou((2, 4), (4, 6))
    0.0
    >>> pred = np.array([[0.0, 0.2], [0.5, 1.0]])
    >>> gt = np.array([[0.0, 0.3], [0.0, 1.0]])
    >>> temporal_iou(pred, gt).round(4)
    array([0.6667, 0.5   ])
    >>> temporal_iou(pred[:, None], gt[None]).round(4)
    array([[0.6667, 0.2   ],
           [0.    , 0.5   ]])
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape[-1:] != (2,) or gt.shape[-1:] != (2,):
        raise ValueError("segments must have a last dimension of 2: (start, end)")
    if (pred[..., 1] < pred[..., 0]).any() or (gt[..., 1] < gt[..., 0]).any():
        raise ValueError("a segment ends before it starts")
    left = np.maximum(pred[..., 0], gt[..., 0])
    right = np.minimum(pred[..., 1], gt[..., 1])
    inter = np.clip(right - left, 0.0, None)
    union = (pred[..., 1] - pred[..., 0]) + (gt[..., 1] - gt[..., 0]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou
