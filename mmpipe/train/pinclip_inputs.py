"""Everything PinCLIP training and evaluation read, assembled once from validated tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.eval.pinclip_eval import HoldoutSplit, holdout_split
from mmpipe.models.text_encoder import TextFeatures, encode_texts, load_text_encoder
from mmpipe.train.pin_data import NeighborPairs, PinDataset, caption_text, neighbor_pairs_for_training


@dataclass
class PinCLIPInputs:
    dataset: PinDataset  # every validated pin, images decoded once
    text: TextFeatures  # row i = caption of dataset row i
    split: HoldoutSplit  # by date: train on early days, evaluate on later ones
    train_rows: np.ndarray  # dataset rows of pins created before the cut-off
    pairs: NeighborPairs  # train-split neighbor pairs (both pins before the cut-off)


def encode_pin_captions(pins: pd.DataFrame, text_model_dir: Path | None = None,
                        max_length: int = 48) -> TextFeatures:
    """The frozen text tower's cache for every pin caption, in table order."""
    tokenizer, model = load_text_encoder(text_model_dir)
    captions = [caption_text(t, d) for t, d in zip(pins["title"], pins["description"])]
    return encode_texts(captions, tokenizer, model, max_length=max_length)


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
