"""Query-focused video summarization: the QFVS protocol (Sharghi et al., CVPR 2017), a
length budget, and the summary files that carry a summary from a model to the evaluator.

**Scoring one summary.** A video's shots carry concept sets (the words visible in each).
Two shots are as similar as the IoU of their concept sets (two empty sets: 0). The
selected shots and the reference shots (those relevant to the query) are matched
one-to-one by a maximum-weight bipartite matching on that similarity
(``scipy.optimize.linear_sum_assignment``); with W the matched weight,

    precision = W / |selected|,  recall = W / |reference|,  F1 = 2PR / (P + R)  (0 when P + R = 0).

A summary that picks a shot showing the same things as a relevant one gets credit for it
even when it is not the relevant shot itself; a shot showing nothing earns nothing. A
collection of summaries scores the mean of its queries' numbers.

**The length budget** (:class:`LengthBudget`) bounds every method alike: a share of the
video's shots (``round(share * n)``, at least one) or a number of seconds. A method scores
the shots; :func:`select_shots` keeps the best-scored ones that fit, in time order.

**Summary files** (:func:`write_summaries`, :func:`read_summaries`): one JSON document::

    {"format": "mmpipe.video_summaries", "version": 1,
     "model": "chan version 3",                       # free text: what made them (optional)
     "summaries": [
       {"video_id": "v0001", "query_id": "v0001_s1",  # query_id may be null for an ad-hoc query
        "query": "red, striped",                      # the query as text (concept words)
        "budget": {"shots_share": 0.4},               # or {"seconds": 6.0}
        "shots": [{"shot_id": 1, "start_s": 3.125, "end_s": 5.25, "score": 0.93}, ...]}]}

``shots`` are the selected shots in time order; ``score`` (the method's score) is optional.
:func:`score_summaries` scores such a file against shot concepts and relevant shots, so a
summary from anyone's method, written in this format, is evaluated by the same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from mmpipe.io import write_bytes_atomic

FORMAT = "mmpipe.video_summaries"
FORMAT_VERSION = 1
METRICS = ("precision", "recall", "F1")


# ---------------------------------------------------------------------------------------
# the QFVS protocol


def concept_iou(a: Collection[str], b: Collection[str]) -> float:
    """IoU of two shots' concept sets; 0 when both are empty (a shot showing nothing
    matches nothing, as QFVS's ``semantic_iou``).

    >>> concept_iou({"red", "striped", "star"}, {"red", "star", "blue"})
    0.5
    >>> concept_iou(set(), set())
    0.0
    """
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def concept_similarity(selected: Sequence[Collection[str]], reference: Sequence[Collection[str]]) -> np.ndarray:
    """[len(selected), len(reference)]: the concept IoU of every selected-reference pair."""
    return np.array([[concept_iou(s, r) for r in reference] for s in selected], dtype=np.float64).reshape(
        len(selected), len(reference))


def matched_weight(similarity: np.ndarray) -> float:
    """The weight of a maximum-weight one-to-one matching of rows to columns.

    >>> matched_weight(np.array([[1.0, 0.9], [0.5, 0.0]]))
    1.4
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return float(similarity[rows, cols].sum())


@dataclass(frozen=True)
class QFVSScore:
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return dict(zip(METRICS, (self.precision, self.recall, self.f1)))


def qfvs_score(selected: Sequence[int], reference: Sequence[int], shot_concepts: Sequence[Collection[str]]
               ) -> QFVSScore:
    """Precision, recall and F1 of the ``selected`` shots against the ``reference`` shots
    (positions in ``shot_concepts``, the concept set of each shot of the video). A shot
    listed twice counts once; an empty selection scores 0; a query needs a reference."""
    selected = sorted({int(shot) for shot in selected})
    reference = sorted({int(shot) for shot in reference})
    if not reference:
        raise ValueError("a query needs at least one reference shot")
    outside = [shot for shot in (*selected, *reference) if not 0 <= shot < len(shot_concepts)]
    if outside:
        raise ValueError(f"shots {outside[:5]} are not among the video's {len(shot_concepts)} shots")
    if not selected:
        return QFVSScore(0.0, 0.0, 0.0)
    weight = matched_weight(concept_similarity([shot_concepts[s] for s in selected],
                                               [shot_concepts[r] for r in reference]))
    precision, recall = weight / len(selected), weight / len(reference)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return QFVSScore(precision, recall, f1)


# ---------------------------------------------------------------------------------------
# the length budget and selection


