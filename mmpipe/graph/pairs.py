"""Pin–pin neighbor pairs for PinCLIP's neighbor-alignment loss.

Two sources of "these pins belong together":

* ``board``: two pins saved to the same board. Boards are heavy-tailed, so each board
  contributes at most ``max_pairs_per_board`` pairs, drawn uniformly from its
  n(n-1)/2 pairs without ever materialising them.
* ``co_engagement``: two pins clicked by the same user, at most ``max_pairs_per_user``
  pairs per user, optionally only clicks within ``co_engagement_window_days`` of each other.

Every pair is canonical (``pin_a < pin_b``), never a self pair, and keeps its ``board_id``
(None for co-engagement) so the downstream pair sampler can avoid in-batch negatives
that share a board with the anchor. Pairs are split by pin creation date: a pair is
``train`` only when both pins were created before the cutoff.

Sampling is deterministic: each board (and each user) gets its own generator seeded from
``seed`` and a CRC32 of its id, so adding one board never changes another's sample.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["pin_a", "pin_b", "board_id", "source"]
SPLIT_PAIR_COLUMNS = [*PAIR_COLUMNS, "split"]

BOARD_SOURCE = "board"
CO_ENGAGEMENT_SOURCE = "co_engagement"
HELD_OUT_DATE_FRACTION = 0.2

# Salts keep a board and a user that happen to share an id from sharing a random stream.
_BOARD_STREAM = 0
_USER_STREAM = 1


@dataclass(frozen=True)
class PairConfig:
    max_pairs_per_board: int = 200  # cap: no quadratic blow-up on huge boards
    co_engagement: bool = True  # also pairs of pins clicked by the same user
    max_pairs_per_user: int = 20
    # None: pair any two of a user's clicks; N: only clicks at most N days apart.
    co_engagement_window_days: int | None = None
    cutoff_date: str | None = None  # pins created on/after this date are held out; None = derive
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_pairs_per_board < 0 or self.max_pairs_per_user < 0:
            raise ValueError("pair caps must be non-negative")
        if self.co_engagement_window_days is not None and self.co_engagement_window_days < 0:
            raise ValueError("co_engagement_window_days must be non-negative or None")


def _group_rng(seed: int, stream: int, group_id) -> np.random.Generator:
    # zlib.crc32, unlike hash(), is stable across processes (PYTHONHASHSEED).
    return np.random.default_rng([seed, stream, zlib.crc32(str(group_id).encode("utf-8"))])


def _sample_band_pairs(
    partner_end: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Up to ``cap`` distinct index pairs (i, j) with i < j < partner_end[i], uniformly.

    Items are in a fixed order; item i may pair with every later item before
    ``partner_end[i]`` (``n`` for "all later items", a date window otherwise). The
    eligible pairs are numbered row by row, distinct numbers are drawn, and each number
    is decoded back to (i, j) with a prefix sum, so memory is O(n + cap), never O(n²).
    Returns (i, j, capped) where ``capped`` says whether the cap cut anything off.
    """
    n = len(partner_end)
    partners_per_item = partner_end - np.arange(n, dtype=np.int64) - 1
    total = int(partners_per_item.sum())
    capped = total > cap
    if capped:
        # Generator.choice without replacement uses Floyd's algorithm for a small sample
        # of a large range, so this stays cheap for a board of 100k pins (5e9 pairs).
        pair_numbers = np.sort(rng.choice(total, size=cap, replace=False, shuffle=False))
    else:
        pair_numbers = np.arange(total, dtype=np.int64)
    first_pair_of_item = np.cumsum(partners_per_item) - partners_per_item
    # The last item whose first pair number is <= k owns pair k (items with no partners
    # share their start with the next item, and side="right" skips past them).
    i = np.searchsorted(first_pair_of_item, pair_numbers, side="right") - 1
    j = i + 1 + (pair_numbers - first_pair_of_item[i])
    return i, j, capped


