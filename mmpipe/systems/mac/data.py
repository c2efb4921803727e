"""MAC's data: clips drawn from the stored frames of each validated video, its captions'
cached text-tower states, and the date windows every system splits by.

A clip is ``n_frames`` frames spread over the whole video, TSN-style: the stored frames are
cut into ``n_frames`` equal segments and one frame is taken from each, at random in
training (a different clip of the same video every time it is drawn) and from the middle
at inference (the same clip every time). A caption describes the whole video ("first a
red star rises, then ..."), so every clip covers all of it. At inference a video can be
embedded from several such clips (``clip_offsets``: clip c takes the frame at (c + 0.5) /
n_clips of each segment) and their embeddings averaged: 8 frames of a 20 s video are 2.5 s
apart, and a visit shorter than that can fall between them.

The training window's moment queries give a second, finer kind of pair (``MomentClips``):
a query says what happens inside its true windows ("the pink object slides to the left"),
so a clip drawn from the stored frames inside them pairs with the query as a whole-video
clip pairs with a caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmpipe.eval.splits import DateWindows, date_windows
from mmpipe.media.pixels import normalize_pixels
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.spec import NothingToTrain

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def clip_indices(n_stored: int, n_frames: int, rng: np.random.Generator | None = None,
                 offset: float = 0.5) -> np.ndarray:
    """Which of ``n_stored`` frames make a clip of ``n_frames``: one from each of
    ``n_frames`` equal segments, at random with ``rng``, else at ``offset`` (0 to 1) of
    each segment, its middle by default. A video shorter than the clip repeats frames (in order).

    >>> clip_indices(8, 4).tolist()
    [1, 3, 5, 7]
    >>> clip_indices(8, 4, offset=0.25).tolist()
    [0, 2, 4, 6]
    >>> clip_indices(2, 4).tolist()
    [0, 0, 1, 1]
    """
    if n_stored < 1 or n_frames < 1:
        raise ValueError(f"need frames to sample, got {n_stored} stored and a clip of {n_frames}")
    edges = np.linspace(0, n_stored, n_frames + 1)
    if rng is None:
        picks = edges[:-1] + offset * (edges[1:] - edges[:-1])
    else:
        picks = edges[:-1] + rng.random(n_frames) * (edges[1:] - edges[:-1])
    return np.minimum(picks.astype(np.int64), n_stored - 1)


def clip_offsets(n_clips: int) -> list[float]:
    """Where in each segment the ``n_clips`` inference clips take their frame: evenly spread.

    >>> clip_offsets(1), clip_offsets(4)
    ([0.5], [0.125, 0.375, 0.625, 0.875])
    """
    if n_clips < 1:
        raise ValueError(f"need at least one clip, got {n_clips}")
    return [(c + 0.5) / n_clips for c in range(n_clips)]


@dataclass
class VideoClips:
    """The stored frames of each video (uint8 [F_i, S, S, 3], row i of ``video_ids``)."""

    video_ids: list[str]
    frames: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.video_ids)

    def pixels(self, rows: Sequence[int], n_frames: int, image_size: int,
               rng: np.random.Generator | None = None, within: Sequence[np.ndarray] | None = None,
               offset: float = 0.5, part: slice = slice(None)) -> torch.Tensor:
        """Normalised clips [len(rows), n_frames, 3, image_size, image_size]; with ``within``,
        clip i is drawn from the stored frames ``within[i]`` of its video only; without
        ``rng``, at ``offset`` of each segment (:func:`clip_indices`). ``part``: only these
        rows' clips, the random draws still made for every row (one process's share of a
        batch gets the clips the whole batch would)."""
        spans = [np.arange(len(self.frames[row])) for row in rows] if within is None else list(within)
        picks = [span[clip_indices(len(span), n_frames, rng, offset)] for span in spans]
        clips = np.stack([self.frames[row][pick] for row, pick in zip(list(rows)[part], picks[part])])
        pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S]
        if pixels.shape[-1] != image_size:  # frames stored at another size than the model's
            b, t = pixels.shape[:2]
            pixels = F.interpolate(pixels.flatten(0, 1).float(), size=(image_size, image_size), mode="bilinear",
                                   antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
            pixels = pixels.view(b, t, 3, image_size, image_size)
        return normalize_pixels(pixels)


@dataclass
class MomentClips:
    """Moment queries as clip-text pairs: query q is about the stored frames ``frames[q]``
    (those inside its true windows) of video row ``video_rows[q]``; row q of ``text`` holds
    its cached text-tower states."""

    video_rows: np.ndarray  # [Q] rows of MACInputs.videos
    frames: list[np.ndarray]  # per query, positions of the stored frames inside its windows
    text: TextFeatures

    def __len__(self) -> int:
        return len(self.video_rows)


def moment_clips(video_ids: Sequence[str], frame_times: Sequence[np.ndarray], queries: pd.DataFrame,
                 text: TextFeatures) -> MomentClips:
    """The queries (query_id, video_id, windows: [[start, end], ...] seconds) of the videos
    ``video_ids`` whose stored frames (at times ``frame_times``, row-aligned) fall inside a
    true window, with their rows of ``text`` (row i for query row i). A query of another
    video, or whose windows hold no stored frame, is left out."""
    if len(queries) != len(text):
        raise ValueError(f"{len(queries)} moment queries but {len(text)} rows of text features")
    row_of = {video_id: row for row, video_id in enumerate(video_ids)}
    kept, rows, frames = [], [], []
    for position, (video_id, windows) in enumerate(zip(queries["video_id"], queries["windows"])):
        row = row_of.get(video_id)
        if row is None:
            continue
        times = np.asarray(frame_times[row], dtype=np.float64)
        # list(): parquet gives a list of windows back as an object array of arrays
        spans = np.asarray(list(windows), dtype=np.float64).reshape(-1, 2)
        inside = np.flatnonzero(((times[:, None] >= spans[:, 0]) & (times[:, None] <= spans[:, 1])).any(1))
        if len(inside):
            kept.append(position)
            rows.append(row)
            frames.append(inside)
    return MomentClips(np.asarray(rows, dtype=np.int64), frames, text.take(np.asarray(kept, dtype=np.int64)))


@dataclass
class MACInputs:
    """What training and evaluation read: the videos (table order = ``clips`` rows) with
    their window, and every caption (row i of ``text``) with its video's row."""

    videos: pd.DataFrame  # video_id, created_at, window
    clips: VideoClips
    captions: pd.DataFrame  # caption_id, video_id, caption, video_row, window
    text: TextFeatures
    windows: DateWindows
    # The shared frame features (mmpipe.media.features.FeatureTable) of the image encoder's
    # champion, for the baseline of mean-pooled frame embeddings; None when not loaded.
    frame_features: Any = None
    # The moment queries as clip-text pairs (training reads the train window's); None: captions only.
    moments: MomentClips | None = None

    def video_rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.videos["window"].to_numpy() == window)

    def caption_rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.captions["window"].to_numpy() == window)

    def captions_of(self, video_rows: np.ndarray) -> dict[int, np.ndarray]:
        """Caption rows of each video row (videos without a caption are left out)."""
        wanted = set(int(r) for r in video_rows)
        grouped: dict[int, list[int]] = {}
        for caption_row, video_row in enumerate(self.captions["video_row"].tolist()):
            if video_row in wanted:
                grouped.setdefault(video_row, []).append(caption_row)
        return {row: np.asarray(rows) for row, rows in grouped.items()}


