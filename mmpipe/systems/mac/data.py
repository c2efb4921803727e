"""MAC's data: clips drawn from the stored frames of each validated video, its captions'
cached text-tower states, and the date windows every system splits by.

A clip is ``n_frames`` frames spread over the whole video, TSN-style: the stored frames are
cut into ``n_frames`` equal segments and one frame is taken from each, at random in
training (a different clip of the same video every time it is drawn) and from the middle
at inference (the same clip every time). A caption describes the whole video ("first a
red star rises, then ..."), so every clip covers all of it.
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

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def clip_indices(n_stored: int, n_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Which of ``n_stored`` frames make a clip of ``n_frames``: one from each of
    ``n_frames`` equal segments, at random with ``rng``, else each segment's middle.
    A video shorter than the clip repeats frames (in order).

    >>> clip_indices(8, 4).tolist()
    [1, 3, 5, 7]
    >>> clip_indices(2, 4).tolist()
    [0, 0, 1, 1]
    """
    if n_stored < 1 or n_frames < 1:
        raise ValueError(f"need frames to sample, got {n_stored} stored and a clip of {n_frames}")
    edges = np.linspace(0, n_stored, n_frames + 1)
    if rng is None:
        picks = (edges[:-1] + edges[1:]) / 2
    else:
        picks = edges[:-1] + rng.random(n_frames) * (edges[1:] - edges[:-1])
    return np.minimum(picks.astype(np.int64), n_stored - 1)


@dataclass
class VideoClips:
    """The stored frames of each video (uint8 [F_i, S, S, 3], row i of ``video_ids``)."""

    video_ids: list[str]
    frames: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.video_ids)

    def pixels(self, rows: Sequence[int], n_frames: int, image_size: int,
               rng: np.random.Generator | None = None) -> torch.Tensor:
        """Normalised clips [len(rows), n_frames, 3, image_size, image_size]."""
        clips = np.stack([self.frames[row][clip_indices(len(self.frames[row]), n_frames, rng)] for row in rows])
        pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S]
        if pixels.shape[-1] != image_size:  # frames stored at another size than the model's
            b, t = pixels.shape[:2]
            pixels = F.interpolate(pixels.flatten(0, 1).float(), size=(image_size, image_size), mode="bilinear",
                                   antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
            pixels = pixels.view(b, t, 3, image_size, image_size)
        return normalize_pixels(pixels)


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
               text: TextFeatures, frame_features: Any = None) -> MACInputs:
    """Inputs from the validated ``videos`` (video_id, created_at), a frame loader
    ``load_frames(day, video_id)`` over the frame store, and the ``captions`` (caption_id,
    video_id, caption) whose text-tower states are row i of ``text``. Captions of videos
    that have no frames (quarantined by frame extraction) are left out."""
    if len(captions) != len(text):
        raise ValueError(f"{len(captions)} captions but {len(text)} rows of text features")
    videos = videos.drop_duplicates("video_id").reset_index(drop=True)
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
    captions = captions.assign(video_row=captions["video_id"].map(row_of).astype(np.int64))
    captions = captions.assign(window=videos["window"].to_numpy()[captions["video_row"].to_numpy()])
    return MACInputs(videos[["video_id", "created_at", "window"]], VideoClips(list(videos["video_id"]), frames),
                     captions, text.take(np.flatnonzero(has_video)), windows, frame_features)


def frame_store_loader(frames_root: Path) -> Callable[[str, str], np.ndarray]:
    """``load_frames(day, video_id)`` over ``storage/frames/<day>/<video_id>.npy``."""
    from mmpipe.media.frames import load_frames

    return lambda day, video_id: load_frames(Path(frames_root) / day, video_id)
