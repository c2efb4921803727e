"""Generated videos: shots with their own backgrounds, objects moving through them, and the
annotations people's video datasets carry, whose truth is known exactly.

A video is planned first (shots, objects and their paths, all in whole frames so that truth
boundaries fall exactly on frame times), then rendered frame by frame with the shared
renderer and encoded to H.264 with settings that make the bytes reproducible from the seed.

What a video holds: 2-3 "lanes" of objects with the pins' attributes entering, moving
(left, right, up, down, spinning, growing), changing colour and leaving at known frames;
distractors that share attributes with the others; camera cuts (shots) drawn independently
of the objects, so they never line up with events; and objects that leave and come back
(an event that happens twice: a query about it has two true windows).

Its annotations, each in the shape of a peer dataset:
* ``moment_queries`` (QVHighlights / Charades-STA): a query naming one object uniquely within
  its video, sometimes with its motion, and every window in which that holds;
* ``video_captions`` (MSR-VTT): several sentences describing what happens;
* ``video_shots`` (QFVS): the camera shots with the concept words visible in each;
* ``summary_queries`` (QFVS): one or two concept words and the shots relevant to them (a
  shot is relevant when one object visible in it shows every concept of the query).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
from PIL import Image

from mmpipe.layout import RAW_COLUMNS
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, SIZE_SCALE, ObjectSpec
from mmpipe.world.captions import add_typos, garbled_text
from mmpipe.world.config import WorldConfig
from mmpipe.world.parallel import map_in_order
from mmpipe.world.render import add_noise, background, draw_object

MOTIONS = ("moves left", "moves right", "moves up", "moves down", "stays still", "spins", "grows",
           "changes color")

# How a query or caption may say each motion; all are third person so they follow a noun phrase.
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moves left": ("moves to the left", "moves left", "slides to the left"),
    "moves right": ("moves to the right", "moves right", "slides to the right"),
    "moves up": ("moves up", "rises", "floats upward"),
    "moves down": ("moves down", "sinks", "drifts downward"),
    "stays still": ("stays still", "does not move", "sits still"),
    "spins": ("spins", "rotates", "turns around"),
    "grows": ("grows", "gets bigger", "expands"),
    "changes color": ("changes color", "changes its color", "switches color"),
}
# A growing object's size, as a factor of its size attribute, from its first to its last frame.
GROWTH = (0.6, 1.4)
# The attributes that summarization concepts are made of (QFVS concepts are visual nouns and
# adjectives; "thin outline" or "medium" are not what anyone would summarise a video for).
CONCEPT_ATTRIBUTES = ("color", "shape", "pattern")
# Chance that a new visit brings back an object that has already left (the event happens twice).
RETURN_RATE = 0.3
# Chance that a new object shares one attribute (and then a second) with an object in its video.
SHARE_RATE = 0.6

VIDEO_DEFECTS = ("truncated_mp4", "not_a_video", "missing_file", "path_traversal", "duplicate_id",
                 "wrong_duration", "wrong_fps")
QUERY_DEFECTS = ("end_before_start", "unknown_video", "empty_query", "window_outside_video")
CAPTION_DEFECTS = ("empty_caption", "garbled_caption")
SHOT_DEFECTS = ("shot_end_before_start",)
SUMMARY_DEFECTS = ("unknown_concept", "unknown_shot")
# A concept word no generated shot ever shows.
UNKNOWN_CONCEPTS = ("giraffe", "bicycle", "umbrella", "volcano")

VIDEO_OBJECT_COLUMNS = [
    "video_id", "object_id", "entity", *ATTRIBUTE_NAMES, "motion", "color_end", "start_s", "end_s",
    # the object's path, so a frame's truth can be recomputed: centre as fractions of the side
    "x_start", "y_start", "x_end", "y_end", "rotation_deg", "spin_deg_per_s",
]
SHOT_COLUMNS = ["video_id", "shot_index", "start_s", "end_s", "labels"]
MOMENT_COLUMNS = ["query_id", "video_id", "object_id", "start_s", "end_s"]
BAD_RECORD_COLUMNS = ["table", "row_index", "record_id", "defect"]
# The raw annotation tables a video world writes, with the column that names a row in the
# bad-record truth (video_shots rows are named "<video_id>:<shot_index>", as quarantine names them).
ANNOTATION_TABLES = {"moment_queries": "query_id", "video_captions": "caption_id",
                     "video_shots": None, "summary_queries": "query_id"}

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
    video_captions: pd.DataFrame  # raw table
    video_shots: pd.DataFrame  # raw table
    summary_queries: pd.DataFrame  # raw table
    video_objects: pd.DataFrame  # truth
    shots: pd.DataFrame  # truth
    moments: pd.DataFrame  # truth: one row per true window of a moment query
    bad_records: pd.DataFrame  # truth: which rows of the raw tables are bad on purpose, and why

    def raw_tables(self) -> dict[str, pd.DataFrame]:
        return {"videos": self.videos, "moment_queries": self.moment_queries,
                "video_captions": self.video_captions, "video_shots": self.video_shots,
                "summary_queries": self.summary_queries}


@dataclass
class VideoObject:
    """One visit of an object to a video: frames [start_frame, end_frame) and a straight path.

    Visits of the same ``entity`` are the same object leaving and coming back."""

    object_id: str
    entity: int
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
    color_end: str | None = None  # "changes color": the colour from the visit's middle frame on

    def visible(self, frame_index: int) -> bool:
        return self.start_frame <= frame_index < self.end_frame

    def _progress(self, frame_index: int) -> float:
        return (frame_index - self.start_frame) / max(self.end_frame - self.start_frame - 1, 1)

    @property
    def change_frame(self) -> int:
        return (self.start_frame + self.end_frame) // 2

    def pose(self, frame_index: int, fps: int) -> tuple[float, float, float]:
        """Centre (fractions of the side) and rotation in degrees at ``frame_index``."""
        progress = self._progress(frame_index)
        x = self.x_start + progress * (self.x_end - self.x_start)
        y = self.y_start + progress * (self.y_end - self.y_start)
        rotation = self.rotation_deg + self.spin_deg_per_s * (frame_index - self.start_frame) / fps
        return x, y, rotation

    def scale(self, frame_index: int) -> float:
        """Size as a factor of the size attribute's (1 unless it grows)."""
        if self.motion != "grows":
            return 1.0
        return GROWTH[0] + self._progress(frame_index) * (GROWTH[1] - GROWTH[0])

    def spec_at(self, frame_index: int) -> ObjectSpec:
        if self.color_end is not None and frame_index >= self.change_frame:
            return dataclasses.replace(self.spec, color=self.color_end)
        return self.spec

    def looks(self) -> list[ObjectSpec]:
        """Every way the object looks during the visit (two for one that changes colour)."""
        return [self.spec] if self.color_end is None else [self.spec, self.spec_at(self.change_frame)]

    def looks_between(self, start: int, end: int) -> list[ObjectSpec]:
        """How the object looks during frames [start, end) (nothing when it is not there)."""
        first, last = max(start, self.start_frame), min(end, self.end_frame)
        if first >= last:
            return []
        return list(dict.fromkeys([self.spec_at(first), self.spec_at(last - 1)]))

    def truth_row(self, video_id: str, fps: int) -> dict:
        return {
            "video_id": video_id, "object_id": self.object_id, "entity": self.entity,
            **self.spec.as_dict(), "motion": self.motion, "color_end": self.color_end,
            "start_s": self.start_frame / fps, "end_s": self.end_frame / fps,
            "x_start": self.x_start, "y_start": self.y_start, "x_end": self.x_end,
            "y_end": self.y_end, "rotation_deg": self.rotation_deg,
            "spin_deg_per_s": self.spin_deg_per_s,
        }

    @classmethod
    def from_truth_row(cls, row, fps: int) -> "VideoObject":
        """Rebuild from a row of the video_objects truth table (for eval code and tests)."""
        color_end = row["color_end"]
        return cls(
            object_id=row["object_id"], entity=int(row["entity"]),
            spec=ObjectSpec(**{name: row[name] for name in ATTRIBUTE_NAMES}),
            motion=row["motion"],
            start_frame=round(row["start_s"] * fps), end_frame=round(row["end_s"] * fps),
            x_start=row["x_start"], y_start=row["y_start"], x_end=row["x_end"],
            y_end=row["y_end"], rotation_deg=row["rotation_deg"],
            spin_deg_per_s=row["spin_deg_per_s"],
            color_end=color_end if isinstance(color_end, str) else None,
        )


