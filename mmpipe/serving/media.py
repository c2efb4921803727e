"""Pin images and video keyframes for the explorer page, from the validated data only.

A pin image is served only for a pin of the validated pins table, from the path that row
holds, resolved inside the raw root by :func:`mmpipe.layout.resolve_inside` (validation
already refused rows whose path escapes it; the check runs again here because the file
is opened now). A keyframe is a frame of the frame store (``storage/frames/<day>/``, what
``validated_frames`` decoded from validated videos), looked up by video id in the store's
own index, never a path taken from the request.

The tables are read once and again when a request names an id they do not hold (a new
day may have been validated since), at most every ``reread_s`` seconds.
"""

from __future__ import annotations

import io
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmpipe.layout import resolve_inside
from mmpipe.media.features import frame_store_days
from mmpipe.media.frames import INDEX_FILE, load_frames
from mmpipe.partitions import read_days
from mmpipe.serving.service import ServingPaths, UnknownId

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
KEYFRAME_QUALITY = 90


class MediaStore:
    def __init__(self, paths: ServingPaths, reread_s: float = 10.0):
        self.paths, self.reread_s = paths, reread_s
        self._images: dict[str, str] = {}  # pin_id -> image_path (relative to the raw root)
        # video_id -> (day, frame times, their positions in the day's <video_id>.npy)
        self._frames: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        self._read_at = -np.inf
        self._lock = threading.Lock()

    def _reread(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._read_at < self.reread_s:
                return
            self._read_at = time.monotonic()
            try:
                pins = read_days(self.paths.storage / "validated" / "pins", columns=["pin_id", "image_path"])
                self._images = dict(zip(pins["pin_id"].astype(str), pins["image_path"].astype(str)))
            except FileNotFoundError:
                self._images = {}
            frames = {}
            for day in frame_store_days(self.paths.storage):
                index_path = self.paths.storage / "frames" / day / INDEX_FILE
                if not index_path.is_file():
                    continue
                index = pd.read_parquet(index_path, columns=["video_id", "frame_index", "t_s"])
                for video_id, rows in index.sort_values(["video_id", "frame_index"]).groupby("video_id"):
                    frames[str(video_id)] = (day, rows["t_s"].to_numpy(np.float64),
                                             rows["frame_index"].to_numpy(np.int64))
            self._frames = frames

    def _lookup(self, table: str, key: str):
        self._reread()
        found = getattr(self, table).get(key)
        if found is None:
            self._reread(force=time.monotonic() - self._read_at >= self.reread_s)
            found = getattr(self, table).get(key)
        return found

    def pin_image(self, pin_id: str) -> tuple[bytes, str]:
        """(bytes, media type) of a validated pin's image."""
        relative = self._lookup("_images", pin_id)
        if relative is None:
            raise UnknownId(f"unknown pin {pin_id!r}: no validated pin has that id")
        try:
            path = resolve_inside(self.paths.raw, relative)
        except ValueError as err:  # validation refuses such rows; a table edited since is still refused
            raise UnknownId(f"pin {pin_id!r}'s image is not served: {err}") from None
        if not path.is_file():
            raise UnknownId(f"pin {pin_id!r}'s image is missing from the raw data")
        media_type = IMAGE_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise UnknownId(f"pin {pin_id!r} has no image the page can show ({path.suffix})")
        return path.read_bytes(), media_type

    def keyframe(self, video_id: str, t_s: float) -> bytes:
        """JPEG of the stored frame of ``video_id`` nearest ``t_s`` seconds."""
        found = self._lookup("_frames", video_id)
        if found is None:
            raise UnknownId(f"unknown video {video_id!r}: the frame store holds no frames of it")
        day, times, positions = found
        return _keyframe_jpeg(str(self.paths.storage / "frames" / day), video_id,
                              int(positions[np.argmin(np.abs(times - t_s))]))


@lru_cache(maxsize=4096)
def _keyframe_jpeg(day_dir: str, video_id: str, position: int) -> bytes:
    frames = load_frames(Path(day_dir), video_id, mmap=True)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frames[position])).save(buffer, format="JPEG", quality=KEYFRAME_QUALITY)
    return buffer.getvalue()
