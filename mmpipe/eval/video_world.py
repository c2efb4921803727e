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
    """Counts, hours, held-out sizes and the fixed-span prior's R1@``iou`` (all queries and
    test-window queries) of the good video rows of a generated world at ``raw_root``."""
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

    def prior(rows: pd.DataFrame) -> float | None:
        rows = rows[rows["video_id"].isin(durations.index)]
        if rows.empty:
            return None
        windows = [np.asarray(list(w), dtype=float).reshape(-1, 2) for w in rows["windows"]]
        return best_fixed_span_prior(windows, durations.loc[rows["video_id"]].to_numpy(), iou=iou).recall

    n_windows = queries["windows"].map(len)
    test_queries = queries[queries["video_id"].isin(test_videos)]
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
        f"fixed_prior_r1@{iou:g}": prior(queries),
        f"fixed_prior_r1@{iou:g}_test": prior(test_queries),
    }
