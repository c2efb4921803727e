"""Validation of the video-world tables: moment queries with windows, captions, annotated
shots and summary queries. Each bad row is quarantined under its rule with a message naming
the offending value, unusual but valid rows pass, rows in = valid + quarantined, and list
columns validate the same whether a frame was built by hand (lists) or read from Parquet
(numpy arrays)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmpipe.layout import RAW_COLUMNS, RAW_TABLES
from mmpipe.schemas.expectations import run_expectations
from mmpipe.schemas.media_checks import check_video
from mmpipe.schemas.quarantine import ValidationResult
from mmpipe.schemas.validate import (
    VALIDATION_PARENTS,
    validate_moment_queries,
    validate_summary_queries,
    validate_table,
    validate_video_captions,
    validate_video_shots,
    validate_videos,
    write_result,
)
from mmpipe.world.generate import write_parquet
from tests.test_schemas import FPS, write_video

DURATION_S = 2.0  # every video here: 16 frames at 8 fps
HALF_FRAME_S = 0.5 / FPS


def video_row(video_id: str, **changes) -> dict:
    return {"video_id": video_id, "video_path": f"videos/{video_id}.mp4", "title": "a red star",
            "duration_s": DURATION_S, "fps": float(FPS), "created_at": "2026-01-07", **changes}


VIDEOS = pd.DataFrame([video_row("v0"), video_row("v1")])  # validated videos, as children see them


def outcome(result: ValidationResult) -> dict[int, tuple[str, str]]:
    """row_index -> (rule, message) of every quarantined row, after checking the invariant."""
    result.check_invariant()
    assert len(result.valid) + len(result.quarantine) == result.n_in
    return {int(row): (rule, message) for row, rule, message
            in result.quarantine[["row_index", "rule", "message"]].itertuples(index=False)}


def assert_bad_row(result: ValidationResult, n_good: int, rule: str, named: list[str]) -> None:
    """The frame was n_good clean rows then one bad row: only that row is quarantined, under
    ``rule``, with a message naming every string of ``named``."""
    found = outcome(result)
    assert list(found) == [n_good] and found[n_good][0] == rule, found
    for words in named:
        assert words in found[n_good][1], found[n_good][1]
    assert result.valid["row_index"].tolist() == list(range(n_good))


# -----------------------------------------------------------------------------
# moment queries


GOOD_QUERIES = [
    {"query_id": "q0", "video_id": "v0", "query": "the red star moves left", "windows": [[0.5, 1.5]]},
    {"query_id": "q1", "video_id": "v1", "query": "a blue disc", "windows": [[0.0, 0.5], [1.0, 2.0]]},
]


@pytest.mark.parametrize("windows, rule, named", [
    ([[0.5, 1.0], [1.5, 1.25]], "windows.end_after_start", ["[1.5, 1.25]"]),
    ([[1.0, 1.0]], "windows.end_after_start", ["[1.0, 1.0]"]),
    ([[-0.5, 1.0]], "windows.start_not_negative", ["[-0.5, 1.0]"]),
    ([[0.0, 0.5], [1.0, 2.5]], "within_video", ["[1.0, 2.5]", "'v0'", "2.0 s long"]),
    ([[1.0, DURATION_S + 2 * HALF_FRAME_S]], "within_video", ["2.125"]),
    ([], "windows.well_formed", ["no window"]),
    ([[0.5]], "windows.well_formed", ["window 0 is [0.5]"]),
    ([[0.0, 1.0], [0.5, "end"]], "windows.well_formed", ["window 1 is [0.5, 'end']"]),
    ([[0.0, 1.0, 1.5]], "windows.well_formed", ["[0.0, 1.0, 1.5]"]),
    ([[0.0, math.nan]], "windows.well_formed", ["nan"]),
    ([[0.0, math.inf]], "windows.well_formed", ["inf"]),
    ([[True, 1.0]], "windows.well_formed", ["[True, 1.0]"]),
    ([0.5, 1.5], "windows.well_formed", ["window 0 is 0.5"]),
    ("0.5-1.5", "windows.well_formed", ["'0.5-1.5'", "not a list"]),
    ({"start_s": 0.5, "end_s": 1.5}, "windows.well_formed", ["not a list (type dict)"]),
    (None, "windows.not_nullable", ["windows is missing"]),
])
def test_each_window_defect_is_quarantined_and_named(windows, rule, named):
    raw = pd.DataFrame(GOOD_QUERIES + [{**GOOD_QUERIES[0], "query_id": "q9", "windows": windows}])
    assert_bad_row(validate_moment_queries(raw, VIDEOS), len(GOOD_QUERIES), rule, named)


@pytest.mark.parametrize("changes, rule, named", [
    ({"video_id": "v404"}, "video_id.known", ["'v404'"]),
    ({"query": "  "}, "query.not_blank", ["'  '"]),
    ({"query": "red " * 100}, "query.max_chars", ["400 chars"]),
    ({"query": "red\x07star\ue001"}, "query.not_garbled", ["U+0007"]),
    ({"query_id": "q1"}, "query_id.unique_id", ["'q1'"]),
])
def test_other_moment_query_defects(changes, rule, named):
    raw = pd.DataFrame(GOOD_QUERIES + [{**GOOD_QUERIES[0], "query_id": "q9", **changes}])
    assert_bad_row(validate_moment_queries(raw, VIDEOS), len(GOOD_QUERIES), rule, named)


def test_unusual_windows_are_valid_and_stored_as_float_pairs():
    unusual = [
        {"query_id": "twice", "video_id": "v0", "query": "the star spins", "windows": [[0.0, 0.5], [1.25, 1.75]]},
        {"query_id": "to_the_end", "video_id": "v0", "query": "a disc", "windows": [[1.0, DURATION_S]]},
        {"query_id": "in_slack", "video_id": "v1", "query": "a disc", "windows": [[1.0, DURATION_S + HALF_FRAME_S]]},
        {"query_id": "whole_seconds", "video_id": "v1", "query": "a disc", "windows": [[0, 2]]},
        {"query_id": "tuples", "video_id": "v1", "query": "a disc", "windows": ((0.5, 1.0),)},
        {"query_id": "numpy", "video_id": "v1", "query": "a disc", "windows": np.array([[0.25, 0.75]])},
    ]
    result = validate_moment_queries(pd.DataFrame(unusual), VIDEOS)
    assert outcome(result) == {}
    assert result.valid["windows"].tolist() == [
        [[0.0, 0.5], [1.25, 1.75]], [[1.0, 2.0]], [[1.0, 2.0625]], [[0.0, 2.0]], [[0.5, 1.0]], [[0.25, 0.75]],
    ]
    assert all(type(x) is float for windows in result.valid["windows"] for pair in windows for x in pair)


def test_a_window_on_a_quarantined_video_is_blamed_once():
    raw = pd.DataFrame([{**GOOD_QUERIES[0], "video_id": "v404", "windows": [[0.5, 99.0]]}])
    assert outcome(validate_moment_queries(raw, VIDEOS)) == {
        0: ("video_id.known", "video_id='v404' is not the id of a valid row of videos")
    }


def test_a_row_with_several_window_faults_lists_each():
    raw = pd.DataFrame([{**GOOD_QUERIES[0], "windows": [[-0.5, 1.0], [1.5, 1.0], [1.0, 3.0]]}])
    rule, message = outcome(validate_moment_queries(raw, VIDEOS))[0]
    assert rule == "windows.end_after_start"
    for words in ("[1.5, 1.0]", "[-0.5, 1.0]", "[1.0, 3.0]"):
        assert words in message


# -----------------------------------------------------------------------------
# video captions


GOOD_CAPTIONS = [
    {"caption_id": "c0", "video_id": "v0", "caption": "A red star drifts to the left."},
    {"caption_id": "c1", "video_id": "v0", "caption": "striped star, then a blue disc"},
    {"caption_id": "c2", "video_id": "v1", "caption": "Café scene 🎬 a star spins 🌟 👩\u200d🎨"},  # emoji are text
]


@pytest.mark.parametrize("changes, rule, named", [
    ({"caption_id": "c1"}, "caption_id.unique_id", ["'c1'"]),
    ({"caption_id": None}, "caption_id.not_nullable", ["caption_id is missing"]),
    ({"video_id": "v404"}, "video_id.known", ["'v404'"]),
    ({"caption": " \t"}, "caption.not_blank", ["' \\t'"]),
    ({"caption": None}, "caption.not_nullable", ["caption is missing"]),
    ({"caption": "star " * 61}, "caption.max_chars", ["305 chars", "300 characters"]),
    ({"caption": "star\ufffdstar"}, "caption.not_garbled", ["U+FFFD"]),
])
def test_caption_defects(changes, rule, named):
    raw = pd.DataFrame(GOOD_CAPTIONS + [{"caption_id": "c9", "video_id": "v1", "caption": "a disc", **changes}])
    result = validate_video_captions(raw, set(VIDEOS["video_id"]))
    assert_bad_row(result, len(GOOD_CAPTIONS), rule, named)


def test_captions_with_emoji_pass_unchanged():
    result = validate_video_captions(pd.DataFrame(GOOD_CAPTIONS), {"v0", "v1"})
    assert outcome(result) == {}
    assert result.valid["caption"].tolist() == [row["caption"] for row in GOOD_CAPTIONS]


# -----------------------------------------------------------------------------
# video shots


GOOD_SHOTS = [
    {"video_id": "v0", "shot_index": 0, "start_s": 0.0, "end_s": 1.0, "concepts": ["red", "star", "striped"]},
    {"video_id": "v0", "shot_index": 1, "start_s": 1.0, "end_s": DURATION_S, "concepts": ["blue", "disc"]},  # to the end
    {"video_id": "v1", "shot_index": 0, "start_s": 0.0, "end_s": 1.25, "concepts": ["red", "disc"]},
    # a shot in which no object is visible shows no concept, and is still a shot of the video
    {"video_id": "v1", "shot_index": 1, "start_s": 1.25, "end_s": DURATION_S, "concepts": []},
]


def shot(**changes) -> dict:
    return {"video_id": "v1", "shot_index": 2, "start_s": 0.5, "end_s": 1.5, "concepts": ["star"], **changes}


@pytest.mark.parametrize("changes, rule, named", [
    ({"shot_index": 1}, "unique_pair", ["video_id='v1'", "shot_index=1"]),
    ({"video_id": "v404"}, "video_id.known", ["'v404'"]),
    ({"shot_index": -1}, "shot_index.greater_than_or_equal_to", ["shot_index=-1"]),
    ({"shot_index": 1.5}, "shot_index.dtype", ["shot_index=1.5"]),
    ({"shot_index": "third"}, "shot_index.dtype", ["'third'"]),
    ({"shot_index": None}, "shot_index.not_nullable", ["shot_index is missing"]),
    ({"start_s": -0.25}, "start_s.greater_than_or_equal_to", ["start_s=-0.25"]),
    ({"start_s": 1.5, "end_s": 0.5}, "end_after_start", ["start_s=1.5", "end_s=0.5"]),
    ({"end_s": 2.5}, "within_video", ["2.5 s", "'v1'"]),
    ({"concepts": ["star", " "]}, "concepts.well_formed", ["concept 1 is ' '"]),
    ({"concepts": ["star", None]}, "concepts.well_formed", ["concept 1 is None"]),
    ({"concepts": "red star"}, "concepts.well_formed", ["'red star'", "not a list"]),
    ({"concepts": None}, "concepts.not_nullable", ["concepts is missing"]),
])
def test_shot_defects(changes, rule, named):
    raw = pd.DataFrame(GOOD_SHOTS + [shot(**changes)])
    assert_bad_row(validate_video_shots(raw, VIDEOS), len(GOOD_SHOTS), rule, named)


def test_shots_are_identified_by_their_pair():
    raw = pd.DataFrame(GOOD_SHOTS + [shot(shot_index=1)])
    assert validate_video_shots(raw, VIDEOS).quarantine["record_id"].tolist() == ["v1:1"]


def test_unusual_shots_are_valid():
    unusual = GOOD_SHOTS + [
        shot(shot_index=2.0, end_s=DURATION_S + HALF_FRAME_S),  # whole float index; end in the slack
        shot(shot_index=3, concepts=np.array(["red"], dtype=object)),
    ]
    result = validate_video_shots(pd.DataFrame(unusual), VIDEOS)
    assert outcome(result) == {}
    assert result.valid["shot_index"].tolist() == [0, 1, 0, 1, 2, 3]
    assert result.valid["concepts"].tolist()[-3:] == [[], ["star"], ["red"]]


# -----------------------------------------------------------------------------
# summary queries


def valid_shots() -> pd.DataFrame:
    return validate_video_shots(pd.DataFrame(GOOD_SHOTS), VIDEOS).valid


GOOD_SUMMARY_QUERIES = [
    {"query_id": "s0", "video_id": "v0", "concepts": ["red"], "relevant_shots": [0]},
    {"query_id": "s1", "video_id": "v1", "concepts": ["red", "disc"], "relevant_shots": [0]},  # two concepts
    {"query_id": "s2", "video_id": "v0", "concepts": ["star"], "relevant_shots": [0, 1]},
]


@pytest.mark.parametrize("changes, rule, named", [
    ({"concepts": ["red", "plaid"]}, "concepts.known_concept", ["'plaid'"]),
    ({"concepts": ["red", "star", "disc"]}, "concepts.well_formed", ["3 concepts"]),
    ({"concepts": []}, "concepts.well_formed", ["no concept"]),
    ({"concepts": [""]}, "concepts.well_formed", ["concept 0 is ''"]),
    ({"concepts": "red"}, "concepts.well_formed", ["not a list"]),
    ({"relevant_shots": [0, 7]}, "known_shots", ["shot 7", "'v0'", "0-1"]),
    ({"video_id": "v1", "relevant_shots": [0, 1, 2]}, "known_shots", ["shot 2 of video 'v1'"]),
    ({"relevant_shots": []}, "relevant_shots.well_formed", ["no shot"]),
    ({"relevant_shots": [0, 1.5]}, "relevant_shots.well_formed", ["entry 1 is 1.5"]),
    ({"relevant_shots": ["0"]}, "relevant_shots.well_formed", ["entry 0 is '0'"]),
    ({"relevant_shots": None}, "relevant_shots.not_nullable", ["relevant_shots is missing"]),
    ({"video_id": "v404"}, "video_id.known", ["'v404'"]),
    ({"query_id": "s1"}, "query_id.unique_id", ["'s1'"]),
])
def test_summary_query_defects(changes, rule, named):
    raw = pd.DataFrame(GOOD_SUMMARY_QUERIES + [{**GOOD_SUMMARY_QUERIES[0], "query_id": "s9", **changes}])
    result = validate_summary_queries(raw, set(VIDEOS["video_id"]), valid_shots())
    assert_bad_row(result, len(GOOD_SUMMARY_QUERIES), rule, named)


def test_summary_queries_are_judged_by_the_validated_shots():
    """A shot that fails validation takes its concepts and its index out of reach."""
    shots = pd.DataFrame(GOOD_SHOTS + [shot(shot_index=2, start_s=1.9, end_s=0.1, concepts=["zigzag"])])
    shots_result = validate_video_shots(shots, VIDEOS)
    assert outcome(shots_result)[4][0] == "end_after_start"
    raw = pd.DataFrame([{"query_id": "zig", "video_id": "v1", "concepts": ["zigzag"], "relevant_shots": [0]},
                        {"query_id": "two", "video_id": "v1", "concepts": ["red"], "relevant_shots": [0, 2]}])
    found = outcome(validate_summary_queries(raw, {"v0", "v1"}, shots_result.valid))
    assert found[0][0] == "concepts.known_concept" and "'zigzag'" in found[0][1]
    assert found[1][0] == "known_shots" and "shot 2 of video 'v1'" in found[1][1]


def test_unusual_summary_queries_are_valid():
    unusual = [{"query_id": "floats", "video_id": "v1", "concepts": ("red",), "relevant_shots": [0.0]},
               {"query_id": "numpy", "video_id": "v0", "concepts": np.array(["blue", "disc"], dtype=object),
                "relevant_shots": np.array([1], dtype=np.int64)}]
    result = validate_summary_queries(pd.DataFrame(unusual), {"v0", "v1"}, valid_shots())
    assert outcome(result) == {}
    assert result.valid["relevant_shots"].tolist() == [[0], [1]]
    assert all(type(index) is int for shots in result.valid["relevant_shots"] for index in shots)
    assert result.valid["concepts"].tolist() == [["red"], ["blue", "disc"]]


# -----------------------------------------------------------------------------
# Parquet round trip: list columns come back as numpy arrays


RAW_FRAMES = {
    "moment_queries": GOOD_QUERIES + [
        {"query_id": "q7", "video_id": "v0", "query": "twice", "windows": [[0.0, 0.5], [1.0, 2.0]]},
        {"query_id": "q8", "video_id": "v0", "query": "backwards", "windows": [[0.0, 0.5], [1.5, 1.0]]},
        {"query_id": "q9", "video_id": "v1", "query": "too long", "windows": [[1.0, 3.0]]},
        {"query_id": "q10", "video_id": "v1", "query": "no window", "windows": []},
    ],
    "video_captions": GOOD_CAPTIONS + [{"caption_id": "c9", "video_id": "v404", "caption": "lost"}],
    "video_shots": GOOD_SHOTS + [shot(concepts=["star", ""]), shot(shot_index=3, end_s=9.0)],
    "summary_queries": GOOD_SUMMARY_QUERIES + [
        {"query_id": "s7", "video_id": "v0", "concepts": ["plaid"], "relevant_shots": [0]},
        {"query_id": "s8", "video_id": "v1", "concepts": ["disc"], "relevant_shots": [0, 5]},
    ],
}


def _validate(table: str, raw: pd.DataFrame, shots: pd.DataFrame | None = None) -> ValidationResult:
    if table == "moment_queries":
        return validate_moment_queries(raw, VIDEOS)
    if table == "video_captions":
        return validate_video_captions(raw, VIDEOS["video_id"])
    if table == "video_shots":
        return validate_video_shots(raw, VIDEOS)
    return validate_summary_queries(raw, VIDEOS["video_id"], shots)


@pytest.fixture
def parquet_root(tmp_path) -> Path:
    for table, rows in RAW_FRAMES.items():
        write_parquet(pd.DataFrame(rows, columns=RAW_COLUMNS[table]), tmp_path / f"{table}.parquet")
    return tmp_path


def test_list_columns_read_back_from_parquet_as_numpy_arrays(parquet_root):
    assert str(pq.read_schema(parquet_root / "moment_queries.parquet").field("windows").type) == \
        "list<element: list<element: double>>"
    windows = pd.read_parquet(parquet_root / "moment_queries.parquet")["windows"]
    assert isinstance(windows.iloc[0], np.ndarray) and isinstance(windows.iloc[0][0], np.ndarray)
    assert isinstance(pd.read_parquet(parquet_root / "summary_queries.parquet")["relevant_shots"].iloc[0], np.ndarray)


def test_parquet_and_hand_built_frames_validate_alike(parquet_root, tmp_path):
    """Same verdicts and messages from lists and from numpy arrays, and the validated tables
    (written, read back) meet their expectations."""
    results, by_hand_shots = {}, valid_shots()
    for table in ("video_captions", "video_shots", "moment_queries", "summary_queries"):
        by_hand = _validate(table, pd.DataFrame(RAW_FRAMES[table], columns=RAW_COLUMNS[table]), by_hand_shots)
        from_parquet = validate_table(table, parquet_root, {"videos": VIDEOS, "video_shots": results.get("video_shots")})
        assert outcome(from_parquet) == outcome(by_hand), table
        assert len(outcome(from_parquet)) >= 1, table
        results[table] = from_parquet.valid
        write_result(from_parquet, tmp_path / "storage")

    stored = {table: pd.read_parquet(tmp_path / "storage" / "validated" / f"{table}.parquet") for table in results}
    assert str(pq.read_schema(tmp_path / "storage" / "validated" / "moment_queries.parquet").field("windows").type) == \
        "list<element: list<element: double>>"
    context = {"videos": VIDEOS, **stored}
    for table, valid in stored.items():
        report = run_expectations(table, valid, context)
        assert report.success, (table, report.failed())


def lists(frame: pd.DataFrame, values: list) -> pd.Series:
    """A column of list values (a plain list would be read as a 2-D array)."""
    return pd.Series(values, index=frame.index, dtype=object)


def test_expectations_catch_broken_list_columns(parquet_root):
    queries = validate_table("moment_queries", parquet_root, {"videos": VIDEOS}).valid
    broken = queries.assign(windows=lists(queries, [[[1.0, 0.5]]] + [[[0.0, 9.0]]] * (len(queries) - 1)))
    report = run_expectations("moment_queries", broken, {"videos": VIDEOS})
    assert {r["column"] for r in report.failed()} == {"min_window_length_s", "window_overrun_s"}

    shots = validate_video_shots(pd.DataFrame(GOOD_SHOTS), VIDEOS).valid
    summary = validate_summary_queries(pd.DataFrame(GOOD_SUMMARY_QUERIES), {"v0", "v1"}, shots).valid
    orphan = summary.assign(relevant_shots=lists(summary, [[0], [0], [0, 9]]),
                            concepts=lists(summary, [["red"], ["red", "disc"], ["plaid"]]))
    report = run_expectations("summary_queries", orphan, {"videos": VIDEOS, "video_shots": shots})
    assert {r["column"] for r in report.failed()} == {"n_unknown_shots", "n_unknown_concepts"}


# -----------------------------------------------------------------------------
# wiring: parents, dispatch, and the videos' frame rate


def test_parents_come_before_children_in_raw_table_order():
    assert VALIDATION_PARENTS["video_captions"] == ("videos",)
    assert VALIDATION_PARENTS["video_shots"] == ("videos",)
    assert VALIDATION_PARENTS["summary_queries"] == ("videos", "video_shots")
    assert set(VALIDATION_PARENTS) == set(RAW_TABLES)
    for table, parents in VALIDATION_PARENTS.items():
        assert all(RAW_TABLES.index(parent) < RAW_TABLES.index(table) for parent in parents), table


def test_validate_table_refuses_to_run_without_the_validated_parents(parquet_root):
    with pytest.raises(ValueError, match="video_shots"):
        validate_table("summary_queries", parquet_root, {"videos": VIDEOS})




def test_a_video_whose_row_misstates_its_frame_rate_is_quarantined(tmp_path):
    for video_id in ("v0", "v1", "v2", "v3"):
        write_video(tmp_path / "videos" / f"{video_id}.mp4")
    raw = pd.DataFrame([
        video_row("v0"),
        video_row("v1", fps=FPS * 1.005),  # rounding, within 1%
        video_row("v2", fps=12.0),  # another rate: every time stamp in seconds would be off
        video_row("v3", fps=0.0),  # reported by the schema, not compared with the stream
    ])
    found = outcome(validate_videos(raw, tmp_path))
    assert found[2] == ("video_path.fps", "video_path 'videos/v2.mp4' plays at 8 fps but its row says fps=12")
    assert found[3][0] == "fps.greater_than" and "video_path.fps" not in found[3][1]
    assert sorted(found) == [2, 3]


def test_check_video_keeps_checking_the_duration(tmp_path):
    write_video(tmp_path / "v.mp4")
    assert check_video(tmp_path, "v.mp4", DURATION_S, FPS) is None
    assert check_video(tmp_path, "v.mp4", 5.0, FPS).rule == "video_path.duration"
    assert check_video(tmp_path, "v.mp4", DURATION_S, 7.9).rule == "video_path.fps"
