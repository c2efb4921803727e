"""Decode, sample and shot-segment the validated videos into the frame store.

Writes, under ``out_dir`` (``storage/frames`` in the layout):

* ``<video_id>.npy``   uint8 [T, size, size, 3]: the sampled frames of one video;
* ``index.parquet``    one row per stored frame: video_id, frame_index (row in the .npy),
                       t_s, shot_id, is_blank;
* ``shots.parquet``    one row per detected shot: video_id, shot_id, start_s, end_s, with
                       cut times at native-frame precision (the index only knows the
                       sampled frames, so it cannot place a cut closer than 1/sample_fps).

Blank (near-constant) frames are **kept** in the store and the index with ``is_blank``
set, so ``frame_index`` is always the row of the .npy and timelines have no holes; they
are left out of cut detection, so a fade to black inside a shot is not read as two cuts.
Consumers that want content only filter on ``~is_blank``.

Every input video ends in exactly one of the summary (decoded) and the quarantine (not):
a path escaping the raw root, an id that cannot name a file, a repeated id, or a file
that is missing, corrupt or truncated is quarantined with the rule and a message; the
run goes on with the other videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmpipe.io import write_npy_atomic, write_parquet_atomic
from mmpipe.layout import QUARANTINE_COLUMNS, resolve_inside
from mmpipe.media.decode import DecodedVideo, VideoDecodeError, decode_video_with_signal
from mmpipe.media.shots import assign_shot_ids, blank_frame_mask, detect_shot_boundaries

INDEX_COLUMNS = ["video_id", "frame_index", "t_s", "shot_id", "is_blank"]
SUMMARY_COLUMNS = [
    "video_id", "n_frames", "n_blank", "n_shots", "n_decoded_frames", "native_fps",
    "decoded_duration_s", "boundaries_s",
]
SHOT_COLUMNS = ["video_id", "shot_id", "start_s", "end_s"]
INDEX_FILE = "index.parquet"
SHOTS_FILE = "shots.parquet"


@dataclass(frozen=True)
class FrameConfig:
    sample_fps: float = 2.0  # frames kept per second
    size: int = 64  # side of the stored frames (square resize; aspect ratio is not kept)
    # Rise of the median block change above its local level that makes a cut (see shots.py).
    # On 300 generated videos cuts rise by >= 0.147 (objects hiding most of the background)
    # and other transitions by <= 0.104; this sits between the two.
    shot_threshold: float = 0.125
    # Pixel std (0-255 scale) of a frame's 32-px thumbnail below which the frame is blank.
    # Generated frames never go below ~17; a flat frame with sensor noise stays under ~3.
    blank_std: float = 8.0

    def __post_init__(self) -> None:
        if self.sample_fps <= 0 or self.size <= 0:
            raise ValueError(f"sample_fps and size must be positive, got {self.sample_fps} and {self.size}")


@dataclass(frozen=True)
class FramesResult:
    index: pd.DataFrame  # INDEX_COLUMNS
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per decoded video
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, one row per video that could not be used
    shots: pd.DataFrame  # SHOT_COLUMNS


@dataclass(frozen=True)
class _Segmented:
    index: pd.DataFrame
    summary: dict
    shots: pd.DataFrame


def extract_frames(
    videos: pd.DataFrame, raw_root: Path, out_dir: Path, cfg: FrameConfig, progress: bool = False
) -> FramesResult:
    """Decode every video of the validated ``videos`` table into ``out_dir``.

    ``row_index`` in the quarantine is the label of the row in ``videos`` (its DataFrame
    index), so it points back at the raw row when validation kept the raw index.
    """
    missing = {"video_id", "video_path"} - set(videos.columns)
    if missing:
        raise ValueError(f"videos table lacks columns {sorted(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    index_parts, shot_parts, summary_rows, quarantine_rows = [], [], [], []
    seen_ids: set[str] = set()
    rows = videos[["video_id", "video_path"]].itertuples(index=True, name=None)
    for row_index, video_id, video_path in tqdm(rows, total=len(videos), desc="frames", disable=not progress):
        rejection, decoded = None, None
        if not _is_plain_file_name(video_id):
            rejection = ("unsafe_video_id", f"video_id {video_id!r} cannot name a file in the frame store")
        elif video_id in seen_ids:
            rejection = ("duplicate_id", f"video_id {video_id!r} appears more than once; the first row was used")
        else:
            seen_ids.add(video_id)
            rejection, decoded = _decode_row(Path(raw_root), video_path, cfg)
        if rejection is not None:
            rule, message = rejection
            quarantine_rows.append({
                "table": "videos", "row_index": row_index, "record_id": video_id,
                "source_file": video_path, "rule": rule, "message": message,
            })
            continue

        segmented = segment_video(video_id, decoded, cfg)
        write_npy_atomic(np.ascontiguousarray(decoded.frames, dtype=np.uint8), out_dir / f"{video_id}.npy")
        index_parts.append(segmented.index)
        shot_parts.append(segmented.shots)
        summary_rows.append(segmented.summary)

    result = FramesResult(
        index=_concat(index_parts, INDEX_COLUMNS),
        summary=pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS),
        quarantine=pd.DataFrame(quarantine_rows, columns=QUARANTINE_COLUMNS),
        shots=_concat(shot_parts, SHOT_COLUMNS),
    )
    write_parquet_atomic(result.index, out_dir / INDEX_FILE)
    write_parquet_atomic(result.shots, out_dir / SHOTS_FILE)
    return result


def _decode_row(raw_root: Path, video_path, cfg: FrameConfig) -> tuple[tuple[str, str] | None, DecodedVideo | None]:
    """(None, decoded video), or ((rule, message), None) when the row cannot be used."""
    try:
        path = resolve_inside(raw_root, video_path)
    except ValueError as error:  # empty, absolute or escaping the raw root
        return ("invalid_path", str(error)), None
    try:
        return None, decode_video_with_signal(path, cfg.sample_fps, cfg.size)
    except VideoDecodeError as error:
        return ("undecodable_video", str(error)), None


def segment_video(video_id: str, decoded: DecodedVideo, cfg: FrameConfig) -> _Segmented:
    """Blank flags, cuts and shot ids of one decoded video."""
    signal_blank = blank_frame_mask(decoded.signal_frames, cfg.blank_std)
    content = ~signal_blank
    boundaries = detect_shot_boundaries(
        decoded.signal_frames[content], decoded.signal_timestamps[content], cfg.shot_threshold
    )
    frame_step_s = 1.0 / decoded.native_fps
    duration_s = float(decoded.signal_timestamps[-1]) + frame_step_s
    # The stored frames are a subset of the decoded ones, so their blank flags are copied,
    # never recomputed at another resolution where they could disagree with the detector.
    is_blank = signal_blank[decoded.sampled_positions]
    shot_ids = assign_shot_ids(decoded.timestamps, boundaries)

    n_frames = len(decoded.frames)
    index = pd.DataFrame({
        "video_id": [video_id] * n_frames,
        "frame_index": np.arange(n_frames, dtype=np.int64),
        "t_s": decoded.timestamps,
        "shot_id": shot_ids,
        "is_blank": is_blank,
    })
    starts = np.concatenate([[0.0], boundaries])
    ends = np.concatenate([boundaries, [duration_s]])
    shots = pd.DataFrame({
        "video_id": [video_id] * len(starts),
        "shot_id": np.arange(len(starts), dtype=np.int64),
        "start_s": starts,
        "end_s": ends,
    })
    summary = {
        "video_id": video_id,
        "n_frames": n_frames,
        "n_blank": int(is_blank.sum()),
        "n_shots": len(starts),
        "n_decoded_frames": len(decoded.signal_frames),
        "native_fps": decoded.native_fps,
        "decoded_duration_s": duration_s,
        "boundaries_s": [float(b) for b in boundaries],
    }
    return _Segmented(index=index, summary=summary, shots=shots)


def load_frames(out_dir: Path, video_id: str, mmap: bool = False) -> np.ndarray:
    """The stored frames of one video, uint8 [T, size, size, 3]."""
    if not _is_plain_file_name(video_id):
        raise ValueError(f"video_id {video_id!r} cannot name a file in the frame store")
    return np.load(resolve_inside(Path(out_dir), f"{video_id}.npy"), mmap_mode="r" if mmap else None)


def read_frame_index(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out_dir) / INDEX_FILE)


def _is_plain_file_name(video_id) -> bool:
    return (
        isinstance(video_id, str)
        and video_id.strip() == video_id
        and video_id not in ("", ".", "..")
        and not any(c in video_id for c in ("/", "\\", "\x00"))
    )


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES.get(c, "float64")) for c in columns})
    return pd.concat(parts, ignore_index=True)[columns]


_EMPTY_DTYPES = {"video_id": "str", "frame_index": "int64", "shot_id": "int64", "is_blank": "bool"}
