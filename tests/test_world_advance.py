"""`mmpipe world advance`: the next day's delivery is appended, dated, well-formed, bad
where the truth says, deterministic, and leaves everything already delivered untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpipe import layout
from mmpipe.cli import main
from mmpipe.eval.classification import oracle_auc
from mmpipe.world.advance import APPENDED_TABLES, advance, stamp_truth_rows, world_config_of
from mmpipe.world.config import world_config
from mmpipe.world.pins import DEFECTS

CFG = world_config("tiny")
DAY_1, DAY_2 = "2026-01-11", "2026-01-12"  # the tiny world spans 2026-01-01 .. 2026-01-10
DATE_COLUMN = {"pins": "created_at", "board_pins": "saved_at", "interactions": "date", "videos": "created_at"}


# --------------------------------------------------------------------------------------
# helpers and fixtures


def copy_world(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def raw(root: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(layout.raw_table_path(root, table))


def truth(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(layout.truth_path(root, name))


def good_rows(root: Path, table: str) -> pd.DataFrame:
    bad = truth(root, "bad_records")
    frame = raw(root, table)
    return frame[~frame.index.isin(set(bad.loc[bad["table"] == table, "row_index"]))]


def appended_rows(before: Path, after: Path, table: str, good_only: bool = True) -> pd.DataFrame:
    frame = good_rows(after, table) if good_only else raw(after, table)
    return frame[frame.index >= len(raw(before, table))]


def manifest(root: Path) -> dict:
    return json.loads((root / layout.MANIFEST_FILE).read_text())


@pytest.fixture(scope="module")
def one_day(tiny_world, tmp_path_factory) -> Path:
    """The tiny world advanced by one day. Treat it as read-only."""
    root = copy_world(tiny_world, tmp_path_factory.mktemp("one_day") / "raw")
    advance(root, 1, progress=False)
    return root


@pytest.fixture(scope="module")
def two_days(tiny_world, tmp_path_factory) -> Path:
    """The tiny world advanced by two days in one call. Treat it as read-only."""
    root = copy_world(tiny_world, tmp_path_factory.mktemp("two_days") / "raw")
    advance(root, 2, progress=False)
    return root


# --------------------------------------------------------------------------------------
# the new day's rows


def test_new_rows_carry_the_new_date(tiny_world, one_day):
    for table, column in DATE_COLUMN.items():
        new = appended_rows(tiny_world, one_day, table)
        assert len(new) >= 1, table
        assert (new[column] == DAY_1).all(), table
    new_queries = appended_rows(tiny_world, one_day, "moment_queries")
    assert len(new_queries) >= CFG.queries_per_video
    assert new_queries["video_id"].isin(appended_rows(tiny_world, one_day, "videos")["video_id"]).all()
    # Saves and clicks of the day concern the day's pins (saves) or any pin alive (clicks).
    new_pins = set(appended_rows(tiny_world, one_day, "pins")["pin_id"])
    assert set(appended_rows(tiny_world, one_day, "board_pins")["pin_id"]) <= new_pins


def test_ids_are_unique_across_old_and_new_rows(tiny_world, one_day):
    for table in ("pins", "interactions", "videos", "moment_queries"):
        ids = good_rows(one_day, table)[layout.ID_COLUMN[table]]
        assert ids.notna().all() and ids.is_unique, table
    # New pins take ids no old row mentions, not even the unknown pins of old bad rows.
    tables = ("pins", "board_pins", "interactions")
    mentioned = set().union(*(set(raw(tiny_world, table)["pin_id"].dropna()) for table in tables))
    new_ids = appended_rows(tiny_world, one_day, "pins")["pin_id"]
    assert not set(new_ids) & mentioned
    assert list(new_ids) == sorted(new_ids) and all(len(pin_id) == 7 for pin_id in new_ids)
    mentioned_videos = set(raw(tiny_world, "videos")["video_id"]) | set(raw(tiny_world, "moment_queries")["video_id"])
    assert not set(appended_rows(tiny_world, one_day, "videos")["video_id"]) & mentioned_videos


def test_new_pin_images_and_videos_exist_and_decode(tiny_world, one_day):
    new_pins = appended_rows(tiny_world, one_day, "pins")
    for image_path in new_pins["image_path"]:
        with Image.open(one_day / image_path) as image:
            image.load()
            assert image.format == "JPEG" and image.size == (CFG.image_size, CFG.image_size)
    objects = truth(one_day, "pin_objects")
    assert set(objects.loc[objects["pin_id"].isin(new_pins["pin_id"]), "pin_id"]) == set(new_pins["pin_id"])
    captions = truth(one_day, "caption_attributes")
    assert set(new_pins["pin_id"]) <= set(captions["pin_id"])

    for video in appended_rows(tiny_world, one_day, "videos").itertuples():
        with av.open(str(one_day / video.video_path)) as container:
            n_frames = sum(1 for _ in container.decode(video=0))
        assert n_frames == round(video.duration_s * video.fps)
    moments = truth(one_day, "moments")
    for query in appended_rows(tiny_world, one_day, "moment_queries").itertuples():
        true_windows = moments[moments["query_id"] == query.query_id]
        assert set(true_windows["video_id"]) == {query.video_id}
        assert sorted(true_windows[["start_s", "end_s"]].values.tolist()) == sorted(map(list, query.windows))
    new_videos = set(appended_rows(tiny_world, one_day, "videos")["video_id"])
    for table in ("video_captions", "video_shots", "summary_queries"):
        rows = appended_rows(tiny_world, one_day, table)
        assert len(rows) and set(rows["video_id"]) <= new_videos, table


def test_old_rows_files_and_truth_are_untouched(tiny_world, one_day):
    for table in layout.RAW_TABLES:
        old, new = raw(tiny_world, table), raw(one_day, table)
        pd.testing.assert_frame_equal(new.iloc[: len(old)], old, obj=table)
    for name in layout.TRUTH_FILES:
        if name != "world":
            old, new = truth(tiny_world, name), truth(one_day, name)
            pd.testing.assert_frame_equal(new.iloc[: len(old)].reset_index(drop=True), old, obj=name)
    before, after = file_hashes(tiny_world), file_hashes(one_day)
    unchanged = ("images/", "videos/", "boards.parquet", "users.parquet",
                 "_truth/board_themes", "_truth/user_affinities")
    for path, digest in before.items():
        if path.startswith(unchanged):
            assert after[path] == digest, path


def test_board_saves_of_new_pins_follow_their_themes(tiny_world, two_days):
    objects = truth(two_days, "pin_objects")
    main = objects[objects["object_index"] == 0].set_index("pin_id")
    themes = truth(two_days, "board_themes").groupby("board_id")
    saves = truth(two_days, "board_saves").iloc[len(truth(tiny_world, "board_saves")):]
    assert len(saves) >= 20
    fits = [
        all(main.at[pin_id, attribute] == value for attribute, value in zip(theme["attribute"], theme["value"]))
        for board_id, pin_id in zip(saves["board_id"], saves["pin_id"])
        for theme in [themes.get_group(board_id)]
    ]
    assert (np.array(fits) == saves["on_theme"].to_numpy()).all()
    assert np.mean(fits) >= 1 - CFG.off_theme_rate - 0.15
    board_pins = appended_rows(tiny_world, two_days, "board_pins")
    assert list(board_pins["board_id"]) == list(saves["board_id"])
    assert list(board_pins["pin_id"]) == list(saves["pin_id"])
    assert board_pins["board_id"].isin(good_rows(tiny_world, "boards")["board_id"]).all()


def test_interactions_reference_known_users_and_pins_and_keep_the_cold_rule(tiny_world, two_days):
    world = json.loads(layout.truth_path(two_days, "world").read_text())
    new = appended_rows(tiny_world, two_days, "interactions").merge(truth(two_days, "impressions"), on="impression_id")
    assert len(new) == len(appended_rows(tiny_world, two_days, "interactions")) >= 2 * 100
    pins = good_rows(two_days, "pins").set_index("pin_id")
    assert new["user_id"].isin(good_rows(two_days, "users")["user_id"]).all()
    assert new["pin_id"].isin(pins.index).all()
    created = pins.loc[new["pin_id"], "created_at"].to_numpy()
    assert (created <= new["date"].to_numpy()).all()
    assert new["position"].between(0, 19).all() and new["clicked"].isin([0, 1]).all()
    assert abs(new["clicked"].mean() - new["p_click"].mean()) < 0.05

    # The cut-off moves with the end date: pins of the last cold_days days are cold.
    assert world["end_date"] == DAY_2 and world["cutoff_date"] == world["dates"][-CFG.cold_days]
    on_last_day = new[new["date"] == DAY_2]
    cold_when_shown = (pins.loc[on_last_day["pin_id"], "created_at"] >= world["cutoff_date"]).to_numpy()
    assert (on_last_day["is_cold_item"].to_numpy() == cold_when_shown).all()
    # The feed shows cold pins few times or never (exploration: see the next test).
    everything = good_rows(two_days, "interactions").merge(truth(two_days, "impressions"), on="impression_id")
    feed = everything[~everything["is_exploration"]]
    shown = feed.groupby("pin_id").size().reindex(pins.index, fill_value=0)
    cold = (pins["created_at"] >= world["cutoff_date"]).to_numpy()
    assert cold.sum() >= 10 and shown[cold].max() <= 2 and (shown[cold] == 0).mean() >= 0.3
    assert shown[~cold].mean() > 5


def test_each_new_day_explores_the_new_pins_the_feed_serves(tiny_world, two_days):
    """The generator's rule on every advanced day: exploration_share of the day's impressions
    go to pins in their first cold_days days that the feed has shown by then, after the
    feed's rows in the day's log."""
    everything = good_rows(two_days, "interactions").merge(truth(two_days, "impressions"), on="impression_id")
    new = everything.iloc[len(truth(tiny_world, "impressions")):]
    created = good_rows(two_days, "pins").set_index("pin_id")["created_at"]
    ratio = CFG.exploration_share / (1 - CFG.exploration_share)
    for day in (DAY_1, DAY_2):
        rows = new[new["date"] == day]
        feed, explored = rows[~rows["is_exploration"]], rows[rows["is_exploration"]]
        assert len(explored) == round(len(feed) * ratio) > 0
        assert rows["is_exploration"].is_monotonic_increasing
        age = (pd.to_datetime(explored["date"]) - pd.to_datetime(created.loc[explored["pin_id"]].to_numpy())).dt.days
        assert age.between(0, CFG.cold_days - 1).all() and (age == 0).any() and (age == 1).any()
        served = everything.loc[~everything["is_exploration"] & (everything["date"] <= day), "pin_id"]
        assert explored["pin_id"].isin(set(served)).all()
        assert explored["is_cold_item"].all()  # every pin in its first cold_days days is cold
    world = json.loads(layout.truth_path(two_days, "world").read_text())
    assert world["exploration_impressions"] == int(everything["is_exploration"].sum())


def test_a_world_from_before_exploration_is_advanced_without_it():
    config = dataclasses.asdict(CFG)  # as world.json records it
    assert world_config_of({"config": config}) == CFG
    del config["exploration_share"]
    assert world_config_of({"config": config}) == CFG.replace(exploration_share=0.0)


def test_manifest_and_world_json_describe_the_new_window(tiny_world, one_day):
    before, after = manifest(tiny_world), manifest(one_day)
    assert after["producer"] == "mmpipe world advance"
    assert (after["start_date"], after["end_date"], after["n_days"]) == (before["start_date"], DAY_1, CFG.n_days + 1)
    assert after["rows"] == {table: len(raw(one_day, table)) for table in layout.RAW_TABLES}
    assert after["truth_rows"] == {name: len(truth(one_day, name)) for name in after["truth_rows"]}
    assert layout.declared_date_window(one_day) == (before["start_date"], DAY_1)
    world = json.loads(layout.truth_path(one_day, "world").read_text())
    assert world["dates"][-1] == DAY_1 and len(world["dates"]) == CFG.n_days + 1 and world["advanced_days"] == 1
    assert world["counts"] == after["rows"] and world["config"]["n_days"] == CFG.n_days
    assert 0.7 <= oracle_auc(one_day) <= 0.92


def test_each_new_day_brings_bad_rows_listed_in_the_truth(tiny_world, two_days):
    bad = truth(two_days, "bad_records")
    old_bad = truth(tiny_world, "bad_records")
    assert not bad.duplicated(["table", "row_index"]).any()
    new_bad = bad.iloc[len(old_bad):]
    for table in APPENDED_TABLES:
        rows = new_bad[new_bad["table"] == table]
        assert len(rows) >= 2, table  # at least one per day
        assert (rows["row_index"] >= len(raw(tiny_world, table))).all(), table
        frame = raw(two_days, table)
        id_column = layout.ID_COLUMN[table]
        for record in rows.itertuples():
            if id_column is not None and record.defect != "null_id":
                assert frame.iloc[record.row_index][id_column] == record.record_id
    for table in ("pins", "board_pins", "interactions"):
        assert set(new_bad.loc[new_bad["table"] == table, "defect"]) <= set(DEFECTS[table])
    unknown = new_bad[new_bad["defect"] == "unknown_pin"]
    interactions = raw(two_days, "interactions")
    unknown_pins = interactions.iloc[unknown.loc[unknown["table"] == "interactions", "row_index"]]["pin_id"]
    assert not set(unknown_pins) & set(raw(two_days, "pins")["pin_id"])


def test_validation_quarantines_exactly_the_planted_bad_rows(two_days):
    from mmpipe.schemas.validate import validate_world

    bad = truth(two_days, "bad_records")
    for table, result in validate_world(two_days).items():
        assert set(result.quarantine["row_index"]) == set(bad.loc[bad["table"] == table, "row_index"]), table


# --------------------------------------------------------------------------------------
# determinism, days, crashes, command line


def test_same_start_same_bytes_and_two_days_equal_one_day_twice(tiny_world, one_day, two_days, tmp_path):
    again = copy_world(tiny_world, tmp_path / "again")
    advance(again, 1, progress=False)
    assert file_hashes(again) == file_hashes(one_day)
    advance(again, 1, progress=False)
    assert file_hashes(again) == file_hashes(two_days)


def test_two_days_are_two_dates(tiny_world, two_days):
    assert manifest(two_days)["end_date"] == DAY_2
    for table in ("pins", "interactions", "videos"):
        dates = appended_rows(tiny_world, two_days, table)[DATE_COLUMN[table]]
        assert list(dict.fromkeys(dates.sort_values())) == [DAY_1, DAY_2], table
    pins = appended_rows(tiny_world, two_days, "pins")
    assert pins.groupby("created_at")["pin_id"].min()[DAY_2] > pins.groupby("created_at")["pin_id"].max()[DAY_1]


def test_a_crash_before_the_manifest_is_redone_byte_for_byte(tiny_world, one_day, tmp_path):
    root = copy_world(tiny_world, tmp_path / "raw")
    stamp_truth_rows(root)  # what advance does first
    committed = (root / layout.MANIFEST_FILE).read_text()
    advance(root, 1, progress=False)
    (root / layout.MANIFEST_FILE).write_text(committed)  # every table written, manifest not
    assert layout.declared_date_window(root)[1] == "2026-01-10"
    advance(root, 1, progress=False)
    assert file_hashes(root) == file_hashes(one_day)


def test_refuses_what_it_cannot_advance(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError):
        advance(tmp_path / "nothing", 1, progress=False)
    root = copy_world(tiny_world, tmp_path / "raw")
    with pytest.raises(ValueError):
        advance(root, 0, progress=False)
    impressions = truth(root, "impressions")
    impressions.loc[0, "p_click"] += 0.01  # truth the seed does not reproduce
    impressions.to_parquet(layout.truth_path(root, "impressions"), index=False)
    with pytest.raises(ValueError, match="does not reproduce"):
        advance(root, 1, progress=False)
    assert manifest(root)["end_date"] == "2026-01-10"


def test_cli_prints_appended_rows_and_the_window(tiny_world, tmp_path, capsys):
    root = copy_world(tiny_world, tmp_path / "raw")
    assert main(["world", "advance", "--days", "1", "--root", str(root), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert DAY_1 in printed and "2026-01-01 .. 2026-01-11" in printed
    for table in APPENDED_TABLES:
        assert table in printed
    with pytest.raises(SystemExit):
        main(["world", "advance", "--days", "0", "--root", str(root)])
    with pytest.raises(SystemExit):
        main(["world", "advance", "--root", str(tmp_path / "missing"), "--quiet"])
