"""The true ceiling of "related pins": rank candidates by the world's own save model.

A held-out query pin's relevant items are the pins sharing at least one board with it.
The best any ranking can do in expectation is to order candidates by the probability
that they are saved to one of the query's boards, under the very model the generator
(``mmpipe.world.pins.generate_boards``) and ``world advance`` (``new_board_saves``) drew
the saves from:

- on theme: a pin is saved with probability SAVED_PIN_FRACTION, to
  min(C, 1 + Poisson(EXTRA_BOARDS_PER_PIN)) of the C boards whose theme its main object
  fits, drawn without replacement with probability proportional to board popularity;
- off theme: each board adds Binomial(n_on, r / (1 - r)) saves (r the world's
  off_theme_rate) drawn uniformly among the pins of the same delivery that do not fit it.

Board popularity is not written to the truth, but it is recomputed exactly. The
generated world's comes from the board stage's random stream (themes, then a lognormal
factor on each theme's breadth, then Zipf of the rank); replaying that stream is checked
against the truth twice: the replayed themes must equal ``board_themes`` and the replayed
on-theme picks must equal the truth's on-theme saves (up to the generator's top-up of
boards left with fewer than MIN_ON_THEME_PINS). A day added by ``world advance`` ranks
boards by their saves so far, which the truth's ``board_saves`` gives directly.

Probabilities are exact up to quadrature (below 1e-9) except for two effects left out:
the top-up of nearly empty boards, and the cap of off-theme draws at the number of
non-matching pins. Pins of one delivery with the same main object have the same
probabilities, so they are stored once per (delivery, main object).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import poisson

from mmpipe import layout
from mmpipe.eval.ranking import DEFAULT_CHUNK_SIZE, top_k_from_group_scores
from mmpipe.world.advance import (
    board_themes_matrix,
    committed,
    good_rows,
    read_manifest,
    value_index,
    world_config_of,
)
from mmpipe.world.generate import stream_rng
from mmpipe.world.pins import (
    EXTRA_BOARDS_PER_PIN,
    MIN_ON_THEME_PINS,
    SAVED_PIN_FRACTION,
    PinWorld,
    pick_boards,
    sample_themes,
    split_rng,
    theme_matches,
    zipf_popularity,
)

# Quadrature of the exponential race over log t: the integrand is analytic in a strip
# and decays doubly exponentially, so the plain trapezoid rule on this grid is accurate
# to ~1e-11 (checked against closed forms in the tests).
LOG_T_STEP = 0.2
T_MIN = 1e-11  # weights sum to 1 and P_j >= w_j, so the mass before T_MIN is < T_MIN * P_j
T_TAIL = 40.0  # beyond T_TAIL / lightest weight every clock has rung but for exp(-40)
# Counts of other boards picked first are cut where P(1 + Poisson >= count) < this.
SURVIVAL_CUTOFF = 1e-13


def inclusion_probabilities(weights: np.ndarray, extra_boards: float = EXTRA_BOARDS_PER_PIN) -> np.ndarray:
    """P(board j is among the boards a saved pin goes to), for its C candidate boards.

    The pin takes K = min(C, 1 + Poisson(extra_boards)) boards, drawn one after another
    without replacement with probability proportional to ``weights`` (numpy's
    ``Generator.choice(replace=False, p=...)``, as in ``pick_boards``). That order is the
    order in which independent exponential clocks of rates ``weights`` ring, so board j
    is picked when fewer than K other clocks ring before its own:

        P_j = integral over t of w_j exp(-w_j t) * sum_m P(m others rang by t) P(K > m) dt

    with "others rang by t" a Poisson-binomial count (each other board i has rung with
    probability 1 - exp(-w_i t)), built by a prefix and a suffix recursion over the boards
    so each board's leave-one-out count costs O(counts) instead of O(C).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w <= 0).any():
        raise ValueError("weights must be a non-empty vector of positive draw weights")
    w = w / w.sum()
    n = len(w)
    # survival[m] = P(K > m) = P(Poisson >= m); counts past n - 1 cannot happen.
    n_counts = int(min(n, poisson.isf(SURVIVAL_CUTOFF, extra_boards) + 1))
    survival = poisson.sf(np.arange(n_counts) - 1, extra_boards)
    pair_survival = np.zeros((n_counts, n_counts))  # P(K > a + b), zero where the counts are cut
    for a in range(n_counts):
        pair_survival[a, : n_counts - a] = survival[a:]

    t = np.exp(np.arange(np.log(T_MIN), np.log(T_TAIL / w.min()) + LOG_T_STEP, LOG_T_STEP))
    rang = -np.expm1(-t[:, None] * w[None, :])  # [T, C]: P(clock j has rung by t)
    before = np.empty((n, len(t), n_counts))  # count distribution of the boards before j
    after = np.empty((n, len(t), n_counts))  # ... and after j
    for order, out in ((range(n), before), (range(n - 1, -1, -1), after)):
        counts = np.zeros((len(t), n_counts))
        counts[:, 0] = 1.0
        for j in order:
            out[j] = counts
            shifted = np.zeros_like(counts)
            shifted[:, 1:] = counts[:, :-1] * rang[:, j : j + 1]
            counts = counts * (1.0 - rang[:, j : j + 1]) + shifted
    picked_if_rings_at_t = ((before @ pair_survival) * after).sum(axis=2).T  # [T, C]
    density_in_log_t = (w[None, :] * t[:, None]) * np.exp(-w[None, :] * t[:, None])
    return LOG_T_STEP * (density_in_log_t * picked_if_rings_at_t).sum(axis=0)


