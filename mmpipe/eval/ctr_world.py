"""The generated world's click model as CTR ceilings, read only by evaluation.

* **Oracle**: the truth's ``p_click`` of each impression (``_truth/impressions``): every
  term of the click model, the per-impression noise included.
* **Content ceiling**: the same logistic model without the item's latent quality and
  without the per-impression noise, σ(user bias + position bias + Σ user–attribute
  affinities of the item's main object): the best any model can do for an item it has
  never seen behaviour of, knowing the user and the item's content perfectly. The user
  biases and the item quality are written to no file; :func:`mmpipe.world.advance.load_world`
  rebuilds them by replaying the generator from its seed (and checks the replay against
  the truth), so nothing is added to ``_truth/`` for this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe import layout
from mmpipe.world.advance import load_world
from mmpipe.world.pins import POSITION_BIAS, VALUE_OFFSETS


def true_click_probabilities(raw_root: Path, impression_ids) -> np.ndarray:
    """The truth's p_click of each impression id (NaN where the truth has none)."""
    truth = pd.read_parquet(layout.truth_path(raw_root, "impressions"), columns=["impression_id", "p_click"])
    return truth.set_index("impression_id")["p_click"].reindex(pd.Index(list(map(str, impression_ids)))).to_numpy()


def content_ceiling_probabilities(raw_root: Path, user_ids, pin_ids, positions) -> np.ndarray:
    """σ(user bias + position bias + Σ affinities of the item's main object) of each
    impression (row-aligned inputs); NaN for a user or pin the world does not know."""
    world = load_world(Path(raw_root))
    user_row = pd.Index(world.users.user_ids).get_indexer(list(map(str, user_ids)))
    pin_row = pd.Index(world.pin_ids).get_indexer(list(map(str, pin_ids)))
    positions = np.asarray(positions, dtype=np.int64)
    known = (user_row >= 0) & (pin_row >= 0) & (positions >= 0) & (positions < len(POSITION_BIAS))
    u, p, k = user_row[known], pin_row[known], positions[known]
    logit = world.users.bias[u] + np.asarray(POSITION_BIAS)[k]
    logit = logit + world.users.affinity[u[:, None], VALUE_OFFSETS[None, :] + world.main_values[p]].sum(axis=1)
    out = np.full(len(user_row), np.nan)
    out[known] = 1.0 / (1.0 + np.exp(-logit))
    return out
