"""Classification metrics (CTR): one definition each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.layout import raw_table_path, truth_path


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC via the rank-sum statistic, ties counted as half; NaN with one class."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def oracle_auc(raw_root: Path) -> float:
    """The AUC of the world's true click probabilities against its clicks: the ceiling any
    CTR model is judged against. Reads the truth (``_truth/impressions``: good rows only)
    and the landing zone's clicks, joined by impression id."""
    truth = pd.read_parquet(truth_path(raw_root, "impressions"), columns=["impression_id", "p_click"])
    clicks = pd.read_parquet(raw_table_path(raw_root, "interactions"), columns=["impression_id", "clicked"])
    bad = pd.read_parquet(truth_path(raw_root, "bad_records"), columns=["table", "row_index"])
    clicks = clicks.drop(index=bad.loc[bad["table"] == "interactions", "row_index"].tolist(), errors="ignore")
    joined = truth.merge(clicks, on="impression_id", how="inner", validate="one_to_one")
    if len(joined) != len(truth):
        raise ValueError(f"{len(truth) - len(joined)} true impressions have no good click row in {raw_root}")
    return roc_auc(joined["p_click"].to_numpy(), joined["clicked"].astype(bool).to_numpy())


def log_loss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log) of click probabilities, clipped to [eps, 1 - eps]."""
    losses = per_impression_log_loss(probabilities, labels, eps)
    return float(losses.mean()) if len(losses) else float("nan")


def per_impression_log_loss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels).astype(bool)
    return -np.where(y, np.log(p), np.log1p(-p))


def per_group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group keys, AUC of each group's impressions, impressions of each group), over the
    groups that hold both classes (an AUC needs a click and a non-click)."""
    frame = pd.DataFrame({"g": np.asarray(groups), "s": np.asarray(scores, np.float64),
                          "y": np.asarray(labels).astype(bool)})
    keys, aucs, sizes = [], [], []
    for key, part in frame.groupby("g", sort=True):
        if 0 < part["y"].sum() < len(part):
            keys.append(key)
            aucs.append(roc_auc(part["s"].to_numpy(), part["y"].to_numpy()))
            sizes.append(len(part))
    return np.asarray(keys, dtype=object), np.asarray(aucs, np.float64), np.asarray(sizes, np.int64)


def group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """GAUC: the per-group (per-user) AUC averaged with each group's impression count as its
    weight, over groups with both classes; NaN when no group has both."""
    _, aucs, sizes = per_group_auc(scores, labels, groups)
    return float(np.sum(aucs * sizes) / np.sum(sizes)) if len(sizes) else float("nan")


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC with per-impression weights (ties counted as half), for each row of
    ``weights`` [B, n] (or one row [n]) at once: a bootstrap resample is a weight vector of
    draw counts, so B resamples cost one sort. NaN where a row leaves one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # first row of each tie group
    w = weights[:, order]
    y = labels[order]
    positive = np.add.reduceat(w * y, starts, axis=1)  # [B, groups] weight of clicks per tie group
    negative = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative  # negative weight strictly below each group
    total_pos, total_neg = positive.sum(1), negative.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (positive * (below + negative / 2)).sum(1) / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def resample_weights(groups: np.ndarray | None, n: int, n_resamples: int, seed: int, chunk: int = 100):
    """Bootstrap draws as impression weights, ``chunk`` resamples at a time ([chunk, n]).
    With ``groups`` (say, each impression's user), whole groups are drawn with replacement,
    since one user's impressions are not independent; without, impressions are."""
    rng = np.random.default_rng(seed)
    if groups is None:
        index, n_units = np.arange(n), n
    else:
        _, index = np.unique(np.asarray(groups), return_inverse=True)
        index, n_units = index.reshape(-1), int(index.max()) + 1 if n else 0
    for first in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - first)
        draws = rng.integers(0, n_units, size=(size, n_units))
        counts = np.stack([np.bincount(row, minlength=n_units) for row in draws])
        yield counts[:, index]


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def paired_bootstrap_auc_difference(model: np.ndarray, baseline: np.ndarray, labels: np.ndarray,
                                   groups: np.ndarray | None = None, n_resamples: int = 1000, level: float = 0.9,
                                   seed: int = 0) -> dict:
    """AUC of ``model`` scores against ``baseline`` scores of the same impressions: both
    values, their difference and its percentile interval at ``level`` over paired
    resamples (the same draw for both; of whole ``groups`` when given, see
    :func:`resample_weights`), with each model's own interval."""
    _check_level(level)
    labels = np.asarray(labels).astype(bool)
    a, b, diffs = [], [], []
    for weights in resample_weights(groups, len(labels), n_resamples, seed):
        wa, wb = weighted_auc(model, labels, weights), weighted_auc(baseline, labels, weights)
        a.append(wa), b.append(wb), diffs.append(wa - wb)
    model_value, baseline_value = roc_auc(model, labels), roc_auc(baseline, labels)
    return {"model": model_value, "baseline": baseline_value, "difference": model_value - baseline_value,
            "difference_ci": _interval(np.concatenate(diffs) if diffs else [], level),
            "model_ci": _interval(np.concatenate(a) if a else [], level),
            "baseline_ci": _interval(np.concatenate(b) if b else [], level)}