def mac_inputs(videos: pd.DataFrame, load_frames: Callable[[str, str], np.ndarray], captions: pd.DataFrame,
               text: TextFeatures, frame_features: Any = None, moment_queries: pd.DataFrame | None = None,
               moment_text: TextFeatures | None = None,
               load_times: Callable[[str, str], np.ndarray] | None = None) -> MACInputs:
    """Inputs from the validated ``videos`` (video_id, created_at), a frame loader
    ``load_frames(day, video_id)`` over the frame store, and the ``captions`` (caption_id,
    video_id, caption) whose text-tower states are row i of ``text``. Captions of videos
    that have no frames (quarantined by frame extraction) are left out. With
    ``moment_queries`` (their text-tower states ``moment_text``, and ``load_times(day,
    video_id)``: the stored frames' times) the queries become clip-text pairs too."""
    if moment_queries is not None and (moment_text is None or load_times is None):
        raise ValueError("moment_queries need their moment_text and the frames' times (load_times)")
    if len(captions) != len(text):
        raise ValueError(f"{len(captions)} captions but {len(text)} rows of text features")
    videos = videos.drop_duplicates("video_id").reset_index(drop=True)
    if videos.empty:
        raise NothingToTrain("no validated videos: nothing to train on")
    frames, kept = [], []
    for row in videos.itertuples():
        try:
            stored = load_frames(row.created_at, row.video_id)
        except FileNotFoundError:
            continue
        if len(stored):
            frames.append(np.asarray(stored))
            kept.append(row.Index)
    videos = videos.iloc[kept].reset_index(drop=True)
    if videos.empty:
        raise ValueError("no video has stored frames: materialize validated_frames first")
    windows = date_windows(videos["created_at"])
    videos = videos.assign(window=windows.window_of(videos["created_at"]))
    row_of = {video_id: row for row, video_id in enumerate(videos["video_id"])}
    has_video = captions["video_id"].map(row_of).notna().to_numpy()
    captions = captions[has_video].reset_index(drop=True)
    if captions.empty:
        raise NothingToTrain(f"no validated caption of the {len(videos)} videos with stored frames: "
                             "no clip-caption pair to train on")
    captions = captions.assign(video_row=captions["video_id"].map(row_of).astype(np.int64))
    captions = captions.assign(window=videos["window"].to_numpy()[captions["video_row"].to_numpy()])
    moments = None
    if moment_queries is not None:
        times = [load_times(day, video_id) for day, video_id in zip(videos["created_at"], videos["video_id"])]
        moments = moment_clips(list(videos["video_id"]), times, moment_queries, moment_text)
    return MACInputs(videos[["video_id", "created_at", "window"]], VideoClips(list(videos["video_id"]), frames),
                     captions, text.take(np.flatnonzero(has_video)), windows, frame_features, moments)


def frame_store_loader(frames_root: Path) -> Callable[[str, str], np.ndarray]:
    """``load_frames(day, video_id)`` over ``storage/frames/<day>/<video_id>.npy``."""
    from mmpipe.media.frames import load_frames

    return lambda day, video_id: load_frames(Path(frames_root) / day, video_id)


def frame_store_times(frames_root: Path) -> Callable[[str, str], np.ndarray]:
    """``load_times(day, video_id)``: the times (s) of a video's stored frames, in the order
    ``frame_store_loader`` returns them, from ``storage/frames/<day>/index.parquet``."""
    from mmpipe.media.frames import read_frame_index

    days: dict[str, dict[str, np.ndarray]] = {}

    def load_times(day: str, video_id: str) -> np.ndarray:
        if day not in days:
            index = read_frame_index(Path(frames_root) / day)
            days[day] = {}
            for video, rows in index.groupby("video_id"):
                # row k of the stored frames is frame_index k
                times = np.full(int(rows["frame_index"].max()) + 1, np.nan)
                times[rows["frame_index"].to_numpy()] = rows["t_s"].to_numpy(np.float64)
                days[day][str(video)] = times
        return days[day][video_id]

    return load_times