@dataclass
class VideoPlan:
    video_id: str
    n_frames: int
    fps: int
    side: int
    shots: list[tuple[int, int]]  # [start_frame, end_frame) of each shot, covering the video
    objects: list[VideoObject]  # in drawing order: later objects are drawn on top

    def entities(self) -> dict[int, list[VideoObject]]:
        """Each object's visits, in time order."""
        visits: dict[int, list[VideoObject]] = {}
        for obj in sorted(self.objects, key=lambda o: o.start_frame):
            visits.setdefault(obj.entity, []).append(obj)
        return visits


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
    # 1-4 s shots, shrunk for very short videos so even a 4 s video has a few cuts: enough
    # shots for a summary to choose among, each long enough to show what it holds
    shortest = max(1, min(fps, n_frames // 4))
    longest = max(2 * shortest, min(4 * fps, n_frames // 2))
    bounds = np.cumsum([0, *_segment_lengths(rng, n_frames, shortest, longest)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _sample_path(rng: np.random.Generator, motion: str, spec: ObjectSpec) -> dict[str, float]:
    # the centre stays inside the canvas, so every visible object shows at least its middle
    margin = min(0.5 * SIZE_SCALE[spec.size] * (GROWTH[1] if motion == "grows" else 1.0), 0.3)
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


def _sample_spec(rng: np.random.Generator, taken: list[ObjectSpec]) -> ObjectSpec:
    """A look unlike every one in ``taken``, often sharing an attribute or two with one of
    them (a distractor), so that naming an object takes more than a single word."""
    while True:
        fixed = {}
        if taken and rng.random() < SHARE_RATE:
            other = taken[int(rng.integers(len(taken)))]
            n_shared = 2 if rng.random() < 0.3 else 1
            for name in rng.choice(ATTRIBUTE_NAMES, size=n_shared, replace=False):
                fixed[str(name)] = getattr(other, str(name))
        spec = ObjectSpec.sample(rng, fixed)
        if spec not in taken:
            return spec


def _motions_for(spec: ObjectSpec, returning: bool) -> list[str]:
    # a spinning circle looks exactly like a still one (its pattern does not turn with it);
    # an object that comes back looks as it did, so it keeps one colour; a large object
    # grown by half would cover most of the frame, and its arrival would look like a cut
    return [m for m in MOTIONS
            if not (m == "spins" and spec.shape == "circle") and not (m == "changes color" and returning)
            and not (m == "grows" and spec.size == "large")]


def _visit_intervals(rng: np.random.Generator, n_frames: int, fps: int) -> list[tuple[int, int]]:
    """Visits on 2-4 lanes, each lane a run of visits with gaps between them, so 0-4 objects
    are visible at a time. Each visit lasts 1.5-10 s (at most 35% of the video) and ends inside
    the video: no lane is tied to the video's first or last frame, so neither is a window's
    start or end more often than any other time (a fixed span would otherwise find them)."""
    shortest = max(1, min(3 * fps // 2, n_frames // 4))
    longest = max(shortest + 1, min(10 * fps, 7 * n_frames // 20))
    intervals = []
    for _ in range(int(rng.integers(2, 5))):
        t = int(rng.integers(0, n_frames // 2 + 1))
        while n_frames - t >= shortest:
            # log-uniform lengths: short glimpses and long stays alike, so no one length
            # (and no fixed span) fits many windows
            length = int(round(np.exp(rng.uniform(np.log(shortest), np.log(longest)))))
            if t + length > n_frames:  # cut short by the end, it would end with the video
                break
            intervals.append((t, t + length))
            t += length + int(rng.integers(fps // 2, 3 * fps + 1))
    return sorted(intervals)


def plan_objects(rng: np.random.Generator, video_id: str, n_frames: int, fps: int) -> list[VideoObject]:
    objects: list[VideoObject] = []
    taken: list[ObjectSpec] = []  # every look of every object so far
    for start, end in _visit_intervals(rng, n_frames, fps):
        # an object that left at least a second ago, with one look, may come back
        gone = {obj.entity: obj for obj in objects}
        for obj in objects:
            if obj.end_frame + fps > start or obj.color_end is not None:
                gone.pop(obj.entity, None)
        if gone and rng.random() < RETURN_RATE:
            earlier = gone[sorted(gone)[int(rng.integers(len(gone)))]]
            entity, spec, returning = earlier.entity, earlier.spec, True
        else:
            entity, spec, returning = len({obj.entity for obj in objects}), _sample_spec(rng, taken), False
            taken.append(spec)
        motion = str(rng.choice(_motions_for(spec, returning)))
        color_end = None
        if motion == "changes color":
            colors = [c for c in ATTRIBUTES["color"]
                      if c != spec.color and dataclasses.replace(spec, color=c) not in taken]
            color_end = str(rng.choice(colors))
            taken.append(dataclasses.replace(spec, color=color_end))
        objects.append(VideoObject(
            object_id=f"{video_id}_o{len(objects) + 1}", entity=entity, spec=spec, motion=motion,
            start_frame=start, end_frame=end, color_end=color_end, **_sample_path(rng, motion, spec),
        ))
    # drawing order: big objects first, so a small one is never buried under a big one for its
    # whole visit (a query about an object nobody can see would be unanswerable)
    return sorted(objects, key=lambda obj: -SIZE_SCALE[obj.spec.size])


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
                    draw_object(canvas, obj.spec_at(frame_index), (x * plan.side, y * plan.side), rotation,
                                scale_jitter=obj.scale(frame_index))
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
# language: queries name an object uniquely within its video; titles and captions describe


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


def distinguishing_attributes(rng: np.random.Generator, target: ObjectSpec, others: list[ObjectSpec],
                              allowed: tuple[str, ...] = ATTRIBUTE_NAMES) -> list[str]:
    """The fewest of the ``allowed`` attributes (chosen at random among ties, sometimes plus
    one more for variety) that tell ``target`` apart from every look in ``others``."""
    for k in range(1, len(allowed) + 1):
        subsets = [s for s in itertools.combinations(allowed, k) if _identifies(target, s, others)]
        if subsets:
            named = list(subsets[int(rng.integers(len(subsets)))])
            extra = [n for n in allowed if n not in named]
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


def moment_query(rng: np.random.Generator, plan: VideoPlan, entity: int) -> tuple[str, list[VideoObject]] | None:
    """A query naming ``entity`` uniquely (and sometimes one of its motions), and the visits
    that make it true: every visit, or those with the motion it names. None when the
    entity cannot be named uniquely (an object changing colour that matches another in
    every other attribute)."""
    visits = plan.entities()[entity]
    others = [look for obj in plan.objects if obj.entity != entity for look in obj.looks()]
    # an object that changes colour cannot be named by a colour it only has half the time
    allowed = tuple(n for n in ATTRIBUTE_NAMES if n != "color" or all(v.color_end is None for v in visits))
    try:
        named = distinguishing_attributes(rng, visits[0].spec, others, allowed)
    except ValueError:
        return None
    np_text = noun_phrase(visits[0].spec, named, rng)
    if rng.random() < 0.5:
        motion = str(rng.choice([v.motion for v in visits]))
        phrase = str(rng.choice(MOTION_PHRASES[motion]))
        text = str(rng.choice(_MOTION_TEMPLATES)).format(np=np_text, a_np=with_article(np_text), motion=phrase)
        return text, [v for v in visits if v.motion == motion]
    return str(rng.choice(_PLAIN_TEMPLATES)).format(np=np_text, a_np=with_article(np_text)), visits


_TITLE_TEMPLATES = (
    "a video of {objects}",
    "{objects} on a changing background",
    "short clip with {objects}",
    "{objects} moving around",
    "watch {objects}",
)


def _describe(spec: ObjectSpec, rng: np.random.Generator, n_named: int = 2) -> str:
    """A noun phrase naming the shape and ``n_named - 1`` other attributes at random."""
    others = ("color", "pattern", "size")
    named = ["shape", *map(str, rng.choice(others, size=min(n_named - 1, len(others)), replace=False))]
    return noun_phrase(spec, named, rng)


def video_title(rng: np.random.Generator, objects: list[VideoObject]) -> str:
    chosen = rng.choice(len(objects), size=min(len(objects), int(rng.integers(1, 3))), replace=False)
    phrases = []
    for index in sorted(chosen):
        spec = objects[index].spec
        named = ["shape", "color"] if rng.random() < 0.7 else ["shape", str(rng.choice(["pattern", "size"]))]
        phrases.append(with_article(noun_phrase(spec, named, rng)))
    return str(rng.choice(_TITLE_TEMPLATES)).format(objects=" and ".join(phrases))


# MSR-VTT-style sentences: what happens, one to three events in time order.
_ONE_EVENT = ("{e1} {m1}", "a video where {e1} {m1}", "{e1} {m1} on a changing background",
              "we see {e1} that {m1}", "in this clip {e1} {m1}")
_TWO_EVENTS = ("{e1} {m1} while {e2} {m2}", "first {e1} {m1}, then {e2} {m2}",
               "{e1} {m1} and later {e2} {m2}", "{e1} and {e2} appear one after the other")
_THREE_EVENTS = ("{e1} {m1}, {e2} {m2} and {e3} {m3}", "several shapes: {e1}, {e2} and {e3}")


def video_caption(rng: np.random.Generator, plan: VideoPlan, typo_rate: float) -> str:
    """One sentence about one to three of the video's visits, in the order they start."""
    n_events = min(len(plan.objects), int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])))
    chosen = sorted(rng.choice(len(plan.objects), size=n_events, replace=False))
    visits = [plan.objects[int(i)] for i in chosen]
    fields = {}
    for k, visit in enumerate(visits, start=1):
        fields[f"e{k}"] = with_article(_describe(visit.spec, rng, int(rng.integers(2, 4))))
        fields[f"m{k}"] = str(rng.choice(MOTION_PHRASES[visit.motion]))
    templates = {1: _ONE_EVENT, 2: _TWO_EVENTS, 3: _THREE_EVENTS}[n_events]
    return add_typos(str(rng.choice(templates)).format(**fields), rng, typo_rate)


def video_captions(rng: np.random.Generator, plan: VideoPlan, n: int, typo_rate: float) -> list[str]:
    """``n`` different sentences (fewer only if the video cannot be described that many ways)."""
    captions: list[str] = []
    for _ in range(20 * n):
        if len(captions) == n:
            break
        caption = video_caption(rng, plan, typo_rate)
        if caption not in captions:
            captions.append(caption)
    return captions


def shot_labels(plan: VideoPlan, start: int, end: int) -> list[str]:
    """``attribute=value`` of every look of every object visible during any frame of [start, end)."""
    labels = set()
    for obj in plan.objects:
        for look in obj.looks_between(start, end):
            labels.update(f"{name}={value}" for name, value in look.as_dict().items())
    return sorted(labels)


def shot_concepts(plan: VideoPlan, start: int, end: int) -> list[str]:
    """The concept words (colours, shapes, patterns) visible during [start, end)."""
    return sorted({getattr(look, name) for obj in plan.objects for look in obj.looks_between(start, end)
                   for name in CONCEPT_ATTRIBUTES})


def relevant_shots(plan: VideoPlan, concepts: tuple[str, ...]) -> list[int]:
    """Shots in which one visible object shows every concept (a red striped thing, not a red
    circle beside a striped one)."""
    return [index for index, (start, end) in enumerate(plan.shots)
            if any(set(concepts) <= {getattr(look, n) for n in CONCEPT_ATTRIBUTES}
                   for obj in plan.objects for look in obj.looks_between(start, end))]


def summary_queries(rng: np.random.Generator, plan: VideoPlan, n: int) -> list[tuple[tuple[str, ...], list[int]]]:
    """``n`` queries of one or two concepts that some of the video's shots, but not all, are
    relevant to (a query every shot answers leaves nothing to choose); fewer if there are not
    that many."""
    candidates = {}
    for obj in plan.objects:
        for look in obj.looks():
            words = [getattr(look, name) for name in CONCEPT_ATTRIBUTES]
            for size in (1, 2):
                for concepts in itertools.combinations(words, size):
                    shots = relevant_shots(plan, concepts)
                    if 0 < len(shots) < len(plan.shots):
                        candidates[concepts] = shots
    ordered = sorted(candidates)
    if not ordered:
        return []
    # two-concept queries are the QFVS shape: weigh them up
    weights = np.array([2.0 if len(c) == 2 else 1.0 for c in ordered])
    picks = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False, p=weights / weights.sum())
    return [(ordered[int(i)], candidates[ordered[int(i)]]) for i in sorted(picks)]


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


def summary_query_id_for(video_id: str, k: int) -> str:
    return f"{video_id}_s{k}"


def caption_id_for(video_id: str, k: int) -> str:
    return f"{video_id}_c{k}"


@dataclass
class VideoRows:
    """Rows of the raw and truth tables, as dicts; bad raw rows carry a ``_defect`` key."""

    videos: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    captions: list[dict] = field(default_factory=list)
    video_shots: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)
    shots: list[dict] = field(default_factory=list)
    moments: list[dict] = field(default_factory=list)

    def extend(self, other: VideoRows) -> None:
        for part in dataclasses.fields(self):
            getattr(self, part.name).extend(getattr(other, part.name))


def annotate_video(rows: VideoRows, rng: np.random.Generator, plan: VideoPlan, cfg: WorldConfig,
                   created_at: str, next_query_number: int) -> None:
    """Add a planned video's row, truth and annotations (moment query ids numbered from
    ``next_query_number``) to ``rows``. Needs the plan only, not its pixels."""
    video_id, fps = plan.video_id, plan.fps
    rows.videos.append({
        "video_id": video_id, "video_path": f"videos/{video_id}.mp4",
        "title": video_title(rng, plan.objects), "duration_s": plan.n_frames / fps,
        "fps": fps, "created_at": created_at,
    })
    rows.objects += [obj.truth_row(video_id, fps) for obj in plan.objects]
    for shot_index, (start, end) in enumerate(plan.shots):
        span = {"video_id": video_id, "shot_index": shot_index, "start_s": start / fps, "end_s": end / fps}
        rows.shots.append({**span, "labels": shot_labels(plan, start, end)})
        rows.video_shots.append({**span, "concepts": shot_concepts(plan, start, end)})
    # distinct objects while they last, so one video's queries ask about different things
    entities = list(rng.permutation(sorted(plan.entities())))
    queries = [query for query in (moment_query(rng, plan, int(e)) for e in entities) if query is not None]
    queries += [moment_query(rng, plan, int(entities[k % len(entities)]))
                for k in range(len(queries), 2 * cfg.queries_per_video)]
    queries = [query for query in queries if query is not None][: cfg.queries_per_video]
    for k, (text, visits) in enumerate(queries):
        query_id = query_id_for(next_query_number + k)
        windows = [[v.start_frame / fps, v.end_frame / fps] for v in visits]
        rows.queries.append({"query_id": query_id, "video_id": video_id, "query": text, "windows": windows})
        rows.moments += [{"query_id": query_id, "video_id": video_id, "object_id": v.object_id,
                          "start_s": v.start_frame / fps, "end_s": v.end_frame / fps} for v in visits]
    for k, caption in enumerate(video_captions(rng, plan, cfg.captions_per_video, cfg.typo_rate), start=1):
        rows.captions.append({"caption_id": caption_id_for(video_id, k), "video_id": video_id, "caption": caption})
    for k, (concepts, shots) in enumerate(summary_queries(rng, plan, cfg.summary_queries_per_video), start=1):
        rows.summaries.append({"query_id": summary_query_id_for(video_id, k), "video_id": video_id,
                               "concepts": list(concepts), "relevant_shots": shots})


def add_good_video(
    rows: VideoRows, rng: np.random.Generator, video_id: str, cfg: WorldConfig, video_dir: Path | None,
    dates: list[str], next_query_number: int,
) -> None:
    """Plan, render and write one video (no file when ``video_dir`` is None), and add its rows,
    truth and annotations to ``rows``. Its date is drawn from ``dates``. Planning, pixels and
    language draw from their own streams, so the annotations never depend on the rendering."""
    plan_rng, pixel_rng, text_rng = rng.spawn(3)
    plan = plan_video(plan_rng, video_id, cfg)
    if video_dir is not None:
        write_mp4(video_dir / f"{video_id}.mp4", render_frames(plan, pixel_rng), plan.fps, plan.side)
    annotate_video(rows, text_rng, plan, cfg, str(text_rng.choice(dates)), next_query_number)


@dataclass(frozen=True)
class VideoJob:
    """One good video for a worker: its own seed, so its file and rows never depend on
    which worker makes it or on the videos before it."""

    video_id: str
    seed: int
    first_query_number: int
    cfg: WorldConfig
    video_dir: str | None  # None: plan and annotate only, no file
    dates: tuple[str, ...]


def make_video(job: VideoJob) -> VideoRows:
    rows = VideoRows()
    add_good_video(rows, np.random.default_rng(job.seed), job.video_id, job.cfg,
                   None if job.video_dir is None else Path(job.video_dir), list(job.dates), job.first_query_number)
    return rows


def make_good_videos(video_ids: list[str], rng: np.random.Generator, cfg: WorldConfig, video_dir: Path | None,
                     dates: list[str], first_query_numbers: list[int], workers: int | None = None,
                     progress: bool = True) -> VideoRows:
    """Render, encode and describe ``video_ids`` on ``workers`` processes (``video_dir`` None:
    describe only); each video's seed is drawn from ``rng`` up front, its queries numbered
    from its ``first_query_numbers``."""
    seeds = rng.integers(2**62, size=len(video_ids))
    jobs = [VideoJob(video_id, int(seed), first, cfg, None if video_dir is None else str(video_dir), tuple(dates))
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
        if defect in ("truncated_mp4", "wrong_duration", "wrong_fps"):
            bad_plan = plan_video(rng, video_id, cfg)
            write_mp4(path, render_frames(bad_plan, rng), bad_plan.fps, bad_plan.side)
            row["duration_s"] = bad_plan.n_frames / bad_plan.fps
        if defect == "truncated_mp4":
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * TRUNCATED_FRACTION)])
        elif defect == "wrong_duration":  # a whole file, but not the one the row describes
            row["duration_s"] = round(row["duration_s"] * float(rng.choice([0.5, 1.8])), 3)
        elif defect == "wrong_fps":
            row["fps"] = float(rng.choice([24.0, 25.0, 30.0]))
        elif defect == "not_a_video":
            path.write_bytes(rng.integers(0, 256, size=int(rng.integers(2_000, 20_000)), dtype=np.uint8).tobytes())
        elif defect == "missing_file":
            path.unlink(missing_ok=True)
        elif defect == "path_traversal":
            row["video_path"] = "../../etc/passwd"
        _insert_randomly(rng, rows, row)


def add_bad_queries(
    rows: list[dict], good_rows: list[dict], defects: list[str], rng: np.random.Generator,
    next_query_number: int, unknown_video_start: int, durations: dict[str, float],
    unknown_video_range: int = 1000,
) -> None:
    """Insert one bad moment query per defect into ``rows``, copied from a good one, with ids
    from ``next_query_number``; an unknown video is numbered at random within
    ``unknown_video_range`` from ``unknown_video_start``, past every video id in use."""
    for j, defect in enumerate(defects):
        donor = good_rows[int(rng.integers(len(good_rows)))]
        row = {**donor, "windows": [list(w) for w in donor["windows"]],
               "query_id": query_id_for(next_query_number + j), "_defect": defect}
        if defect == "end_before_start":
            start, end = row["windows"][0]
            row["windows"][0] = [end, start]
        elif defect == "unknown_video":
            row["video_id"] = video_id_for(unknown_video_start + int(rng.integers(unknown_video_range)))
        elif defect == "empty_query":
            row["query"] = str(rng.choice(["", " ", "   "]))
        elif defect == "window_outside_video":
            duration = durations[row["video_id"]]
            row["windows"][-1] = [row["windows"][-1][0], round(duration + float(rng.uniform(1.0, 5.0)), 3)]
        _insert_randomly(rng, rows, row)


def add_bad_annotations(rows: VideoRows, rng: np.random.Generator, cfg: WorldConfig, scale_rows: int | None = None
                        ) -> None:
    """Plant bad captions, shots and summarization queries among ``rows``' good ones, each a
    good row's copy with one thing wrong and an id of its own. ``scale_rows`` overrides the
    number of rows the bad rate applies to (a day's delivery plants at least one of each)."""
    def defects(kinds, n_good):
        if scale_rows is not None:
            n_bad = max(1, round(cfg.bad_rate * n_good)) if n_good else 0
            order = rng.permutation(len(kinds))
            return [kinds[order[i % len(kinds)]] for i in range(n_bad)]
        return _defect_kinds(rng, kinds, n_good, cfg)

    good_captions = list(rows.captions)
    for j, defect in enumerate(defects(CAPTION_DEFECTS, len(good_captions))):
        donor = good_captions[int(rng.integers(len(good_captions)))]
        text = str(rng.choice(["", "  "])) if defect == "empty_caption" else garbled_text(rng, 24)
        row = {**donor, "caption_id": f"{donor['video_id']}_cx{j + 1}", "caption": text, "_defect": defect}
        _insert_randomly(rng, rows.captions, row)

    good_shots = list(rows.video_shots)
    last_shot = {}
    for shot in good_shots:
        last_shot[shot["video_id"]] = max(last_shot.get(shot["video_id"], -1), shot["shot_index"])
    for defect in defects(SHOT_DEFECTS, len(good_shots)):
        donor = good_shots[int(rng.integers(len(good_shots)))]
        last_shot[donor["video_id"]] += 1  # past the video's real shots, so its key is new
        row = {**donor, "shot_index": last_shot[donor["video_id"]], "start_s": donor["end_s"],
               "end_s": donor["start_s"], "_defect": defect}
        _insert_randomly(rng, rows.video_shots, row)

    good_summaries = list(rows.summaries)
    for j, defect in enumerate(defects(SUMMARY_DEFECTS, len(good_summaries))):
        donor = good_summaries[int(rng.integers(len(good_summaries)))]
        row = {**donor, "query_id": f"{donor['video_id']}_sx{j + 1}", "_defect": defect}
        if defect == "unknown_concept":
            row["concepts"] = [*donor["concepts"][:1], str(rng.choice(UNKNOWN_CONCEPTS))]
        else:  # a shot the video does not have
            row["relevant_shots"] = [*donor["relevant_shots"], last_shot[donor["video_id"]] + 5]
        _insert_randomly(rng, rows.summaries, row)


def _record_id(table: str, row: dict) -> str:
    id_column = ANNOTATION_TABLES.get(table, "video_id")
    return f"{row['video_id']}:{row['shot_index']}" if id_column is None else row[id_column]


def video_world(rows: VideoRows, row_offset: dict[str, int] | None = None) -> VideoWorld:
    """The tables from ``rows``; bad records index rows from ``row_offset[table]`` (default 0),
    for batches appended to an existing table."""
    row_offset = row_offset or {}
    raw = {"videos": rows.videos, "moment_queries": rows.queries, "video_captions": rows.captions,
           "video_shots": rows.video_shots, "summary_queries": rows.summaries}
    bad_records = [
        {"table": table, "row_index": row_offset.get(table, 0) + index, "record_id": _record_id(table, row),
         "defect": row["_defect"]}
        for table, table_rows in raw.items()
        for index, row in enumerate(table_rows) if "_defect" in row
    ]
    tables = {table: pd.DataFrame(table_rows, columns=RAW_COLUMNS[table]) for table, table_rows in raw.items()}
    tables["video_shots"]["shot_index"] = tables["video_shots"]["shot_index"].astype(np.int64)
    return VideoWorld(
        **tables,
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
    durations = {row["video_id"]: row["duration_s"] for row in rows.videos}

    add_bad_videos(rows.videos, list(rows.videos), video_defects, iter(video_ids[cfg.n_videos:]), rng,
                   cfg, video_dir, dates)
    good_query_rows = list(rows.queries)
    query_defects = _defect_kinds(rng, QUERY_DEFECTS, len(good_query_rows), cfg)
    add_bad_queries(rows.queries, good_query_rows, query_defects, rng, len(good_query_rows) + 1, n_ids + 1,
                    durations)
    add_bad_annotations(rows, rng, cfg)
    return video_world(rows)
