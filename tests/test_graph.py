"""Neighbor pairs: board sampling, co-engagement, time split, and the tiny world's themes."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pandas as pd
import pytest

from mmpipe.graph.pairs import (
    SPLIT_PAIR_COLUMNS,
    PairConfig,
    _sample_band_pairs,
    board_neighbor_pairs,
    build_neighbor_pairs,
    co_engagement_pairs,
    derive_cutoff_date,
    split_pairs_by_time,
)
from mmpipe.layout import truth_path


def _board_pins(sizes: dict[str, int], pin_offset: int = 0) -> pd.DataFrame:
    """Boards of the given sizes; pins are disjoint across boards unless offsets overlap."""
    rows, next_pin = [], pin_offset
    for board_id, size in sizes.items():
        for _ in range(size):
            rows.append(
                {"board_id": board_id, "pin_id": f"p{next_pin:06d}", "saved_at": "2026-01-01"}
            )
            next_pin += 1
    return pd.DataFrame(rows, columns=["board_id", "pin_id", "saved_at"])


def _pins(pin_ids, created_at) -> pd.DataFrame:
    if isinstance(created_at, str):
        created_at = [created_at] * len(pin_ids)
    return pd.DataFrame({"pin_id": list(pin_ids), "image_path": "x.jpg", "created_at": created_at})


def _unordered(pairs: pd.DataFrame) -> set[tuple]:
    return set(zip(pairs["pin_a"], pairs["pin_b"]))


def _assert_well_formed(pairs: pd.DataFrame) -> None:
    assert (pairs["pin_a"] != pairs["pin_b"]).all(), "self pair"
    assert (pairs["pin_a"] < pairs["pin_b"]).all(), "pair not in canonical order"
    assert not pairs.duplicated(["pin_a", "pin_b", "board_id"]).any(), "duplicate pair"


# --- board pairs ---------------------------------------------------------------------


def test_same_seed_gives_identical_pairs_and_other_seeds_differ():
    board_pins = _board_pins({"big": 300, "small": 5})
    first = board_neighbor_pairs(board_pins, PairConfig(seed=3))
    again = board_neighbor_pairs(board_pins.sample(frac=1.0, random_state=1), PairConfig(seed=3))
    pd.testing.assert_frame_equal(first, again)  # row order of the input does not matter either

    other = board_neighbor_pairs(board_pins, PairConfig(seed=4))
    big = lambda pairs: _unordered(pairs[pairs["board_id"] == "big"])  # noqa: E731
    assert big(first) != big(other)
    # A small board has nothing to sample: it is complete under any seed.
    small = lambda pairs: _unordered(pairs[pairs["board_id"] == "small"])  # noqa: E731
    assert small(first) == small(other)


def test_one_board_sample_does_not_depend_on_other_boards():
    alone = board_neighbor_pairs(_board_pins({"big": 300}), PairConfig())
    with_others = board_neighbor_pairs(
        pd.concat([_board_pins({"big": 300}), _board_pins({"other": 50}, pin_offset=10_000)]),
        PairConfig(),
    )
    assert _unordered(alone) == _unordered(with_others[with_others["board_id"] == "big"])


def test_cap_holds_per_board_and_small_boards_are_complete():
    cfg = PairConfig(max_pairs_per_board=30)
    board_pins = _board_pins({"tiny": 2, "small": 8, "exact": 9, "big": 100, "single": 1})
    pairs = board_neighbor_pairs(board_pins, cfg)
    per_board = pairs.groupby("board_id").size().to_dict()

    assert per_board["tiny"] == 1
    assert per_board["small"] == 28  # 8 pins: 28 pairs, under the cap, all taken
    assert per_board["exact"] == 30  # 9 pins: 36 pairs, sampled down to the cap
    assert per_board["big"] == 30
    assert "single" not in per_board  # one pin makes no pair

    small_pins = sorted(board_pins.loc[board_pins["board_id"] == "small", "pin_id"])
    small_pairs = _unordered(pairs[pairs["board_id"] == "small"])
    assert small_pairs == set(itertools.combinations(small_pins, 2))
    _assert_well_formed(pairs)


def test_pairs_are_canonical_unique_and_really_share_their_board():
    # Overlapping boards, pins saved twice to one board, unsorted input, a null row.
    rng = np.random.default_rng(0)
    board_pins = pd.DataFrame(
        {
            "board_id": rng.choice(["b1", "b2", "b3", "b4"], 2000),
            "pin_id": [f"p{k:04d}" for k in rng.integers(0, 300, 2000)],
            "saved_at": "2026-01-01",
        }
    )
    board_pins.loc[5, "pin_id"] = None
    pairs = board_neighbor_pairs(board_pins, PairConfig(max_pairs_per_board=500))

    _assert_well_formed(pairs)
    assert pairs["source"].eq("board").all()
    assert pairs.groupby("board_id").size().max() == 500
    memberships = set(zip(board_pins["board_id"], board_pins["pin_id"]))
    for board_id, pin_a, pin_b in zip(pairs["board_id"], pairs["pin_a"], pairs["pin_b"]):
        assert (board_id, pin_a) in memberships and (board_id, pin_b) in memberships


def test_sampling_is_uniform_over_a_boards_pairs():
    # 6 pins have 15 pairs; drawing 3 at a time 1000 times, each pair should come up about
    # 200 times. Bounds are wide (about 5 standard deviations).
    rng = np.random.default_rng(0)
    counts: dict[tuple, int] = {}
    for _ in range(1000):
        first, second, capped = _sample_band_pairs(np.full(6, 6), 3, rng)
        assert capped
        for pair in zip(first.tolist(), second.tolist()):
            counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) == set(itertools.combinations(range(6), 2))
    assert all(140 <= count <= 260 for count in counts.values()), counts


def test_band_sampler_decodes_every_pair_exactly_once():
    # Item i may pair with items before partner_end[i]; some items have no partners.
    partner_end = np.array([3, 3, 3, 6, 6, 6, 7])
    first, second, capped = _sample_band_pairs(partner_end, 100, np.random.default_rng(0))
    expected = [(i, j) for i in range(7) for j in range(i + 1, partner_end[i])]
    assert not capped and list(zip(first.tolist(), second.tolist())) == expected


def test_huge_board_is_fast_and_capped():
    rng = np.random.default_rng(1)
    pin_ids = rng.permutation(100_000)[:5000]  # integer ids work as well as strings
    board_pins = pd.DataFrame({"board_id": "huge", "pin_id": pin_ids, "saved_at": "2026-01-01"})
    started = time.perf_counter()
    pairs = board_neighbor_pairs(board_pins, PairConfig())
    assert time.perf_counter() - started < 1.0
    assert len(pairs) == 200
    _assert_well_formed(pairs)
    assert set(pairs["pin_a"]).union(pairs["pin_b"]) <= set(pin_ids.tolist())


def test_empty_input_gives_empty_frame_with_columns():
    empty = board_neighbor_pairs(_board_pins({}), PairConfig())
    assert list(empty.columns) == ["pin_a", "pin_b", "board_id", "source"] and len(empty) == 0


# --- co-engagement -----------------------------------------------------------------------


def _interactions(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "pin_id", "date", "clicked"])
    return frame.assign(impression_id=[f"i{k}" for k in range(len(frame))], position=0)


def test_co_engagement_pairs_only_clicked_pins_of_the_same_user():
    interactions = _interactions(
        [
            ("u1", "pA", "2026-01-01", 1),
            ("u1", "pB", "2026-01-02", 1),
            ("u1", "pC", "2026-01-02", 0),  # shown, not clicked
            ("u1", "pA", "2026-01-03", 1),  # a repeat click is not a self pair
            ("u2", "pC", "2026-01-01", 1),
            ("u2", "pD", "2026-01-05", 1),
            ("u3", "pE", "2026-01-01", 1),  # one click: no pair
        ]
    )
    pairs = co_engagement_pairs(interactions, PairConfig())
    assert _unordered(pairs) == {("pA", "pB"), ("pC", "pD")}
    assert pairs["source"].eq("co_engagement").all()
    assert pairs["board_id"].isna().all()


def test_co_engagement_is_capped_per_user_and_respects_the_window():
    days = [f"2026-01-{day:02d}" for day in range(1, 31)]
    heavy_user = [("heavy", f"p{k:03d}", days[k % 30], 1) for k in range(60)]
    light_user = [("light", f"q{k}", days[0], 1) for k in range(4)]
    interactions = _interactions(heavy_user + light_user)

    pairs = co_engagement_pairs(interactions, PairConfig(max_pairs_per_user=20))
    _assert_well_formed(pairs)
    heavy = pairs[pairs["pin_a"].str.startswith("p")]
    light = pairs[pairs["pin_a"].str.startswith("q")]
    assert len(heavy) == 20 and len(light) == 6  # 4 pins: 6 pairs, all kept

    windowed = co_engagement_pairs(
        interactions, PairConfig(max_pairs_per_user=1000, co_engagement_window_days=2)
    )
    first_click = {pin: pd.Timestamp(date) for _, pin, date, _ in heavy_user + light_user}
    gaps = [abs((first_click[a] - first_click[b]).days) for a, b in _unordered(windowed)]
    assert max(gaps) == 2
    # Heavy user: 2 pins a day for 30 days, so 30 same-day pairs + 29*4 one day apart + 28*4 two
    # days apart = 258 pairs (of 1770 without the window); the light user adds its 6.
    assert len(windowed) == 258 + 6


# --- time split ----------------------------------------------------------------------------


def test_split_by_time_sends_any_pair_touching_the_cutoff_to_val():
    pins = _pins(
        ["old1", "old2", "cut", "new"], ["2026-01-01", "2026-01-09", "2026-01-10", "2026-01-20"]
    )
    pairs = pd.DataFrame(
        {
            "pin_a": ["old1", "cut", "new", "old1", "ghost"],
            "pin_b": ["old2", "old1", "old2", "new", "old1"],
            "board_id": "b",
            "source": "board",
        }
    )
    split = split_pairs_by_time(pairs, pins, "2026-01-10")
    # before + before = train; on the cutoff day or after = val; an unknown pin = val
    assert split["split"].tolist() == ["train", "val", "val", "val", "val"]


def test_cutoff_is_derived_from_the_last_fifth_of_dates():
    dates = [f"2026-01-{day:02d}" for day in range(1, 31)]
    assert derive_cutoff_date(_pins(range(30), dates)) == "2026-01-25"
    assert derive_cutoff_date(_pins(range(10), dates[:10])) == "2026-01-09"
    assert derive_cutoff_date(_pins(range(2), dates[:2])) == "2026-01-02"


# --- everything together ----------------------------------------------------------------------


def test_build_neighbor_pairs_combines_dedups_sorts_and_reports():
    board_pins = pd.concat(
        [
            _board_pins({"b1": 4}),
            _board_pins({"b2": 3}, pin_offset=2),  # shares p000002, p000003 with b1
            pd.DataFrame({"board_id": ["b1"], "pin_id": ["p000000"], "saved_at": ["2026-01-02"]}),
            pd.DataFrame({"board_id": ["b1"], "pin_id": ["unknown"], "saved_at": ["2026-01-02"]}),
        ]
    )
    pin_ids = [f"p{k:06d}" for k in range(5)]
    pins = _pins(pin_ids, ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"])
    interactions = _interactions(
        [
            ("u1", "p000000", "2026-01-04", 1),
            ("u1", "p000004", "2026-01-05", 1),
            ("u2", "p000000", "2026-01-04", 1),
            ("u2", "p000004", "2026-01-06", 1),  # same pair from a second user: kept once
            ("u2", "unknown", "2026-01-06", 1),
        ]
    )
    cfg = PairConfig(cutoff_date="2026-01-03")
    pairs, stats = build_neighbor_pairs(pins, board_pins, interactions, cfg)

    assert list(pairs.columns) == SPLIT_PAIR_COLUMNS
    _assert_well_formed(pairs)
    assert "unknown" not in set(pairs["pin_a"]) | set(pairs["pin_b"])
    # b1: 4 pins -> 6 pairs; b2: 3 pins -> 3 pairs (its p2-p3 pair repeats b1's, on another board)
    assert stats["pairs_per_source"] == {"board": 9, "co_engagement": 1}
    assert stats["pairs"] == len(pairs) == 10
    assert pairs["source"].tolist() == ["board"] * 9 + ["co_engagement"]
    assert pairs["board_id"].tolist()[:9] == ["b1"] * 6 + ["b2"] * 3
    board_rows = pairs.iloc[:9]
    assert board_rows.equals(board_rows.sort_values(["board_id", "pin_a", "pin_b"]))
    # created before 2026-01-03: p0, p1, p2 -> pairs among them are train (3 on b1, 0 on b2)
    assert stats["pairs_per_split"] == {"train": 3, "val": 7}
    assert stats["cutoff_date"] == "2026-01-03" and stats["cutoff_derived"] is False
    assert stats["boards"] == 2 and stats["boards_capped"] == 0

    again, _ = build_neighbor_pairs(pins, board_pins, interactions, cfg)
    pd.testing.assert_frame_equal(pairs, again)

    board_only, board_stats = build_neighbor_pairs(
        pins, board_pins, interactions, PairConfig(co_engagement=False)
    )
    assert board_only["source"].eq("board").all()
    assert board_stats["cutoff_derived"] is True


# --- the tiny generated world -----------------------------------------------------------------


def _validated_tables(raw_root):
    """The tiny world's pins, board_pins and interactions after validation."""
    from mmpipe.schemas.validate import validate_world

    # The world's own date range, so out-of-range dates are rejected whatever today is.
    world = json.loads(truth_path(raw_root, "world").read_text())
    results = validate_world(raw_root, min_date=world["start_date"], max_date=world["end_date"])
    return results["pins"].valid, results["board_pins"].valid, results["interactions"].valid