@dataclass(frozen=True)
class LengthBudget:
    """How long a summary may be: ``shots_share`` of the video's shots, or ``seconds``."""

    shots_share: float | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.shots_share is None) == (self.seconds is None):
            raise ValueError(f"a length budget is a share of the shots or a number of seconds: give exactly one "
                             f"and set the other to null (got shots_share={self.shots_share}, "
                             f"seconds={self.seconds})")
        if self.shots_share is not None and not 0 < self.shots_share <= 1:
            raise ValueError(f"shots_share must be in (0, 1], got {self.shots_share}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")

    def max_shots(self, n_shots: int) -> int:
        """Shots a share-of-shots budget allows: ``share * n`` rounded half up, at least one."""
        if self.shots_share is None:
            raise ValueError("a seconds budget limits the duration, not the number of shots")
        return max(1, min(n_shots, math.floor(self.shots_share * n_shots + 0.5)))

    def to_dict(self) -> dict[str, float]:
        return {"shots_share": self.shots_share} if self.shots_share is not None else {"seconds": self.seconds}

    @classmethod
    def from_dict(cls, values: Mapping) -> LengthBudget:
        unknown = sorted(set(values) - {"shots_share", "seconds"})
        if unknown:
            raise ValueError(f"unknown budget keys {unknown}; a budget is {{'shots_share': x}} or {{'seconds': s}}")
        return cls(shots_share=values.get("shots_share"), seconds=values.get("seconds"))

    def describe(self) -> str:
        if self.shots_share is not None:
            return f"{100 * self.shots_share:g}% of each video's shots (rounded half up, at least one)"
        return f"{self.seconds:g} s of each video (at least its best shot)"


def _fits(durations: np.ndarray, order: Sequence[int], budget: LengthBudget) -> list[int]:
    """The shots of ``order`` (best first) a summary keeps: the first ``max_shots`` for a
    share budget; for a seconds budget each shot that still fits, skipping those that do
    not, and the first shot when none fits (a summary is never empty)."""
    order = [int(shot) for shot in order]
    if budget.shots_share is not None:
        return order[:budget.max_shots(len(durations))]
    kept, total = [], 0.0
    for shot in order:
        if total + durations[shot] <= budget.seconds + 1e-9:
            kept.append(shot)
            total += durations[shot]
    return kept or order[:1]


def select_shots(scores: Sequence[float], durations: Sequence[float], budget: LengthBudget) -> np.ndarray:
    """Positions of the shots a summary keeps under ``budget``, in time order: the highest
    ``scores`` first, ties to the earlier shot.

    >>> select_shots([0.1, 0.9, 0.5, 0.7, 0.2], [1, 1, 1, 1, 1], LengthBudget(shots_share=0.4)).tolist()
    [1, 3]
    >>> select_shots([0.1, 0.9, 0.5, 0.7], [1, 3, 1, 1], LengthBudget(seconds=2.5)).tolist()
    [2, 3]
    """
    scores, durations = np.asarray(scores, dtype=np.float64), np.asarray(durations, dtype=np.float64)
    if scores.shape != durations.shape or scores.ndim != 1 or not len(scores):
        raise ValueError(f"need one score and one duration per shot, got {scores.shape} and {durations.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("shot scores must be finite")
    return np.sort(np.asarray(_fits(durations, np.argsort(-scores, kind="stable"), budget), dtype=np.int64))


def uniform_selection(durations: Sequence[float], budget: LengthBudget) -> np.ndarray:
    """Evenly spaced shots (the middle of each of k equal stretches of the shot sequence):
    k from a share budget, or the most shots whose evenly spaced pick fits a seconds budget.

    >>> uniform_selection([1] * 10, LengthBudget(shots_share=0.3)).tolist()
    [1, 5, 8]
    """
    durations = np.asarray(durations, dtype=np.float64)
    n = len(durations)
    if not n:
        raise ValueError("a video without shots has no summary")

    def spaced(k: int) -> np.ndarray:
        return np.unique(np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64))

    if budget.shots_share is not None:
        return spaced(budget.max_shots(n))
    for k in range(n, 0, -1):
        picks = spaced(k)
        if durations[picks].sum() <= budget.seconds + 1e-9:
            return picks
    return spaced(1)


# ---------------------------------------------------------------------------------------
# summary files


@dataclass(frozen=True)
class SummaryShot:
    shot_id: int
    start_s: float
    end_s: float
    score: float | None = None

    def to_dict(self) -> dict:
        row = {"shot_id": int(self.shot_id), "start_s": float(self.start_s), "end_s": float(self.end_s)}
        return row if self.score is None else {**row, "score": float(self.score)}