@dataclass(frozen=True)
class SaveProbabilities:
    """P(pin saved to board) for every pin and board: pin i's row is ``table[row_of_pin[i]]``.

    Pins of one delivery with equal main objects share a row, which keeps a 100k-pin,
    2000-board world at a few thousand rows instead of 200 million numbers.
    """

    pin_ids: list[str]
    board_ids: list[str]
    row_of_pin: np.ndarray  # [n_pins] row of ``table``
    table: np.ndarray  # [n_rows, n_boards]

    def dense(self) -> np.ndarray:
        """[n_pins, n_boards] probabilities; for small worlds and tests."""
        return self.table[self.row_of_pin]


def cohort_save_probabilities(
    main_values: np.ndarray, themes: np.ndarray, popularity: np.ndarray, off_theme_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Save probabilities of pins whose saves were drawn together (one delivery).

    ``main_values`` [n, n_attributes] value indices of the pins' main objects, ``themes``
    [n_boards, n_attributes] (-1: any value), ``popularity`` [n_boards] draw weights.
    Returns (table [n_distinct_objects, n_boards], row_of_pin [n]). A board's off-theme
    saves are r / (1 - r) times its on-theme ones in expectation, spread evenly over the
    delivery's pins that do not fit it, which is why this needs the whole delivery.
    """
    objects, row_of_pin = np.unique(main_values, axis=0, return_inverse=True)
    row_of_pin = row_of_pin.reshape(-1)
    fits = theme_matches(themes[None, :, :], objects[:, None, :])  # [n_objects, n_boards]
    on_theme = np.zeros(fits.shape)
    for r in range(len(objects)):
        candidates = np.flatnonzero(fits[r])
        if len(candidates):
            on_theme[r, candidates] = SAVED_PIN_FRACTION * inclusion_probabilities(popularity[candidates])
    pins_per_object = np.bincount(row_of_pin, minlength=len(objects)).astype(np.float64)
    expected_on_theme = pins_per_object @ on_theme
    n_not_fitting = pins_per_object @ ~fits
    off_theme = np.divide(
        expected_on_theme * off_theme_rate / (1.0 - off_theme_rate), n_not_fitting,
        out=np.zeros(len(themes)), where=n_not_fitting > 0,
    )
    return np.where(fits, on_theme, np.minimum(off_theme, 1.0)[None, :]), row_of_pin


def generated_popularity(world: dict, main_values: np.ndarray, themes: np.ndarray,
                         on_theme_saves: list[set[int]]) -> np.ndarray:
    """The generated world's board popularity, by replaying its board stage's random stream.

    ``main_values`` are the generated pins' main objects in id order, ``themes`` the
    truth's, ``on_theme_saves[b]`` the truth's on-theme saves of board b (pin rows). The
    replay must give back the themes and then, picking boards with the replayed
    popularity, the on-theme saves (boards the generator topped up to MIN_ON_THEME_PINS
    only gain pins); otherwise the world comes from another version of the generator and
    a ValueError says so rather than ranking by a wrong popularity.
    """
    cfg = world_config_of(world)
    rng = stream_rng(cfg.seed, "boards")
    split_rng(rng)  # generate_boards first splits off the stream of its bad rows
    # sample_themes reads only the number of pins and their main objects.
    replay_pins = PinWorld(
        pins=pd.DataFrame(), pin_objects=pd.DataFrame(), caption_attributes=pd.DataFrame(),
        bad_records=pd.DataFrame(), pin_ids=[""] * len(main_values), days=np.zeros(0, dtype=np.int64),
        main_values=main_values, n_bad_ids=0,
    )
    if not np.array_equal(sample_themes(cfg.n_boards, replay_pins, rng), themes):
        raise ValueError("replaying the generator's board stage does not give back this world's board themes "
                         "(was it generated by another version of mmpipe?)")
    # As generate_boards: broad themes tend to rank high, with a lognormal factor, then Zipf.
    breadth = np.array([theme_matches(theme, main_values).sum() for theme in themes])
    rank = np.empty(len(themes), dtype=np.int64)
    rank[np.argsort(-breadth * rng.lognormal(0.0, 1.0, size=len(themes)), kind="stable")] = np.arange(len(themes))
    popularity = zipf_popularity(rank)
    rng.random(len(themes))  # generate_boards draws the boards' creation days before picking
    for b, (picked, saved) in enumerate(zip(pick_boards(main_values, themes, popularity, rng), on_theme_saves)):
        topped_up = len(picked) < MIN_ON_THEME_PINS and picked <= saved
        if picked != saved and not topped_up:
            raise ValueError(f"replaying the generator's board picks does not give back the on-theme saves of "
                             f"board {b}; this world's board popularity cannot be recomputed")
    return popularity


def saves_so_far_popularity(saves_so_far: np.ndarray) -> np.ndarray:
    """Popularity on a day added by ``world advance``: Zipf of the rank by saves so far,
    ties to the earlier board (``new_board_saves``)."""
    rank = np.empty(len(saves_so_far), dtype=np.int64)
    rank[np.argsort(-np.asarray(saves_so_far), kind="stable")] = np.arange(len(saves_so_far))
    return zipf_popularity(rank)


def save_probabilities(
    pin_objects: pd.DataFrame,
    board_themes: pd.DataFrame,
    board_saves: pd.DataFrame,
    world: dict,
    pin_created: pd.Series | None = None,
) -> SaveProbabilities:
    """P(pin saved to board) for every good pin of a generated (and maybe advanced) world.

    Truth tables as written under ``_truth/``: ``pin_objects`` (main object: object_index
    0), ``board_themes``, ``board_saves`` (board_id, pin_id, on_theme, in delivery order)
    and ``world`` (world.json). ``pin_created`` (created_at by pin_id) is needed only for
    pins added by ``world advance``, each day of which is its own delivery. The generator's
    pins come first in the truth, in id order.
    """
    main = pin_objects[pin_objects["object_index"] == 0]
    pin_ids = list(main["pin_id"])
    main_values = value_index(main)
    board_ids, themes = board_themes_matrix(board_themes)
    cfg = world_config_of(world)
    n_generated = cfg.n_pins
    if len(pin_ids) < n_generated:
        raise ValueError(f"pin_objects has {len(pin_ids)} main objects, the generated world alone {n_generated}")

    board_of_save = pd.Index(board_ids).get_indexer(board_saves["board_id"])
    pin_of_save = pd.Index(pin_ids).get_indexer(board_saves["pin_id"])
    if (board_of_save < 0).any() or (pin_of_save < 0).any():
        raise ValueError("board_saves refers to boards or pins the truth does not have")

    generated_on_theme = board_saves["on_theme"].to_numpy(dtype=bool) & (pin_of_save < n_generated)
    on_theme_saves: list[set[int]] = [set() for _ in board_ids]
    for b, p in zip(board_of_save[generated_on_theme], pin_of_save[generated_on_theme]):
        on_theme_saves[b].add(int(p))
    popularity = generated_popularity(world, main_values[:n_generated], themes, on_theme_saves)

    # Deliveries: the generated world, then one per advanced day (its pins' creation day).
    delivery = np.zeros(len(pin_ids), dtype=np.int64)
    if len(pin_ids) > n_generated:
        if pin_created is None:
            raise ValueError("this world was advanced: pass pin_created for the pins added by world advance")
        created = pd.to_datetime(pin_created.reindex(pin_ids[n_generated:]), format="ISO8601")
        if created.isna().any():
            raise ValueError("pin_created lacks a date for some pins added by world advance")
        delivery[n_generated:] = 1 + pd.factorize(created, sort=True)[0]
    popularities = [popularity]
    saves_of_delivery = np.bincount(delivery[pin_of_save] * len(board_ids) + board_of_save,
                                    minlength=(delivery.max() + 1) * len(board_ids)).reshape(-1, len(board_ids))
    for d in range(1, delivery.max() + 1):
        popularities.append(saves_so_far_popularity(saves_of_delivery[:d].sum(axis=0)))

    tables, row_of_pin = [], np.empty(len(pin_ids), dtype=np.int64)
    n_rows = 0
    for d, popularity_of_day in enumerate(popularities):
        pins_of_day = np.flatnonzero(delivery == d)
        table, rows = cohort_save_probabilities(main_values[pins_of_day], themes, popularity_of_day,
                                                cfg.off_theme_rate)
        tables.append(table)
        row_of_pin[pins_of_day] = n_rows + rows
        n_rows += len(table)
    return SaveProbabilities(pin_ids=pin_ids, board_ids=board_ids, row_of_pin=row_of_pin,
                             table=np.concatenate(tables))


def load_save_probabilities(raw_root: Path) -> SaveProbabilities:
    """``save_probabilities`` of the world at ``raw_root`` (its truth, and its raw pins'
    dates for the days added by ``world advance``), as far as its manifest committed it."""
    root = Path(raw_root)
    manifest = read_manifest(root)
    truth_rows = manifest.get("truth_rows", {})  # absent until a world is first advanced
    truth = {name: committed(pd.read_parquet(layout.truth_path(root, name)), truth_rows.get(name), name)
             for name in ("pin_objects", "board_themes", "board_saves", "bad_records")}
    world = json.loads(layout.truth_path(root, "world").read_text())
    raw_pins = committed(pd.read_parquet(layout.raw_table_path(root, "pins")), manifest["rows"]["pins"], "pins")
    pins = good_rows(raw_pins, truth["bad_records"], "pins")
    return save_probabilities(truth["pin_objects"], truth["board_themes"], truth["board_saves"], world,
                              pin_created=pins.set_index("pin_id")["created_at"])


def board_membership(board_saves: pd.DataFrame, pin_ids: Sequence[str], board_ids: Sequence[str]) -> sp.csr_matrix:
    """[n_pins, n_boards] 0/1: which boards each pin is saved to (saves of unknown ids are ignored)."""
    pin_row = pd.Index(pin_ids).get_indexer(board_saves["pin_id"])
    board_column = pd.Index(board_ids).get_indexer(board_saves["board_id"])
    known = (pin_row >= 0) & (board_column >= 0)
    membership = sp.csr_matrix((np.ones(known.sum()), (pin_row[known], board_column[known])),
                               shape=(len(pin_ids), len(board_ids)))
    membership.data[:] = 1.0  # a pin saved twice to a board is still on it once
    return membership


def board_mate_relevance(membership: sp.csr_matrix, query_rows: np.ndarray, chunk_size: int = 2048) -> sp.csr_matrix:
    """[Q, n_pins] number of boards each pin shares with each query pin (itself excluded):
    the graded relevance of related pins; grade > 0 is a board-mate.

    Built ``chunk_size`` queries at a time: with a few huge boards a query has thousands of
    board-mates (100M entries for 20k queries at 100k pins), and the product's intermediate
    copies of all queries at once held several times that."""
    query_rows = np.asarray(query_rows, dtype=np.int64)
    membership = sp.csr_matrix(membership)
    parts = []
    for start in range(0, len(query_rows), chunk_size):
        rows = query_rows[start:start + chunk_size]
        shared = (membership[rows] @ membership.T).tocoo()
        not_self = shared.col != rows[shared.row]
        parts.append(sp.csr_matrix((shared.data[not_self], (shared.row[not_self], shared.col[not_self])),
                                   shape=shared.shape))
    if not parts:
        return sp.csr_matrix((0, membership.shape[0]))
    return sp.csr_matrix(sp.vstack(parts, format="csr"))


def _board_indicator(query_boards: sp.csr_matrix | Sequence[Sequence[int]], n_boards: int) -> sp.csr_matrix:
    """[Q, n_boards] 0/1 from a sparse matrix or from lists of board columns."""
    if sp.issparse(query_boards):
        indicator = sp.csr_matrix(query_boards, dtype=np.float64, copy=True)
    else:
        lists = list(query_boards)
        rows = np.repeat(np.arange(len(lists)), [len(boards) for boards in lists])
        columns = np.fromiter((b for boards in lists for b in boards), dtype=np.int64, count=len(rows))
        indicator = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(lists), n_boards))
    if indicator.shape[1] != n_boards:
        raise ValueError(f"query boards have {indicator.shape[1]} columns, the world {n_boards} boards")
    indicator.data[:] = 1.0
    return indicator


def ceiling_row_scores(query_boards: sp.csr_matrix | Sequence[Sequence[int]], probs: SaveProbabilities) -> np.ndarray:
    """[Q, n_rows of ``probs.table``] P(a pin of that row is saved to at least one of the
    query's boards): ``ceiling_scores`` before it is spread to the pins sharing a row.

    score = 1 - prod over the query's boards b of (1 - P(candidate saved to b)), treating
    a candidate's boards as independent (the draw without replacement makes them slightly
    negatively correlated). The ceiling sees the query's own boards, which no content
    model does; that is what makes it an upper bound: the best ranking the truth allows.
    """
    indicator = _board_indicator(query_boards, len(probs.board_ids))
    # Sparse products only touch the query's boards, so a probability of 1 (log 0) is safe.
    with np.errstate(divide="ignore"):
        log_missed = np.log1p(-probs.table)  # [n_rows, n_boards]
    missed_all = np.asarray(indicator @ log_missed.T)  # [Q, n_rows]
    return -np.expm1(missed_all)


def ceiling_scores(query_boards: sp.csr_matrix | Sequence[Sequence[int]], probs: SaveProbabilities) -> np.ndarray:
    """[Q, n_pins] P(candidate is saved to at least one of the query's boards)
    (``ceiling_row_scores`` of each pin's row); for small worlds and tests."""
    return ceiling_row_scores(query_boards, probs)[:, probs.row_of_pin]


def related_pins_ceiling(
    query_rows: np.ndarray,
    query_boards: sp.csr_matrix | Sequence[Sequence[int]],
    probs: SaveProbabilities,
    k: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """[Q, k] pin rows ranked by ``ceiling_scores``, the query pin itself excluded.

    Pins sharing a row of ``probs.table`` score alike, so the ranking works on those rows
    (a few thousand at 100k pins) and never forms the [Q, n_pins] scores."""
    query_rows = np.asarray(query_rows, dtype=np.int64)
    indicator = _board_indicator(query_boards, len(probs.board_ids))
    if indicator.shape[0] != len(query_rows):
        raise ValueError(f"{len(query_rows)} query rows but {indicator.shape[0]} queries' boards")
    return top_k_from_group_scores(lambda start, stop: ceiling_row_scores(indicator[start:stop], probs),
                                   probs.row_of_pin, len(query_rows), k, exclude=query_rows, chunk_size=chunk_size)
