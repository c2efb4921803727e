"""What the moment model reads: each video's frame features with their times, each moment
query's text-tower states and true windows, and the date windows every system splits by.

Frame labels (what the heads learn) come from the true windows and the frames' times:

* a frame is **inside** a moment when its time lies in one of the query's windows, start
  included and end excluded (a moment ending at 5.0 s is over at 5.0 s; a window shorter
  than the frame step holds no frame: the one nearest its middle stands in);
* a window's **start frame** is its first inside frame, its **end frame** its last;
* an inside frame's **offsets** are the seconds from its time back to its window's start
  and on to its end, so a frame alone places the window's boundaries between two frames.

The windows are annotations of the videos (QVHighlights' ``relevant_windows``): training
reads those of the train window's queries only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mmpipe.eval.splits import DateWindows, date_windows
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.spec import NothingToTrain

TRAIN, VALIDATION, TEST = "train", "validation", "test"
WINDOW_NAMES = (TRAIN, VALIDATION, TEST)


@dataclass(frozen=True)
class FrameLabels:
    """One query's per-frame targets over its video's T frames."""

    inside: np.ndarray  # float32 [T] 1 inside a true window
    starts: np.ndarray  # int64 [W] start frame of each true window
    ends: np.ndarray  # int64 [W] end frame of each true window
    offsets: np.ndarray  # float32 [T, 2] seconds back to the start and on to the end (inside frames)


def frame_labels(times: np.ndarray, windows: np.ndarray) -> FrameLabels:
    """Targets of a query with true ``windows`` [W, 2] (seconds) over frames at ``times`` [T].

    >>> labels = frame_labels(np.arange(6) * 0.5, np.array([[0.9, 2.1]]))
    >>> labels.inside.tolist(), labels.starts.tolist(), labels.ends.tolist()
    ([0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [2], [4])
    >>> labels.offsets[2].round(2).tolist()
    [0.1, 1.1]
    """
    times = np.asarray(times, dtype=np.float64)
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    if not len(times):
        raise ValueError("a video needs at least one frame")
    inside = np.zeros(len(times), np.float32)
    offsets = np.zeros((len(times), 2), np.float32)
    starts, ends = [], []
    # longest window first, so where windows overlap a frame's offsets follow the shortest
    for start, end in sorted(windows.tolist(), key=lambda w: w[0] - w[1]):
        frames = np.flatnonzero((times >= start) & (times < end))
        if not len(frames):
            frames = np.array([int(np.argmin(np.abs(times - (start + end) / 2)))])
        inside[frames] = 1.0
        offsets[frames, 0] = np.maximum(times[frames] - start, 0.0)
        offsets[frames, 1] = np.maximum(end - times[frames], 0.0)
        starts.append(int(frames[0]))
        ends.append(int(frames[-1]))
    return FrameLabels(inside, np.asarray(starts, np.int64), np.asarray(ends, np.int64), offsets)


@dataclass
class MomentInputs:
    """Videos (row i of ``frames`` and ``times``) with their window, and every moment query
    (row i of ``text``) with its video's row and window."""

    videos: pd.DataFrame  # video_id, created_at, duration_s, window
    frames: list[np.ndarray]  # float32 [T_i, D] frame features of video i, in time order
    times: list[np.ndarray]  # float64 [T_i] their times (seconds)
    queries: pd.DataFrame  # query_id, video_id, query, windows, video_row, window
    text: TextFeatures
    windows: DateWindows
    encoder: str = ""  # the image encoder (registered model) and version of the frame features
    encoder_version: str = ""

    @property
    def frame_dim(self) -> int:
        return int(self.frames[0].shape[1])

    @property
    def frame_step(self) -> float:
        """Seconds between stored frames (the median over the videos)."""
        steps = np.concatenate([np.diff(t) for t in self.times if len(t) > 1])
        return float(np.median(steps)) if len(steps) else 1.0

    def query_rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.queries["window"].to_numpy() == window)

    def true_windows(self, row: int) -> np.ndarray:
        # list(): parquet gives a list of windows back as an object array of arrays
        return np.asarray(list(self.queries["windows"].iloc[row]), dtype=np.float64).reshape(-1, 2)

    def video_of(self, row: int) -> int:
        return int(self.queries["video_row"].iloc[row])

    def duration(self, row: int) -> float:
        return float(self.videos["duration_s"].iloc[self.video_of(row)])

    def labels(self, row: int) -> FrameLabels:
        return frame_labels(self.times[self.video_of(row)], self.true_windows(row))


