"""What PinCLIP trains on: pin images, captions, and batches of neighbor pairs.

Images are decoded from the JPEGs once into one uint8 tensor (5k pins x 96 px is 140 MB)
because decoding every image every epoch on two cores costs more than the model step.
Captions go through the frozen text tower once (``models.text_encoder``); row i of the
text cache belongs to row i of ``PinDataset``.

Neighbor pairs come in batches whose in-batch negatives should really be negatives: two
pairs *conflict* when they share a pin or a board (the pair's own board, and with
``board_pins`` every board either pin is saved to). The sampler keeps conflicting pairs
apart where it can, and returns the [B, B] mask of the conflicts it could not avoid, for
``NeighborAlignmentLoss`` to drop from its denominators.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmpipe.eval.ranking import ranking_metrics_per_query, top_k
from mmpipe.eval.related_ceiling import board_mate_relevance, board_membership
from mmpipe.eval.splits import WINDOWS, DateWindows, cold_items, date_windows
from mmpipe.layout import resolve_inside
from mmpipe.media.images import open_rgb
from mmpipe.media.pixels import normalize_pixels
from mmpipe.nn.text_tower import TextFeatures, default_text_model_dir, encode_texts_reusing, text_key


def caption_text(title, description) -> str:
    """``title + ". " + description``, skipping whichever is missing; "" when both are."""
    parts = [text.strip() for text in (title, description) if isinstance(text, str) and text.strip()]
    if len(parts) == 2:
        return f"{parts[0].rstrip('.')}. {parts[1]}"
    return parts[0] if parts else ""


def read_rgb(path: Path, image_size: int) -> np.ndarray:
    """uint8 [image_size, image_size, 3], square-resized like the video frames are."""
    try:
        image = open_rgb(path)  # upright (EXIF orientation), RGB
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.array(image, dtype=np.uint8)  # a writable copy, as torch wants
    except (OSError, ValueError) as err:
        raise OSError(f"cannot decode pin image {path}: {err}") from err


def load_pin_image(path: Path, image_size: int) -> torch.Tensor:
    """One pin image as a normalised float tensor [3, image_size, image_size]."""
    return normalize_pixels(torch.from_numpy(read_rgb(Path(path), image_size)).permute(2, 0, 1))


def decode_images(paths: Sequence[Path], image_size: int, num_workers: int = 2) -> torch.Tensor:
    """Decode every image once: uint8 [N, 3, image_size, image_size], row i from paths[i].

    Each image goes straight into its row of the one preallocated tensor: a list of decoded
    arrays, stacked and then permuted, held three copies at once (8 GB at 100k 96 px pins).
    Threads suffice: PIL releases the GIL while it decodes and resizes.
    """
    images = torch.empty(len(paths), 3, image_size, image_size, dtype=torch.uint8)
    channels_last = images.numpy().transpose(0, 2, 3, 1)  # a [N, S, S, 3] view of the same memory

    def read(row: int) -> None:
        channels_last[row] = read_rgb(Path(paths[row]), image_size)

    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            list(pool.map(read, range(len(paths))))
    else:
        for row in range(len(paths)):
            read(row)
    return images


class PinDataset(Dataset):
    """Validated pins: pixels from ``raw_root/image_path``, captions from title + description.

    ``dataset[i]`` is ``(pixels float [3, S, S], i)``: the second item indexes the text
    cache, which is built from ``dataset.captions`` in the same order. Call
    ``predecode()`` once to serve pixels from memory instead of the JPEG files.
    """

    def __init__(self, pins: pd.DataFrame, raw_root: Path, image_size: int,
                 images: torch.Tensor | None = None):
        self.pin_ids = pins["pin_id"].tolist()
        self._row = pd.Index(self.pin_ids)
        if not self._row.is_unique:
            duplicated = self._row[self._row.duplicated()].unique().tolist()[:5]
            raise ValueError(f"pin ids must be unique; duplicated: {duplicated}")
        self.image_paths = [resolve_inside(Path(raw_root), path) for path in pins["image_path"]]
        self.captions = [caption_text(t, d) for t, d in zip(pins["title"], pins["description"])]
        self.image_size = image_size
        if images is not None and tuple(images.shape) != (len(self.pin_ids), 3, image_size, image_size):
            expected = (len(self.pin_ids), 3, image_size, image_size)
            raise ValueError(f"images must be uint8 {list(expected)}, "
                             f"got {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.pin_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return normalize_pixels(self.images[index]), index
        return load_pin_image(self.image_paths[index], self.image_size), index

    def predecode(self, num_workers: int = 2) -> PinDataset:
        if self.images is None:
            self.images = decode_images(self.image_paths, self.image_size, num_workers)
        return self

    def pixels(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Normalised pixels [n, 3, S, S] of dataset rows: one gather when pre-decoded."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        if self.images is not None:
            return normalize_pixels(self.images[rows])
        return torch.stack([load_pin_image(self.image_paths[row], self.image_size)
                            for row in rows.tolist()])

    def rows_of(self, pin_ids: Sequence) -> np.ndarray:
        """Dataset row of each pin id; -1 for a pin not in the dataset."""
        return self._row.get_indexer(pd.Index(pin_ids))


@dataclass(frozen=True)
class NeighborPairs:
    """Neighbor pairs as dataset rows, with what each pair must not share with another."""

    a: np.ndarray  # int64 [P] dataset row of pin_a
    b: np.ndarray  # int64 [P] dataset row of pin_b
    keys: tuple[frozenset[int], ...]  # per pair: its two pins' rows and ids of its boards
    group: np.ndarray  # int64 [P] the pair's own board (-1 for co-engagement), to spread it
    # Board key ids of each pin row that is on a board (same ids as in ``keys``).
    boards_of_row: dict[int, frozenset[int]] = field(default_factory=dict)
    # Board key ids run from board_offset to board_offset + n_boards - 1.
    board_offset: int = 0
    n_boards: int = 0

    def __len__(self) -> int:
        return len(self.a)

    def board_membership(self, rows: np.ndarray) -> torch.Tensor:
        """float [n, n_boards]: 1 where pin ``rows[i]`` is saved to board b."""
        membership = torch.zeros(len(rows), self.n_boards)
        for i, row in enumerate(rows):
            for key in self.boards_of_row.get(int(row), ()):
                membership[i, key - self.board_offset] = 1.0
        return membership

    def neighbor_matrix(self, rows: np.ndarray) -> torch.Tensor:
        """bool [n, n]: pins ``rows[i]`` and ``rows[j]`` share a board (i != j)."""
        return false_negative_mask([self.boards_of_row.get(int(row), frozenset()) for row in rows])


def neighbor_pairs_for_training(
    pairs: pd.DataFrame,
    pin_ids: Sequence,
    board_pins: pd.DataFrame | None = None,
    split: str | None = "train",
) -> NeighborPairs:
    """Index the ``split`` rows of ``graph/neighbor_pairs.parquet`` into dataset rows.

    Pairs with a pin outside ``pin_ids`` are dropped. With ``board_pins`` (board_id,
    pin_id) a pair conflicts with any pair whose pins share *any* board with its pins,
    not only its own board: the exact false-negative definition when pins sit on several
    boards. Without it, only the pair's own ``board_id`` (and its pins) count.
    """
    if split is not None:
        pairs = pairs[pairs["split"] == split]
    rows = pd.Index(list(pin_ids))
    a = rows.get_indexer(pd.Index(pairs["pin_a"]))
    b = rows.get_indexer(pd.Index(pairs["pin_b"]))
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep].astype(np.int64), b[keep].astype(np.int64)
    pair_boards = pairs["board_id"].to_numpy()[keep]

    membership = None
    if board_pins is not None:
        member_rows = rows.get_indexer(pd.Index(board_pins["pin_id"]))
        known = member_rows >= 0
        membership = pd.DataFrame({"row": member_rows[known],
                                   "board": board_pins["board_id"].to_numpy()[known]})
    all_boards = pd.Series(pair_boards).dropna()
    if membership is not None:
        all_boards = pd.concat([all_boards, membership["board"]])
    board_index = pd.Index(pd.unique(all_boards.to_numpy()))
    # Boards get key ids after every pin row, so a board never collides with a pin.
    board_key = {board: len(rows) + code for code, board in enumerate(board_index)}

    boards_of_row: dict[int, frozenset[int]] = {}
    if membership is not None:
        for row, boards in membership.groupby("row")["board"]:
            boards_of_row[int(row)] = frozenset(board_key[board] for board in boards)
    empty: frozenset[int] = frozenset()
    group = np.full(len(a), -1, dtype=np.int64)
    keys = []
    pair_boards_of_row: dict[int, set[int]] = {}
    for i, (row_a, row_b, board) in enumerate(zip(a.tolist(), b.tolist(), pair_boards.tolist())):
        own = empty if pd.isna(board) else frozenset((board_key[board],))
        if own:
            group[i] = next(iter(own))
            for row in (row_a, row_b):
                pair_boards_of_row.setdefault(row, set()).update(own)
        member_of = boards_of_row.get(row_a, empty) | boards_of_row.get(row_b, empty)
        keys.append(frozenset((row_a, row_b)) | own | member_of)
    for row, boards in pair_boards_of_row.items():
        boards_of_row[row] = boards_of_row.get(row, empty) | frozenset(boards)
    return NeighborPairs(a=a, b=b, keys=tuple(keys), group=group, boards_of_row=boards_of_row,
                         board_offset=len(rows), n_boards=len(board_index))


def false_negative_mask(keys: Sequence[frozenset[int]]) -> torch.Tensor:
    """bool [B, B]: True where items i != j share a key (pairs: a pin or a board; pins: a board)."""
    pairs_with_key: dict[int, list[int]] = {}
    for i, pair_keys in enumerate(keys):
        for key in pair_keys:
            pairs_with_key.setdefault(key, []).append(i)
    shared = np.zeros((len(keys), len(keys)), dtype=bool)
    for rows in pairs_with_key.values():
        if len(rows) > 1:
            shared[np.ix_(rows, rows)] = True
    np.fill_diagonal(shared, False)
    return torch.from_numpy(shared)


@dataclass(frozen=True)
class PairBatch:
    pair_rows: torch.Tensor  # int64 [B] rows of NeighborPairs
    a: torch.Tensor  # int64 [B] dataset rows of the first pins
    b: torch.Tensor  # int64 [B] dataset rows of the second pins
    false_negative_mask: torch.Tensor  # bool [B, B], symmetric, False on the diagonal


class NeighborPairBatchSampler:
    """Epochs of neighbor-pair batches, deterministic in (seed, epoch).

    Each epoch visits every pair once. Pairs of one board are first spread evenly over
    the epoch (a board with 150 pairs lands in 150 different batches if there are that
    many), then each batch is filled greedily from the front of the queue, skipping a pair
    that conflicts with one already in the batch; skipped pairs stay at the front for the
    next batch. Only when ``lookahead * batch_size`` queued pairs have been looked at
    without filling the batch are conflicting pairs let in, and the mask records them.
    """

    def __init__(self, pairs: NeighborPairs, batch_size: int, seed: int = 0, drop_last: bool = False,
                 lookahead: int = 16):
        if batch_size < 1 or lookahead < 1:
            raise ValueError("batch_size and lookahead must be >= 1")
        self.pairs = pairs
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.lookahead = lookahead
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.pairs)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _spread_order(self, rng: np.random.Generator) -> np.ndarray:
        """A random order in which each board's pairs sit at evenly spaced positions."""
        n = len(self.pairs)
        shuffled = rng.permutation(n)
        groups = self.pairs.group[shuffled]
        position = rng.random(n)  # pairs without a board go anywhere
        grouped = groups >= 0
        if grouped.any():
            codes, rank_in_group, counts = _rank_within_groups(groups[grouped])
            offset = rng.random(len(counts))
            position[grouped] = (rank_in_group + offset[codes]) / counts[codes]
        return shuffled[np.argsort(position, kind="stable")]

    def batch_rows(self, epoch: int | None = None) -> list[np.ndarray]:
        """The pair rows of every batch of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        keys = self.pairs.keys
        pending = self._spread_order(rng).tolist()
        scan_limit = self.lookahead * self.batch_size
        batches = []
        while pending:
            batch, used, skipped = [], set(), []
            scanned = 0
            while scanned < len(pending) and scanned < scan_limit and len(batch) < self.batch_size:
                row = pending[scanned]
                scanned += 1
                if used.isdisjoint(keys[row]):
                    batch.append(row)
                    used.update(keys[row])
                else:
                    skipped.append(row)
            fill = self.batch_size - len(batch)
            batch.extend(skipped[:fill])  # unavoidable here: these conflicts get masked
            pending = skipped[fill:] + pending[scanned:]
            batches.append(np.asarray(batch, dtype=np.int64))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def make_batch(self, pair_rows: np.ndarray) -> PairBatch:
        return PairBatch(
            pair_rows=torch.from_numpy(pair_rows),
            a=torch.from_numpy(self.pairs.a[pair_rows]),
            b=torch.from_numpy(self.pairs.b[pair_rows]),
            false_negative_mask=false_negative_mask([self.pairs.keys[row] for row in pair_rows]),
        )

    def __iter__(self) -> Iterator[PairBatch]:
        for rows in self.batch_rows():
            yield self.make_batch(rows)


def _rank_within_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code of each item's group, its 0-based rank among its group's items in order, group sizes)."""
    codes, uniques = pd.factorize(groups)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - np.repeat(starts, counts)
    return codes, rank, counts


