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
