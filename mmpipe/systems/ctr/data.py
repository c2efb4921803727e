"""What the CTR system trains and is judged on: impressions with their features, each
impression's click history, and the item side (hashed IDs, semantic IDs, embeddings).

* **Windows** (:mod:`mmpipe.eval.splits`, over the pins' creation dates, as the
  semantic-ID system that produced the codes draws them, so both share one cut-off):
  the model trains on the train window's impressions, early-stops and is gated on the
  validation window's, and is reported on the test window's.
* **Cold** (:func:`mmpipe.eval.splits.cold_items`): an item with no impression and no
  board save before the training cut-off.
* **History**: an impression's user's clicks dated before the impression's day, the most
  recent ``history_length`` (newest last). A train-window impression therefore only sees
  train-window clicks; a held-out one sees every click before its day, as a ranker
  serving that day would.
* **Items**: every pin with a stored embedding. Its hashed ID bucket (stable across runs:
  CRC32), its semantic ID (the ``pin_semantic_ids`` files, one codebook version), and its
  multimodal embedding (PinCLIP's fused, or the semantic-ID system's behavior embedding).
  Systems never import each other: all of these are read from storage files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.eval.splits import DateWindows, cold_items, date_windows

TRAIN, VALIDATION, TEST = "train", "validation", "test"
HELD_OUT = (VALIDATION, TEST)
LEVEL_PREFIX = "level_"
# Items by their number of training-window impressions, for the AUC-by-exposure plot.
EXPOSURE_BUCKETS = (("0", 0, 0), ("1-5", 1, 5), ("6-50", 6, 50), (">50", 51, None))


@dataclass(frozen=True)
class DataSettings:
    history_length: int = 20
    # The hashed ID tables: far more buckets than pins at small and medium (5k, 100k), so
    # few cold items share a bucket with a trained one.
    item_buckets: int = 1 << 16
    user_buckets: int = 1 << 14
    max_tenure_days: int = 3650  # sign-up age is clipped here before its log


def stable_bucket(keys, buckets: int) -> np.ndarray:
    """CRC32 of each key's UTF-8 modulo ``buckets``: the same bucket in every process."""
    return np.asarray([zlib.crc32(str(key).encode()) % buckets for key in keys], dtype=np.int64)


@dataclass
class ItemTable:
    """Every known item, row-aligned."""

    ids: list[str]
    embedding: np.ndarray  # [N, D] float32 multimodal embedding
    codes: np.ndarray | None  # [N, L] int64 semantic IDs (None: no semantic IDs)
    codes_per_level: int  # K
    embedding_kind: str
    codebook_version: str | None

    def rows(self, pin_ids) -> np.ndarray:
        return pd.Index(self.ids).get_indexer(list(map(str, pin_ids)))


@dataclass
class CTRInputs:
    impressions: pd.DataFrame  # impression_id, user_id, pin_id, date, position, clicked, window, cold, train_impressions
    item_row: np.ndarray  # [n] row of each impression's pin in items (-1: not embedded)
    history: np.ndarray  # [n, H] item rows of the history, -1 padding (left)
    user_bucket: np.ndarray  # [n]
    country: np.ndarray  # [n] index into countries (0: unknown)
    tenure: np.ndarray  # [n] float32 log1p(days since sign-up)
    items: ItemTable
    item_buckets: np.ndarray  # [N] hashed ID bucket of each item
    countries: list[str]  # index 1.. ; 0 is unknown
    windows: DateWindows
    settings: DataSettings
    raw_root: Path | None = None  # the landing zone, for the ceilings of a generated world (eval only)

    def rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.impressions["window"].to_numpy() == window)


def read_semantic_ids(frame: pd.DataFrame, ids: list[str]) -> tuple[np.ndarray, str]:
    """([N, L] codes of ``ids``, codebook version) from the ``pin_semantic_ids`` rows; every row
    must come from one codebook version (never mixed: the tables would mean two things)."""
    versions = sorted(set(frame["codebook_version"].astype(str)))
    if len(versions) != 1:
        raise ValueError(f"semantic IDs from codebook versions {versions}: recompute pin_semantic_ids for every "
                         "day with one champion")
    levels = sorted((c for c in frame.columns if c.startswith(LEVEL_PREFIX)), key=lambda c: int(c[len(LEVEL_PREFIX):]))
    table = frame.assign(pin_id=frame["pin_id"].astype(str)).drop_duplicates("pin_id", keep="last").set_index("pin_id")
    missing = [pin for pin in ids if pin not in table.index]
    if missing:
        raise ValueError(f"{len(missing)} embedded pins have no semantic ID, e.g. {missing[:3]}")
    return table.loc[ids, levels].to_numpy(np.int64), versions[0]


