"""Moment retrieval: how well a predicted span matches a query's true windows.

A query may have several true windows (an event that happens twice, QVHighlights'
``relevant_windows``); a prediction scores against the best-matching one, as moment_detr's
standalone evaluation does. ``temporal_iou`` is the one IoU definition
(``mmpipe.eval.retrieval``).

The standalone evaluator (``mmpipe eval-moments PRED.jsonl GT.jsonl``) reads and writes the
peers' format, QVHighlights-style JSON Lines: a prediction line ``{"qid", "query", "vid",
"pred_relevant_windows": [[start_s, end_s, score], ...]}`` (best first), a ground-truth line
``{"qid", "query", "vid", "relevant_windows": [[start_s, end_s], ...]}``. Its metrics:

* **R1@IoU** (moment_detr's ``MR-full-R1``): the share of queries whose *first* predicted
  window reaches the IoU with the true window it overlaps most;
* **R5@IoU** (Charades-STA): the share whose first five windows include one that does;
* **mIoU**: the first window's IoU with its best-matching true window, averaged;
* **MR-mAP** (moment_detr's ``MR-full-mAP``): per query, detection AP over its first 10
  windows by score (each true window matched once, VOC-interpolated precision), at IoU
  0.5, 0.55, ..., 0.95; averaged over queries, then thresholds.

Numbers are fractions (moment_detr prints percentages). Its "full" length range is the only
one here: its short/middle/long ranges are QVHighlights' 150 s clips, not these videos.
``tests/data/moment/`` holds a golden prediction file with the metrics moment_detr's own
code gives it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpipe.eval.retrieval import temporal_iou
from mmpipe.io import write_bytes_atomic

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


# ---------------------------------------------------------------------------------------
# the standalone evaluator: QVHighlights-style JSONL in, moment_detr's and Charades-STA's
# metrics out


R1_IOUS = (0.5, 0.7)  # moment_detr's headline R1 thresholds (its "MR-full-R1@0.5/0.7")
CHARADES_IOUS = (0.3, 0.5, 0.7)  # R1/R5 at these IoUs, as Charades-STA papers report them
CHARADES_KS = (1, 5)
# moment_detr's MR-mAP: AP at IoU 0.5, 0.55, ..., 0.95, averaged; thresholds rounded as it does
MAP_IOUS = tuple(float(f"{iou:.2f}") for iou in np.linspace(0.5, 0.95, 10))
MAX_PRED_WINDOWS = 10  # moment_detr scores a query's first 10 predicted windows for mAP
IOU_CURVE = tuple(float(f"{iou:.2f}") for iou in np.linspace(0.05, 0.95, 19))  # the report's R1 curve

PREDICTION_KEY = "pred_relevant_windows"  # [[start_s, end_s, score], ...], best first
TRUTH_KEY = "relevant_windows"  # [[start_s, end_s], ...]


def read_jsonl(path) -> list[dict]:
    """One JSON object per non-blank line; a line that is not one names its number."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def write_jsonl(records: Sequence[Mapping], path) -> Path:
    """``records`` as JSON Lines, written atomically."""
    text = "".join(json.dumps(dict(record), sort_keys=False) + "\n" for record in records)
    return write_bytes_atomic(text.encode("utf-8"), Path(path))


def prediction_record(qid, vid: str, query: str, spans: Sequence[Sequence[float]]) -> dict:
    """One line of a prediction file: ``spans`` [[start_s, end_s, score], ...] sorted best
    first (R1 and R5 read the windows in file order, as moment_detr does)."""
    windows = sorted(([float(s), float(e), float(score)] for s, e, score in spans), key=lambda w: -w[2])
    return {"qid": qid, "query": query, "vid": vid, PREDICTION_KEY: [[round(s, 4), round(e, 4), round(score, 6)]
                                                                      for s, e, score in windows]}


