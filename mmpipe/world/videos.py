"""Generated videos: shots with their own backgrounds, objects moving through them, and the
moment queries, titles and shot labels whose truth is known exactly.

A video is planned first (shots, objects and their paths, all in whole frames so that truth
boundaries fall exactly on frame times), then rendered frame by frame with the shared
renderer and encoded to H.264 with settings that make the bytes reproducible from the seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
from PIL import Image

from mmpipe.layout import RAW_COLUMNS
from mmpipe.world.attributes import ATTRIBUTE_NAMES, SIZE_SCALE, ObjectSpec
from mmpipe.world.config import WorldConfig
from mmpipe.world.parallel import map_in_order
from mmpipe.world.render import add_noise, background, draw_object

MOTIONS = ("moves left", "moves right", "moves up", "moves down", "stays still", "spins")

# How a query may say each motion; all are third person so they follow a noun phrase.
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moves left": ("moves to the left", "moves left", "slides to the left"),
    "moves right": ("moves to the right", "moves right", "slides to the right"),
    "moves up": ("moves up", "rises", "floats upward"),
    "moves down": ("moves down", "sinks", "drifts downward"),
    "stays still": ("stays still", "does not move", "sits still"),
    "spins": ("spins", "rotates", "turns around"),
}

VIDEO_DEFECTS = ("truncated_mp4", "not_a_video", "missing_file", "path_traversal", "duplicate_id")
QUERY_DEFECTS = ("end_before_start", "unknown_video", "empty_query")

VIDEO_OBJECT_COLUMNS = [
    "video_id", "object_id", *ATTRIBUTE_NAMES, "motion", "start_s", "end_s",
    # the object's path, so a frame's truth can be recomputed: centre as fractions of the side
    "x_start", "y_start", "x_end", "y_end", "rotation_deg", "spin_deg_per_s",
]
SHOT_COLUMNS = ["video_id", "shot_index", "start_s", "end_s", "labels"]
MOMENT_COLUMNS = ["query_id", "video_id", "object_id", "start_s", "end_s"]
BAD_RECORD_COLUMNS = ["table", "row_index", "record_id", "defect"]

NOISE_SIGMA = 4.0
# Each shot's background is the most different from the previous one among this many.
CUT_CANDIDATES = 12
TRUNCATED_FRACTION = 0.3
# One thread and no macroblock-tree rate control: with mbtree on, x264 (core 165) gave
# different bytes for the same frames in a few percent of encodes, even single-threaded.
# Files grow by about 70%, a fair price for a reproducible dataset.
ENCODER_OPTIONS = {"crf": "23", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}


@dataclass
class VideoWorld:
    videos: pd.DataFrame  # raw table
    moment_queries: pd.DataFrame  # raw table
    video_objects: pd.DataFrame  # truth
    shots: pd.DataFrame  # truth
    moments: pd.DataFrame  # truth
    bad_records: pd.DataFrame  # truth: which rows of the raw tables are bad on purpose, and why


@dataclass
class VideoObject:
    """One object's visit to a video: frames [start_frame, end_frame) and a straight path."""

    object_id: str
    spec: ObjectSpec
    motion: str
    start_frame: int
    end_frame: int  # exclusive
    x_start: float
    y_start: float
    x_end: float
    y_end: float
    rotation_deg: float
    spin_deg_per_s: float

    def visible(self, frame_index: int) -> bool:
        return self.start_frame <= frame_index < self.end_frame

    def pose(self, frame_index: int, fps: int) -> tuple[float, float, float]:
        """Centre (fractions of the side) and rotation in degrees at ``frame_index``."""
        progress = (frame_index - self.start_frame) / max(self.end_frame - self.start_frame - 1, 1)
        x = self.x_start + progress * (self.x_end - self.x_start)
        y = self.y_start + progress * (self.y_end - self.y_start)
        rotation = self.rotation_deg + self.spin_deg_per_s * (frame_index - self.start_frame) / fps
        return x, y, rotation

    def truth_row(self, video_id: str, fps: int) -> dict:
        return {
            "video_id": video_id, "object_id": self.object_id, **self.spec.as_dict(),
            "motion": self.motion, "start_s": self.start_frame / fps, "end_s": self.end_frame / fps,
            "x_start": self.x_start, "y_start": self.y_start, "x_end": self.x_end,
            "y_end": self.y_end, "rotation_deg": self.rotation_deg,
            "spin_deg_per_s": self.spin_deg_per_s,
        }

    @classmethod
    def from_truth_row(cls, row, fps: int) -> "VideoObject":
        """Rebuild from a row of the video_objects truth table (for eval code and tests)."""
        return cls(
            object_id=row["object_id"],
            spec=ObjectSpec(**{name: row[name] for name in ATTRIBUTE_NAMES}),
            motion=row["motion"],
            start_frame=round(row["start_s"] * fps), end_frame=round(row["end_s"] * fps),
            x_start=row["x_start"], y_start=row["y_start"], x_end=row["x_end"],
            y_end=row["y_end"], rotation_deg=row["rotation_deg"],
            spin_deg_per_s=row["spin_deg_per_s"],
        )


