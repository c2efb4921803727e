"""The generated videos: decodable MP4s whose pixels agree with the truth tables, queries that
name their object uniquely, and bad records that really are bad."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpipe.layout import RAW_COLUMNS, resolve_inside
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from mmpipe.world.config import world_config
from mmpipe.world.render import draw_object
from mmpipe.world.videos import (
    MOTION_PHRASES,
    QUERY_DEFECTS,
    VIDEO_DEFECTS,
    VideoObject,
    generate_videos,
)

CFG = world_config("tiny")
DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]


def build(root: Path, seed: int):
    return generate_videos(root, CFG, np.random.default_rng(seed), DATES, progress=False)


@pytest.fixture(scope="module", params=[0, 1])
def world(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"videos_seed{request.param}")
    return root, build(root, request.param)


def decode(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def good_videos(root: Path, w) -> list[tuple[pd.Series, np.ndarray]]:
    bad_rows = set(w.bad_records.query("table == 'videos'").row_index)
    return [(row, decode(root / row.video_path)[0]) for i, row in w.videos.iterrows() if i not in bad_rows]


def objects_of(w, video_id: str, fps: int) -> list[VideoObject]:
    rows = w.video_objects[w.video_objects.video_id == video_id]
    return [VideoObject.from_truth_row(row, fps) for _, row in rows.iterrows()]


def test_tables_have_the_contract_columns(world):
    _, w = world
    assert list(w.videos.columns) == RAW_COLUMNS["videos"]
    assert list(w.moment_queries.columns) == RAW_COLUMNS["moment_queries"]
    assert list(w.moments.columns) == ["query_id", "video_id", "object_id", "start_s", "end_s"]
    assert list(w.shots.columns) == ["video_id", "shot_index", "start_s", "end_s", "labels"]
    assert list(w.bad_records.columns) == ["table", "row_index", "record_id", "defect"]
    assert {"video_id", "object_id", *ATTRIBUTE_NAMES, "motion", "start_s", "end_s"} <= set(w.video_objects)
    assert set(w.videos.created_at) <= set(DATES)


def test_good_videos_decode_to_expected_frames_size_and_fps(world):
    root, w = world
    videos = good_videos(root, w)
    assert len(videos) == CFG.n_videos
    for row, frames in videos:
        _, fps = decode(root / row.video_path)
        assert fps == CFG.video_fps == row.fps
        assert frames.shape[1:] == (CFG.video_size, CFG.video_size, 3)
        assert abs(len(frames) - row.duration_s * row.fps) <= 1
        assert CFG.video_seconds[0] - 0.5 <= row.duration_s <= CFG.video_seconds[1] + 0.5


def test_same_seed_gives_identical_bytes_and_tables(tmp_path):
    a, b, c = build(tmp_path / "a", 7), build(tmp_path / "b", 7), build(tmp_path / "c", 8)
    files = sorted(p.name for p in (tmp_path / "a" / "videos").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b" / "videos").iterdir())
    for name in files:
        assert (tmp_path / "a" / "videos" / name).read_bytes() == (tmp_path / "b" / "videos" / name).read_bytes()
    for field in ("videos", "moment_queries", "video_objects", "shots", "moments", "bad_records"):
        pd.testing.assert_frame_equal(getattr(a, field), getattr(b, field))
    assert (tmp_path / "a/videos/v0001.mp4").read_bytes() != (tmp_path / "c/videos/v0001.mp4").read_bytes()


def test_shots_tile_the_video_and_cuts_are_visible(world):
    root, w = world
    for row, frames in good_videos(root, w):
        shots = w.shots[w.shots.video_id == row.video_id].sort_values("shot_index")
        assert len(shots) >= 2, "even short videos have cuts"
        assert shots.start_s.iloc[0] == 0 and shots.end_s.iloc[-1] == row.duration_s
        assert (shots.start_s.iloc[1:].to_numpy() == shots.end_s.iloc[:-1].to_numpy()).all()
        change = np.abs(np.diff(frames.astype(np.float32), axis=0))
        mean_diff = change.mean(axis=(1, 2, 3))
        changed_fraction = (change.max(axis=3) > 30).mean(axis=(1, 2))
        # diff[i] compares frame i with frame i+1, so a cut at frame c shows in diff[c - 1]
        at_cut = np.zeros(len(mean_diff), dtype=bool)
        at_cut[[round(s * row.fps) - 1 for s in shots.start_s.iloc[1:]]] = True
        assert mean_diff[at_cut].min() > 25
        # within a shot only noise and the objects change (large ones moving fast: up to ~10)
        assert np.median(mean_diff[~at_cut]) < 0.5 * mean_diff[at_cut].min()
        # an object coming or going changes part of the frame; a cut changes most of it
        assert changed_fraction[at_cut].min() > 0.5 > changed_fraction[~at_cut].max()


def test_shot_labels_are_the_attributes_of_visible_objects(world):
    _, w = world
    for _, shot in w.shots.iterrows():
        objects = w.video_objects[w.video_objects.video_id == shot.video_id]
        overlapping = objects[(objects.start_s < shot.end_s) & (shot.start_s < objects.end_s)]
        expected = {f"{name}={value}" for name in ATTRIBUTE_NAMES for value in overlapping[name]}
        assert set(shot.labels) == expected and len(expected) > 0


def test_one_to_three_objects_visible_and_paths_follow_motion(world):
    _, w = world
    for _, row in w.videos.drop_duplicates("video_id").iterrows():
        objects = objects_of(w, row.video_id, row.fps)
        if not objects:  # a bad row's video has no truth
            continue
        for frame_index in range(round(row.duration_s * row.fps)):
            assert 1 <= sum(o.visible(frame_index) for o in objects) <= 3
        for o in objects:
            dx, dy, spin = o.x_end - o.x_start, o.y_end - o.y_start, o.spin_deg_per_s
            direction = {"moves left": (dx < 0, dy == 0), "moves right": (dx > 0, dy == 0),
                         "moves up": (dy < 0, dx == 0), "moves down": (dy > 0, dx == 0),  # y grows downward
                         "stays still": (dx == dy == 0, spin == 0), "spins": (dx == dy == 0, spin != 0)}
            assert all(direction[o.motion]), (o.object_id, o.motion, dx, dy, spin)


def _appearance(obj: VideoObject, frame_index: int, fps: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """What the object looks like at a frame, and which pixels it covers (drawn on black and
    on white: the pixels that agree are the object's)."""
    x, y, rotation = obj.pose(frame_index, fps)
    on_black, on_white = Image.new("RGB", (side, side)), Image.new("RGB", (side, side), (255, 255, 255))
    for canvas in (on_black, on_white):
        draw_object(canvas, obj.spec, (x * side, y * side), rotation)
    look = np.asarray(on_black, dtype=np.float32)
    return look, (look == np.asarray(on_white, dtype=np.float32)).all(axis=2)


def test_objects_are_visible_exactly_during_their_interval(world):
    """At each object's drawn position, the decoded frame looks like the object while truth says
    it is visible, and unlike it before it appears and after it leaves."""
    root, w = world
    side = CFG.video_size
    inside_errors, outside_errors = [], []
    for row, frames in good_videos(root, w):
        objects = objects_of(w, row.video_id, row.fps)
        looks = {}  # (object index, frame) -> appearance; outside its interval it keeps its end pose

        def look(k: int, frame_index: int):
            o = objects[k]
            key = (k, min(max(frame_index, o.start_frame), o.end_frame - 1))
            if key not in looks:
                looks[key] = _appearance(o, key[1], row.fps, side)
            return looks[key]

        for k, o in enumerate(objects):
            inside, outside = [], []
            for frame_index in range(len(frames)):
                expected, mask = look(k, frame_index)
                # ignore pixels hidden by objects drawn on top (or present while this one is not)
                hidden = np.zeros_like(mask)
                for m, other in enumerate(objects):
                    if m != k and other.visible(frame_index) and (m > k or not o.visible(frame_index)):
                        hidden |= look(m, frame_index)[1]
                keep = mask & ~hidden
                if keep.sum() < 0.5 * mask.sum():
                    continue
                error = np.median(np.abs(frames[frame_index][keep].astype(np.float32) - expected[keep]).max(axis=1))
                (inside if o.visible(frame_index) else outside).append(error)
            assert inside, f"{o.object_id} is hidden for its whole visit"
            if outside:
                assert np.median(inside) + 10 < np.median(outside), o.object_id
            inside_errors += inside
            outside_errors += outside
    assert np.median(inside_errors) < 30 < np.median(outside_errors)


def _named(query: str) -> tuple[dict[str, str], str | None]:
    """The attribute values and the motion a query mentions."""
    words = re.findall(r"[a-z]+", query)
    named = {name: value for name in ATTRIBUTE_NAMES if name != "outline"
             for value in ATTRIBUTES[name] if value in words}
    outline = re.search(r"with (?:no|a (\w+)) outline", query)
    if outline:
        named["outline"] = outline.group(1) or "none"
    motions = [m for m, phrases in MOTION_PHRASES.items() if any(p in query for p in phrases)]
    assert len(motions) <= 1, query
    return named, (motions[0] if motions else None)


def test_queries_name_their_object_uniquely_and_moments_match(world):
    _, w = world
    bad_queries = set(w.bad_records.query("table == 'moment_queries'").record_id)
    good = w.moment_queries[~w.moment_queries.query_id.isin(bad_queries)]
    assert len(good) == CFG.n_videos * CFG.queries_per_video
    truth = w.moments.set_index("query_id")
    objects = w.video_objects.set_index("object_id")
    durations = w.videos.drop_duplicates("video_id").set_index("video_id").duration_s
    for _, q in good.iterrows():
        moment = truth.loc[q.query_id]
        target = objects.loc[moment.object_id]
        assert moment.video_id == q.video_id == target.video_id
        assert (q.start_s, q.end_s) == (moment.start_s, moment.end_s) == (target.start_s, target.end_s)
        assert 0 <= q.start_s < q.end_s <= durations[q.video_id]
        named, motion = _named(q.query)
        assert named, q.query
        assert all(target[name] == value for name, value in named.items()), (q.query, target)
        if motion is not None:
            assert motion == target.motion, q.query
        in_video = objects[objects.video_id == q.video_id]
        matching = in_video[np.logical_and.reduce([in_video[n] == v for n, v in named.items()])]
        assert list(matching.index) == [moment.object_id], f"{q.query!r} is ambiguous in {q.video_id}"


def test_titles_mention_objects_of_their_video(world):
    _, w = world
    bad_rows = set(w.bad_records.query("table == 'videos'").row_index)
    for i, row in w.videos.iterrows():
        if i not in bad_rows:
            shapes = set(w.video_objects[w.video_objects.video_id == row.video_id]["shape"])
            assert any(shape in row.title for shape in shapes), row.title


def decodes_fully(path: Path, expected_frames: float) -> bool:
    try:
        frames, _ = decode(path)
    except (av.FFmpegError, ValueError):
        return False
    return len(frames) >= expected_frames - 1


def test_bad_records_are_really_bad(world):
    root, w = world
    assert set(w.bad_records.defect) == set(VIDEO_DEFECTS) | set(QUERY_DEFECTS)
    video_ids = set(w.videos.video_id)
    for _, bad in w.bad_records.iterrows():
        table = w.videos if bad.table == "videos" else w.moment_queries
        row = table.iloc[bad.row_index]
        assert row[table.columns[0]] == bad.record_id
        if bad.defect == "truncated_mp4":
            path = root / row.video_path
            assert path.stat().st_size > 0 and not decodes_fully(path, row.duration_s * row.fps)
        elif bad.defect == "not_a_video":
            assert not decodes_fully(root / row.video_path, 1)
        elif bad.defect == "missing_file":
            assert not (root / row.video_path).exists()
        elif bad.defect == "path_traversal":
            with pytest.raises(ValueError, match="escapes"):
                resolve_inside(root, row.video_path)
        elif bad.defect == "duplicate_id":
            earlier = w.videos.iloc[: bad.row_index]
            assert bad.record_id in set(earlier.video_id)
        elif bad.defect == "end_before_start":
            assert row.end_s < row.start_s
        elif bad.defect == "unknown_video":
            assert row.video_id not in video_ids
        elif bad.defect == "empty_query":
            assert not row.query.strip()
    # and nothing else is bad: good rows have unique ids, readable files and sane spans
    bad_video_rows = set(w.bad_records.query("table == 'videos'").row_index)
    good_videos_table = w.videos.drop(index=list(bad_video_rows))
    assert good_videos_table.video_id.is_unique
    assert all(decodes_fully(root / r.video_path, r.duration_s * r.fps) for _, r in good_videos_table.iterrows())
    bad_query_rows = set(w.bad_records.query("table == 'moment_queries'").row_index)
    good_queries = w.moment_queries.drop(index=list(bad_query_rows))
    assert good_queries.query_id.is_unique and w.moment_queries.query_id.is_unique
    assert (good_queries.start_s < good_queries.end_s).all()
    assert set(good_queries.video_id) <= set(good_videos_table.video_id)
    assert (good_queries["query"].str.strip() != "").all()
