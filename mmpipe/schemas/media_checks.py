"""Checks on the media files a table row points to: inside the data root, present, decodable.

Each check returns the first problem of a file as a ``MediaProblem`` (rule and message), or
None when the file is fine. Later checks need earlier ones to pass (a missing file cannot be
decoded), so one problem per file is all there is to say.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
from PIL import Image, ImageFile, UnidentifiedImageError

from mmpipe.layout import resolve_inside

MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 4096
# A video may end a little before or after the duration its row claims (rounding of the
# last frame's duration), but not by more than this many frames or this share of its length.
DURATION_TOLERANCE_FRAMES = 2
DURATION_TOLERANCE_SHARE = 0.02
# A row's fps may round the stream's rate (29.97 written as 30), but a rate off by more than
# this share is another file, or one whose frame times every span in seconds would misplace.
FPS_TOLERANCE_SHARE = 0.01


@dataclass(frozen=True)
class MediaProblem:
    rule: str  # "<path column>.<property that failed>", like the schema rules
    message: str


def locate(raw_root: Path, column: str, relative: str) -> Path | MediaProblem:
    """The file a row points to, or the problem with the path itself."""
    try:
        path = resolve_inside(raw_root, relative)
    except ValueError as error:
        return MediaProblem(f"{column}.inside_root", f"{column}: {error}")
    if not path.is_file():
        return MediaProblem(f"{column}.file_exists", f"{column} {relative!r}: no such file under the data root")
    return path


@contextmanager
def strict_jpeg_loading() -> Iterator[None]:
    """Make Pillow raise on truncated images while checking, whatever the process set.

    Pillow pads a truncated JPEG with grey and returns it silently when
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is True; a training loader may well have set it.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


# Every JPEG stream starts with the start-of-image marker and another marker (FF D8 FF);
# what follows differs by writer: APP0 JFIF (libjpeg), APP1 EXIF (cameras), APP2 MPF
# (phones that append a depth map or preview, which Pillow reports as format "MPO"), or a
# quantization table straight away. The marker, not Pillow's format name, says "JPEG".
JPEG_SOI = b"\xff\xd8\xff"


def is_jpeg_stream(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(JPEG_SOI)) == JPEG_SOI


def check_image(raw_root: Path, relative: str, column: str = "image_path") -> MediaProblem | None:
    """A JPEG inside the root whose every byte decodes, of a sane size.

    Any JPEG a camera or phone writes passes: baseline or progressive, with EXIF, restart
    markers, grey or CMYK pixels, or an MPO's extra pictures after the first (decoders read
    the first). Call inside ``strict_jpeg_loading()`` (``check_images`` does).
    """
    located = locate(raw_root, column, relative)
    if isinstance(located, MediaProblem):
        return located
    decodes = f"{column}.decodes"
    try:
        # Open reads only the header, so the size is checked before any pixel is decoded.
        with Image.open(located) as image:
            if not is_jpeg_stream(located):
                return MediaProblem(f"{column}.format", f"{column} {relative!r} is a {image.format} image, not a JPEG")
            width, height = image.size
            if not (MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE):
                return MediaProblem(
                    f"{column}.size",
                    f"{column} {relative!r} is {width}x{height} px; sides must be within "
                    f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}",
                )
            image.verify()
        # verify() leaves the image unusable and skips the pixel data; load() decodes it all.
        with Image.open(located) as image:
            image.load()
    except UnidentifiedImageError:
        return MediaProblem(decodes, f"{column} {relative!r} is not an image file")
    except Image.DecompressionBombError as error:
        # A header declaring billions of pixels is an attack or a broken writer, not a
        # damaged file: Pillow refuses it before decoding a byte, and so does this check.
        return MediaProblem(f"{column}.decompression_bomb", f"{column} {relative!r} is a decompression bomb ({error})")
    except (OSError, SyntaxError, ValueError) as error:
        return MediaProblem(decodes, f"{column} {relative!r} is corrupt or truncated ({error})")
    return None


def check_video(
    raw_root: Path,
    relative: str,
    duration_s: float | None = None,
    fps: float | None = None,
    column: str = "video_path",
) -> MediaProblem | None:
    """A video inside the root whose every frame decodes, as long and as fast as its row claims.

    The container's own frame count catches a file cut short inside the media data; the
    row's ``duration_s`` and ``fps`` (when known) catch a file that is whole but not the one
    described.
    """
    located = locate(raw_root, column, relative)
    if isinstance(located, MediaProblem):
        return located
    decodes = f"{column}.decodes"
    try:
        with av.open(str(located)) as container:
            if not container.streams.video:
                return MediaProblem(decodes, f"{column} {relative!r} has no video stream")
            stream = container.streams.video[0]
            declared_frames = stream.frames
            decoded_frames = sum(1 for _ in container.decode(stream))
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, OSError, ValueError) as error:
        # libav's message repeats the absolute path; its strerror says what went wrong
        reason = getattr(error, "strerror", None) or str(error)
        return MediaProblem(decodes, f"{column} {relative!r} does not decode ({type(error).__name__}: {reason})")
    if decoded_frames == 0:
        return MediaProblem(decodes, f"{column} {relative!r} holds no decodable frame")
    if declared_frames and decoded_frames < declared_frames:
        return MediaProblem(
            decodes, f"{column} {relative!r} is truncated: {decoded_frames} of {declared_frames} frames decode"
        )
    stream_fps = float(rate) if rate else None
    if duration_s is not None and math.isfinite(duration_s) and stream_fps:
        decoded_s = decoded_frames / stream_fps
        tolerance_s = max(DURATION_TOLERANCE_FRAMES / stream_fps, DURATION_TOLERANCE_SHARE * duration_s)
        if abs(decoded_s - duration_s) > tolerance_s:
            return MediaProblem(
                f"{column}.duration",
                f"{column} {relative!r} plays {decoded_s:.2f} s ({decoded_frames} frames at {stream_fps:g} fps) "
                f"but its row says duration_s={duration_s:g}",
            )
    if fps is not None and math.isfinite(fps) and stream_fps:
        if abs(stream_fps - fps) > FPS_TOLERANCE_SHARE * stream_fps:
            return MediaProblem(
                f"{column}.fps",
                f"{column} {relative!r} plays at {stream_fps:g} fps but its row says fps={fps:g}",
            )
    return None


def _in_parallel(check: Callable[..., MediaProblem | None], argument_lists: Iterable[tuple]) -> list[MediaProblem | None]:
    # Pillow and libav decode with the GIL released, so threads use every core; map keeps order.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda arguments: check(*arguments), argument_lists))


def check_images(raw_root: Path, relative_paths: Iterable[str], column: str = "image_path") -> list[MediaProblem | None]:
    with strict_jpeg_loading():
        return _in_parallel(check_image, [(raw_root, path, column) for path in relative_paths])


def check_videos(
    raw_root: Path,
    relative_paths: Iterable[str],
    durations_s: Iterable[float | None],
    fps_values: Iterable[float | None] | None = None,
    column: str = "video_path",
) -> list[MediaProblem | None]:
    relative_paths, durations_s = list(relative_paths), list(durations_s)
    fps_values = [None] * len(relative_paths) if fps_values is None else list(fps_values)
    arguments = [(raw_root, path, duration, fps, column)
                 for path, duration, fps in zip(relative_paths, durations_s, fps_values, strict=True)]
    return _in_parallel(check_video, arguments)
