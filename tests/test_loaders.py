"""Loaders for people's own videos: the hand-written files under tests/data/loaders, in the
formats peers use, plus three tiny MP4s made here, loaded and then validated."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmpipe import layout
from mmpipe.cli import main
from mmpipe.loaders import AnnotationFileError, load_videos
from mmpipe.loaders.formats import parse_charades_sta, parse_msrvtt, parse_qfvs, parse_qvhighlights
from mmpipe.loaders.videos import QUARANTINE_FILE, QUARANTINE_SCHEMA, VIDEO_TABLE_TYPES, probe_video
from mmpipe.world.videos import write_mp4

DATA = Path(__file__).parent / "data" / "loaders"
FILES = {
    "qvhighlights": DATA / "qvhighlights.jsonl",
    "charades": DATA / "charades_sta.txt",
    "msrvtt": DATA / "msrvtt.json",
    "qfvs": DATA / "qfvs.jsonl",
}
# video_id -> (frames, fps): 2 s, 3 s and 2 s long
CLIPS = {"clip_a": (16, 8), "clip_b": (24, 8), "clip_c": (20, 10)}
SIDE = 32


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of three tiny MP4s, plus files that are not MP4s and must be left alone."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for video_id, (n_frames, fps) in CLIPS.items():
        frames = rng.integers(0, 256, size=(n_frames, SIDE, SIDE, 3), dtype=np.uint8)
        write_mp4(folder / f"{video_id}.mp4", list(frames), fps, SIDE)
    (folder / "notes.txt").write_text("not a video")
    (folder / "._clip_a.mp4").write_bytes(b"macOS resource fork, not a video")
    return folder


def load_all(clips: Path, out: Path, **options):
    return load_videos(clips, out, **FILES, **options)


# -----------------------------------------------------------------------------
# the formats, one by one


def test_qvhighlights_lines_become_queries_or_quarantine_records():
    parsed = parse_qvhighlights(FILES["qvhighlights"])
    rows = parsed.rows["moment_queries"]
    assert [r["query_id"] for r in rows] == ["101", "102", "103", "107"]
    assert rows[0] == {"query_id": "101", "video_id": "clip_a", "query": "a red circle moves to the left",
                       "windows": [[0.5, 1.5]]}
    assert rows[1]["windows"] == [[0.0, 1.0], [2.0, 3.0]]  # an event that happens twice keeps both
    assert rows[2]["windows"] == [[2.5, 1.0]]  # end before start reads fine: validation's business

    quarantine = pd.DataFrame(parsed.quarantine)
    assert list(quarantine.columns) == layout.QUARANTINE_COLUMNS
    # line 5 is blank: not a record, but line numbers still count it
    assert quarantine["row_index"].tolist() == [4, 6, 7]
    assert quarantine["rule"].tolist() == ["line.parse", "line.missing_key", "line.type"]
    assert [q["record_id"] for q in parsed.quarantine] == [None, "105", "106"]
    assert "not valid JSON" in quarantine["message"][0]
    assert quarantine["message"][1] == "missing key 'relevant_windows'"
    assert quarantine["message"][2] == "relevant_windows[0][1] is not a number: '1.5s'"
    assert set(quarantine["source_file"]) == {"qvhighlights.jsonl"}
    assert parsed.records == 7 == len(rows) + len(quarantine)
    assert [(line, vid, seconds) for line, _, vid, seconds in parsed.declared_durations] == [
        (1, "clip_a", 2.0), (2, "clip_b", 3.0), (3, "clip_b", 3.0), (8, "clip_c", 9.0)]


def test_charades_lines_stay_separate_queries_with_line_ids():
    parsed = parse_charades_sta(FILES["charades"])
    rows = parsed.rows["moment_queries"]
    # the same query on the same video twice: two queries, told apart by their lines
    assert [r["query_id"] for r in rows] == ["clip_a_1", "clip_a_2", "clip_b_3", "clip_z_6"]
    assert rows[0] == {"query_id": "clip_a_1", "video_id": "clip_a", "query": "a person opens the door.",
                       "windows": [[0.0, 1.2]]}
    assert rows[1]["query"] == rows[0]["query"]
    quarantine = pd.DataFrame(parsed.quarantine)
    assert quarantine["row_index"].tolist() == [4, 5]
    assert quarantine["rule"].tolist() == ["line.parse", "line.type"]
    assert [q["record_id"] for q in parsed.quarantine] == [None, "clip_c_5"]
    assert "no '##'" in quarantine["message"][0]
    assert quarantine["message"][1] == "start is not a number: 'zero'"
    assert parsed.records == 6 == len(rows) + len(quarantine)


def test_charades_tolerates_crlf_and_a_byte_order_mark_and_quarantines_non_utf8(tmp_path):
    path = tmp_path / "charades_windows.txt"
    path.write_bytes(b"\xef\xbb\xbfclip_a 0.0 1.0##a person sits.\r\n\r\nclip_b 1.0 2.0##caf\xe9 scene\r\n"
                     b"clip_b 0 1##a person stands.\r\n")
    parsed = parse_charades_sta(path)
    assert [(r["query_id"], r["query"]) for r in parsed.rows["moment_queries"]] == [
        ("clip_a_1", "a person sits."), ("clip_b_4", "a person stands.")]
    assert [(q["row_index"], q["rule"]) for q in parsed.quarantine] == [(3, "line.parse")]
    assert "not UTF-8" in parsed.quarantine[0]["message"]


def test_msrvtt_sentences_become_captions_by_entry_position():
    parsed = parse_msrvtt(FILES["msrvtt"])
    rows = parsed.rows["video_captions"]
    assert [r["caption_id"] for r in rows] == ["0", "1", "2", "4", "5"]
    assert rows[2] == {"caption_id": "2", "video_id": "clip_b", "caption": "a blue star blinks twice"}
    assert parsed.quarantine == [{
        "table": "video_captions", "row_index": 4, "record_id": "3", "source_file": "msrvtt.json",
        "rule": "entry.missing_key", "message": "sentences[3]: missing key 'caption'"}]
    assert parsed.records == 6


def test_msrvtt_file_that_is_not_json_is_refused_whole(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"sentences": [{"caption": "a", "video_id": "v", "sen_id": 0},\n')
    with pytest.raises(AnnotationFileError, match="not a JSON document .* line 2"):
        parse_msrvtt(broken)
    (tmp_path / "no_sentences.json").write_text('{"videos": []}')
    with pytest.raises(AnnotationFileError, match="'sentences' list"):
        parse_msrvtt(tmp_path / "no_sentences.json")


def test_qfvs_shots_and_queries_quarantined_entry_by_entry():
    parsed = parse_qfvs(FILES["qfvs"])
    shots = parsed.rows["video_shots"]
    queries = parsed.rows["summary_queries"]
    assert [(s["video_id"], s["shot_index"]) for s in shots] == [("clip_a", 0), ("clip_a", 1), ("clip_b", 0),
                                                                 ("clip_c", 0)]
    assert shots[1] == {"video_id": "clip_a", "shot_index": 1, "start_s": 1.0, "end_s": 2.0,
                        "concepts": ["red", "circle", "striped"]}
    assert queries == [
        {"query_id": "clip_a_red_circle", "video_id": "clip_a", "concepts": ["red", "circle"], "relevant_shots": [0, 1]},
        {"query_id": "clip_a_q1", "video_id": "clip_a", "concepts": ["striped"], "relevant_shots": [1]},
        {"query_id": "clip_c_q0", "video_id": "clip_c", "concepts": ["yellow", "square"], "relevant_shots": [0]},
    ]
    quarantine = pd.DataFrame(parsed.quarantine)
    assert [[q[c] for c in ("table", "row_index", "record_id", "rule")] for q in parsed.quarantine] == [
        ["video_shots", 2, "clip_b:1", "line.type"],
        ["summary_queries", 2, "clip_b_q0", "line.type"],
        ["video_shots,summary_queries", 4, None, "line.parse"],
        ["video_shots,summary_queries", 5, None, "line.missing_key"],
    ]
    assert quarantine["message"].tolist()[:2] == ["shots[1].end is not a number: '3.0s'",
                                                  "queries[0].relevant_shots[1] is not an integer: 'one'"]
    # 4 + 3 + 2 entries on the readable lines, one record for each unreadable line
    assert parsed.records == 11 == len(shots) + len(queries) + len(quarantine)


# -----------------------------------------------------------------------------
# the whole load


def test_probe_reads_duration_and_fps_from_the_headers(clips):
    for video_id, (n_frames, fps) in CLIPS.items():
        probe = probe_video(clips / f"{video_id}.mp4")
        assert probe.problem is None
        assert probe.fps == pytest.approx(fps)
        assert probe.duration_s == pytest.approx(n_frames / fps, abs=0.5 / fps)
    assert probe_video(clips / "notes.txt").problem is not None


def test_load_writes_a_complete_landing_zone(clips, tmp_path):
    dates = tmp_path / "dates.csv"
    dates.write_text("video_id,created_at\nclip_a,2026-03-01\nclip_b,2026-03-04\nclip_gone,2026-03-09\n")
    out = tmp_path / "raw"
    result = load_all(clips, out, dates_file=dates)

    # every raw table exists with the layout's columns; the video tables with their list types
    for table in layout.RAW_TABLES:
        schema = pq.read_schema(layout.raw_table_path(out, table))
        assert schema.names == layout.RAW_COLUMNS[table]
        for column, arrow_type in VIDEO_TABLE_TYPES.get(table, {}).items():
            assert schema.field(column).type == arrow_type, (table, column)
    assert pq.read_schema(layout.raw_table_path(out, "moment_queries")).field("windows").type == \
        pa.list_(pa.list_(pa.float64()))

    videos = pd.read_parquet(layout.raw_table_path(out, "videos"))
    assert videos["video_id"].tolist() == ["clip_a", "clip_b", "clip_c"]  # notes.txt and ._clip_a.mp4 skipped
    assert videos["video_path"].tolist() == ["videos/clip_a.mp4", "videos/clip_b.mp4", "videos/clip_c.mp4"]
    assert videos["duration_s"].tolist() == pytest.approx([2.0, 3.0, 2.0], abs=0.07)
    assert videos["fps"].tolist() == pytest.approx([8.0, 8.0, 10.0])
    # the first caption that can be a title; clip_c's first caption is blank, so its second
    assert videos["title"].tolist() == ["a red circle slides to the left", "a blue star blinks twice",
                                        "a yellow shape spins in place"]
    modified = dt.datetime.fromtimestamp((clips / "clip_c.mp4").stat().st_mtime, dt.timezone.utc).date().isoformat()
    assert videos["created_at"].tolist() == ["2026-03-01", "2026-03-04", modified]
    for video_id in CLIPS:
        copied = out / "videos" / f"{video_id}.mp4"
        assert copied.read_bytes() == (clips / f"{video_id}.mp4").read_bytes()
        assert not copied.samefile(clips / f"{video_id}.mp4")  # a copy by default, not a link

    moments = pd.read_parquet(layout.raw_table_path(out, "moment_queries"))
    assert moments["query_id"].tolist() == ["101", "102", "103", "107", "clip_a_1", "clip_a_2", "clip_b_3", "clip_z_6"]
    assert [w.tolist() for w in moments["windows"][1]] == [[0.0, 1.0], [2.0, 3.0]]
    captions = pd.read_parquet(layout.raw_table_path(out, "video_captions"))
    assert captions["caption_id"].tolist() == ["0", "1", "2", "4", "5"]
    shots = pd.read_parquet(layout.raw_table_path(out, "video_shots"))
    assert shots["concepts"].map(list).tolist() == [["red", "circle"], ["red", "circle", "striped"],
                                                    ["blue", "star"], ["yellow", "square"]]
    summaries = pd.read_parquet(layout.raw_table_path(out, "summary_queries"))
    assert summaries["relevant_shots"].map(list).tolist() == [[0, 1], [1], [0]]
    assert pd.read_parquet(layout.raw_table_path(out, "pins")).empty

    # quarantine: returned and written, every record with its file and line
    written = pd.read_parquet(out / QUARANTINE_FILE)
    assert pq.read_schema(out / QUARANTINE_FILE).equals(QUARANTINE_SCHEMA)
    pd.testing.assert_frame_equal(written.astype(result.quarantine.dtypes.to_dict()), result.quarantine)
    assert result.quarantine.groupby("source_file")["row_index"].apply(list).to_dict() == {
        "charades_sta.txt": [4, 5], "msrvtt.json": [4], "qfvs.jsonl": [2, 2, 4, 5], "qvhighlights.jsonl": [4, 6, 7]}

    # records in = rows written + records quarantined, for every file and in all
    assert result.sources == {
        "qvhighlights": {"file": "qvhighlights.jsonl", "records": 7, "rows": 4, "quarantined": 3},
        "charades": {"file": "charades_sta.txt", "records": 6, "rows": 4, "quarantined": 2},
        "msrvtt": {"file": "msrvtt.json", "records": 6, "rows": 5, "quarantined": 1},
        "qfvs": {"file": "qfvs.jsonl", "records": 11, "rows": 7, "quarantined": 4},
    }
    annotation_rows = sum(result.rows[t] for t in ("moment_queries", "video_captions", "video_shots", "summary_queries"))
    assert sum(s["records"] for s in result.sources.values()) == annotation_rows + len(written) == 30 == 20 + 10

    manifest = json.loads((out / layout.MANIFEST_FILE).read_text())
    assert manifest == result.manifest
    assert manifest["producer"] == "mmpipe load videos"
    assert (manifest["start_date"], manifest["end_date"]) == (min("2026-03-01", modified), max("2026-03-04", modified))
    assert manifest["rows"] == {table: len(pd.read_parquet(layout.raw_table_path(out, table)))
                                for table in layout.RAW_TABLES}
    assert manifest["rows"]["videos"] == 3 and manifest["rows"]["moment_queries"] == 8

    # worth a look, but no reason to drop anything
    assert any("line 8 (qid 107): duration 9 s, but clip_c.mp4 plays 2.00 s" in w for w in result.warnings)
    assert any("charades_sta.txt: 1 row(s) name videos not in the folder (clip_z)" in w for w in result.warnings)
    assert any("clip_gone" in w for w in result.warnings)


def test_one_date_for_all_videos_and_a_video_that_cannot_be_probed(clips, tmp_path):
    folder = tmp_path / "with_bad"
    shutil.copytree(clips, folder)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    out = tmp_path / "raw"
    result = load_videos(folder, out, date="2026-02-10")
    videos = pd.read_parquet(layout.raw_table_path(out, "videos"))
    assert videos["created_at"].unique().tolist() == ["2026-02-10"]
    broken = videos.set_index("video_id").loc["broken"]
    assert pd.isna(broken["duration_s"]) and pd.isna(broken["fps"])  # kept for validation to judge
    assert any(w.startswith("broken.mp4: cannot be probed") for w in result.warnings)
    assert (result.manifest["start_date"], result.manifest["end_date"]) == ("2026-02-10", "2026-02-10")
    assert result.sources == {} and result.quarantine.empty
    # no annotation given: the video tables are empty, with their columns
    assert pd.read_parquet(layout.raw_table_path(out, "moment_queries")).columns.tolist() == \
        layout.RAW_COLUMNS["moment_queries"]
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_videos(folder, tmp_path / "other", date="2026-02-30")


def test_reload_replaces_its_own_output_but_never_someone_elses(clips, tmp_path):
    out = tmp_path / "raw"
    load_all(clips, out, date="2026-01-01")
    (out / "README.txt").write_text("the user's own note")
    load_videos(clips, out, charades=FILES["charades"], date="2026-01-02")  # the loader's folder: replaced
    assert pd.read_parquet(layout.raw_table_path(out, "video_captions")).empty
    assert json.loads((out / layout.MANIFEST_FILE).read_text())["start_date"] == "2026-01-02"
    assert (out / "README.txt").read_text() == "the user's own note"  # not the loader's to delete

    theirs = tmp_path / "theirs"
    (theirs / "videos").mkdir(parents=True)
    (theirs / "videos" / "precious.mp4").write_bytes(b"someone's video")
    with pytest.raises(FileExistsError, match="did not write"):
        load_all(clips, theirs)
    assert (theirs / "videos" / "precious.mp4").exists()

    generated = tmp_path / "generated"
    (generated / "_truth").mkdir(parents=True)
    (generated / QUARANTINE_FILE).write_bytes(b"")
    with pytest.raises(FileExistsError, match="_truth"):
        load_all(clips, generated)

    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "notes.md").write_text("no landing-zone name, still not the loader's folder")
    with pytest.raises(FileExistsError, match="notes.md"):
        load_all(clips, elsewhere)
    assert [p.name for p in elsewhere.iterdir()] == ["notes.md"]

    with pytest.raises(ValueError, match="inside"):  # loading would delete the videos it reads
        load_videos(out / "videos", out, date="2026-01-03")
    assert len(list((out / "videos").glob("*.mp4"))) == 3


def test_unreadable_annotation_file_leaves_the_folder_untouched(clips, tmp_path):
    out = tmp_path / "raw"
    load_all(clips, out, date="2026-01-01")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    broken = tmp_path / "broken.json"
    broken.write_text("not json")
    with pytest.raises(AnnotationFileError):
        load_videos(clips, out, msrvtt=broken, date="2026-01-02")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_hardlink_option_links_the_videos(clips, tmp_path):
    folder = tmp_path / "clips"
    shutil.copytree(clips, folder)
    out = tmp_path / "raw"
    load_videos(folder, out, date="2026-01-01", link=True)
    assert (out / "videos" / "clip_a.mp4").samefile(folder / "clip_a.mp4")


def test_mtime_gives_the_date_when_nothing_else_does(clips, tmp_path):
    folder = tmp_path / "clips"
    shutil.copytree(clips, folder)
    stamp = dt.datetime(2025, 7, 14, 23, 30, tzinfo=dt.timezone.utc).timestamp()
    for path in folder.glob("*.mp4"):
        os.utime(path, (stamp, stamp))
    result = load_videos(folder, tmp_path / "raw")
    assert (result.manifest["start_date"], result.manifest["end_date"]) == ("2025-07-14", "2025-07-14")

    # a JSON dates file names some videos; the others keep their modification day
    dates = tmp_path / "dates.json"
    dates.write_text(json.dumps({"clip_b": "2025-08-01"}))
    result = load_videos(folder, tmp_path / "raw", dates_file=dates)
    videos = pd.read_parquet(layout.raw_table_path(tmp_path / "raw", "videos"))
    assert videos["created_at"].tolist() == ["2025-07-14", "2025-08-01", "2025-07-14"]
    assert (result.manifest["start_date"], result.manifest["end_date"]) == ("2025-07-14", "2025-08-01")


# -----------------------------------------------------------------------------
# what the loader writes, validation accepts


def test_loaded_landing_zone_validates(clips, tmp_path):
    from mmpipe.schemas import validate

    not_validated = [table for table in layout.RAW_TABLES if table not in validate.VALIDATION_PARENTS]
    if not_validated:
        pytest.skip(f"validation of {not_validated} does not exist yet (mmpipe.schemas.validate.VALIDATION_PARENTS)")
    out = tmp_path / "raw"
    load_all(clips, out, date="2026-03-01")
    results = validate.validate_world(out)

    assert sorted(results["videos"].valid["video_id"]) == ["clip_a", "clip_b", "clip_c"]
    assert results["videos"].quarantine.empty
    moments = results["moment_queries"]
    assert {"101", "102", "107", "clip_a_1", "clip_a_2", "clip_b_3"} <= set(moments.valid["query_id"])
    # written through by the loader, rejected by validation: end before start, an unknown video
    assert {"103", "clip_z_6"} <= set(moments.quarantine["record_id"])
    assert {"0", "1", "2", "5"} <= set(results["video_captions"].valid["caption_id"])
    assert len(results["video_shots"].valid) == 4
    assert set(results["summary_queries"].valid["query_id"]) == {"clip_a_red_circle", "clip_a_q1", "clip_c_q0"}
    for result in results.values():
        result.check_invariant()


# -----------------------------------------------------------------------------
# the command line


def test_cli_load_videos(clips, tmp_path, capsys):
    out = tmp_path / "raw"
    code = main(["load", "videos", "--videos", str(clips), "--qvhighlights", str(FILES["qvhighlights"]),
                 "--charades", str(FILES["charades"]), "--msrvtt", str(FILES["msrvtt"]),
                 "--qfvs", str(FILES["qfvs"]), "--date", "2026-03-01", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"loaded 3 videos -> {out} (dates 2026-03-01 .. 2026-03-01)" in printed
    assert "moment_queries         8" in printed
    assert "qfvs.jsonl                            11       7           4" in printed
    assert "quarantined charades_sta.txt:4 [line.parse]" in printed
    assert "warning: qvhighlights.jsonl line 8" in printed
    assert (out / layout.MANIFEST_FILE).exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="mmpipe load videos: .* holds no .mp4 files"):
        main(["load", "videos", "--videos", str(empty), "--out", str(tmp_path / "x")])