def truth_record(qid, vid: str, query: str, windows: Windows, duration: float | None = None) -> dict:
    """One line of a ground-truth file (QVHighlights' keys)."""
    record = {"qid": qid, "query": query, "vid": vid, TRUTH_KEY: [[float(s), float(e)] for s, e in windows]}
    if duration is not None:
        record["duration"] = float(duration)
    return record


def _windows_of(record: Mapping, key: str, width: int, where: str) -> np.ndarray:
    if key not in record:
        raise ValueError(f"{where} has no {key!r}")
    try:
        windows = np.asarray(record[key], dtype=float).reshape(-1, width)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be a list of {width}-number lists, got {record[key]!r}") from None
    if len(windows) and (windows[:, 1] < windows[:, 0]).any():
        raise ValueError(f"{where}: a window of {key} ends before it starts: {record[key]!r}")
    return windows


def pair_by_qid(predictions: Sequence[Mapping], truths: Sequence[Mapping], match_number: bool = True
                ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(qids, predicted windows [n_i, 3], true windows [m_i, 2]) of the queries both files
    hold, in the truth file's order. With ``match_number`` both must hold the same queries
    (moment_detr's default), else only the shared ones are scored."""
    def by_qid(records, what):
        out = {}
        for i, record in enumerate(records):
            if "qid" not in record:
                raise ValueError(f"{what} record {i + 1} has no 'qid'")
            qid = str(record["qid"])
            if qid in out:
                raise ValueError(f"{what} holds query {qid!r} twice")
            out[qid] = record
        return out

    predicted, true = by_qid(predictions, "prediction"), by_qid(truths, "ground-truth")
    if match_number and set(predicted) != set(true):
        missing, extra = sorted(set(true) - set(predicted)), sorted(set(predicted) - set(true))
        raise ValueError(f"predictions and ground truth must hold the same queries: {len(missing)} without a "
                         f"prediction (e.g. {missing[:3]}), {len(extra)} not in the ground truth (e.g. {extra[:3]})")
    qids = [qid for qid in true if qid in predicted]
    if not qids:
        raise ValueError("no query is in both the predictions and the ground truth")
    pred = [_windows_of(predicted[q], PREDICTION_KEY, 3, f"prediction {q!r}") for q in qids]
    gt = [_windows_of(true[q], TRUTH_KEY, 2, f"ground truth {q!r}") for q in qids]
    for qid, windows, predicted_windows in zip(qids, gt, pred):
        if not len(windows):
            raise ValueError(f"ground truth {qid!r} has no window: a query needs at least one to be scored")
        if not len(predicted_windows):  # moment_detr reads the first window of every query
            raise ValueError(f"prediction {qid!r} has no window: predict at least one per query")
    return qids, pred, gt


def best_ious_at_k(pred: np.ndarray, gt: np.ndarray, k: int) -> float:
    """The best IoU of the first ``k`` predicted windows, each against its best-matching true
    window; 0 with no prediction."""
    top = pred[:k, :2]
    return float(temporal_iou(top[:, None], gt[None]).max()) if len(top) else 0.0


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 interpolated AP, as moment_detr (after MMAction2) computes it."""
    mprecision = np.hstack([[0.0], precision, [0.0]])
    mrecall = np.hstack([[0.0], recall, [1.0]])
    for i in range(len(mprecision) - 2, -1, -1):
        mprecision[i] = max(mprecision[i], mprecision[i + 1])
    changed = np.flatnonzero(mrecall[1:] != mrecall[:-1]) + 1
    return float(np.sum((mrecall[changed] - mrecall[changed - 1]) * mprecision[changed]))


def average_precision(pred: np.ndarray, gt: np.ndarray, ious: Sequence[float] = MAP_IOUS,
                      max_windows: int = MAX_PRED_WINDOWS) -> np.ndarray:
    """One query's AP at each IoU threshold, moment_detr's detection AP: its first
    ``max_windows`` windows by score (stable for ties), each a true positive when it
    reaches the threshold with a true window no better-scored window has taken (the
    best-overlapping free one), interpolated precision over recall of the true windows."""
    pred = pred[:max_windows]
    ap = np.zeros(len(ious))
    if not len(pred):
        return ap
    pred = pred[np.argsort(-pred[:, 2], kind="stable")]
    taken = np.full((len(ious), len(gt)), False)
    tp = np.zeros((len(ious), len(pred)))
    for p, window in enumerate(pred):
        overlap = temporal_iou(window[None, :2], gt)
        order = overlap.argsort()[::-1]  # as moment_detr: best overlap first
        for t, threshold in enumerate(ious):
            for g in order:
                if overlap[g] < threshold:
                    break
                if not taken[t, g]:
                    taken[t, g], tp[t, p] = True, 1.0
                    break
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1.0 - tp, axis=1)
    recall, precision = tp_cum / len(gt), tp_cum / (tp_cum + fp_cum)
    return np.array([_interpolated_ap(precision[t], recall[t]) for t in range(len(ious))])


@dataclass(frozen=True)
class MomentScores:
    """Per-query scores of one prediction set, in the order of ``qids`` (for bootstrap
    intervals over queries): the first window's IoU, the best IoU of the first five, and
    the AP at each mAP threshold."""

    qids: list[str]
    top1_iou: np.ndarray  # [n]
    top5_iou: np.ndarray  # [n]
    ap: np.ndarray  # [n, len(MAP_IOUS)]

    def hits(self, k: int, iou: float) -> np.ndarray:
        """bool [n]: a window among the first ``k`` reaches ``iou`` with a true window."""
        if k not in CHARADES_KS:
            raise ValueError(f"scores are kept for R1 and R5, not R{k}")
        return (self.top1_iou if k == 1 else self.top5_iou) >= iou

    def metrics(self) -> dict[str, float]:
        """R1@0.3/0.5/0.7, R5@0.3/0.5/0.7, mIoU (the first window's IoU, averaged) and
        MR-mAP (its average over MAP_IOUS, and at 0.5 and 0.75), as fractions."""
        out = {f"R{k}@{iou:g}": float(self.hits(k, iou).mean()) for k in CHARADES_KS for iou in CHARADES_IOUS}
        out["mIoU"] = float(self.top1_iou.mean())
        per_threshold = self.ap.mean(0)
        out["mAP"] = float(per_threshold.mean())
        out["mAP@0.5"] = float(per_threshold[MAP_IOUS.index(0.5)])
        out["mAP@0.75"] = float(per_threshold[MAP_IOUS.index(0.75)])
        return out

    def r1_curve(self, ious: Sequence[float] = IOU_CURVE) -> np.ndarray:
        return np.array([float((self.top1_iou >= iou).mean()) for iou in ious])


def score_windows(qids: Sequence[str], pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> MomentScores:
    """:class:`MomentScores` of predicted windows [n_i, 3] (best first) against true
    windows [m_i, 2], query by query."""
    return MomentScores(list(qids), np.array([best_ious_at_k(p, g, 1) for p, g in zip(pred, gt)]),
                        np.array([best_ious_at_k(p, g, 5) for p, g in zip(pred, gt)]),
                        np.stack([average_precision(p, g) for p, g in zip(pred, gt)]))


def score_predictions(predictions: Sequence[Mapping], truths: Sequence[Mapping],
                      match_number: bool = True) -> MomentScores:
    """Score QVHighlights-style records (``pred_relevant_windows`` against ``relevant_windows``)."""
    return score_windows(*pair_by_qid(predictions, truths, match_number))


def evaluate_files(predictions_path, truth_path, match_number: bool = True) -> dict[str, float]:
    """Metrics of a prediction JSONL against a ground-truth JSONL, with the query count."""
    scores = score_predictions(read_jsonl(predictions_path), read_jsonl(truth_path), match_number)
    return {**scores.metrics(), "n_queries": len(scores.qids)}