# ---------------------------------------------------------------------------------------
# the date split and everything training and evaluation read


@dataclass(frozen=True)
class HoldoutSplit:
    """Validated pins by creation date into the three windows of :mod:`mmpipe.eval.splits`."""

    windows: DateWindows
    train_ids: list[str]  # created before windows.train_end: the only pins training sees
    validation_ids: list[str]  # early stopping, model selection and the promotion gate
    test_ids: list[str]  # the report; nothing is selected on them

    @property
    def cutoff_date(self) -> str:
        """The training cut-off: the model trained on pins created before it."""
        return self.windows.train_end


def holdout_split(pins: pd.DataFrame, windows: DateWindows | None = None) -> HoldoutSplit:
    """Split validated pins by creation date; ids keep the order of ``pins``.

    The windows default to :func:`mmpipe.eval.splits.date_windows` over the pins' dates,
    whose test window is the one the graph's neighbor pairs were split with. A pin whose
    date is missing cannot be shown to predate anything and goes to test, as there.
    """
    pin_ids = pins["pin_id"].astype(str)
    if pin_ids.duplicated().any():
        duplicated = pin_ids[pin_ids.duplicated()].head().tolist()
        raise ValueError(f"pin ids must be unique; duplicated: {duplicated}")
    if windows is None:
        windows = date_windows(pins["created_at"])
    window = windows.window_of(pins["created_at"])
    return HoldoutSplit(windows, *(pin_ids[window == name].tolist() for name in WINDOWS))


