"""The generated world: deterministic, well-formed, learnable, and bad exactly where it says."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpipe import layout
from mmpipe.cli import main
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, COLOR_RGB, ObjectSpec
from mmpipe.world.captions import SYNONYMS, choose_mentions, mentioned_values, pin_caption
from mmpipe.world.config import world_config
from mmpipe.world.generate import generate_world
from mmpipe.eval.classification import oracle_auc, roc_auc
from mmpipe.eval.splits import cold_items, date_windows
from mmpipe.world.generate import stream_rng
from mmpipe.world.pins import (
    AFFINITIES_PER_USER,
    CLICK_NOISE_STD,
    DEFECTS,
    POSITION_BIAS,
    VALUE_OFFSETS,
    PinWorld,
    generate_boards,
    generate_interactions,
    generate_pins,
    generate_users,
)


# --------------------------------------------------------------------------------------
# helpers


def file_hashes(root: Path, videos: bool = False) -> dict[str, str]:
    """Content hashes of the tables, truth and images (and, with ``videos``, the MP4s)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (videos or path.suffix != ".mp4")
    }


def raw(root: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(layout.raw_table_path(root, table))


def truth(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(layout.truth_path(root, name))


def world_json(root: Path) -> dict:
    return json.loads(layout.truth_path(root, "world").read_text())


def good_rows(root: Path, table: str) -> pd.DataFrame:
    bad = truth(root, "bad_records")
    bad_positions = set(bad.loc[bad["table"] == table, "row_index"])
    frame = raw(root, table)
    return frame[~frame.index.isin(bad_positions)]


def main_objects(root: Path) -> pd.DataFrame:
    objects = truth(root, "pin_objects")
    return objects[objects["object_index"] == 0].set_index("pin_id")


def is_iso_date(text) -> bool:
    if not isinstance(text, str) or len(text) != 10:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------
# determinism and layout


def test_same_seed_same_bytes_and_regeneration_is_clean(tiny_world, tmp_path):
    out = tmp_path / "raw"
    generate_world(out, "tiny", progress=False)
    reference = file_hashes(tiny_world)
    assert file_hashes(out) == reference
    assert any(name.endswith(".jpg") for name in reference) and "videos.parquet" in reference

    # Regenerating into the same folder replaces the old world, stale files included.
    stale = out / "images" / "p999999.jpg"
    stale.write_bytes(b"stale")
    generate_world(out, world_config("tiny", seed=1), progress=False)
    other = file_hashes(out)
    assert "images/p999999.jpg" not in other
    assert other["pins.parquet"] != reference["pins.parquet"]
    shared_images = [name for name in reference if name.startswith("images/") and name in other]
    assert sum(reference[name] != other[name] for name in shared_images) > 0.9 * len(shared_images)


def test_the_bytes_do_not_depend_on_the_number_of_workers(tiny_world, tmp_path):
    # tiny_world is made on two worker processes; here every image and video on one.
    out = tmp_path / "raw"
    generate_world(out, "tiny", progress=False, workers=1)
    hashes = file_hashes(out, videos=True)
    assert sum(name.endswith(".mp4") for name in hashes) >= 4
    assert hashes == file_hashes(tiny_world, videos=True)


def test_refuses_to_overwrite_data_it_did_not_write(tmp_path):
    user_data = tmp_path / "raw"
    user_data.mkdir()
    (user_data / "pins.parquet").write_bytes(b"someone's data")
    with pytest.raises(FileExistsError):
        generate_world(user_data, "tiny", progress=False)
    assert (user_data / "pins.parquet").read_bytes() == b"someone's data"


def test_tables_and_truth_follow_the_layout(tiny_world):
    for table, columns in layout.RAW_COLUMNS.items():
        assert list(raw(tiny_world, table).columns) == columns, table
    for name in layout.TRUTH_FILES:
        assert layout.truth_path(tiny_world, name).exists(), name
    world = world_json(tiny_world)
    cfg = world_config("tiny")
    assert world["seed"] == 0 and world["scale"] == "tiny"
    assert len(world["dates"]) == cfg.n_days and world["dates"][0] == cfg.start_date
    assert world["cutoff_date"] == world["dates"][cfg.n_days - cfg.cold_days]
    assert world["attributes"] == {name: list(values) for name, values in ATTRIBUTES.items()}
    assert world["counts"] == {table: len(raw(tiny_world, table)) for table in layout.RAW_TABLES}

    pins = good_rows(tiny_world, "pins")
    assert len(pins) == cfg.n_pins and pins["pin_id"].is_unique
    assert (pins["image_path"] == "images/" + pins["pin_id"] + ".jpg").all()
    assert pins["created_at"].between(world["start_date"], world["end_date"]).all()
    interactions = good_rows(tiny_world, "interactions")
    assert world["exploration_impressions"] > 0
    assert len(interactions) == cfg.n_impressions + world["exploration_impressions"]
    assert interactions["position"].between(0, 19).all() and interactions["clicked"].isin([0, 1]).all()


# --------------------------------------------------------------------------------------
# images and captions


def test_good_pin_images_decode_at_the_configured_size(tiny_world):
    side = world_config("tiny").image_size
    for image_path in good_rows(tiny_world, "pins")["image_path"]:
        with Image.open(tiny_world / image_path) as image:
            image.load()
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (side, side)


def test_main_object_colour_shows_in_the_image(tiny_world):
    objects = main_objects(tiny_world)
    solid = objects[(objects["pattern"] == "solid") & objects["size"].isin(["medium", "large"])]
    assert len(solid) >= 10
    palette = np.array(list(COLOR_RGB.values()), dtype=np.float64)
    names = list(COLOR_RGB)
    hits = 0
    for pin_id, obj in solid.iterrows():
        pixels = np.asarray(Image.open(tiny_world / f"images/{pin_id}.jpg"), dtype=np.float64)
        side = pixels.shape[0]
        cx, cy, r = int(obj["x"] * side), int(obj["y"] * side), max(1, int(obj["scale"] * side * 0.12))
        patch = np.median(pixels[cy - r : cy + r + 1, cx - r : cx + r + 1].reshape(-1, 3), axis=0)
        hits += names[int(np.argmin(((palette - patch) ** 2).sum(axis=1)))] == obj["color"]
    assert hits / len(solid) >= 0.85


def test_captions_mention_the_recorded_attributes(tiny_world):
    pins = good_rows(tiny_world, "pins").set_index("pin_id")
    recorded = truth(tiny_world, "caption_attributes").groupby("pin_id")
    found_recorded = n_recorded = false_mentions = 0
    per_pin = []
    for pin_id, row in pins.iterrows():
        expected = set(zip(recorded.get_group(pin_id)["attribute"], recorded.get_group(pin_id)["value"]))
        found = mentioned_values(f"{row['title']} {row['description']}")
        found_recorded += len(found & expected)
        n_recorded += len(expected)
        false_mentions += len(found - expected)
        per_pin.append(len(expected))
        assert row["title"] != row["description"] and len(row["title"]) < len(row["description"])
    # Typos hide a few mentions; nothing the truth does not list is ever named.
    assert found_recorded / n_recorded >= 0.85
    assert false_mentions <= 0.01 * n_recorded
    # About half of the five attributes, and never none.
    assert 2.0 <= np.mean(per_pin) <= 3.0 and min(per_pin) >= 1


def test_caption_text_round_trips_without_typos():
    rng = np.random.default_rng(0)
    mention_counts = {name: 0 for name in ATTRIBUTE_NAMES}
    for _ in range(500):
        spec = ObjectSpec.sample(rng)
        mentioned = choose_mentions(rng)
        title, description = pin_caption(spec, mentioned, rng, typo_rate=0.0)
        expected = {(name, spec.as_dict()[name]) for name in mentioned}
        assert mentioned_values(description) == expected
        assert mentioned_values(title) <= expected and mentioned_values(title)
        for name in mentioned:
            mention_counts[name] += 1
    # Colour and shape are named far more often than outline: boards can fill the gap.
    assert mention_counts["color"] > 2 * mention_counts["outline"]
    phrases = [p for name in SYNONYMS for value in SYNONYMS[name] for p in SYNONYMS[name][value]]
    assert len(phrases) == len(set(phrases))
    assert all(set(SYNONYMS[name]) == set(ATTRIBUTES[name]) for name in ATTRIBUTE_NAMES)


# --------------------------------------------------------------------------------------
# boards


def test_board_saves_follow_their_themes(tiny_world):
    cfg = world_config("tiny")
    objects = main_objects(tiny_world)
    themes = truth(tiny_world, "board_themes").groupby("board_id")
    saves = truth(tiny_world, "board_saves")
    on_theme = [
        all(objects.at[pin_id, attribute] == value for attribute, value in zip(theme["attribute"], theme["value"]))
        for board_id, pin_id in zip(saves["board_id"], saves["pin_id"])
        for theme in [themes.get_group(board_id)]
    ]
    assert (np.array(on_theme) == saves["on_theme"].to_numpy()).all()
    assert abs(np.mean(on_theme) - (1 - cfg.off_theme_rate)) < 0.06
    assert themes.size().between(1, 2).all()

    board_pins = good_rows(tiny_world, "board_pins")
    assert list(board_pins["board_id"]) == list(saves["board_id"]) and list(board_pins["pin_id"]) == list(saves["pin_id"])
    pins = good_rows(tiny_world, "pins").set_index("pin_id")
    boards = good_rows(tiny_world, "boards").set_index("board_id")
    assert (board_pins["saved_at"].to_numpy() >= pins.loc[board_pins["pin_id"], "created_at"].to_numpy()).all()
    assert (board_pins["saved_at"].to_numpy() >= boards.loc[board_pins["board_id"], "created_at"].to_numpy()).all()
    assert saves["pin_id"].nunique() >= 0.6 * cfg.n_pins  # most pins sit on a board
    assert saves.groupby("pin_id").size().max() >= 2  # some on several
    sizes = saves.groupby("board_id").size()
    assert len(sizes) == cfg.n_boards and sizes.max() > sizes.median()


def test_board_sizes_are_heavy_tailed_and_themes_favour_unmentioned_attributes():
    # Ten boards (tiny) are too few to show a tail: run the board stage alone on the small
    # scale's 5000 pins and 200 boards, with main objects drawn as the generator draws them.
    cfg = world_config("small")
    rng = np.random.default_rng(0)
    n = cfg.n_pins
    main_values = np.stack([rng.integers(len(ATTRIBUTES[name]), size=n) for name in ATTRIBUTE_NAMES], axis=1)
    pins = PinWorld(
        pins=pd.DataFrame(), pin_objects=pd.DataFrame(), caption_attributes=pd.DataFrame(),
        bad_records=pd.DataFrame(), pin_ids=[f"p{i + 1:06d}" for i in range(n)],
        days=np.sort(rng.integers(0, cfg.n_days, size=n)), main_values=main_values, n_bad_ids=0,
    )
    boards = generate_boards(cfg.replace(bad_rate=0.0), rng, pins, progress=False)
    sizes = np.sort(boards.board_saves.groupby("board_id").size().to_numpy())
    assert sizes.max() >= 10 * np.median(sizes)
    assert sizes[-len(sizes) // 10 :].sum() >= 0.4 * sizes.sum()  # top 10% of boards: 40%+ of saves
    assert boards.board_saves["pin_id"].nunique() >= 0.8 * n
    assert abs(boards.board_saves["on_theme"].mean() - (1 - cfg.off_theme_rate)) < 0.02
    theme_attributes = boards.board_themes["attribute"].value_counts()
    assert theme_attributes[["pattern", "size", "outline"]].sum() > 1.5 * theme_attributes[["color", "shape"]].sum()


# --------------------------------------------------------------------------------------
# clicks


def test_roc_auc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise)


def test_clicks_follow_the_true_probabilities(tiny_world):
    interactions = good_rows(tiny_world, "interactions").merge(truth(tiny_world, "impressions"), on="impression_id")
    assert len(interactions) == world_config("tiny").n_impressions + world_json(tiny_world)["exploration_impressions"]
    p, clicked = interactions["p_click"].to_numpy(), interactions["clicked"].to_numpy()
    standard_error = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(clicked.mean() - p.mean()) < 4 * standard_error
    # Calibration: in each fifth of predicted probability, clicks match the prediction.
    bins = np.quantile(p, np.linspace(0, 1, 6))
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 4)
    for b in range(5):
        in_bin = which == b
        bin_error = np.sqrt((p[in_bin] * (1 - p[in_bin])).sum()) / in_bin.sum()
        assert abs(clicked[in_bin].mean() - p[in_bin].mean()) < 4 * bin_error + 0.01
    oracle = oracle_auc(tiny_world)
    assert oracle == pytest.approx(roc_auc(p, clicked))
    assert 0.7 <= oracle <= 0.92

    # Dates: on or after the pin's creation and the user's signup.
    pins = good_rows(tiny_world, "pins").set_index("pin_id")
    users = good_rows(tiny_world, "users").set_index("user_id")
    assert (interactions["date"].to_numpy() >= pins.loc[interactions["pin_id"], "created_at"].to_numpy()).all()
    assert (interactions["date"].to_numpy() >= users.loc[interactions["user_id"], "signup_date"].to_numpy()).all()


def test_user_affinities_drive_clicks(tiny_world):
    """Impressions of objects a user likes are clicked more than of those they dislike."""
    affinities = truth(tiny_world, "user_affinities")
    objects = main_objects(tiny_world)
    interactions = good_rows(tiny_world, "interactions")
    lookup = {(u, a, v): w for u, a, v, w in affinities.itertuples(index=False)}
    total = np.array([
        sum(lookup.get((user, name, objects.at[pin, name]), 0.0) for name in ATTRIBUTE_NAMES)
        for user, pin in zip(interactions["user_id"], interactions["pin_id"])
    ])
    clicked = interactions["clicked"].to_numpy()
    assert clicked[total > 0.5].mean() > 2 * clicked[total < -0.5].mean()


def test_users_share_their_community_taste():
    """Every user's affinities are her community's profile plus at most AFFINITIES_PER_USER[1]
    quirks: two members of a community agree on all but a few values, members of different
    communities on far fewer."""
    cfg = world_config("small")
    users = generate_users(cfg, stream_rng(cfg.seed, "users"))
    assert users.community.shape == (cfg.n_users,)
    assert set(np.unique(users.community)) == set(range(cfg.taste_communities))
    nonzero = users.affinity != 0
    for c in range(cfg.taste_communities):
        members = nonzero[users.community == c]
        # the profile: values most members weigh; each member differs from it in <= 2 quirks
        profile = members.mean(axis=0) > 0.5
        assert 3 <= profile.sum() <= 6
        assert ((members ^ profile).sum(axis=1) <= AFFINITIES_PER_USER[1]).all()
    same = users.community[:, None] == users.community[None, :]
    agreement = (nonzero[:, None, :] == nonzero[None, :, :]).mean(axis=2)
    assert agreement[same].mean() > agreement[~same].mean() + 0.1


def test_the_feed_shows_cold_pins_few_times_or_never(tiny_world):
    cutoff = world_json(tiny_world)["cutoff_date"]
    pins = good_rows(tiny_world, "pins")
    interactions = good_rows(tiny_world, "interactions").merge(truth(tiny_world, "impressions"), on="impression_id")
    feed = interactions[~interactions["is_exploration"]]  # exploration: see the tests below
    counts = feed.groupby("pin_id").size().reindex(pins["pin_id"], fill_value=0)
    cold = (pins["created_at"] >= cutoff).to_numpy()
    assert cold.sum() >= 10
    assert counts[cold].max() <= 2 and (counts[cold] == 0).mean() >= 0.3
    assert counts[~cold].mean() > 5
    is_cold = pins.set_index("pin_id").loc[interactions["pin_id"], "created_at"].to_numpy() >= cutoff
    assert (interactions["is_cold_item"].to_numpy() == is_cold).all()


# --------------------------------------------------------------------------------------
# exploration of new pins


def day_index(dates: pd.Series | np.ndarray) -> np.ndarray:
    """Days since the tiny world's start of ISO dates."""
    start = pd.Timestamp(world_config("tiny").start_date)
    return (pd.to_datetime(pd.Series(np.asarray(dates))) - start).dt.days.to_numpy()


def test_exploration_shows_new_pins_the_feed_serves_in_their_first_days(tiny_world):
    cfg, world = world_config("tiny"), world_json(tiny_world)
    pins = good_rows(tiny_world, "pins").set_index("pin_id")
    users = good_rows(tiny_world, "users").set_index("user_id")
    shown = good_rows(tiny_world, "interactions").merge(truth(tiny_world, "impressions"), on="impression_id")
    feed, explored = shown[~shown["is_exploration"]], shown[shown["is_exploration"]]
    assert len(explored) == world["exploration_impressions"] > 0
    assert shown["is_exploration"].is_monotonic_increasing  # the block follows the feed's
    assert explored["impression_id"].min() > feed["impression_id"].max()

    # Only new pins, from the day they exist, within their first cold_days days, to users
    # who have signed up; and only pins the feed serves: a pin it never shows stays unseen.
    age = day_index(explored["date"]) - day_index(pins.loc[explored["pin_id"], "created_at"])
    assert age.min() == 0 and age.max() == cfg.cold_days - 1
    assert (explored["date"].to_numpy() >= users.loc[explored["user_id"], "signup_date"].to_numpy()).all()
    served = set(feed["pin_id"])
    assert explored["pin_id"].isin(served).all()
    assert explored["pin_id"].nunique() >= 0.8 * len(served)  # every pin is new for a while
    assert explored["position"].nunique() == 20

    # exploration_share of each day's impressions.
    per_day = shown.groupby(["date", "is_exploration"]).size().unstack(fill_value=0)
    ratio = cfg.exploration_share / (1 - cfg.exploration_share)
    assert len(per_day) == cfg.n_days
    assert (per_day[True] == np.round(per_day[False] * ratio)).all()


def test_exploration_gives_cold_items_impressions_in_the_test_window(tiny_world):
    """Cold as eval/splits defines it: no impression and no save before the training cut-off."""
    shown = good_rows(tiny_world, "interactions").merge(truth(tiny_world, "impressions"), on="impression_id")
    pins = good_rows(tiny_world, "pins")
    windows = date_windows(shown["date"])
    cold = set(pins["pin_id"][cold_items(pins["pin_id"], shown, good_rows(tiny_world, "board_pins"),
                                         windows.train_end)])
    in_test = shown[(windows.window_of(shown["date"]) == "test") & shown["pin_id"].isin(cold)]
    n_explored = int(in_test["is_exploration"].sum())
    assert n_explored >= 2 * (len(in_test) - n_explored) and n_explored >= 100
    assert in_test["clicked"].sum() >= 10
    # Before the cut-off no cold item is shown, by definition; exploration keeps to it.
    assert not shown.loc[shown["date"] < windows.train_end, "pin_id"].isin(cold).any()


@pytest.fixture(scope="module")
def tiny_stages(tmp_path_factory):
    """The tiny world's pins and users, in memory, for the interaction stage alone."""
    cfg = world_config("tiny")
    pins = generate_pins(tmp_path_factory.mktemp("stages"), cfg, stream_rng(cfg.seed, "pins"), progress=False,
                         workers=1)
    return cfg, pins, generate_users(cfg, stream_rng(cfg.seed, "users"))


def good_impressions(stage) -> pd.DataFrame:
    good = stage.interactions.drop(index=stage.bad_records["row_index"])
    return good.merge(stage.impressions, on="impression_id", validate="one_to_one")


def test_exploration_clicks_come_from_the_click_model(tiny_stages):
    """logit(p_click) less the model's known terms (user bias, position, the pin's quality,
    the user's affinities to its main object) is the model's noise, N(0, CLICK_NOISE_STD),
    for exploration as for the feed: same model, same item quality."""
    cfg, pins, users = tiny_stages
    stage = generate_interactions(cfg, stream_rng(cfg.seed, "interactions"), pins, users)
    shown = good_impressions(stage)
    user = pd.Index(users.user_ids).get_indexer(shown["user_id"])
    pin = pd.Index(pins.pin_ids).get_indexer(shown["pin_id"])
    p = shown["p_click"].to_numpy()
    known = (users.bias[user] + np.asarray(POSITION_BIAS)[shown["position"].to_numpy()] + stage.quality[pin]
             + users.affinity[user[:, None], VALUE_OFFSETS[None, :] + pins.main_values[pin]].sum(axis=1))
    noise = np.log(p / (1 - p)) - known
    for is_exploration in (False, True):
        part = noise[shown["is_exploration"].to_numpy() == is_exploration]
        assert len(part) >= 500
        assert abs(part.mean()) < 4 * CLICK_NOISE_STD / np.sqrt(len(part))
        assert abs(part.std() - CLICK_NOISE_STD) < 0.05


def test_exploration_leaves_the_feed_as_it_was(tiny_stages):
    """Exploration draws from its own stream after the feed, and its rows follow the feed's:
    the world without it is a prefix of the world with it, bad rows included."""
    cfg, pins, users = tiny_stages
    with_it = generate_interactions(cfg, stream_rng(cfg.seed, "interactions"), pins, users)
    without = generate_interactions(cfg.replace(exploration_share=0.0), stream_rng(cfg.seed, "interactions"),
                                    pins, users)
    assert without.n_exploration == 0 and with_it.n_exploration == len(good_impressions(with_it)) - cfg.n_impressions
    assert not without.impressions["is_exploration"].any()
    for name in ("interactions", "impressions", "bad_records"):
        before, after = getattr(without, name), getattr(with_it, name)
        assert len(after) > len(before)
        pd.testing.assert_frame_equal(after.iloc[: len(before)].reset_index(drop=True), before)
    np.testing.assert_array_equal(with_it.quality, without.quality)
    np.testing.assert_array_equal(with_it.activity, without.activity)
    # The exploration block's bad rows are listed at their place in the whole table.
    bad = with_it.bad_records.iloc[len(without.bad_records):]
    assert (bad["row_index"] >= len(without.interactions)).all()
    rows = with_it.interactions.iloc[bad["row_index"]]
    assert list(rows["impression_id"]) == list(bad["record_id"])


# --------------------------------------------------------------------------------------
# bad records


def looks_garbled(text: str) -> bool:
    odd = sum(not ch.isprintable() or unicodedata.category(ch) in ("Co", "Mn", "Cf") for ch in text)
    return len(text) > 0 and odd / len(text) > 0.5


def test_every_listed_bad_record_is_bad(tiny_world):
    bad = truth(tiny_world, "bad_records")
    world = world_json(tiny_world)
    tables = {table: raw(tiny_world, table) for table in layout.RAW_TABLES}
    for table, kinds in DEFECTS.items():
        assert set(bad.loc[bad["table"] == table, "defect"]) == set(kinds), table
    assert not bad.duplicated(["table", "row_index"]).any()

    for record in bad.itertuples(index=False):
        frame = tables[record.table]
        row = frame.iloc[record.row_index]
        id_column = layout.ID_COLUMN[record.table]
        if id_column is not None:
            assert row[id_column] == record.record_id or (pd.isna(row[id_column]) and pd.isna(record.record_id))
        defect = record.defect
        if defect == "duplicate_id":
            earlier = frame.iloc[: record.row_index]
            assert (earlier[id_column] == row[id_column]).any()
        elif defect == "null_id":
            assert pd.isna(row[id_column])
        elif record.table == "pins":
            path = row["image_path"]
            if defect in ("corrupt_jpeg", "not_an_image"):
                assert (tiny_world / path).exists() and not decodes(tiny_world / path)
            elif defect == "missing_image":
                assert not (tiny_world / path).exists()
            elif defect == "path_traversal":
                assert not Path(path).is_absolute()
                with pytest.raises(ValueError):
                    layout.resolve_inside(tiny_world, path)
            elif defect == "absolute_path":
                assert Path(path).is_absolute()
            elif defect == "empty_text":
                assert not row["title"].strip() and not row["description"].strip()
            elif defect == "overlong_description":
                assert len(row["description"]) > 2000
            elif defect == "garbled_caption":
                assert looks_garbled(row["title"]) and looks_garbled(row["description"])
            elif defect == "invalid_date":
                assert not is_iso_date(row["created_at"])
            elif defect == "date_out_of_range":
                assert is_iso_date(row["created_at"])
                assert not world["start_date"] <= row["created_at"] <= world["end_date"]
            else:
                raise AssertionError(f"untested defect {defect}")
        elif defect == "empty_name":
            assert not row["name"].strip()
        elif defect == "unknown_board":
            assert row["board_id"] not in set(tables["boards"]["board_id"])
        elif defect == "unknown_pin":
            assert row["pin_id"] not in set(tables["pins"]["pin_id"])
        elif defect == "unknown_user":
            assert row["user_id"] not in set(tables["users"]["user_id"])
        elif defect == "negative_position":
            assert row["position"] < 0
        elif defect == "invalid_clicked":
            assert row["clicked"] not in (0, 1)
        elif defect == "invalid_date":
            assert not is_iso_date(row["date"])
        elif record.table in ("videos", "moment_queries", "video_captions", "video_shots", "summary_queries"):
            continue  # their defects are checked with the video world (test_world_videos.py)
        else:
            raise AssertionError(f"untested defect {record.table}/{defect}")


def test_good_rows_are_good_and_only_they_reach_the_truth(tiny_world):
    pins = good_rows(tiny_world, "pins")
    assert set(truth(tiny_world, "pin_objects")["pin_id"]) == set(pins["pin_id"])
    assert set(truth(tiny_world, "caption_attributes")["pin_id"]) == set(pins["pin_id"])
    assert pins["title"].str.strip().ne("").all() and pins["description"].str.len().le(2000).all()
    assert not any(looks_garbled(text) for text in pins["title"])
    for table in ("boards", "users", "interactions"):
        ids = good_rows(tiny_world, table)[layout.ID_COLUMN[table]]
        assert ids.notna().all() and ids.is_unique, table
    interactions = good_rows(tiny_world, "interactions")
    assert list(truth(tiny_world, "impressions")["impression_id"]) == list(interactions["impression_id"])
    assert interactions["pin_id"].isin(pins["pin_id"]).all()
    assert interactions["user_id"].isin(good_rows(tiny_world, "users")["user_id"]).all()
    assert interactions["date"].map(is_iso_date).all()
    board_pins = good_rows(tiny_world, "board_pins")
    assert board_pins["pin_id"].isin(pins["pin_id"]).all()
    assert board_pins["board_id"].isin(good_rows(tiny_world, "boards")["board_id"]).all()


# --------------------------------------------------------------------------------------
# command line


def test_cli_generates_a_world_and_bad_rows_leave_the_good_ones_alone(tiny_world, tmp_path, capsys):
    out = tmp_path / "raw"
    code = main(["world", "generate", "--scale", "tiny", "--out", str(out), "--seed", "0", "--bad-rate", "0.1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "oracle AUC" in printed and "interactions" in printed
    world = world_json(out)
    assert world["seed"] == 0 and world["config"]["bad_rate"] == 0.1
    # The feed's block and the exploration block each get their share.
    n_feed, n_explored = world_config("tiny").n_impressions, world["exploration_impressions"]
    assert world["bad_records"]["interactions"] == round(0.1 * n_feed) + round(0.1 * n_explored)
    # More bad rows, same good data: the bad ones are drawn from their own streams.
    for table in ("pins", "boards", "board_pins", "users", "interactions"):
        pd.testing.assert_frame_equal(
            good_rows(out, table).reset_index(drop=True), good_rows(tiny_world, table).reset_index(drop=True)
        )
    pd.testing.assert_frame_equal(truth(out, "impressions"), truth(tiny_world, "impressions"))
    assert oracle_auc(out) == oracle_auc(tiny_world)
    with pytest.raises(SystemExit):
        main(["world", "generate", "--scale", "enormous", "--out", str(tmp_path / "other")])