def _grouped_pairs(
    group_ids: np.ndarray,
    pin_ids: np.ndarray,
    cap: int,
    seed: int,
    stream: int,
    dates: np.ndarray | None = None,
    window_days: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sample capped pairs of distinct pins within each group.

    Rows must be sorted by (group, pin) with duplicates removed. Because pins are sorted
    within a group and i < j, every pair comes out canonical (pin_a < pin_b). With
    ``window_days``, pins may only pair with pins whose date is at most that many days
    apart (``dates``: one datetime64[D] per row).
    Returns (pin_a, pin_b, group of each pair, number of groups whose cap bit).
    """
    boundaries = np.flatnonzero(group_ids[1:] != group_ids[:-1]) + 1
    starts = np.concatenate([[0], boundaries]) if len(group_ids) else np.empty(0, np.int64)
    ends = np.concatenate([boundaries, [len(group_ids)]]) if len(group_ids) else starts

    first_index_parts, second_index_parts, group_parts = [], [], []
    groups_capped = 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        n = end - start
        if n < 2:
            continue
        if window_days is None:
            partner_end = np.full(n, n, dtype=np.int64)
        else:
            # Within the window, order by date so each pin's partners are a contiguous run.
            order = np.argsort(dates[start:end], kind="stable")
            group_dates = dates[start:end][order]
            partner_end = np.searchsorted(
                group_dates, group_dates + np.timedelta64(window_days, "D"), side="right"
            )
        i, j, capped = _sample_band_pairs(
            partner_end, cap, _group_rng(seed, stream, group_ids[start])
        )
        groups_capped += capped
        if window_days is not None:
            i, j = order[i], order[j]
            i, j = np.minimum(i, j), np.maximum(i, j)
        first_index_parts.append(start + i)
        second_index_parts.append(start + j)
        group_parts.append(np.full(len(i), start, dtype=np.int64))

    if not first_index_parts:
        empty = pin_ids[:0]
        return empty, empty, group_ids[:0], groups_capped
    first = np.concatenate(first_index_parts)
    second = np.concatenate(second_index_parts)
    group_rows = np.concatenate(group_parts)
    return pin_ids[first], pin_ids[second], group_ids[group_rows], groups_capped


def _sorted_unique_members(
    frame: pd.DataFrame, group_column: str, extra: list[str]
) -> pd.DataFrame:
    """Rows with a group and a pin, one per (group, pin), sorted by group then pin."""
    members = frame[[group_column, "pin_id", *extra]].dropna(subset=[group_column, "pin_id"])
    members = members.sort_values([group_column, "pin_id", *extra], kind="stable")
    return members.drop_duplicates([group_column, "pin_id"], keep="first").reset_index(drop=True)


def _empty_pairs(pin_dtype, board_dtype) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pin_a": pd.Series([], dtype=pin_dtype),
            "pin_b": pd.Series([], dtype=pin_dtype),
            "board_id": pd.Series([], dtype=board_dtype),
            "source": pd.Series([], dtype="str"),
        }
    )


def _board_neighbor_pairs_counted(
    board_pins: pd.DataFrame, cfg: PairConfig
) -> tuple[pd.DataFrame, int, int]:
    members = _sorted_unique_members(board_pins, "board_id", [])
    pin_a, pin_b, board_id, boards_capped = _grouped_pairs(
        members["board_id"].to_numpy(),
        members["pin_id"].to_numpy(),
        cfg.max_pairs_per_board,
        cfg.seed,
        _BOARD_STREAM,
    )
    if len(pin_a) == 0:
        pairs = _empty_pairs(board_pins["pin_id"].dtype, board_pins["board_id"].dtype)
    else:
        pairs = pd.DataFrame(
            {"pin_a": pin_a, "pin_b": pin_b, "board_id": board_id, "source": BOARD_SOURCE}
        )
    return pairs, members["board_id"].nunique(), boards_capped


def board_neighbor_pairs(board_pins: pd.DataFrame, cfg: PairConfig) -> pd.DataFrame:
    """Pairs of pins saved to the same board: pin_a, pin_b, board_id, source="board".

    A pin saved twice to one board counts once; rows with a null board or pin are ignored.
    """
    return _board_neighbor_pairs_counted(board_pins, cfg)[0]


def _clicks(interactions: pd.DataFrame) -> pd.DataFrame:
    return interactions[interactions["clicked"] == 1]


def _co_engagement_pairs_counted(
    interactions: pd.DataFrame, cfg: PairConfig
) -> tuple[pd.DataFrame, int]:
    window_days = cfg.co_engagement_window_days
    clicks = _clicks(interactions)
    if window_days is None:
        members = _sorted_unique_members(clicks, "user_id", [])
        dates = None
    else:
        clicks = clicks.assign(date=pd.to_datetime(clicks["date"], format="ISO8601").dt.normalize())
        # Repeat clicks on one pin collapse to the first, so the window measures first clicks.
        members = _sorted_unique_members(clicks, "user_id", ["date"])
        dates = members["date"].to_numpy().astype("datetime64[D]")
    pin_a, pin_b, _, users_capped = _grouped_pairs(
        members["user_id"].to_numpy(),
        members["pin_id"].to_numpy(),
        cfg.max_pairs_per_user,
        cfg.seed,
        _USER_STREAM,
        dates=dates,
        window_days=window_days,
    )
    if len(pin_a) == 0:
        return _empty_pairs(interactions["pin_id"].dtype, object), users_capped
    pairs = pd.DataFrame(
        {
            "pin_a": pin_a,
            "pin_b": pin_b,
            "board_id": pd.Series([None] * len(pin_a), dtype=object),
            "source": CO_ENGAGEMENT_SOURCE,
        }
    )
    return pairs, users_capped


def co_engagement_pairs(interactions: pd.DataFrame, cfg: PairConfig) -> pd.DataFrame:
    """Pairs of distinct pins clicked (clicked == 1) by the same user, capped per user.

    Columns pin_a, pin_b, board_id (None), source="co_engagement".
    """
    return _co_engagement_pairs_counted(interactions, cfg)[0]


def _creation_dates(pins: pd.DataFrame) -> pd.Series:
    """created_at per pin_id as a normalized timestamp (accepts ISO strings or datetimes)."""
    created = pd.to_datetime(pins["created_at"], format="ISO8601").dt.normalize()
    return pd.Series(created.to_numpy(), index=pins["pin_id"].to_numpy()).groupby(level=0).min()


def derive_cutoff_date(
    pins: pd.DataFrame, held_out_fraction: float = HELD_OUT_DATE_FRACTION
) -> str:
    """The first date of the last ``held_out_fraction`` of the distinct creation dates.

    With 30 daily partitions and 0.2 the last 6 days are held out. At least one date is
    always held out, and at least one kept when there are two or more.
    """
    dates = np.sort(_creation_dates(pins).dropna().unique())
    if len(dates) == 0:
        raise ValueError("cannot derive a cutoff date: no pin has a created_at date")
    held_out = max(1, round(len(dates) * held_out_fraction))
    first_held_out = max(len(dates) - held_out, min(1, len(dates) - 1))
    return pd.Timestamp(dates[first_held_out]).strftime("%Y-%m-%d")


def split_pairs_by_time(pairs: pd.DataFrame, pins: pd.DataFrame, cutoff_date: str) -> pd.DataFrame:
    """Add ``split``: "train" if both pins were created before ``cutoff_date``, else "val".

    A pin absent from ``pins`` (or without a date) cannot be shown to predate the cutoff,
    so its pairs go to "val".
    """
    created = _creation_dates(pins)
    cutoff = pd.Timestamp(cutoff_date).normalize()
    created_a = pairs["pin_a"].map(created)
    created_b = pairs["pin_b"].map(created)
    # NaT compares False, which sends unknown pins to val.
    both_before = (created_a < cutoff) & (created_b < cutoff)
    split = np.where(both_before.to_numpy(dtype=bool), "train", "val")
    return pairs.assign(split=pd.Series(split, index=pairs.index, dtype="str"))


def build_neighbor_pairs(
    pins: pd.DataFrame,
    board_pins: pd.DataFrame,
    interactions: pd.DataFrame,
    cfg: PairConfig,
) -> tuple[pd.DataFrame, dict]:
    """All neighbor pairs with their split, ready for ``graph/neighbor_pairs.parquet``.

    Only pins present in ``pins`` take part (a pair with a pin that has no image is no
    use to PinCLIP). Pairs are unique per (pin_a, pin_b, board_id): the same two pins on
    two boards give two rows, and a co-engagement pair may repeat a board pair.
    Rows are sorted by source, board_id, pin_a, pin_b.
    """
    started = time.perf_counter()
    # Index lookup rather than Series.isin: isin on arrow strings builds one Python
    # scalar per known pin, which costs seconds at 100k pins.
    known_pins = pd.Index(pins["pin_id"].dropna().unique())
    board_pins = board_pins[known_pins.get_indexer(board_pins["pin_id"]) >= 0]
    board_pairs, boards_total, boards_capped = _board_neighbor_pairs_counted(board_pins, cfg)
    parts = [board_pairs]
    users_capped = 0
    if cfg.co_engagement:
        clicks = _clicks(interactions)  # first: far fewer rows to check against known pins
        clicks = clicks[known_pins.get_indexer(clicks["pin_id"]) >= 0]
        engagement_pairs, users_capped = _co_engagement_pairs_counted(clicks, cfg)
        parts.append(engagement_pairs)

    pairs = pd.concat([part for part in parts if len(part)] or parts[:1], ignore_index=True)
    pairs = pairs.drop_duplicates(["pin_a", "pin_b", "board_id"])
    pairs = pairs.sort_values(
        ["source", "board_id", "pin_a", "pin_b"], na_position="last", kind="stable"
    ).reset_index(drop=True)

    cutoff_derived = cfg.cutoff_date is None
    cutoff = derive_cutoff_date(pins) if cutoff_derived else cfg.cutoff_date
    pairs = split_pairs_by_time(pairs, pins, cutoff)[SPLIT_PAIR_COLUMNS]

    by_source_split = pairs.groupby(["source", "split"]).size()
    stats = {
        "pairs": len(pairs),
        "pairs_per_source": {
            source: int(pairs["source"].eq(source).sum())
            for source in (BOARD_SOURCE, CO_ENGAGEMENT_SOURCE)
        },
        "pairs_per_split": {
            split: int(pairs["split"].eq(split).sum()) for split in ("train", "val")
        },
        "pairs_per_source_split": {
            f"{source}/{split}": int(count) for (source, split), count in by_source_split.items()
        },
        "boards": boards_total,
        "boards_capped": boards_capped,
        "users_capped": users_capped,
        "pins_paired": int(pd.concat([pairs["pin_a"], pairs["pin_b"]]).nunique()),
        "cutoff_date": cutoff,
        "cutoff_derived": cutoff_derived,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return pairs, stats