# Query subsets of related-pins evaluation (the validation window drives early stopping and the gate).
VALIDATION, TEST, COLD, UNSEEN = "validation", "test", "cold", "unseen"


@dataclass
class QuerySet:
    """The evaluable queries of one subset: corpus rows and graded board-mate relevance."""

    rows: np.ndarray  # [Q] corpus rows of the query pins
    relevance: sp.csr_matrix  # [Q, N] boards each corpus pin shares with the query
    candidates: int  # query pins of the subset before dropping those without a board-mate

    def ranked(self, corpus: np.ndarray, k: int) -> np.ndarray:
        """[Q, k] corpus rows nearest each query by inner product of the unit rows of
        ``corpus`` [N, D] (every pin), the query itself excluded."""
        return top_k(corpus[self.rows], corpus, k, exclude=self.rows)

    def mean_ndcg(self, corpus: np.ndarray, k: int) -> float:
        """nDCG@k of these queries searching ``corpus``: what the gate and early stopping read."""
        return float(ranking_metrics_per_query(self.ranked(corpus, k), self.relevance, k)["ndcg"].mean())


@dataclass
class RelatedPinsProtocol:
    ids: list[str]  # the corpus: every validated pin
    windows: DateWindows
    membership: sp.csr_matrix  # [N, n_boards] board saves
    board_ids: list[str]
    query_sets: dict[str, QuerySet]
    window_pins: dict[str, np.ndarray]  # corpus rows created in each window (train, validation, test)

    def ranked(self, corpus: np.ndarray, k: int, subsets: Sequence[str]) -> dict[str, np.ndarray]:
        """Each subset's ``QuerySet.ranked``, every distinct query pin searched once: the cold
        and unseen queries are test queries (at 100k pins, 27k searches instead of 50k)."""
        rows = np.unique(np.concatenate([self.query_sets[subset].rows for subset in subsets]))
        ranked = top_k(corpus[rows], corpus, k, exclude=rows)
        return {subset: ranked[np.searchsorted(rows, self.query_sets[subset].rows)] for subset in subsets}

    def check(self, embeddings: EmbeddingSet) -> None:
        if embeddings.ids != self.ids:
            missing = set(self.ids) - set(embeddings.ids)
            raise ValueError(f"{embeddings.name} must embed exactly the protocol's {len(self.ids)} pins in its "
                             f"order ({len(missing)} missing, e.g. {sorted(missing)[:3]})")


