"""Decoding, sampling, shot detection and the frame store, on MP4s written here with PyAV
(cut times known to the frame) and on the tiny generated world."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from mmpipe.layout import QUARANTINE_COLUMNS, truth_path
from mmpipe.media.decode import SIGNAL_SIDE, VideoDecodeError, decode_video, decode_video_with_signal
from mmpipe.media.frames import (
    INDEX_COLUMNS,
    FrameConfig,
    extract_frames,
    load_frames,
    read_frame_index,
)
from mmpipe.media.shots import (
    assign_shot_ids,
    blank_frame_mask,
    boundary_f1,
    detect_shot_boundaries,
    f1_from_counts,
)

FPS = 8
SIDE = 64
N_FRAMES = 80  # 10 s
CUT_FRAMES = (27, 53)  # first frames of shots 1 and 2
CUT_TIMES = tuple(f / FPS for f in CUT_FRAMES)
ONE_FRAME_S = 1 / FPS


# -----------------------------------------------------------------------------
# synthetic videos


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = FPS, faststart: bool = False) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def shot_background(kind: str) -> np.ndarray:
    """Three looks a cut must tell apart: a flat colour, a checkerboard, diagonal stripes."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    if kind == "flat":
        base = np.zeros((SIDE, SIDE, 3)) + (40, 90, 160)
        return base + (xx / SIDE * 30)[..., None]  # a faint gradient, so it is not blank
    if kind == "checker":
        mask = ((xx // 8 + yy // 8) % 2 == 0)[..., None]
        return np.where(mask, (200, 180, 60), (120, 100, 30)).astype(np.float64)
    if kind == "stripes":
        mask = (((xx + yy) // 6) % 2 == 0)[..., None]
        return np.where(mask, (60, 170, 80), (170, 60, 150)).astype(np.float64)
    raise ValueError(kind)


def draw_square(canvas: np.ndarray, frame_index: int, side: int = 16, speed: int = 3) -> None:
    """A white square bouncing left and right across the frame."""
    travel = SIDE - side
    x = (frame_index * speed) % (2 * travel)
    x = x if x < travel else 2 * travel - x
    y = SIDE // 2 - side // 2
    canvas[y : y + side, x : x + side] = (250, 250, 250)


def noisy(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(canvas + rng.normal(0, 3, canvas.shape), 0, 255).astype(np.uint8)


def three_shot_frames(seed: int = 0, blank_frames: range = range(0)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = ("flat", "checker", "stripes")
    frames = []
    for index in range(N_FRAMES):
        shot = sum(index >= cut for cut in CUT_FRAMES)
        canvas = shot_background(kinds[shot]).copy()
        draw_square(canvas, index)
        if index in blank_frames:
            canvas[:] = 8  # a dip to black, with the noise a camera would add
        frames.append(noisy(canvas, rng))
    return frames


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("media") / "three_shots.mp4", three_shot_frames())


@pytest.fixture(scope="module")
def with_blanks(tmp_path_factory) -> Path:
    # A run of black frames in the middle of shot 1: flagged, and no cut on either side of it.
    frames = three_shot_frames(seed=1, blank_frames=range(36, 44))
    return write_mp4(tmp_path_factory.mktemp("media") / "with_blanks.mp4", frames)


# -----------------------------------------------------------------------------
# decoding and sampling


def test_decode_at_native_rate_gives_every_frame_with_its_time(three_shots):
    frames, timestamps = decode_video(three_shots, sample_fps=FPS, size=SIDE)
    assert frames.shape == (N_FRAMES, SIDE, SIDE, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(timestamps, np.arange(N_FRAMES) / FPS)


@pytest.mark.parametrize("sample_fps", [1.0, 2.0, 3.0, 5.0])
def test_sampling_keeps_the_first_frame_of_every_period(three_shots, sample_fps):
    frames, timestamps = decode_video(three_shots, sample_fps=sample_fps, size=SIDE)
    native_times = np.arange(N_FRAMES) / FPS
    # the first frame of each 1/sample_fps bin
    bins = np.floor(native_times * sample_fps + 1e-9)
    expected = native_times[np.r_[True, np.diff(bins) > 0]]
    assert len(frames) == len(expected) == int(np.ceil(N_FRAMES / FPS * sample_fps))
    np.testing.assert_allclose(timestamps, expected)


def test_frames_are_resized_to_the_requested_side(three_shots):
    decoded = decode_video_with_signal(three_shots, sample_fps=2.0, size=48)
    assert decoded.frames.shape == (20, 48, 48, 3)
    assert decoded.signal_frames.shape == (N_FRAMES, SIGNAL_SIDE, SIGNAL_SIDE, 3)
    # the stored frames are exactly the decoded frames at their positions
    np.testing.assert_allclose(decoded.signal_timestamps[decoded.sampled_positions], decoded.timestamps)
    # colours survive: shot 1 is a yellow-ish checkerboard, shot 0 a blue-ish flat colour
    shot0, shot1 = decoded.frames[0].reshape(-1, 3).mean(0), decoded.frames[8].reshape(-1, 3).mean(0)
    assert shot0[2] > shot0[0] and shot1[0] > shot1[2]


def corrupt_files(directory: Path) -> dict[str, Path]:
    """One file per way a video can be unusable."""
    good = write_mp4(directory / "good.mp4", three_shot_frames())
    faststart = write_mp4(directory / "faststart.mp4", three_shot_frames(), faststart=True)
    files = {
        "garbage": directory / "garbage.mp4",
        "truncated": directory / "truncated.mp4",  # index (moov) at the end: lost
        "truncated_faststart": directory / "truncated_faststart.mp4",  # index kept, frames lost
        "empty": directory / "empty.mp4",
        "missing": directory / "missing.mp4",
    }
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 10])
    files["truncated_faststart"].write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    files["empty"].write_bytes(b"")
    return files


def test_corrupt_or_missing_files_raise_a_clear_error(tmp_path):
    for kind, path in corrupt_files(tmp_path).items():
        with pytest.raises(VideoDecodeError) as caught:
            decode_video(path, sample_fps=2.0, size=SIDE)
        message = str(caught.value)
        assert str(path) in message, kind
        expected_words = {"missing": "not found", "truncated_faststart": "truncated"}
        if kind in expected_words:
            assert expected_words[kind] in message, message


# -----------------------------------------------------------------------------
# shot detection


def test_cuts_are_found_to_the_frame(three_shots):
    decoded = decode_video_with_signal(three_shots, sample_fps=2.0, size=SIDE)
    boundaries = detect_shot_boundaries(
        decoded.signal_frames, decoded.signal_timestamps, FrameConfig().shot_threshold
    )
    np.testing.assert_allclose(boundaries, CUT_TIMES)
    assert boundary_f1(boundaries, CUT_TIMES, tolerance_s=ONE_FRAME_S)["f1"] == 1.0


def test_moving_and_appearing_objects_alone_are_not_cuts(tmp_path):
    rng = np.random.default_rng(2)
    frames = []
    for index in range(N_FRAMES):
        canvas = shot_background("checker").copy()
        draw_square(canvas, index, side=24, speed=7)  # a large, fast object
        if 30 <= index < 50:  # a second large object pops in and out
            canvas[4:28, 36:60] = (230, 40, 40)
        frames.append(noisy(canvas, rng))
    decoded = decode_video_with_signal(write_mp4(tmp_path / "still.mp4", frames), 2.0, SIDE)
    boundaries = detect_shot_boundaries(
        decoded.signal_frames, decoded.signal_timestamps, FrameConfig().shot_threshold
    )
    assert boundaries.size == 0, boundaries


def test_blank_frames_are_flagged_and_cause_no_cut(with_blanks, tmp_path):
    decoded = decode_video_with_signal(with_blanks, sample_fps=2.0, size=SIDE)
    blank = blank_frame_mask(decoded.signal_frames, FrameConfig().blank_std)
    np.testing.assert_array_equal(np.flatnonzero(blank), np.arange(36, 44))

    videos = pd.DataFrame({"video_id": ["blanks"], "video_path": [with_blanks.name]})
    result = extract_frames(videos, with_blanks.parent, tmp_path / "frames", FrameConfig())
    index = result.index
    # sampled at 2 fps: frames 36 and 40 (t = 4.5 s and 5.0 s) fall in the black run
    np.testing.assert_allclose(index.loc[index["is_blank"], "t_s"], [4.5, 5.0])
    assert result.summary.loc[0, "n_blank"] == 2
    np.testing.assert_allclose(result.summary.loc[0, "boundaries_s"], CUT_TIMES)


def test_assign_shot_ids_counts_boundaries_at_or_before_each_time():
    times = np.array([0.0, 0.5, 1.0, 1.49, 1.5, 3.0])
    np.testing.assert_array_equal(assign_shot_ids(times, [1.5, 1.0]), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(assign_shot_ids(times, []), np.zeros(6))
    # a boundary given as k / fps matches a timestamp computed another way
    np.testing.assert_array_equal(assign_shot_ids([0.1 + 0.2], [0.3]), [1])


def test_boundary_f1_matches_hand_computed_cases():
    perfect = boundary_f1([1.0, 2.0], [1.0, 2.0], tolerance_s=0.1)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)

    # one hit within tolerance, one prediction too far, one true cut missed
    half = boundary_f1([1.05, 3.0], [1.0, 2.0], tolerance_s=0.1)
    assert (half["precision"], half["recall"], half["f1"]) == (0.5, 0.5, 0.5)

    # one-to-one: two predictions near one true cut count once
    doubled = boundary_f1([0.95, 1.05], [1.0], tolerance_s=0.1)
    assert doubled["precision"] == 0.5 and doubled["recall"] == 1.0
    assert doubled["f1"] == pytest.approx(2 / 3)

    # greedy closest-first: 1.1 takes 1.15 (0.05 away), leaving 1.0 for 0.95
    greedy = boundary_f1([0.95, 1.1], [1.0, 1.15], tolerance_s=0.1)
    assert greedy["n_matched"] == 2

    # tolerance is inclusive
    assert boundary_f1([1.125], [1.0], tolerance_s=0.125)["f1"] == 1.0
    assert boundary_f1([1.2], [1.0], tolerance_s=0.125)["f1"] == 0.0

    # empty sides
    assert boundary_f1([], [], 0.1)["f1"] == 1.0
    nothing_found = boundary_f1([], [1.0], 0.1)
    assert (nothing_found["precision"], nothing_found["recall"], nothing_found["f1"]) == (1.0, 0.0, 0.0)
    false_alarm = boundary_f1([1.0], [], 0.1)
    assert (false_alarm["precision"], false_alarm["recall"], false_alarm["f1"]) == (0.0, 1.0, 0.0)

    # pooling counts over videos
    assert f1_from_counts(3, 4, 6)["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)


# -----------------------------------------------------------------------------
# the frame store


def test_extract_frames_round_trip_and_quarantine(three_shots, tmp_path):
    raw_root = tmp_path / "raw"
    (raw_root / "videos").mkdir(parents=True)
    (raw_root / "videos" / "ok.mp4").write_bytes(three_shots.read_bytes())
    for kind, path in corrupt_files(tmp_path).items():
        if path.exists():
            (raw_root / "videos" / path.name).write_bytes(path.read_bytes())
    rows = [
        ("ok", "videos/ok.mp4"),
        ("garbage", "videos/garbage.mp4"),
        ("truncated", "videos/truncated.mp4"),
        ("missing", "videos/missing.mp4"),
        ("escape", "../../etc/passwd"),
        ("ok", "videos/ok.mp4"),  # a repeated id
        ("../sneaky", "videos/ok.mp4"),  # an id that would write outside the store
    ]
    videos = pd.DataFrame(rows, columns=["video_id", "video_path"], index=range(10, 10 + len(rows)))
    videos["duration_s"] = 10.0
    out_dir = tmp_path / "frames"
    cfg = FrameConfig(sample_fps=2.0, size=SIDE)
    result = extract_frames(videos, raw_root, out_dir, cfg)

    # every input row ends in exactly one place
    assert list(result.summary["video_id"]) == ["ok"]
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS
    assert sorted(result.quarantine["row_index"]) == list(range(11, 17))
    rules = dict(zip(result.quarantine["row_index"], result.quarantine["rule"]))
    assert rules == {
        11: "undecodable_video", 12: "undecodable_video", 13: "undecodable_video",
        14: "invalid_path", 15: "duplicate_id", 16: "unsafe_video_id",
    }
    assert (result.quarantine["table"] == "videos").all()
    assert result.quarantine["message"].str.len().min() > 10

    # the store: files on disk agree with the result and with a direct decode
    assert sorted(p.name for p in out_dir.iterdir()) == ["index.parquet", "ok.npy", "shots.parquet"]
    index = read_frame_index(out_dir)
    assert list(index.columns) == INDEX_COLUMNS
    pd.testing.assert_frame_equal(index, result.index)
    stored = load_frames(out_dir, "ok")
    expected_frames, expected_times = decode_video(raw_root / "videos" / "ok.mp4", cfg.sample_fps, cfg.size)
    np.testing.assert_array_equal(stored, expected_frames)
    np.testing.assert_array_equal(index["frame_index"], np.arange(len(stored)))
    np.testing.assert_allclose(index["t_s"], expected_times)
    assert not index["is_blank"].any()

    # shot ids follow the detected boundaries, which are the true cuts
    summary = result.summary.iloc[0]
    np.testing.assert_allclose(summary["boundaries_s"], CUT_TIMES)
    np.testing.assert_array_equal(index["shot_id"], assign_shot_ids(index["t_s"], CUT_TIMES))
    assert summary["n_shots"] == 3 and summary["n_frames"] == len(stored) == 20
    shots = result.shots
    np.testing.assert_allclose(shots["start_s"], [0.0, *CUT_TIMES])
    np.testing.assert_allclose(shots["end_s"], [*CUT_TIMES, N_FRAMES / FPS])


def test_extract_frames_on_an_empty_table_writes_an_empty_index(tmp_path):
    videos = pd.DataFrame({"video_id": pd.Series(dtype=str), "video_path": pd.Series(dtype=str)})
    result = extract_frames(videos, tmp_path, tmp_path / "frames", FrameConfig())
    assert result.index.empty and result.summary.empty and result.quarantine.empty
    assert list(read_frame_index(tmp_path / "frames").columns) == INDEX_COLUMNS


# -----------------------------------------------------------------------------
# the generated world


def test_shot_boundaries_on_the_tiny_world(tiny_world, tmp_path):
    videos = pd.read_parquet(tiny_world / "videos.parquet")
    bad = pd.read_parquet(truth_path(tiny_world, "bad_records"))
    bad_videos = bad[bad["table"] == "videos"]
    true_shots = pd.read_parquet(truth_path(tiny_world, "shots"))

    # given every row, bad ones included, it quarantines instead of failing
    result = extract_frames(videos, tiny_world, tmp_path / "frames", FrameConfig())
    assert len(result.summary) + len(result.quarantine) == len(videos)
    # files that cannot be read; a whole file whose row misstates its duration or fps decodes
    # fine (validation, not frame extraction, rejects that row)
    unusable = bad_videos[~bad_videos["defect"].isin(["duplicate_id", "wrong_duration", "wrong_fps"])]
    assert set(unusable["row_index"]) <= set(result.quarantine["row_index"])
    misdescribed = set(videos.iloc[bad_videos[bad_videos["defect"].isin(["wrong_duration", "wrong_fps"])]
                                   ["row_index"]]["video_id"])
    assert set(result.summary["video_id"]) == set(true_shots["video_id"]) | misdescribed
    result_summary = result.summary[~result.summary["video_id"].isin(misdescribed)]

    counts = np.zeros(3, dtype=int)
    for row in result_summary.itertuples():
        truth = true_shots[(true_shots["video_id"] == row.video_id) & (true_shots["shot_index"] > 0)]
        score = boundary_f1(row.boundaries_s, truth["start_s"], tolerance_s=ONE_FRAME_S)
        counts += (score["n_matched"], score["n_predicted"], score["n_true"])
    pooled = f1_from_counts(*counts)
    print(f"tiny world boundary F1 {pooled['f1']:.3f} (P {pooled['precision']:.3f}, R {pooled['recall']:.3f}, "
          f"{pooled['n_true']} cuts in {len(result_summary)} videos)")
    assert pooled["f1"] >= 0.9


# -----------------------------------------------------------------------------
# still images: EXIF orientation


def _sideways_photo(path: Path, orientation: int) -> None:
    """A 64x40 photo stored with red on its left half and blue on the right, tagged with an
    EXIF orientation as a phone writes it when held in portrait."""
    from PIL import Image

    pixels = np.zeros((40, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (220, 20, 20)
    pixels[:, 32:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation, top, bottom", [
    (6, "red", "blue"),  # rotate 90 degrees clockwise to view: the stored left edge is the top
    (8, "blue", "red"),  # counter-clockwise: the stored right edge is the top
])
def test_images_are_read_upright_as_their_exif_orientation_says(tmp_path, orientation, top, bottom):
    from mmpipe.media.images import open_rgb
    from mmpipe.systems.pinclip.data import read_rgb

    path = tmp_path / "photo.jpg"
    _sideways_photo(path, orientation)
    colour = {"red": 0, "blue": 2}
    image = np.asarray(open_rgb(path))
    assert image.shape == (64, 40, 3)  # portrait, as the phone showed it
    assert image[:8, :, colour[top]].mean() > 180 and image[-8:, :, colour[bottom]].mean() > 180
    square = read_rgb(path, 32)  # what PinCLIP trains on
    assert square[:8, :, colour[top]].mean() > 180 and square[-8:, :, colour[bottom]].mean() > 180


def test_cmyk_and_grey_jpegs_are_read_as_rgb(tmp_path):
    from PIL import Image

    from mmpipe.media.images import open_rgb

    Image.new("RGB", (20, 20), (200, 30, 30)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.jpg")
    red = np.asarray(open_rgb(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(axis=0)
    assert red[0] > 170 and red[1] < 70 and red[2] < 70, red
    assert np.asarray(open_rgb(tmp_path / "grey.jpg")).shape == (20, 20, 3)
