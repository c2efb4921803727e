"""What the semantic-ID system trains and is judged on: PinCLIP's fused pin embeddings (the
stored ``pin_embeddings``), the pins' date windows, and co-engagement pairs by window.

* **Windows** (:mod:`mmpipe.eval.splits`, over the pins' creation dates): the codebook
  trains on pins created in the train window; the validation window's pins drive early
  stopping and the gate; the test window's are the report.
* **Co-engagement pairs** (:func:`mmpipe.graph.pairs.co_engagement_pairs`): two pins one
  user clicked at most ``window_days`` apart. Training pairs come from the clicks dated in
  the train window only; each held-out window's pairs come from its own clicks, minus any
  pair training saw, so the encoder is scored on behavior it never learned from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmpipe.eval.splits import DateWindows, date_windows
from mmpipe.graph.pairs import PairConfig, co_engagement_pairs

TRAIN, VALIDATION, TEST = "train", "validation", "test"
HELD_OUT = (VALIDATION, TEST)


@dataclass(frozen=True)
class PairSettings:
    # "Close in time": clicks of one user at most this many days apart (the world's users
    # keep their preferences, so a week still pairs items of one taste).
    window_days: int = 7
    # Per-user caps: a heavy clicker must not dominate the pairs (the graph's rule).
    max_train_pairs_per_user: int = 200
    max_eval_pairs_per_user: int = 50
    seed: int = 0


@dataclass
class SemanticIDInputs:
    ids: list[str]  # every embedded pin, in embedding-file (day) order
    fused: np.ndarray  # [N, D] float32: PinCLIP's fused embedding of each pin
    created_at: np.ndarray  # [N] ISO dates
    window: np.ndarray  # [N] "train" | "validation" | "test" by creation date
    windows: DateWindows
    pairs: dict[str, np.ndarray]  # window -> [P, 2] rows of co-engaged pins
    pinclip_version: str  # the PinCLIP version that embedded every pin

    def rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.window == window)

    @property
    def dim(self) -> int:
        return int(self.fused.shape[1])


def pair_rows(pairs: pd.DataFrame, row_of: pd.Index) -> np.ndarray:
    """[P, 2] rows of the pairs whose pins are both embedded."""
    a, b = row_of.get_indexer(pairs["pin_a"].astype(str)), row_of.get_indexer(pairs["pin_b"].astype(str))
    keep = (a >= 0) & (b >= 0)
    return np.stack([a[keep], b[keep]], 1).astype(np.int64)


def window_pairs(interactions: pd.DataFrame, windows: DateWindows, row_of: pd.Index, settings: PairSettings
                 ) -> dict[str, np.ndarray]:
    """Co-engagement pairs of each window's clicks (see the module doc), as embedding rows."""
    interactions = interactions.assign(pin_id=interactions["pin_id"].astype(str),
                                       user_id=interactions["user_id"].astype(str))
    by_window = windows.window_of(interactions["date"])
    pairs = {}
    for window in (TRAIN, *HELD_OUT):
        cap = settings.max_train_pairs_per_user if window == TRAIN else settings.max_eval_pairs_per_user
        config = PairConfig(co_engagement=True, max_pairs_per_user=cap,
                            co_engagement_window_days=settings.window_days, seed=settings.seed)
        pairs[window] = pair_rows(co_engagement_pairs(interactions[by_window == window], config), row_of)
    seen = {tuple(pair) for pair in pairs[TRAIN].tolist()}
    for window in HELD_OUT:
        fresh = [tuple(pair) not in seen for pair in pairs[window].tolist()]
        pairs[window] = pairs[window][np.asarray(fresh, dtype=bool)] if len(fresh) else pairs[window]
    return pairs


def semantic_id_inputs(pins: pd.DataFrame, interactions: pd.DataFrame, ids: list[str], fused: np.ndarray,
                       model_versions: list[str], settings: PairSettings = PairSettings(),
                       windows: DateWindows | None = None) -> SemanticIDInputs:
    """The inputs from the validated pins and interactions and the stored fused embeddings
    (``ids``/``fused`` as :func:`mmpipe.embeddings.read_embeddings` returns them, with the
    model version of each file's rows). Pins without an embedding take no part."""
    versions = sorted(set(map(str, model_versions)))
    if len(versions) != 1:
        raise ValueError(f"the pin embeddings come from PinCLIP versions {versions}: one space is needed "
                         "(re-materialize pin_embeddings for every day)")
    created = pins.assign(pin_id=pins["pin_id"].astype(str)).drop_duplicates("pin_id").set_index("pin_id")["created_at"]
    missing = [pin for pin in ids if pin not in created.index]
    if missing:
        raise ValueError(f"{len(missing)} embedded pins are not validated pins, e.g. {missing[:3]}")
    created_at = created.loc[ids].astype(str).to_numpy()
    windows = windows or date_windows(pins["created_at"])
    row_of = pd.Index(ids)
    return SemanticIDInputs(list(ids), np.asarray(fused, np.float32), created_at, windows.window_of(created_at),
                            windows, window_pairs(interactions, windows, row_of, settings), versions[0])