@dataclass
class Batch:
    """Padded tensors of a set of queries, and what the losses and decoding need."""

    rows: np.ndarray  # query rows
    frames: torch.Tensor  # [B, T, D]
    frame_mask: torch.Tensor  # bool [B, T]
    times: torch.Tensor  # float32 [B, T] (0 on padding)
    text: torch.Tensor  # [B, L, H]
    text_mask: torch.Tensor  # bool [B, L]
    labels: list[FrameLabels] | None = None


def crop_range(labels: FrameLabels, n_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random run of frames [first, last] that keeps every true window's frames: from
    anywhere before the first window to anywhere after the last (a training augmentation:
    the same moment at other positions and in shorter videos)."""
    inside = np.flatnonzero(labels.inside)
    return int(rng.integers(0, inside[0] + 1)), int(rng.integers(inside[-1], n_frames))


def make_batch(inputs: MomentInputs, rows: Sequence[int], with_labels: bool = True,
               crop_rng: np.random.Generator | None = None, crop_probability: float = 0.0) -> Batch:
    """The queries ``rows`` as one padded batch (frames padded to the longest video). With
    ``crop_rng``, each query's video is cut to a :func:`crop_range` with ``crop_probability``."""
    rows = np.asarray(rows, dtype=np.int64)
    spans = []
    for row in rows:
        video = inputs.video_of(int(row))
        first, last = 0, len(inputs.times[video]) - 1
        if crop_rng is not None and crop_rng.random() < crop_probability:
            first, last = crop_range(inputs.labels(int(row)), last + 1, crop_rng)
        spans.append((video, first, last + 1))
    longest = max(stop - start for _, start, stop in spans)
    frames = torch.zeros(len(rows), longest, inputs.frame_dim)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    times = torch.zeros(len(rows), longest)
    labels = [] if with_labels else None
    for i, (row, (video, start, stop)) in enumerate(zip(rows, spans)):
        n = stop - start
        frames[i, :n] = torch.from_numpy(inputs.frames[video][start:stop])
        mask[i, :n] = True
        times[i, :n] = torch.from_numpy(inputs.times[video][start:stop].astype(np.float32))
        if with_labels:
            labels.append(frame_labels(inputs.times[video][start:stop], inputs.true_windows(int(row))))
    text, text_mask = inputs.text.tokens(rows)
    return Batch(rows, frames, mask, times, text, text_mask, labels)


def moment_inputs(videos: pd.DataFrame, queries: pd.DataFrame, text: TextFeatures, frame_features) -> MomentInputs:
    """Inputs from the validated ``videos`` (video_id, created_at, duration_s), the validated
    moment ``queries`` (query_id, video_id, query, windows) whose text-tower states are row i
    of ``text``, and the shared frame features (``mmpipe.media.features.FeatureTable``).
    Videos without frame features (quarantined by frame extraction) are left out, with
    their queries; the date windows are those of the videos kept."""
    if len(queries) != len(text):
        raise ValueError(f"{len(queries)} moment queries but {len(text)} rows of text features")
    if videos.empty:
        raise NothingToTrain("no validated videos: nothing to train on")
    by_video = frame_features.video_rows()
    videos = videos.drop_duplicates("video_id")
    videos = videos[videos["video_id"].astype(str).isin(by_video)].reset_index(drop=True)
    if videos.empty:
        raise ValueError("no video has frame features: materialize frame_features first")
    t_s = frame_features.index["t_s"].to_numpy(dtype=np.float64)
    frames, times = [], []
    for video_id in videos["video_id"].astype(str):
        rows = by_video[video_id]
        rows = rows[np.argsort(t_s[rows], kind="stable")]
        frames.append(np.ascontiguousarray(frame_features.embedding[rows], dtype=np.float32))
        times.append(t_s[rows])
    windows = date_windows(videos["created_at"])
    videos = videos.assign(window=windows.window_of(videos["created_at"]))
    row_of = {video_id: row for row, video_id in enumerate(videos["video_id"].astype(str))}
    video_row = queries["video_id"].astype(str).map(row_of)
    kept = np.flatnonzero(video_row.notna().to_numpy())
    queries = queries.iloc[kept].reset_index(drop=True)
    if queries.empty:
        raise NothingToTrain(f"no validated moment query of the {len(videos)} videos with frame features: "
                             "nothing to train on")
    queries = queries.assign(video_row=video_row.iloc[kept].astype(np.int64).to_numpy())
    queries = queries.assign(window=videos["window"].to_numpy()[queries["video_row"].to_numpy()])
    return MomentInputs(videos[["video_id", "created_at", "duration_s", "window"]], frames, times,
                        queries[["query_id", "video_id", "query", "windows", "video_row", "window"]],
                        text.take(kept), windows, str(frame_features.encoder), str(frame_features.version))
