"""Everything PinCLIP training and evaluation read, assembled once from validated tables."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.eval.pinclip_eval import HoldoutSplit, holdout_split
from mmpipe.models.text_encoder import TextFeatures, default_text_model_dir, encode_texts, load_text_encoder
from mmpipe.train.pin_data import NeighborPairs, PinDataset, caption_text, neighbor_pairs_for_training


@dataclass
class PinCLIPInputs:
    dataset: PinDataset  # every validated pin, images decoded once
    text: TextFeatures  # row i = caption of dataset row i
    split: HoldoutSplit  # by date: train on early days, evaluate on later ones
    train_rows: np.ndarray  # dataset rows of pins created before the cut-off
    pairs: NeighborPairs  # train-split neighbor pairs (both pins before the cut-off)


def caption_key(caption: str) -> str:
    """Content address of a caption: the frozen text tower's output depends on nothing else."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:24]


def encode_pin_captions(
    pins: pd.DataFrame,
    text_model_dir: Path | None = None,
    max_length: int = 48,
    previous: TextFeatures | None = None,
    previous_keys: Sequence[str] = (),
) -> tuple[TextFeatures, list[str], int]:
    """The frozen text tower's cache for every pin caption, in table order.

    Captions whose :func:`caption_key` is among ``previous_keys`` (row i of ``previous``)
    are copied from ``previous`` instead of encoded, so a new day costs its own captions
    only. ``previous`` must come from the same text tower and ``max_length``.
    Returns (features, each row's caption key, how many distinct captions were encoded).
    """
    captions = [caption_text(t, d) for t, d in zip(pins["title"], pins["description"])]
    keys = [caption_key(caption) for caption in captions]
    if previous is not None and len(previous_keys) != len(previous):
        raise ValueError(f"{len(previous_keys)} caption keys for {len(previous)} cached rows")
    cached = {key: row for row, key in enumerate(previous_keys)} if previous is not None else {}
    new_captions = dict(zip(keys, captions))
    for key in cached:
        new_captions.pop(key, None)
    parts, row_of = [], {}
    if cached:
        parts.append(previous)
        row_of.update(cached)
    if new_captions or not parts:
        tokenizer, model = load_text_encoder(text_model_dir)
        parts.append(encode_texts(list(new_captions.values()), tokenizer, model, max_length=max_length))
        offset = len(previous) if cached else 0
        row_of.update({key: offset + i for i, key in enumerate(new_captions)})
    text = TextFeatures.concat(parts).take([row_of[key] for key in keys])
    return text, keys, len(new_captions)


def update_caption_cache(pins: pd.DataFrame, path: Path, max_length: int,
                         text_model_dir: Path | None = None) -> tuple[TextFeatures, dict[str, int]]:
    """Rewrite the caption cache at ``path`` for ``pins``, reusing the rows of captions the
    cache already holds when it was built by the same tower at the same ``max_length``.
    Returns the features and counts (``encoded``, ``reused`` rows)."""
    tower = str(text_model_dir or default_text_model_dir())
    signature = {"max_length": max_length, "text_tower": tower}
    previous, previous_keys = None, []
    if Path(path).exists():
        stored = TextFeatures.load_metadata(path)
        if "caption_keys" in stored and all(stored.get(k) == v for k, v in signature.items()):
            previous, previous_keys = TextFeatures.load(path), stored["caption_keys"]
    text, keys, encoded = encode_pin_captions(pins, text_model_dir, max_length, previous, previous_keys)
    text.save(path, metadata={"rows": len(pins), "caption_keys": keys, **signature})
    reusable = set(previous_keys) if previous is not None else set()
    reused = sum(key in reusable for key in keys)
    return text, {"encoded": encoded, "reused": reused}


def pinclip_inputs(
    pins: pd.DataFrame,
    board_pins: pd.DataFrame,
    interactions: pd.DataFrame,
    neighbor_pairs: pd.DataFrame,
    raw_root: Path,
    text: TextFeatures,
    image_size: int,
    pair_sources: tuple[str, ...] = ("board",),
) -> PinCLIPInputs:
    pins = pins.reset_index(drop=True)
    if len(text) != len(pins):
        raise ValueError(f"text cache has {len(text)} rows but there are {len(pins)} pins; "
                         "rebuild the text features after validation changes")
    dataset = PinDataset(pins, raw_root, image_size).predecode()
    split = holdout_split(pins, interactions)
    # Only pairs whose pins both predate the cut-off: held-out pins stay unseen.
    pairs = neighbor_pairs_for_training(
        neighbor_pairs[neighbor_pairs["source"].isin(pair_sources)], dataset.pin_ids, board_pins,
        split="train",
    )
    return PinCLIPInputs(dataset, text, split, dataset.rows_of(split.train_ids), pairs)
