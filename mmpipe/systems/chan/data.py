"""CHAN's data: each validated video's annotated shots (the units a summary selects and the
QFVS protocol scores) with a feature vector each, its summarization queries with their
relevant shots and cached text-tower states, and the date window of every video.

**Shot features.** The shared ``shot_features`` are pooled over the shots that
``validated_frames`` *detected*; the queries' relevant shots are *annotated* shots
(``video_shots``). Each annotated shot takes the mean of the detected shots' vectors
weighted by how many seconds of it each covers (one detected shot when the boundaries
agree, as they do in the generated world), L2-normalised; a shot no detected shot
overlaps takes the detected shot nearest its middle. A video without shot features (its
frames were quarantined) is left out, with its queries.

**Shot vectors**, what the model reads: the shot feature and, with the frame features
(``model.frame_extremes``), the elementwise max and min of the shot's frame features
(:func:`frame_extremes`): a mean blurs an object that shows in only some of a shot's
frames; on the small world the extremes lift a linear concept probe's test AUC from 0.73
to 0.755.

**Concepts.** The vocabulary of the model's concept heads is every concept a training-window
shot shows or a training-window query names; a batch carries, per shot, which of them the
shot shows (``video_shots.concepts``) and, per query, which it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mmpipe.eval.splits import DateWindows, date_windows
from mmpipe.eval.summarization import ReferenceShots
from mmpipe.media.features import FeatureTable, concept_phrase
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.spec import NothingToTrain

TRAIN, VALIDATION, TEST = "train", "validation", "test"


@dataclass(frozen=True)
class VideoShots:
    """One video's annotated shots, in time order, with one feature vector each."""

    video_id: str
    created_at: str
    shot_ids: np.ndarray  # int64 [N] (video_shots.shot_index)
    start_s: np.ndarray  # float64 [N]
    end_s: np.ndarray  # float64 [N]
    concepts: tuple[frozenset[str], ...]  # what each shot shows (for the QFVS similarity)
    features: np.ndarray  # float32 [N, D]: the shared shot features
    extremes: np.ndarray | None = None  # float32 [N, 2D]: max and min of the shots' frame features

    def __len__(self) -> int:
        return len(self.shot_ids)

    @property
    def durations(self) -> np.ndarray:
        return self.end_s - self.start_s

    @property
    def vectors(self) -> np.ndarray:
        """[N, D] or [N, 3D]: what the model reads of each shot (the module doc)."""
        return self.features if self.extremes is None else np.hstack([self.features, self.extremes])

    @property
    def reference(self) -> ReferenceShots:
        return ReferenceShots(tuple(int(s) for s in self.shot_ids), self.concepts)


@dataclass(frozen=True)
class ShotBatch:
    """Queries with their videos' shots, padded to the longest video of the batch."""

    shots: torch.Tensor  # float32 [B, N, D]
    shot_mask: torch.Tensor  # bool [B, N]
    relevance: torch.Tensor  # float32 [B, N], 1 for the query's relevant shots
    query_hidden: torch.Tensor  # [B, L, H] text-tower states
    query_mask: torch.Tensor  # bool [B, L]
    shot_concepts: torch.Tensor  # float32 [B, N, V], 1 where the shot shows concept v
    query_concepts: torch.Tensor  # float32 [B, V], 1 where the query names concept v