def test_tiny_world_board_pairs_are_mostly_on_theme(tiny_world):
    pins, board_pins, interactions = _validated_tables(tiny_world)
    pairs, stats = build_neighbor_pairs(
        pins, board_pins, interactions, PairConfig(max_pairs_per_board=50)
    )
    _assert_well_formed(pairs)
    assert stats["pairs_per_source"]["board"] > 0
    assert stats["pairs_per_split"]["train"] > 0 and stats["pairs_per_split"]["val"] > 0
    world = json.loads(truth_path(tiny_world, "world").read_text())
    assert stats["cutoff_date"] in world["dates"][1:]

    objects = pd.read_parquet(truth_path(tiny_world, "pin_objects"))
    main_object = objects[objects["object_index"] == 0].set_index("pin_id")
    themes = pd.read_parquet(truth_path(tiny_world, "board_themes"))

    def share_theme(pin_a: str, pin_b: str, board_id: str) -> bool:
        theme = themes[themes["board_id"] == board_id]
        return all(
            main_object.at[pin, attribute] == value
            for pin in (pin_a, pin_b)
            for attribute, value in zip(theme["attribute"], theme["value"])
        )

    board_pairs = pairs[pairs["source"] == "board"]
    has_truth = board_pairs[["pin_a", "pin_b"]].isin(set(main_object.index)).all(axis=1)
    board_pairs = board_pairs[has_truth]
    pair_rows = board_pairs[["pin_a", "pin_b", "board_id"]].itertuples(index=False)
    on_theme = np.mean([share_theme(*row) for row in pair_rows])

    # The same boards' themes against random pin pairs: how often chance alone matches.
    rng = np.random.default_rng(0)
    pin_pool = main_object.index.to_numpy()
    random_pairs = [
        (rng.choice(pin_pool), rng.choice(pin_pool), board_id)
        for board_id in board_pairs["board_id"]
    ]
    by_chance = np.mean([share_theme(*pair) for pair in random_pairs])

    assert on_theme > 0.5, on_theme
    assert on_theme > 2 * by_chance, (on_theme, by_chance)