def related_pins_protocol(pins: pd.DataFrame, board_pins: pd.DataFrame, interactions: pd.DataFrame,
                          windows: DateWindows | None = None) -> RelatedPinsProtocol:
    """Queries of every subset over the corpus of ``pins`` (in their order).

    Validation and test are the pins created in those windows; cold the test pins cold by
    :func:`mmpipe.eval.splits.cold_items` (with pins split by creation date, every test pin
    is, and the report says so); unseen the test pins no user was ever shown.
    """
    split = holdout_split(pins, windows)
    ids = pins["pin_id"].astype(str).tolist()
    row_of = pd.Index(ids)
    board_ids = sorted(board_pins["board_id"].astype(str).unique())
    saves = board_pins.assign(pin_id=board_pins["pin_id"].astype(str), board_id=board_pins["board_id"].astype(str))
    membership = board_membership(saves, ids, board_ids)
    window_pins = {name: row_of.get_indexer(group) for name, group in
                   (("train", split.train_ids), (VALIDATION, split.validation_ids), (TEST, split.test_ids))}
    test = window_pins[TEST]
    cold = cold_items(np.asarray(ids)[test], interactions, board_pins, split.windows.train_end)
    shown = np.asarray(ids)[test].astype(object)
    unseen = ~pd.Series(shown).isin(set(interactions["pin_id"].astype(str))).to_numpy()
    candidates = {VALIDATION: window_pins[VALIDATION], TEST: test, COLD: test[cold], UNSEEN: test[unseen]}
    query_sets = {}
    for name, rows in candidates.items():
        twin = next((other for other in query_sets if np.array_equal(candidates[other], rows)), None)
        if twin is not None:  # cold is test when every test pin is cold: one relevance matrix, not two
            query_sets[name] = query_sets[twin]
            continue
        relevance = board_mate_relevance(membership, rows)
        evaluable = np.diff(relevance.indptr) > 0
        query_sets[name] = QuerySet(rows[evaluable], relevance[evaluable], len(rows))
    return RelatedPinsProtocol(ids, split.windows, membership, board_ids, query_sets, window_pins)


