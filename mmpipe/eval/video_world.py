"""What a landing zone's videos offer the video systems: how much video, how many
annotations, how many of them fall in the held-out test window, and how far the best
fixed-span prior gets on its moment queries (a world where a query's answer follows from
span lengths alone teaches a moment model nothing).

Reads the raw tables and the bad-record truth of a generated world; bad rows are left out,
as validation leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe import layout
from mmpipe.eval.moment import best_fixed_span_prior
from mmpipe.eval.splits import date_windows


def _good(raw_root: Path, table: str, bad: pd.DataFrame) -> pd.DataFrame:
    frame = pd.read_parquet(layout.raw_table_path(raw_root, table))
    return frame.drop(index=bad.loc[bad["table"] == table, "row_index"].to_numpy(), errors="ignore")


def video_world_summary(raw_root: Path, iou: float = 0.7) -> dict:
    """Counts, hours, held-out sizes and the fixed-span prior's R1@``iou`` of the good video
    rows of a generated world at ``raw_root``: the best span chosen on every query (in
    sample, an upper bound), and the best span chosen before the test window scored on it."""
    raw_root = Path(raw_root)
    truth_file = layout.truth_path(raw_root, "bad_records")
    bad = pd.read_parquet(truth_file) if truth_file.exists() else pd.DataFrame(columns=["table", "row_index"])
    videos = _good(raw_root, "videos", bad).drop_duplicates("video_id")
    tables = {table: _good(raw_root, table, bad) for table in
              ("moment_queries", "video_captions", "video_shots", "summary_queries")}
    queries = tables["moment_queries"]
    if videos.empty:
        return {"videos": 0}
    window = pd.Series(date_windows(videos["created_at"]).window_of(videos["created_at"]), index=videos["video_id"])
    test_videos = set(window.index[window == "test"])
    durations = videos.set_index("video_id")["duration_s"]

    def windows_and_durations(rows: pd.DataFrame):
        rows = rows[rows["video_id"].isin(durations.index)]
        return ([np.asarray(list(w), dtype=float).reshape(-1, 2) for w in rows["windows"]],
                durations.loc[rows["video_id"]].to_numpy())

    n_windows = queries["windows"].map(len)
    test_queries = queries[queries["video_id"].isin(test_videos)]
    earlier = queries[~queries["video_id"].isin(test_videos)]
    prior = best_fixed_span_prior(*windows_and_durations(queries), iou=iou) if len(queries) else None
    # the baseline as a moment model would meet it: the span chosen before the test window,
    # scored on it
    earlier_prior = best_fixed_span_prior(*windows_and_durations(earlier), iou=iou) if len(earlier) else None
    test_recall = (earlier_prior.recall_on(*windows_and_durations(test_queries))
                   if earlier_prior is not None and len(test_queries) else None)
    return {
        "videos": len(videos),
        "hours": round(float(videos["duration_s"].sum()) / 3600, 2),
        "duration_s": [round(float(videos["duration_s"].min()), 2), round(float(videos["duration_s"].max()), 2)],
        "moment_queries": len(queries),
        "queries_with_two_or_more_windows": int((n_windows >= 2).sum()),
        "captions": len(tables["video_captions"]),
        "shots": len(tables["video_shots"]),
        "summary_queries": len(tables["summary_queries"]),
        "test_videos": len(test_videos),
        "test_moment_queries": len(test_queries),
        "test_summary_queries": int(tables["summary_queries"]["video_id"].isin(test_videos).sum()),
        "test_captions": int(tables["video_captions"]["video_id"].isin(test_videos).sum()),
        f"fixed_prior_r1@{iou:g}": prior.recall if prior is not None else None,
        f"fixed_prior_r1@{iou:g}_test": test_recall,
    }