def paired_bootstrap_group_auc_difference(model: np.ndarray, baseline: np.ndarray, labels: np.ndarray,
                                          groups: np.ndarray, n_resamples: int = 1000, level: float = 0.9,
                                          seed: int = 0) -> dict:
    """:func:`group_auc` of two score vectors over the same impressions, groups resampled with
    replacement (the same draw for both): values, difference and intervals."""
    _check_level(level)
    keys, auc_a, sizes = per_group_auc(model, labels, groups)
    _, auc_b, _ = per_group_auc(baseline, labels, groups)  # the same groups: they depend on labels only
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(n_resamples, len(keys))) if len(keys) else np.zeros((0, 0), int)
    counts = np.stack([np.bincount(row, minlength=len(keys)) for row in draws]) if len(keys) else draws
    weights = counts * sizes[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (weights * auc_a).sum(1) / weights.sum(1)
        b = (weights * auc_b).sum(1) / weights.sum(1)
    value = lambda aucs: float(np.sum(aucs * sizes) / np.sum(sizes)) if len(sizes) else float("nan")  # noqa: E731
    return {"model": value(auc_a), "baseline": value(auc_b), "difference": value(auc_a) - value(auc_b),
            "difference_ci": _interval(a - b, level), "model_ci": _interval(a, level),
            "baseline_ci": _interval(b, level)}


def paired_bootstrap_log_loss_difference(model: np.ndarray, baseline: np.ndarray, labels: np.ndarray,
                                         groups: np.ndarray | None = None, n_resamples: int = 1000,
                                         level: float = 0.9, seed: int = 0) -> dict:
    """:func:`log_loss` of two probability vectors over the same impressions, resampled as
    :func:`paired_bootstrap_auc_difference` does (lower is better: a negative difference
    is the model's gain)."""
    _check_level(level)
    la, lb = per_impression_log_loss(model, labels), per_impression_log_loss(baseline, labels)
    a, b = [], []
    for weights in resample_weights(groups, len(la), n_resamples, seed):
        total = weights.sum(1)
        a.append(weights @ la / total), b.append(weights @ lb / total)
    a, b = (np.concatenate(a), np.concatenate(b)) if a else (np.zeros(0), np.zeros(0))
    return {"model": float(la.mean()), "baseline": float(lb.mean()), "difference": float(la.mean() - lb.mean()),
            "difference_ci": _interval(a - b, level), "model_ci": _interval(a, level),
            "baseline_ci": _interval(b, level)}