@dataclass
class PinCLIPInputs:
    dataset: PinDataset  # every validated pin, images decoded once
    text: TextFeatures  # row i = caption of dataset row i
    split: HoldoutSplit  # by date: train, validation and test windows
    train_rows: np.ndarray  # dataset rows of the train window's pins
    pairs: NeighborPairs  # neighbor pairs and board saves of train-window pins only
    pins: pd.DataFrame  # the validated pins, in dataset order
    board_pins: pd.DataFrame  # the validated saves (every board, for evaluation's neighbors)
    interactions: pd.DataFrame  # the validated impressions (evaluation's cold pins)
    raw_root: Path
    protocol: RelatedPinsProtocol  # related-pins queries of every window (validation: early stopping)  # the landing zone (images; ``_truth/`` for evaluation only)


def caption_key(caption: str) -> str:
    """Content address of a caption: the frozen text tower's output depends on nothing else."""
    return text_key(caption)


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
    return encode_texts_reusing(captions, previous, previous_keys, text_model_dir, max_length)


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
    split = holdout_split(pins)
    # Only pairs and saves of training-window pins: validation and test pins stay unseen.
    train_ids = set(split.train_ids)
    pairs = neighbor_pairs[neighbor_pairs["source"].isin(pair_sources) & neighbor_pairs["pin_a"].isin(train_ids)
                           & neighbor_pairs["pin_b"].isin(train_ids)]
    pairs = neighbor_pairs_for_training(pairs, dataset.pin_ids, board_pins[board_pins["pin_id"].isin(train_ids)],
                                        split=None)
    protocol = related_pins_protocol(pins, board_pins, interactions, split.windows)
    return PinCLIPInputs(dataset, text, split, dataset.rows_of(split.train_ids), pairs, pins, board_pins,
                         interactions, Path(raw_root), protocol)


def day_text_features(text: TextFeatures, all_pins: pd.DataFrame, day_pins: pd.DataFrame) -> TextFeatures:
    """The caption-cache rows of one day's pins (the cache has one row per validated pin)."""
    if len(text) != len(all_pins):
        raise ValueError(f"the caption cache has {len(text)} rows for {len(all_pins)} validated pins: "
                         "rematerialize pin_text_features")
    rows = pd.Index(all_pins["pin_id"]).get_indexer(day_pins["pin_id"])
    if (rows < 0).any():
        raise ValueError("the caption cache lacks pins of this day: rematerialize pin_text_features")
    return text.take(rows)