@dataclass
class CHANInputs:
    """What training and evaluation read. ``queries`` rows are rows of ``text``; each names
    its video's row in ``videos`` and its relevant shots as positions in that video."""

    videos: list[VideoShots]
    queries: pd.DataFrame  # query_id, video_id, video_row, concepts, query, relevant (positions), window
    text: TextFeatures
    windows: DateWindows
    encoder: str  # the shot features' image encoder (registered model) and version, for the
    encoder_version: str  # query-similarity baseline's text embeddings in the same space
    concepts: tuple[str, ...] = ()  # the concept heads' vocabulary (from the training window)

    @property
    def shot_dim(self) -> int:
        """Width of the model's shot vectors."""
        return int(self.videos[0].vectors.shape[1])

    @property
    def frame_extremes(self) -> bool:
        return self.videos[0].extremes is not None

    def query_rows(self, window: str) -> np.ndarray:
        return np.flatnonzero(self.queries["window"].to_numpy() == window)

    def video_of(self, row: int) -> VideoShots:
        return self.videos[int(self.queries["video_row"].iat[row])]

    def relevance(self, row: int) -> np.ndarray:
        """float32 [N]: 1 for the shots relevant to query ``row``."""
        labels = np.zeros(len(self.video_of(row)), np.float32)
        labels[list(self.queries["relevant"].iat[row])] = 1.0
        return labels

    def concept_labels(self, concept_sets: Sequence[frozenset[str] | Sequence[str]]) -> np.ndarray:
        """float32 [len(concept_sets), V]: 1 where a set holds vocabulary concept v."""
        column = {concept: v for v, concept in enumerate(self.concepts)}
        labels = np.zeros((len(concept_sets), len(self.concepts)), np.float32)
        for i, concepts in enumerate(concept_sets):
            labels[i, [column[c] for c in concepts if c in column]] = 1.0
        return labels

    def batch(self, rows: Sequence[int]) -> ShotBatch:
        rows = [int(row) for row in rows]
        videos = [self.video_of(row) for row in rows]
        longest = max(len(video) for video in videos)
        shots = np.zeros((len(rows), longest, self.shot_dim), np.float32)
        mask = np.zeros((len(rows), longest), bool)
        relevance = np.zeros((len(rows), longest), np.float32)
        shot_concepts = np.zeros((len(rows), longest, len(self.concepts)), np.float32)
        for i, (row, video) in enumerate(zip(rows, videos)):
            shots[i, :len(video)] = video.vectors
            mask[i, :len(video)] = True
            relevance[i, :len(video)] = self.relevance(row)
            shot_concepts[i, :len(video)] = self.concept_labels(video.concepts)
        hidden, query_mask = self.text.tokens(rows)
        query_concepts = self.concept_labels(self.queries["concepts"].to_numpy()[rows])
        return ShotBatch(torch.from_numpy(shots), torch.from_numpy(mask), torch.from_numpy(relevance), hidden,
                         query_mask, torch.from_numpy(shot_concepts), torch.from_numpy(query_concepts))