@dataclass
class VideoPlan:
    video_id: str
    n_frames: int
    fps: int
    side: int
    shots: list[tuple[int, int]]  # [start_frame, end_frame) of each shot, covering the video
    objects: list[VideoObject]  # in drawing order: later objects are drawn on top


# -----------------------------------------------------------------------------
# planning: everything about a video is decided in whole frames before any pixel is drawn


def _segment_lengths(rng: np.random.Generator, n_frames: int, shortest: int, longest: int) -> list[int]:
    """Split n_frames into pieces of [shortest, longest] frames (needs longest >= 2*shortest)."""
    lengths, remaining = [], n_frames
    while remaining > longest:
        # leave at least `shortest` frames for the pieces still to come
        length = int(rng.integers(shortest, min(longest, remaining - shortest) + 1))
        lengths.append(length)
        remaining -= length
    lengths.append(remaining)
    return lengths


def plan_shots(rng: np.random.Generator, n_frames: int, fps: int) -> list[tuple[int, int]]:
    # 2-8 s shots, shrunk for short videos so even a 6 s video has a few cuts
    shortest = max(1, min(2 * fps, n_frames // 4))
    longest = max(2 * shortest, min(8 * fps, n_frames // 2))
    bounds = np.cumsum([0, *_segment_lengths(rng, n_frames, shortest, longest)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _sample_path(rng: np.random.Generator, motion: str, spec: ObjectSpec) -> dict[str, float]:
    # the centre stays inside the canvas, so every visible object shows at least its middle
    margin = min(0.5 * SIZE_SCALE[spec.size], 0.3)
    low, high = margin, 1.0 - margin
    span = high - low
    x, y = rng.uniform(low, high, size=2)
    path = {"x_start": x, "y_start": y, "x_end": x, "y_end": y,
            "rotation_deg": rng.uniform(0, 360), "spin_deg_per_s": 0.0}
    travel = rng.uniform(0.5, 1.0) * span
    start_far = rng.uniform(low + travel, high)  # leaves room to travel toward low
    if motion == "moves left":
        path["x_start"], path["x_end"] = start_far, start_far - travel
    elif motion == "moves right":
        path["x_start"], path["x_end"] = high + low - start_far, high + low - start_far + travel
    elif motion == "moves up":  # image y grows downward
        path["y_start"], path["y_end"] = start_far, start_far - travel
    elif motion == "moves down":
        path["y_start"], path["y_end"] = high + low - start_far, high + low - start_far + travel
    elif motion == "spins":
        path["spin_deg_per_s"] = float(rng.choice([-1, 1]) * rng.uniform(90, 240))
    return {k: float(v) for k, v in path.items()}


def _sample_spec(rng: np.random.Generator, others: list[ObjectSpec]) -> ObjectSpec:
    """A spec unlike every other object in the video, often sharing one attribute with one of
    them so that naming it takes more than a single word."""
    while True:
        fixed = {}
        if others and rng.random() < 0.4:
            name = str(rng.choice(ATTRIBUTE_NAMES))
            fixed[name] = getattr(others[int(rng.integers(len(others)))], name)
        spec = ObjectSpec.sample(rng, fixed)
        if spec not in others:
            return spec


def plan_objects(rng: np.random.Generator, video_id: str, n_frames: int, fps: int) -> list[VideoObject]:
    """Objects on 2-3 lanes: lane 0 is never empty, the others come and go, so 1-3 objects are
    visible at any time. Each visit lasts 2-12 s (shorter in short videos)."""
    shortest = max(1, min(2 * fps, n_frames // 4))
    longest = max(2 * shortest, min(12 * fps, n_frames // 2))
    intervals = []
    for lane in range(int(rng.integers(2, 4))):
        t = 0 if lane == 0 else int(rng.integers(fps, 6 * fps + 1))
        if lane == 0:
            for length in _segment_lengths(rng, n_frames, shortest, longest):
                intervals.append((t, t + length))
                t += length
            continue
        while n_frames - t >= shortest:
            length = int(rng.integers(shortest, longest + 1))
            intervals.append((t, min(t + length, n_frames)))
            t += length + int(rng.integers(fps, 6 * fps + 1))
    intervals.sort()
    objects, specs = [], []
    for start, end in intervals:
        spec = _sample_spec(rng, specs)
        specs.append(spec)
        # a spinning circle looks exactly like a still one (its pattern does not turn with it)
        motions = [m for m in MOTIONS if not (m == "spins" and spec.shape == "circle")]
        motion = str(rng.choice(motions))
        objects.append(VideoObject(
            object_id=f"{video_id}_o{len(objects) + 1}", spec=spec, motion=motion,
            start_frame=start, end_frame=end, **_sample_path(rng, motion, spec),
        ))
    return objects


def plan_video(rng: np.random.Generator, video_id: str, cfg: WorldConfig) -> VideoPlan:
    if cfg.video_size % 2:
        raise ValueError(f"video_size must be even for yuv420p, got {cfg.video_size}")
    fps = cfg.video_fps
    n_frames = max(4, round(rng.uniform(*cfg.video_seconds) * fps))
    shots = plan_shots(rng, n_frames, fps)
    objects = plan_objects(rng, video_id, n_frames, fps)
    return VideoPlan(video_id, n_frames, fps, cfg.video_size, shots, objects)


# -----------------------------------------------------------------------------
# rendering and encoding


def _shot_backgrounds(rng: np.random.Generator, n_shots: int, side: int) -> list[Image.Image]:
    """One background per shot, each the most different from the previous of a few candidates,
    so a cut changes the whole frame far more than an object coming or going does."""
    backgrounds = [background(rng, side)]
    for _ in range(n_shots - 1):
        previous = np.asarray(backgrounds[-1], dtype=np.float32)
        candidates = [background(rng, side) for _ in range(CUT_CANDIDATES)]
        contrast = [np.abs(np.asarray(c, dtype=np.float32) - previous).mean() for c in candidates]
        backgrounds.append(candidates[int(np.argmax(contrast))])
    return backgrounds


def render_frames(plan: VideoPlan, rng: np.random.Generator):
    """Yield the video's frames as uint8 [side, side, 3] arrays."""
    for (start, end), backdrop in zip(plan.shots, _shot_backgrounds(rng, len(plan.shots), plan.side)):
        for frame_index in range(start, end):
            canvas = backdrop.copy()
            for obj in plan.objects:
                if obj.visible(frame_index):
                    x, y, rotation = obj.pose(frame_index, plan.fps)
                    draw_object(canvas, obj.spec, (x * plan.side, y * plan.side), rotation)
            yield np.asarray(add_noise(canvas, rng, NOISE_SIGMA))


def write_mp4(path: Path, frames, fps: int, side: int) -> None:
    """Encode frames to H.264 with one encoder thread and fixed options, so that the same
    frames always give the same bytes."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(ENCODER_OPTIONS))
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


# -----------------------------------------------------------------------------
# language: queries name an object uniquely within its video; titles mention a few objects


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(spec: ObjectSpec, named: list[str], rng: np.random.Generator) -> str:
    """'large blue striped star with a thick outline' from the attributes in ``named``."""
    words = [getattr(spec, name) for name in ("size", "color", "pattern") if name in named]
    words.append(spec.shape if "shape" in named else str(rng.choice(["shape", "object", "thing"])))
    if "outline" in named:
        words.append("with no outline" if spec.outline == "none" else f"with a {spec.outline} outline")
    return " ".join(words)


def _identifies(spec: ObjectSpec, named: tuple[str, ...], others: list[ObjectSpec]) -> bool:
    return not any(all(getattr(o, n) == getattr(spec, n) for n in named) for o in others)


def distinguishing_attributes(rng: np.random.Generator, target: ObjectSpec, others: list[ObjectSpec]) -> list[str]:
    """The fewest attributes (chosen at random among ties, sometimes plus one more for variety)
    that tell ``target`` apart from every other object in the video."""
    for k in range(1, len(ATTRIBUTE_NAMES) + 1):
        subsets = [s for s in itertools.combinations(ATTRIBUTE_NAMES, k) if _identifies(target, s, others)]
        if subsets:
            named = list(subsets[int(rng.integers(len(subsets)))])
            extra = [n for n in ATTRIBUTE_NAMES if n not in named]
            if extra and rng.random() < 0.4:
                named.append(str(rng.choice(extra)))
            return named
    raise ValueError(f"{target} is indistinguishable from another object in its video")


_PLAIN_TEMPLATES = (
    "when does the {np} appear",
    "the {np} is on screen",
    "find the {np}",
    "the moment the {np} shows up",
    "{a_np} is visible",
)
_MOTION_TEMPLATES = ("the {np} {motion}", "{a_np} {motion}", "the {np} that {motion}")


def moment_query(rng: np.random.Generator, target: VideoObject, objects: list[VideoObject]) -> str:
    others = [o.spec for o in objects if o is not target]
    np_text = noun_phrase(target.spec, distinguishing_attributes(rng, target.spec, others), rng)
    if rng.random() < 0.5:
        motion = str(rng.choice(MOTION_PHRASES[target.motion]))
        return str(rng.choice(_MOTION_TEMPLATES)).format(np=np_text, a_np=with_article(np_text), motion=motion)
    return str(rng.choice(_PLAIN_TEMPLATES)).format(np=np_text, a_np=with_article(np_text))


_TITLE_TEMPLATES = (
    "a video of {objects}",
    "{objects} on a changing background",
    "short clip with {objects}",
    "{objects} moving around",
    "watch {objects}",
)


def video_title(rng: np.random.Generator, objects: list[VideoObject]) -> str:
    chosen = rng.choice(len(objects), size=min(len(objects), int(rng.integers(1, 3))), replace=False)
    phrases = []
    for index in sorted(chosen):
        spec = objects[index].spec
        named = ["shape", "color"] if rng.random() < 0.7 else ["shape", str(rng.choice(["pattern", "size"]))]
        phrases.append(with_article(noun_phrase(spec, named, rng)))
    return str(rng.choice(_TITLE_TEMPLATES)).format(objects=" and ".join(phrases))


def shot_labels(plan: VideoPlan, start: int, end: int) -> list[str]:
    """Attributes of every object visible during any frame of [start, end)."""
    labels = set()
    for obj in plan.objects:
        if obj.start_frame < end and start < obj.end_frame:
            labels.update(f"{name}={value}" for name, value in obj.spec.as_dict().items())
    return sorted(labels)


# -----------------------------------------------------------------------------
# the whole video world


def _defect_kinds(rng: np.random.Generator, kinds: tuple[str, ...], n_rows: int, cfg: WorldConfig) -> list[str]:
    # tests need every kind present, so tiny worlds carry at least one of each
    n_bad = round(cfg.bad_rate * n_rows)
    if cfg.scale == "tiny":
        n_bad = max(n_bad, len(kinds))
    order = list(rng.permutation(kinds))
    return [str(order[i % len(order)]) for i in range(n_bad)]


def _insert_randomly(rng: np.random.Generator, rows: list[dict], row: dict, after: int = -1) -> None:
    rows.insert(int(rng.integers(after + 1, len(rows) + 1)), row)


def video_id_for(number: int) -> str:
    return f"v{number:04d}"


def query_id_for(number: int) -> str:
    return f"q{number:05d}"


@dataclass
class VideoRows:
    """Rows of the raw and truth tables, as dicts; bad raw rows carry a ``_defect`` key."""

    videos: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)
    shots: list[dict] = field(default_factory=list)
    moments: list[dict] = field(default_factory=list)

    def extend(self, other: VideoRows) -> None:
        for name in ("videos", "queries", "objects", "shots", "moments"):
            getattr(self, name).extend(getattr(other, name))


def add_good_video(
    rows: VideoRows, rng: np.random.Generator, video_id: str, cfg: WorldConfig, video_dir: Path,
    dates: list[str], next_query_number: int,
) -> None:
    """Plan, render and write one video, and add its rows, truth and moment queries (ids
    numbered from ``next_query_number``) to ``rows``. Its date is drawn from ``dates``."""
    plan = plan_video(rng, video_id, cfg)
    write_mp4(video_dir / f"{video_id}.mp4", render_frames(plan, rng), plan.fps, plan.side)
    rows.videos.append({
        "video_id": video_id, "video_path": f"videos/{video_id}.mp4",
        "title": video_title(rng, plan.objects), "duration_s": plan.n_frames / plan.fps,
        "fps": plan.fps, "created_at": str(rng.choice(dates)),
    })
    rows.objects += [obj.truth_row(video_id, plan.fps) for obj in plan.objects]
    for shot_index, (start, end) in enumerate(plan.shots):
        rows.shots.append({"video_id": video_id, "shot_index": shot_index, "start_s": start / plan.fps,
                           "end_s": end / plan.fps, "labels": shot_labels(plan, start, end)})
    # distinct targets while they last, so one video's queries ask about different objects
    n_targets = cfg.queries_per_video
    targets = list(rng.permutation(len(plan.objects)))
    targets = (targets * (n_targets // len(targets) + 1))[:n_targets]
    for k, target_index in enumerate(targets):
        target = plan.objects[int(target_index)]
        query_id = query_id_for(next_query_number + k)
        span = {"start_s": target.start_frame / plan.fps, "end_s": target.end_frame / plan.fps}
        rows.queries.append({"query_id": query_id, "video_id": video_id,
                             "query": moment_query(rng, target, plan.objects), **span})
        rows.moments.append({"query_id": query_id, "video_id": video_id,
                             "object_id": target.object_id, **span})


@dataclass(frozen=True)
class VideoJob:
    """One good video for a worker: its own seed, so its file and rows never depend on
    which worker makes it or on the videos before it."""

    video_id: str
    seed: int
    first_query_number: int
    cfg: WorldConfig
    video_dir: str
    dates: tuple[str, ...]


def make_video(job: VideoJob) -> VideoRows:
    rows = VideoRows()
    add_good_video(rows, np.random.default_rng(job.seed), job.video_id, job.cfg, Path(job.video_dir),
                   list(job.dates), job.first_query_number)
    return rows


def make_good_videos(video_ids: list[str], rng: np.random.Generator, cfg: WorldConfig, video_dir: Path,
                     dates: list[str], first_query_numbers: list[int], workers: int | None = None,
                     progress: bool = True) -> VideoRows:
    """Render, encode and describe ``video_ids`` on ``workers`` processes; each video's seed
    is drawn from ``rng`` up front, its queries numbered from its ``first_query_numbers``."""
    seeds = rng.integers(2**62, size=len(video_ids))
    jobs = [VideoJob(video_id, int(seed), first, cfg, str(video_dir), tuple(dates))
            for video_id, seed, first in zip(video_ids, seeds, first_query_numbers)]
    rows = VideoRows()
    for part in map_in_order(make_video, jobs, workers, desc="videos", unit="video", progress=progress):
        rows.extend(part)
    return rows


def add_bad_videos(
    rows: list[dict], good_rows: list[dict], defects: list[str], bad_ids, rng: np.random.Generator,
    cfg: WorldConfig, video_dir: Path, dates: list[str],
) -> None:
    """Insert one bad video row per defect into ``rows`` (which starts as ``good_rows``):
    duplicates copy a good row's id after it; the others take the next of ``bad_ids``."""
    for defect in defects:
        if defect == "duplicate_id":
            original = good_rows[int(rng.integers(len(good_rows)))]
            # a conflicting copy: same id and file, another video's title and date
            other = good_rows[int(rng.integers(len(good_rows)))]
            row = {**original, "title": other["title"], "created_at": str(rng.choice(dates)), "_defect": defect}
            _insert_randomly(rng, rows, row, after=rows.index(original))
            continue
        video_id = next(bad_ids)
        path = video_dir / f"{video_id}.mp4"
        row = {"video_id": video_id, "video_path": f"videos/{video_id}.mp4",
               "title": "a video of " + with_article(noun_phrase(ObjectSpec.sample(rng), ["color", "shape"], rng)),
               "duration_s": float(rng.uniform(*cfg.video_seconds)), "fps": cfg.video_fps,
               "created_at": str(rng.choice(dates)), "_defect": defect}
        if defect == "truncated_mp4":
            bad_plan = plan_video(rng, video_id, cfg)
            write_mp4(path, render_frames(bad_plan, rng), bad_plan.fps, bad_plan.side)
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * TRUNCATED_FRACTION)])
            row["duration_s"] = bad_plan.n_frames / bad_plan.fps
        elif defect == "not_a_video":
            path.write_bytes(rng.integers(0, 256, size=int(rng.integers(2_000, 20_000)), dtype=np.uint8).tobytes())
        elif defect == "missing_file":
            path.unlink(missing_ok=True)
        elif defect == "path_traversal":
            row["video_path"] = "../../etc/passwd"
        _insert_randomly(rng, rows, row)


def add_bad_queries(
    rows: list[dict], good_rows: list[dict], defects: list[str], rng: np.random.Generator,
    next_query_number: int, unknown_video_start: int, unknown_video_range: int = 1000,
) -> None:
    """Insert one bad moment query per defect into ``rows``, copied from a good one, with ids
    from ``next_query_number``; an unknown video is numbered at random within
    ``unknown_video_range`` from ``unknown_video_start``, past every video id in use."""
    for j, defect in enumerate(defects):
        donor = good_rows[int(rng.integers(len(good_rows)))]
        row = {**donor, "query_id": query_id_for(next_query_number + j), "_defect": defect}
        if defect == "end_before_start":
            row["start_s"], row["end_s"] = donor["end_s"], donor["start_s"]
        elif defect == "unknown_video":
            row["video_id"] = video_id_for(unknown_video_start + int(rng.integers(unknown_video_range)))
        elif defect == "empty_query":
            row["query"] = str(rng.choice(["", " ", "   "]))
        _insert_randomly(rng, rows, row)


def video_world(rows: VideoRows, row_offset: dict[str, int] | None = None) -> VideoWorld:
    """The tables from ``rows``; bad records index rows from ``row_offset[table]`` (default 0),
    for batches appended to an existing table."""
    row_offset = row_offset or {}
    bad_records = [
        {"table": table, "row_index": row_offset.get(table, 0) + index, "record_id": row[id_column],
         "defect": row["_defect"]}
        for table, table_rows, id_column in (("videos", rows.videos, "video_id"),
                                             ("moment_queries", rows.queries, "query_id"))
        for index, row in enumerate(table_rows) if "_defect" in row
    ]
    return VideoWorld(
        videos=pd.DataFrame(rows.videos, columns=RAW_COLUMNS["videos"]),
        moment_queries=pd.DataFrame(rows.queries, columns=RAW_COLUMNS["moment_queries"]),
        video_objects=pd.DataFrame(rows.objects, columns=VIDEO_OBJECT_COLUMNS),
        shots=pd.DataFrame(rows.shots, columns=SHOT_COLUMNS),
        moments=pd.DataFrame(rows.moments, columns=MOMENT_COLUMNS),
        bad_records=pd.DataFrame(bad_records, columns=BAD_RECORD_COLUMNS),
    )


def generate_videos(
    out_root: Path, cfg: WorldConfig, rng: np.random.Generator, dates: list[str], progress: bool = True,
    workers: int | None = None,
) -> VideoWorld:
    """Write ``out_root/videos/<video_id>.mp4`` and return the raw and truth tables."""
    video_dir = Path(out_root) / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    video_defects = _defect_kinds(rng, VIDEO_DEFECTS, cfg.n_videos, cfg)
    # Bad videos get their own ids (except duplicates, which re-use one), after the good ones.
    n_ids = cfg.n_videos + sum(d != "duplicate_id" for d in video_defects)
    video_ids = [video_id_for(i) for i in range(1, n_ids + 1)]
    per_video = cfg.queries_per_video
    rows = make_good_videos(video_ids[: cfg.n_videos], rng, cfg, video_dir, dates,
                            [1 + i * per_video for i in range(cfg.n_videos)], workers, progress)

    add_bad_videos(rows.videos, list(rows.videos), video_defects, iter(video_ids[cfg.n_videos:]), rng,
                   cfg, video_dir, dates)
    good_query_rows = list(rows.queries)
    query_defects = _defect_kinds(rng, QUERY_DEFECTS, len(good_query_rows), cfg)
    add_bad_queries(rows.queries, good_query_rows, query_defects, rng, len(good_query_rows) + 1, n_ids + 1)
    return video_world(rows)