def histories(impressions: pd.DataFrame, item_row: np.ndarray, length: int) -> np.ndarray:
    """[n, length] item rows of each impression's user's most recent clicks dated before its
    day (newest last, -1 padding on the left)."""
    out = np.full((len(impressions), length), -1, dtype=np.int64)
    day = pd.to_datetime(impressions["date"]).to_numpy()
    clicked = impressions["clicked"].to_numpy().astype(bool) & (item_row >= 0)
    order = np.lexsort((impressions["impression_id"].to_numpy(), day))  # day, then log order
    users = impressions["user_id"].to_numpy()
    for user, rows in pd.Series(np.arange(len(impressions))[order]).groupby(users[order]):
        rows = rows.to_numpy()
        clicks = rows[clicked[rows]]
        click_days = day[clicks]
        ends = np.searchsorted(click_days, day[rows], side="left")  # clicks strictly before the day
        for row, end in zip(rows, ends):
            take = item_row[clicks[max(0, end - length):end]]
            if len(take):
                out[row, length - len(take):] = take
    return out


def ctr_inputs(interactions: pd.DataFrame, pins: pd.DataFrame, board_pins: pd.DataFrame, users: pd.DataFrame,
               items: ItemTable, settings: DataSettings = DataSettings(),
               windows: DateWindows | None = None, raw_root: Path | None = None) -> CTRInputs:
    """The inputs from the validated tables and the item table. Impressions of pins without
    an embedding are dropped (no model can score them on content)."""
    windows = windows or date_windows(pins["created_at"])
    frame = interactions[["impression_id", "user_id", "pin_id", "date", "position", "clicked"]].astype(
        {"impression_id": str, "user_id": str, "pin_id": str, "date": str}).reset_index(drop=True)
    item_row = items.rows(frame["pin_id"])
    frame, item_row = frame[item_row >= 0].reset_index(drop=True), item_row[item_row >= 0]
    frame["window"] = windows.window_of(frame["date"])
    frame["cold"] = cold_items(frame["pin_id"], interactions.astype({"pin_id": str}),
                               board_pins.astype({"pin_id": str}), windows.train_end)
    train_counts = frame.loc[frame["window"] == TRAIN, "pin_id"].value_counts()
    frame["train_impressions"] = frame["pin_id"].map(train_counts).fillna(0).astype(np.int64)
    history = histories(frame, item_row, settings.history_length)
    user_table = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
    train_users = set(frame.loc[frame["window"] == TRAIN, "user_id"])
    # Countries seen in training; any other is "unknown" (index 0), as a new market would be.
    countries = sorted(set(user_table.loc[user_table.index.isin(train_users), "country"].dropna().astype(str)))
    country_of = user_table["country"].reindex(frame["user_id"]).astype(object).to_numpy()
    country_index = {c: i + 1 for i, c in enumerate(countries)}
    country = np.asarray([country_index.get(str(c), 0) for c in country_of], dtype=np.int64)
    signup = pd.to_datetime(user_table["signup_date"].reindex(frame["user_id"]), errors="coerce").to_numpy()
    days = (pd.to_datetime(frame["date"]).to_numpy() - signup) / np.timedelta64(1, "D")
    tenure = np.log1p(np.clip(np.nan_to_num(days, nan=0.0), 0, settings.max_tenure_days)).astype(np.float32)
    return CTRInputs(frame, item_row, history, stable_bucket(frame["user_id"], settings.user_buckets), country,
                     tenure, items, stable_bucket(items.ids, settings.item_buckets), countries, windows, settings,
                     raw_root)


def exposure_bucket(train_impressions: np.ndarray) -> np.ndarray:
    """The EXPOSURE_BUCKETS label of each count of training impressions."""
    counts = np.asarray(train_impressions)
    labels = np.empty(len(counts), dtype=object)
    for label, low, high in EXPOSURE_BUCKETS:
        labels[(counts >= low) & ((counts <= high) if high is not None else True)] = label
    return labels


def item_table(embeddings_dir, kind: str, semantic_ids_dir=None, codes_per_level: int | None = None) -> ItemTable:
    """The item table from stored files: ``kind`` embeddings (``fused`` under
    ``embeddings/pins``, ``behavior`` under ``embeddings/behavior``) and, when given, the
    ``pin_semantic_ids`` day files (pins without either are left out: an item needs both)."""
    # Imported here: the rest of this module is plain arrays, testable without stored files.
    from mmpipe.embeddings import read_embeddings
    from mmpipe.partitions import read_days

    ids, vectors = read_embeddings(embeddings_dir, kind)
    codes, version, per_level = None, None, 0
    if semantic_ids_dir is not None:
        frame = read_days(semantic_ids_dir, prefix="created_at=")
        coded = set(frame["pin_id"].astype(str))
        keep = np.asarray([pin in coded for pin in ids], dtype=bool)
        ids, vectors = [pin for pin, k in zip(ids, keep) if k], vectors[keep]
        codes, version = read_semantic_ids(frame, ids)
        # K: the codebook's size when the caller knows it (the champion's metadata), else the
        # codes in use (a code no stored pin holds has nothing to learn from).
        per_level = int(codes_per_level) if codes_per_level else int(codes.max()) + 1
        if codes.max() >= per_level:
            raise ValueError(f"semantic IDs reach code {int(codes.max())}, the codebook has {per_level} per level")
    return ItemTable(list(ids), np.asarray(vectors, np.float32), codes, per_level, kind, version)