def annotated_shot_features(annotated: pd.DataFrame, detected: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
    """[len(annotated), D]: each annotated shot (start_s, end_s) as the overlap-weighted mean
    of the ``detected`` shots' ``vectors`` (row i of each), L2-normalised; the detected shot
    nearest its middle when none overlaps it.

    >>> detected = pd.DataFrame({"start_s": [0.0, 2.0], "end_s": [2.0, 4.0]})
    >>> annotated = pd.DataFrame({"start_s": [0.0, 1.0], "end_s": [2.0, 4.0]})
    >>> annotated_shot_features(annotated, detected, np.eye(2, dtype=np.float32)).astype(float).round(3).tolist()
    [[1.0, 0.0], [0.447, 0.894]]
    """
    starts, ends = annotated["start_s"].to_numpy(float), annotated["end_s"].to_numpy(float)
    d_starts, d_ends = detected["start_s"].to_numpy(float), detected["end_s"].to_numpy(float)
    overlap = np.clip(np.minimum(ends[:, None], d_ends[None]) - np.maximum(starts[:, None], d_starts[None]), 0, None)
    middles, d_middles = (starts + ends) / 2, (d_starts + d_ends) / 2
    none = overlap.sum(1) == 0
    overlap[none, np.argmin(np.abs(middles[none, None] - d_middles[None]), axis=1)] = 1.0
    pooled = overlap @ np.asarray(vectors, np.float64)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def frame_extremes(frame_index: pd.DataFrame, frame_vectors: np.ndarray, starts: np.ndarray, ends: np.ndarray
                   ) -> np.ndarray:
    """[len(starts), 2D]: the elementwise max and min of one video's frame features (rows of
    ``frame_index``: t_s, is_blank) over each span [start, end): its non-blank frames, all its
    frames when every one is blank, the frame nearest its middle when none falls inside (the
    rule shot features are pooled by).

    >>> index = pd.DataFrame({"t_s": [0.0, 0.5, 1.0, 1.5], "is_blank": [False, False, True, False]})
    >>> vectors = np.array([[1.0, 0.0], [3.0, -1.0], [9.0, 9.0], [2.0, 2.0]])
    >>> frame_extremes(index, vectors, np.array([0.0, 1.0, 3.0]), np.array([1.0, 1.2, 4.0])).tolist()
    [[3.0, 0.0, 1.0, -1.0], [9.0, 9.0, 9.0, 9.0], [2.0, 2.0, 2.0, 2.0]]
    """
    times, blank = frame_index["t_s"].to_numpy(float), frame_index["is_blank"].to_numpy(bool)
    out = np.empty((len(starts), 2 * frame_vectors.shape[1]), np.float32)
    for i, (start, end) in enumerate(zip(starts, ends)):
        inside = (times >= start - 1e-6) & (times < end - 1e-6)
        rows = np.flatnonzero(inside & ~blank) if (inside & ~blank).any() else np.flatnonzero(inside)
        if not len(rows):
            rows = [int(np.argmin(np.abs(times - (start + end) / 2)))]
        chosen = frame_vectors[rows]
        out[i] = np.concatenate([chosen.max(0), chosen.min(0)])
    return out


def shot_vectors(video_id: str, shots: pd.DataFrame, features: np.ndarray, frames: FeatureTable | None
                 ) -> np.ndarray:
    """The model's vectors of one video's ``shots`` (start_s, end_s) whose shot features are
    ``features`` [N, D]: with ``frames`` (frame features of its day), followed by the max and
    min of each shot's frame features."""
    if frames is None:
        return np.asarray(features, np.float32)
    rows = frames.video_rows().get(video_id)
    if rows is None:
        raise KeyError(f"video {video_id!r} has no frame features by {frames.encoder} v{frames.version}")
    return np.hstack([features, frame_extremes(frames.index.iloc[rows], frames.embedding[rows],
                                               shots["start_s"].to_numpy(float), shots["end_s"].to_numpy(float))])


def chan_inputs(videos: pd.DataFrame, video_shots: pd.DataFrame, summary_queries: pd.DataFrame,
                shot_features: FeatureTable, text: TextFeatures, frame_features: FeatureTable | None = None
                ) -> CHANInputs:
    """Inputs from the validated ``videos`` (video_id, created_at), ``video_shots`` (video_id,
    shot_index, start_s, end_s, concepts), ``summary_queries`` (query_id, video_id, concepts,
    relevant_shots; row i's token states are row i of ``text``) and the shot features of
    the detected shots; with ``frame_features``, each shot's vector carries the elementwise
    max and min of its frames' features too (:func:`frame_extremes`)."""
    if len(summary_queries) != len(text):
        raise ValueError(f"{len(summary_queries)} summarization queries but {len(text)} rows of text features")
    if videos.empty:
        raise NothingToTrain("no validated videos: nothing to train on")
    detected_rows = shot_features.video_rows()
    frame_rows = frame_features.video_rows() if frame_features is not None else {}
    shots_of = {str(v): rows.sort_values("start_s", kind="stable")
                for v, rows in video_shots.groupby("video_id")}
    kept = []
    for row in videos.drop_duplicates("video_id").itertuples():
        video_id = str(row.video_id)
        if video_id not in detected_rows or video_id not in shots_of or (
                frame_features is not None and video_id not in frame_rows):
            continue
        annotated = shots_of[video_id]
        detected = detected_rows[video_id]
        starts, ends = annotated["start_s"].to_numpy(float), annotated["end_s"].to_numpy(float)
        features = annotated_shot_features(annotated, shot_features.index.iloc[detected],
                                           shot_features.embedding[detected])
        extremes = None
        if frame_features is not None:
            frames = frame_rows[video_id]
            extremes = frame_extremes(frame_features.index.iloc[frames], frame_features.embedding[frames], starts, ends)
        kept.append(VideoShots(video_id, str(row.created_at), annotated["shot_index"].to_numpy(np.int64), starts,
                               ends, tuple(frozenset(map(str, c)) for c in annotated["concepts"]), features, extremes))
    if not kept:
        raise ValueError("no video has both annotated shots and shot features: materialize shot_features")
    windows = date_windows([video.created_at for video in kept])
    window_of = dict(zip((v.video_id for v in kept), windows.window_of([v.created_at for v in kept])))
    row_of = {video.video_id: i for i, video in enumerate(kept)}

    queries = summary_queries.reset_index(drop=True)
    has_video = queries["video_id"].astype(str).map(row_of).notna().to_numpy()
    queries = queries[has_video].reset_index(drop=True)
    if queries.empty:
        raise NothingToTrain(f"no validated summarization query of the {len(kept)} videos with annotated shots "
                             "and shot features: nothing to train on")
    video_rows = queries["video_id"].astype(str).map(row_of).astype(np.int64).to_numpy()
    relevant = []
    for query_id, video_row, shots in zip(queries["query_id"], video_rows, queries["relevant_shots"]):
        video = kept[video_row]
        relevant.append(video.reference.positions(list(shots), f"query {query_id}"))
    queries = pd.DataFrame({
        "query_id": queries["query_id"].astype(str), "video_id": queries["video_id"].astype(str),
        "video_row": video_rows, "concepts": [list(c) for c in queries["concepts"]],
        "query": queries["concepts"].map(concept_phrase), "relevant": relevant,
        "window": [window_of[kept[r].video_id] for r in video_rows]})
    vocabulary = sorted({c for video in kept if window_of[video.video_id] == TRAIN for shot in video.concepts
                         for c in shot}
                        | {c for concepts, window in zip(queries["concepts"], queries["window"]) if window == TRAIN
                           for c in concepts})
    return CHANInputs(kept, queries, text.take(np.flatnonzero(has_video)), windows, shot_features.encoder,
                      str(shot_features.version), tuple(vocabulary))
