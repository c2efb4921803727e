"""Decoding videos with PyAV: every frame for the cut-detection signal, a sampled few to keep.

One pass over the file yields two views of it:

* **signal frames** — every decoded frame at native fps, shrunk to ``SIGNAL_SIDE`` px.
  Cuts are detected on these, so a cut is located to within one native frame even when
  only two frames per second are stored.
* **sampled frames** — the first frame of every ``1 / sample_fps`` second bin, resized to
  ``size x size``. These are what downstream models see.

Resizing is a plain square resize (aspect ratio is not kept), done by swscale inside
``frame.reformat`` with area averaging, so large user videos shrink without aliasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Side of the thumbnails the cut detector compares: small enough that noise averages out
# and a 10-minute video fits in tens of MB, large enough that a background change shows.
SIGNAL_SIDE = 32

# A video that decodes to less than this fraction of the frames its container declares
# was cut short: its tail is missing, so its frames and shots would silently be wrong.
MIN_DECODED_FRACTION = 0.9

# Keeps floating-point timestamps such as 0.49999999 in the bin they are meant to open.
_BIN_EPSILON = 1e-6


class VideoDecodeError(Exception):
    """The file is missing, is not a video, or is corrupt or truncated."""


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # uint8 [T, size, size, 3], the sampled frames
    timestamps: np.ndarray  # float64 [T], seconds from the first frame
    signal_frames: np.ndarray  # uint8 [N, SIGNAL_SIDE, SIGNAL_SIDE, 3], every decoded frame
    signal_timestamps: np.ndarray  # float64 [N]
    sampled_positions: np.ndarray  # int64 [T], row of each sampled frame in the signal arrays
    native_fps: float


def decode_video(path: Path, sample_fps: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 ``[T, size, size, 3]`` sampled at ``sample_fps``, and their times (s)."""
    decoded = decode_video_with_signal(path, sample_fps, size)
    return decoded.frames, decoded.timestamps


def decode_video_with_signal(path: Path, sample_fps: float, size: int) -> DecodedVideo:
    """Decode every frame of ``path`` once; keep thumbnails of all and full frames of a sample.

    Raises VideoDecodeError naming the file and the cause when it cannot be read in full.
    """
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be positive, got {sample_fps}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: file not found")

    signal_frames: list[np.ndarray] = []
    signal_times: list[float] = []
    kept_frames: list[np.ndarray] = []
    kept_positions: list[int] = []
    last_kept_bin = -1
    # One reformatter per output size keeps its swscale context between frames; a fresh
    # context per frame (frame.reformat) costs several times the decoding itself.
    to_signal, to_kept = VideoReformatter(), VideoReformatter()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            native_fps = _native_fps(stream)
            declared_frames = _declared_frame_count(stream, container, native_fps)
            first_time: float | None = None
            for position, frame in enumerate(container.decode(stream)):
                # Presentation time when the container has it; else the frame's place at native fps.
                raw_time = frame.time if frame.time is not None else position / native_fps
                if first_time is None:
                    first_time = raw_time
                t = raw_time - first_time
                if signal_times and t <= signal_times[-1]:
                    raise VideoDecodeError(
                        f"{path}: frame {position} is stamped {t:.3f} s, not after the frame "
                        f"before it ({signal_times[-1]:.3f} s); the timestamps are corrupt"
                    )
                signal_times.append(t)
                signal_frames.append(_resized_rgb(to_signal, frame, SIGNAL_SIDE))
                sample_bin = math.floor(t * sample_fps + _BIN_EPSILON)
                if sample_bin > last_kept_bin:
                    kept_frames.append(_resized_rgb(to_kept, frame, size))
                    kept_positions.append(position)
                    last_kept_bin = sample_bin
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(
            f"{path}: cannot be decoded; it is corrupt, truncated or not a video "
            f"({type(error).__name__}: {error})"
        ) from error

    if not signal_frames:
        raise VideoDecodeError(f"{path}: the video stream holds no decodable frames")
    if declared_frames and len(signal_frames) < MIN_DECODED_FRACTION * declared_frames:
        raise VideoDecodeError(
            f"{path}: truncated or corrupt, decoded {len(signal_frames)} of the "
            f"{declared_frames} frames the container declares"
        )
    return DecodedVideo(
        frames=np.stack(kept_frames),
        timestamps=np.asarray([signal_times[p] for p in kept_positions], dtype=np.float64),
        signal_frames=np.stack(signal_frames),
        signal_timestamps=np.asarray(signal_times, dtype=np.float64),
        sampled_positions=np.asarray(kept_positions, dtype=np.int64),
        native_fps=native_fps,
    )


def _resized_rgb(reformatter: VideoReformatter, frame: av.VideoFrame, side: int) -> np.ndarray:
    resized = reformatter.reformat(frame, width=side, height=side, format="rgb24", interpolation="AREA")
    return resized.to_ndarray()


def _native_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        # Only used to space frames that carry no timestamp; any positive value keeps order.
        return 25.0
    return float(rate)


def _declared_frame_count(stream, container, native_fps: float) -> int:
    """Frames the container promises, from its frame count or else its duration; 0 if unknown."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * native_fps))
    if container.duration is not None:
        return int(round(container.duration / av.time_base * native_fps))
    return 0


def write_spans_mp4(source: Path, spans, out: Path, crf: int = 23) -> int:
    """Write the frames of video ``source`` that fall in any of ``spans`` ([start_s, end_s)
    from the first frame, as the frame store times them) to ``out``: one H.264 MP4 at the
    source's frame rate, the spans back to back in time order. Frames are encoded as they
    are decoded (a long video never sits in memory) into a temporary file moved into place
    at the end. Returns the number of frames written."""
    from fractions import Fraction

    from mmpipe.io import atomic_path

    spans = sorted((float(start), float(end)) for start, end in spans)
    if not spans or any(end <= start for start, end in spans):
        raise ValueError(f"need at least one span with end > start, got {spans}")
    written = 0
    with atomic_path(Path(out)) as tmp, av.open(str(tmp), "w", format="mp4") as output:
        try:
            with av.open(str(source)) as container:
                if not container.streams.video:
                    raise VideoDecodeError(f"{source}: no video stream")
                stream = container.streams.video[0]
                rate = Fraction(stream.average_rate or 25).limit_denominator(1000)
                # Frames are stamped in 1/rate: the stream's own time base turns into the
                # muxer's once the header is written.
                time_base = 1 / rate
                encoded, first_time = None, None
                for position, frame in enumerate(container.decode(stream)):
                    raw_time = frame.time if frame.time is not None else position / float(rate)
                    first_time = raw_time if first_time is None else first_time
                    t = raw_time - first_time + _BIN_EPSILON
                    if not any(start <= t < end for start, end in spans):
                        continue
                    if encoded is None:  # yuv420p needs even sides
                        encoded = output.add_stream("libx264", rate=rate, options={"crf": str(crf)})
                        encoded.width, encoded.height = frame.width - frame.width % 2, frame.height - frame.height % 2
                        encoded.pix_fmt = "yuv420p"
                        encoded.time_base = time_base
                    picture = frame.reformat(width=encoded.width, height=encoded.height, format="yuv420p")
                    picture.pts, picture.time_base = written, time_base
                    output.mux(encoded.encode(picture))
                    written += 1
                if encoded is None:
                    raise ValueError(f"no frame of {source} falls in the spans {spans}")
                output.mux(encoded.encode())
        except (av.error.FFmpegError, OSError) as error:
            raise VideoDecodeError(f"{source}: cannot be decoded ({type(error).__name__}: {error})") from error
    return written
