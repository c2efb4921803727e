"""Moment retrieval: how well a predicted span matches a query's true windows.

A query may have several true windows (an event that happens twice, QVHighlights'
``relevant_windows``); a prediction scores against the best-matching one, as moment_detr's
standalone evaluation does. ``temporal_iou`` is the one IoU definition
(``mmpipe.eval.retrieval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmpipe.eval.retrieval import temporal_iou

Windows = Sequence[Sequence[float]]  # [[start_s, end_s], ...]


def best_window_iou(prediction: Sequence[float], windows: Windows) -> float:
    """IoU of ``prediction`` with the true window it overlaps most.

    >>> best_window_iou((2.0, 4.0), [[0.0, 1.0], [2.0, 5.0]])
    0.6666666666666666
    """
    if len(windows) == 0:
        raise ValueError("a query needs at least one true window")
    return float(np.max(temporal_iou(np.asarray(prediction, dtype=float)[None], np.asarray(windows, dtype=float))))


@dataclass(frozen=True)
class FixedSpanPrior:
    """The one span, fixed for every query, that scores best: the floor a moment model must
    clear, and what a generated world keeps low so no query is answered by its length alone."""

    start: float
    end: float
    relative: bool  # True: fractions of each video's duration; False: seconds
    recall: float  # R1 at ``iou`` over the queries
    iou: float

    def recall_on(self, windows: Sequence[Windows], durations: Sequence[float]) -> float:
        """R1 at this prior's IoU of the same span on other queries (chosen on one split,
        scored on another, as a baseline must be)."""
        window_sets = [np.asarray(w, dtype=float).reshape(-1, 2) for w in windows]
        scale = np.asarray(durations, dtype=float) if self.relative else np.ones(len(window_sets))
        _, recall = _best_span(np.array([self.start]), np.array([self.end]), window_sets, scale, self.iou)
        return recall

    def describe(self) -> str:
        unit = "of the duration" if self.relative else "s"
        span = f"[{self.start:.2f}, {self.end:.2f}]" if self.relative else f"[{self.start:.1f}, {self.end:.1f}]"
        return f"R1@{self.iou:g} {self.recall:.3f} with the fixed span {span} {unit}"


def _best_span(starts: np.ndarray, ends: np.ndarray, window_sets: list[np.ndarray], scale: np.ndarray,
               iou: float) -> tuple[int, float]:
    """Index of the (start, end) candidate with the highest R1@iou, and that recall.

    ``scale`` [n_queries] multiplies the candidate (a video's duration, or 1 for seconds)."""
    hits = np.zeros(len(starts))
    for windows, factor in zip(window_sets, scale):
        spans = np.stack([starts * factor, ends * factor], axis=1)  # [n_candidates, 2]
        best = temporal_iou(spans[:, None], windows[None]).max(axis=1)
        hits += best >= iou
    index = int(np.argmax(hits))
    return index, float(hits[index] / len(window_sets))


def best_fixed_span_prior(windows: Sequence[Windows], durations: Sequence[float], iou: float = 0.7,
                          step: float = 0.02, seconds_step: float = 0.25) -> FixedSpanPrior:
    """The best fixed span over a grid, both as a share of each video's duration and in
    absolute seconds (whichever scores higher), for queries with true ``windows`` in videos
    of ``durations`` seconds."""
    if len(windows) != len(durations) or not len(windows):
        raise ValueError(f"need one duration per query and at least one query, got {len(windows)} "
                         f"queries and {len(durations)} durations")
    window_sets = [np.asarray(w, dtype=float).reshape(-1, 2) for w in windows]
    durations = np.asarray(durations, dtype=float)
    best = None
    for relative, grid in ((True, np.arange(0.0, 1.0 + step / 2, step)),
                           (False, np.arange(0.0, durations.max() + seconds_step / 2, seconds_step))):
        starts, ends = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
        keep = ends > starts
        starts, ends = starts[keep], ends[keep]
        scale = durations if relative else np.ones_like(durations)
        index, recall = _best_span(starts, ends, window_sets, scale, iou)
        if best is None or recall > best.recall:
            best = FixedSpanPrior(float(starts[index]), float(ends[index]), relative, recall, iou)
    return best