@dataclass(frozen=True)
class VideoSummary:
    """One query's summary of one video: the selected shots, in time order."""

    video_id: str
    query: str
    shots: tuple[SummaryShot, ...]
    query_id: str | None = None
    budget: LengthBudget | None = None

    def __post_init__(self) -> None:
        starts = [shot.start_s for shot in self.shots]
        if starts != sorted(starts):
            raise ValueError(f"{self.video_id}/{self.query_id}: a summary's shots are in time order")
        ids = [shot.shot_id for shot in self.shots]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.video_id}/{self.query_id}: shot ids {ids} repeat")

    @property
    def shot_ids(self) -> list[int]:
        return [shot.shot_id for shot in self.shots]

    @property
    def seconds(self) -> float:
        return float(sum(shot.end_s - shot.start_s for shot in self.shots))

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "query_id": self.query_id, "query": self.query,
                "budget": self.budget.to_dict() if self.budget is not None else None,
                "shots": [shot.to_dict() for shot in self.shots]}

    @classmethod
    def from_dict(cls, entry: Mapping) -> VideoSummary:
        missing = sorted({"video_id", "query", "shots"} - set(entry))
        if missing:
            raise ValueError(f"a summary needs {missing}")
        shots = []
        for shot in entry["shots"]:
            if not isinstance(shot, Mapping) or not {"shot_id", "start_s", "end_s"} <= set(shot):
                raise ValueError(f"summary {entry['video_id']}/{entry.get('query_id')}: a shot needs shot_id, "
                                 f"start_s and end_s, got {shot!r}")
            score = shot.get("score")
            shots.append(SummaryShot(int(shot["shot_id"]), float(shot["start_s"]), float(shot["end_s"]),
                                     None if score is None else float(score)))
        budget = entry.get("budget")
        query_id = entry.get("query_id")
        return cls(str(entry["video_id"]), str(entry["query"]), tuple(shots),
                   None if query_id is None else str(query_id),
                   LengthBudget.from_dict(budget) if budget else None)


def write_summaries(path: Path, summaries: Sequence[VideoSummary], model: str | None = None) -> Path:
    """The summaries as one JSON document (the format in the module doc), written atomically."""
    document = {"format": FORMAT, "version": FORMAT_VERSION, "model": model,
                "summaries": [summary.to_dict() for summary in summaries]}
    return write_bytes_atomic((json.dumps(document, indent=1) + "\n").encode("utf-8"), Path(path))


def read_summaries(path: Path) -> list[VideoSummary]:
    """The summaries of a file :func:`write_summaries` wrote (or anyone, in its format)."""
    try:
        document = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (its 'format' must be {FORMAT!r})")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is version {document.get('version')} of {FORMAT}; this reader reads "
                         f"version {FORMAT_VERSION}")
    return [VideoSummary.from_dict(entry) for entry in document["summaries"]]


# ---------------------------------------------------------------------------------------
# scoring many summaries


@dataclass(frozen=True)
class ReferenceShots:
    """What the evaluator knows about one video: its shots' ids and concept sets, in time order."""

    shot_ids: tuple[int, ...]
    concepts: tuple[frozenset[str], ...]
    position: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.shot_ids) != len(self.concepts):
            raise ValueError(f"{len(self.shot_ids)} shot ids but {len(self.concepts)} concept sets")
        object.__setattr__(self, "position", {int(shot): i for i, shot in enumerate(self.shot_ids)})

    def positions(self, shot_ids: Sequence[int], what: str) -> list[int]:
        unknown = [int(shot) for shot in shot_ids if int(shot) not in self.position]
        if unknown:
            raise ValueError(f"{what}: shots {unknown[:5]} are not shots of the video {list(self.shot_ids)}")
        return [self.position[int(shot)] for shot in shot_ids]


def reference_shots(video_shots: pd.DataFrame) -> dict[str, ReferenceShots]:
    """Per video, its shots (``video_shots``: video_id, shot_index, start_s, concepts) in time order."""
    out = {}
    for video_id, rows in video_shots.sort_values(["video_id", "start_s"], kind="stable").groupby("video_id"):
        out[str(video_id)] = ReferenceShots(tuple(int(s) for s in rows["shot_index"]),
                                            tuple(frozenset(map(str, c)) for c in rows["concepts"]))
    return out


def score_summaries(summaries: Sequence[VideoSummary], relevant: Mapping[tuple[str, str], Sequence[int]],
                    shots: Mapping[str, ReferenceShots]) -> pd.DataFrame:
    """One row per summary (video_id, query_id, precision, recall, F1), in the order given:
    each summary against the relevant shots of its (video_id, query_id) in ``relevant``."""
    rows = []
    for summary in summaries:
        key = (summary.video_id, summary.query_id)
        if key not in relevant:
            raise KeyError(f"no reference for video {summary.video_id!r} query {summary.query_id!r}")
        if summary.video_id not in shots:
            raise KeyError(f"no shot concepts for video {summary.video_id!r}")
        video = shots[summary.video_id]
        where = f"summary {summary.video_id}/{summary.query_id}"
        selected = video.positions(summary.shot_ids, where)
        score = qfvs_score(selected, video.positions(relevant[key], f"{where} reference"), video.concepts)
        rows.append({"video_id": summary.video_id, "query_id": summary.query_id, **score.as_dict()})
    return pd.DataFrame(rows, columns=["video_id", "query_id", *METRICS])


def mean_metrics(per_query: pd.DataFrame) -> dict[str, float]:
    """The mean of each of :data:`METRICS` over the queries (NaN when there are none)."""
    return {metric: float(per_query[metric].mean()) if len(per_query) else math.nan for metric in METRICS}
