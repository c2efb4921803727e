"""The moment model's evaluation: moment retrieval by date window, against baselines.

Every method is reduced to the same thing, each held-out query's ranked spans
``[[start_s, end_s, score], ...]``, and scored by the standalone evaluator
(:mod:`mmpipe.eval.moment`: R1/R5 at IoU 0.3/0.5/0.7, mIoU, MR-mAP), so the challenger,
the baselines, the ceiling and the sweeps meet on the same queries:

* **Windows** (:mod:`mmpipe.eval.splits`, by video creation date): training saw the train
  window's queries only. The validation window's R1@0.7 is the promotion gate's number and
  early stopping's; the test window's numbers are the report's. Nothing is chosen on test.
* **Rows**: ``moment`` (the challenger); baselines ``random_span`` (two uniform points of
  the video, sorted: the floor), ``fixed_span_prior`` (the one span, as a share of the
  duration or in seconds, that scores best on the training queries:
  :func:`mmpipe.eval.moment.best_fixed_span_prior`) and ``query_frame_similarity`` (the
  image encoder's own text embedding of the query against each frame's embedding, frames
  above a per-video threshold make runs, runs ranked by mean similarity; the threshold is
  fitted on the training queries); the ceiling ``true_frames`` (the true inside frames
  read as spans half a frame step beyond their ends: what perfect per-frame perception
  gives at this frame rate without sub-frame regression).
* **Gains** over the best baseline on R1@0.7 and R1@0.5: the difference in points with a
  paired-bootstrap 90% interval over the queries, and the ratio with its interval.

``evaluate_sweeps`` (the ablations job): each sweep (no segmentation, no distributions, no
regression, late fusion) against the model, with the differences and their intervals.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmpipe.eval.moment import CHARADES_IOUS, IOU_CURVE, MomentScores, best_fixed_span_prior, best_ious_at_k
from mmpipe.eval.report import (comparison_line, comparisons_summary, methods_legend, metrics_table_markdown,
                                report_order, signed_points, windows_sentence)
from mmpipe.eval.retrieval import paired_bootstrap_difference, paired_comparison
from mmpipe.media.features import registry_text_embeddings
from mmpipe.spec import EvalOutcome
from mmpipe.systems.moment.data import TEST, TRAIN, VALIDATION, MomentInputs
from mmpipe.systems.moment.model import DecodeConfig, MomentModel
from mmpipe.systems.moment.serve import load_version
from mmpipe.systems.moment.train import MomentSettings, load_trained, predict_spans, score_spans
from mmpipe.train.checkpoint import read_trainer_state
from mmpipe.train.loop import CHECKPOINT_DIR

WINDOWS = (VALIDATION, TEST)
MODEL_NAME = "moment"
RANDOM_SPAN = "random_span"
FIXED_PRIOR = "fixed_span_prior"
SIMILARITY = "query_frame_similarity"
TRUE_FRAMES = "true_frames"
START_END_ONLY = f"{MODEL_NAME}_start_end_decoding"  # the ablations report's model without the segmentation term
BASELINES = (RANDOM_SPAN, FIXED_PRIOR, SIMILARITY)
RANDOM_SEED = 0
TOP_K = 10  # spans per query of the baselines that rank several


def metric_key(metric: str, window: str) -> str:
    """How every number is named: ``metric_key("R1@0.7", "test")`` is ``"R1@0.7/test"``."""
    return f"{metric}/{window}"


# The gate's and the baselines check's metric: R1@0.7 on validation (promotion never looks
# at test); the report leads with the same metric on test.
PRIMARY_METRIC = metric_key("R1@0.7", VALIDATION)
HEADLINE_METRIC = metric_key("R1@0.7", TEST)
HIGHER_IS_BETTER = True
COMPARED = ((1, 0.7), (1, 0.5))  # (k, IoU) of the gains reported with intervals

# The ablations job's runs (name -> settings overrides), each against the model.
SWEEPS = {
    "no_segmentation": {"model": {"segmentation": False}},
    "no_distributions": {"model": {"distributions": False}},
    "no_regression": {"model": {"regression": False}},
    "late_fusion": {"model": {"fusion": "late"}},
}

DESCRIPTIONS = {
    MODEL_NAME: "the moment model: early fusion, self- and two-way cross-attention, segmentation + start/end "
                "distributions + regression heads; spans ranked by the start x end product (plus a share of their "
                "segmentation log-likelihood), refined by regression, top 10 by NMS.",
    RANDOM_SPAN: "two points drawn uniformly in the video, sorted (10 per query): the floor.",
    FIXED_PRIOR: "the one span (share of the duration or seconds) that scores best at IoU 0.7 on the training "
                 "queries, for every query.",
    SIMILARITY: "the image encoder's text embedding of the query (its registered pyfunc) against every frame's "
                "embedding: frames above min + a * (max - min) of the video's similarities make runs, ranked "
                "by mean similarity; a fitted on the training queries.",
    TRUE_FRAMES: "the true inside frames as spans, half a frame step beyond each end: perfect per-frame "
                 "perception at this frame rate, without sub-frame regression (a ceiling for frame-grid spans).",
}


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(float(value))


# ---------------------------------------------------------------------------------------
# the baselines


def random_spans(inputs: MomentInputs, rows: np.ndarray, k: int = TOP_K, seed: int = RANDOM_SEED
                 ) -> list[list[list[float]]]:
    """``k`` spans per query from two uniform points of its video, sorted, scored in draw order."""
    rng = np.random.default_rng(seed)
    spans = []
    for row in rows:
        points = np.sort(rng.uniform(0.0, inputs.duration(int(row)), size=(k, 2)), axis=1)
        spans.append([[float(s), float(e), 1.0 - i / k] for i, (s, e) in enumerate(points)])
    return spans


def prior_spans(inputs: MomentInputs, rows: np.ndarray, fit_rows: np.ndarray) -> list[list[list[float]]]:
    """The best fixed span of the ``fit_rows`` queries (R1@0.7), the one span of every query."""
    prior = best_fixed_span_prior([inputs.true_windows(int(r)) for r in fit_rows],
                                  [inputs.duration(int(r)) for r in fit_rows], iou=0.7)
    spans = []
    for row in rows:
        scale = inputs.duration(int(row)) if prior.relative else 1.0
        spans.append([[prior.start * scale, min(prior.end * scale, inputs.duration(int(row))), 1.0]])
    return spans


def frame_similarities(inputs: MomentInputs, rows: np.ndarray, text_embeddings: np.ndarray) -> list[np.ndarray]:
    """Cosine similarity [T] of each query's text embedding with each frame of its video."""
    text = text_embeddings / np.maximum(np.linalg.norm(text_embeddings, axis=1, keepdims=True), 1e-12)
    out = []
    for row, query in zip(rows, text):
        frames = inputs.frames[inputs.video_of(int(row))]
        frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
        out.append(frames @ query)
    return out


def threshold_runs(similarity: np.ndarray, times: np.ndarray, duration: float, frame_step: float, share: float,
                   k: int = TOP_K) -> list[list[float]]:
    """Runs of frames whose similarity is at least ``min + share * (max - min)``, as spans
    half a frame step beyond their ends, ranked by mean similarity (at most ``k``).

    >>> threshold_runs(np.array([0.1, 0.9, 0.8, 0.1, 0.7]), np.arange(5.0), 5.0, 1.0, 0.5)
    [[0.5, 2.5, 0.85], [3.5, 4.5, 0.7]]
    """
    low, high = float(similarity.min()), float(similarity.max())
    above = similarity >= low + share * (high - low)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(np.int8), [0]])))
    runs = [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
    spans = [[max(float(times[a]) - frame_step / 2, 0.0), min(float(times[b]) + frame_step / 2, duration),
              round(float(similarity[a:b + 1].mean()), 6)] for a, b in runs]
    return sorted(spans, key=lambda span: -span[2])[:k]


def similarity_spans(inputs: MomentInputs, rows: np.ndarray, similarities: Sequence[np.ndarray], share: float
                     ) -> list[list[list[float]]]:
    step = inputs.frame_step
    return [threshold_runs(s, inputs.times[inputs.video_of(int(r))], inputs.duration(int(r)), step, share)
            for r, s in zip(rows, similarities)]


def fit_similarity_share(inputs: MomentInputs, rows: np.ndarray, similarities: Sequence[np.ndarray],
                         grid: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> float:
    """The threshold share with the best R1@0.7 on the ``rows`` queries (the training ones)."""
    truths = [inputs.true_windows(int(row)) for row in rows]

    def recall(share: float) -> float:
        spans = similarity_spans(inputs, rows, similarities, share)
        return float(np.mean([best_ious_at_k(np.asarray(s), t, 1) >= 0.7 for s, t in zip(spans, truths)]))

    return float(grid[int(np.argmax([recall(share) for share in grid]))])


def true_frame_spans(inputs: MomentInputs, rows: np.ndarray) -> list[list[list[float]]]:
    """Each true window's inside frames as a span half a frame step beyond its ends."""
    step = inputs.frame_step
    spans = []
    for row in rows:
        row = int(row)
        labels, times, duration = inputs.labels(row), inputs.times[inputs.video_of(row)], inputs.duration(row)
        spans.append([[max(times[a] - step / 2, 0.0), min(times[b] + step / 2, duration), 1.0]
                      for a, b in zip(labels.starts, labels.ends)])
    return spans


# ---------------------------------------------------------------------------------------
# scores


class Scores:
    """Every method's per-query scores and metrics, each window."""

    def __init__(self):
        self.per_query: dict[str, dict[str, MomentScores]] = {}  # method -> window -> scores
        self.spans: dict[str, dict[str, list]] = {}  # method -> window -> spans per query
        self.metrics: dict[str, dict[str, float]] = {}  # method -> metric key -> value

    def add(self, method: str, inputs: MomentInputs, rows_by_window: Mapping[str, np.ndarray],
            spans_by_window: Mapping[str, list]) -> None:
        if method in self.metrics:
            raise ValueError(f"two methods are named {method!r}")
        self.per_query[method], self.spans[method], self.metrics[method] = {}, {}, {}
        for window, rows in rows_by_window.items():
            if not len(rows):
                continue
            scores = score_spans(inputs, rows, spans_by_window[window])
            self.per_query[method][window] = scores
            self.spans[method][window] = spans_by_window[window]
            self.metrics[method].update({metric_key(name, window): value for name, value in scores.metrics().items()})


def compare(scores: Scores, model: str, others: Sequence[str], window: str, k: int = 1, iou: float = 0.7) -> dict:
    """``model`` against the best of ``others`` on R{k}@{iou}: the difference (points) and
    the ratio, each with a paired-bootstrap 90% interval over the window's queries."""
    key = metric_key(f"R{k}@{iou:g}", window)
    scored = [name for name in others if _finite(scores.metrics.get(name, {}).get(key))]
    if not scored or not _finite(scores.metrics[model].get(key)):
        return {"metric": key, "best_baseline": None, "model": math.nan, "baseline": math.nan,
                "difference": math.nan, "difference_ci": (math.nan, math.nan), "ratio": math.nan,
                "ratio_ci": (math.nan, math.nan), "gain": math.nan, "gain_ci": (math.nan, math.nan)}
    best = max(scored, key=lambda name: scores.metrics[name][key])
    comparison = paired_comparison(scores.per_query[model][window].hits(k, iou),
                                   scores.per_query[best][window].hits(k, iou))
    return {"metric": key, "best_baseline": best, **comparison}


def table_columns(window: str) -> list[str]:
    return [metric_key(name, window) for name in
            (*(f"R{k}@{iou:g}" for k in (1, 5) for iou in CHARADES_IOUS), "mIoU", "mAP", "mAP@0.5", "mAP@0.75")]


# ---------------------------------------------------------------------------------------
# plots


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # same numbers, same bytes (DVC)
    return buffer.getvalue()


def r1_curve_png(scores: Scores, window: str, order: Sequence[str], highlight: str) -> bytes:
    """R1 against the IoU threshold (0.05 to 0.95) for every method on one window."""
    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Figure + Agg canvas, not pyplot: no global state, safe in threads
    ax = fig.add_subplot()
    for name in order:
        per_query = scores.per_query.get(name, {}).get(window)
        if per_query is None:
            continue
        ax.plot(IOU_CURVE, per_query.r1_curve(), label=name, linewidth=2.5 if name == highlight else 1.2,
                linestyle=":" if name in (RANDOM_SPAN, TRUE_FRAMES) else "-")
    ax.axvline(0.7, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("R1")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"R1 over IoU thresholds, {window} window", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def timeline_png(inputs: MomentInputs, rows: np.ndarray, scores: Scores, window: str, methods: Sequence[str],
                 n_examples: int = 8, seed: int = 0) -> bytes:
    """Example queries of one window on a timeline: the true windows and each method's first span."""
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(rows), size=min(n_examples, len(rows)), replace=False))
    fig = Figure(figsize=(9.0, 1.0 + 0.9 * len(picks)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), 1, squeeze=False)[:, 0]
    colors = {name: color for name, color in zip(methods, ("tab:blue", "tab:orange", "tab:green", "tab:red"))}
    for ax, pick in zip(axes, picks):
        row = int(rows[pick])
        lanes = ["truth", *methods]
        for start, end in inputs.true_windows(row):
            ax.barh(0, end - start, left=start, height=0.7, color="black")
        for lane, name in enumerate(methods, start=1):
            spans = scores.spans[name][window][pick]
            if spans:
                start, end = spans[0][:2]
                iou = scores.per_query[name][window].top1_iou[pick]
                ax.barh(lane, end - start, left=start, height=0.7, color=colors.get(name, "tab:purple"))
                ax.text(end + 0.1, lane, f"{iou:.2f}", va="center", fontsize=6)
        ax.set_xlim(0, inputs.duration(row))
        ax.set_yticks(range(len(lanes)), lanes, fontsize=6)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{inputs.queries['query_id'].iloc[row]}: \"{inputs.queries['query'].iloc[row]}\"", fontsize=7,
                     loc="left")
    axes[-1].set_xlabel("seconds (first predicted span of each method; its IoU at the bar's end)", fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------
# the report


def _counts(inputs: MomentInputs, rows_by_window: Mapping[str, np.ndarray]) -> dict:
    return {window: {"queries": int(len(rows)),
                     "videos": int(inputs.queries["video_row"].to_numpy()[rows].size and
                                   len(np.unique(inputs.queries["video_row"].to_numpy()[rows])))}
            for window, rows in rows_by_window.items()}


def moment_report(scores: Scores, inputs: MomentInputs, rows_by_window: Mapping[str, np.ndarray],
                  model: str = MODEL_NAME, baselines: Sequence[str] = BASELINES, ceiling: str | None = TRUE_FRAMES,
                  descriptions: Mapping[str, str] | None = None) -> tuple[str, dict[str, bytes], dict]:
    """Markdown, the PNG plots and the summary (for ``write_report`` and the overview)."""
    metrics = scores.metrics
    order = report_order(metrics, model, baselines)
    described = {**DESCRIPTIONS, **(descriptions or {})}
    comparisons = {metric_key(f"R{k}@{iou:g}", window): compare(scores, model, baselines, window, k, iou)
                   for window in (TEST, VALIDATION) for k, iou in COMPARED if len(rows_by_window[window])}
    counts = _counts(inputs, rows_by_window)
    w = inputs.windows
    lines = [f"# Moment retrieval evaluation: {model}", ""]
    headline = comparisons.get(HEADLINE_METRIC)
    if headline is not None and headline["best_baseline"] is not None:
        lines += [f"**Test window: R1@0.7 {headline['model']:.3f}** against the best baseline "
                  f"{headline['best_baseline']} {headline['baseline']:.3f}: "
                  f"{signed_points(headline['difference'])} points (90% CI "
                  f"{signed_points(headline['difference_ci'][0])} to "
                  f"{signed_points(headline['difference_ci'][1])}).", ""]
    lines += [
        windows_sentence(w, "video", {TRAIN: f"{len(inputs.query_rows(TRAIN))} queries",
                                      **{window: f"{counts[window]['queries']} queries over {counts[window]['videos']} "
                                                 "videos" for window in (VALIDATION, TEST)}}, PRIMARY_METRIC)
        + " Each query's spans are scored against the best-matching of its "
        "true windows by the standalone evaluator (`mmpipe eval-moments`): R1/R5 at IoU 0.3/0.5/0.7 and mIoU "
        "(Charades-STA), MR-mAP (moment_detr; R1@0.5/0.7 are its MR-R1). Frame features: "
        f"{inputs.encoder} v{inputs.encoder_version}, one frame every {inputs.frame_step:g} s.", ""]
    for window in (TEST, VALIDATION):
        if not len(rows_by_window[window]):
            continue
        lines += [f"## {window.capitalize()} window ({counts[window]['queries']} queries)", "",
                  metrics_table_markdown({name: metrics[name] for name in order}, columns=table_columns(window),
                                         highlight=model), ""]
        lines += [f"- {comparison_line(c)}" for key, c in comparisons.items()
                  if key.endswith(f"/{window}") and c["best_baseline"] is not None]
        lines.append("")
    roles = {model: "model", **{name: "baseline" for name in baselines}, **({ceiling: "ceiling"} if ceiling else {})}
    lines += ["## Rows", "", *methods_legend(order, roles, described)]
    markdown = "\n".join(lines) + "\n"

    plots = {}
    for window in (TEST, VALIDATION):
        if len(rows_by_window[window]):
            plots[f"r1_over_iou_{window}"] = r1_curve_png(scores, window, order, model)
    if len(rows_by_window[TEST]):
        plots["examples_test"] = timeline_png(inputs, rows_by_window[TEST], scores, TEST,
                                              [name for name in (model, SIMILARITY, FIXED_PRIOR) if name in metrics])
    summary = {
        "model": model, "baselines": list(baselines), "oracle": ceiling if ceiling in metrics else None,
        "floor": RANDOM_SPAN,
        "primary_metrics": [HEADLINE_METRIC, metric_key("R1@0.5", TEST), metric_key("mAP", TEST), PRIMARY_METRIC],
        "lower_is_better": [],
        **comparisons_summary(comparisons),
        "metrics": {name: metrics[name] for name in order},
        "windows": {"train_end": w.train_end, "test_start": w.test_start},
        "cutoff_date": w.train_end,
        "queries": counts,
        "frame_features": {"encoder": inputs.encoder, "version": inputs.encoder_version,
                           "frame_step_s": inputs.frame_step},
    }
    return markdown, plots, summary


# ---------------------------------------------------------------------------------------
# the whole evaluation, and the gate's evidence


def held_out_rows(inputs: MomentInputs) -> dict[str, np.ndarray]:
    return {window: inputs.query_rows(window) for window in WINDOWS}


def baseline_rows(inputs: MomentInputs, rows_by_window: Mapping[str, np.ndarray],
                  text_embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> list[tuple[str, dict]]:
    """(name, spans by window) of every baseline and the ceiling. ``text_embed`` (texts ->
    vectors in the frame features' space) defaults to the image encoder's registered version."""
    train_rows = inputs.query_rows(TRAIN)
    if text_embed is None:
        def text_embed(texts):
            return registry_text_embeddings(inputs.encoder, inputs.encoder_version, texts)

    all_rows = np.concatenate([train_rows, *rows_by_window.values()])
    embedded = text_embed(inputs.queries["query"].astype(str).to_numpy()[all_rows].tolist())
    if embedded.shape != (len(all_rows), inputs.frame_dim):
        raise ValueError(f"{inputs.encoder} v{inputs.encoder_version} embeds texts as {embedded.shape[1:]} but its "
                         f"frame features are {inputs.frame_dim}-d: they are not one space")
    position = {int(row): i for i, row in enumerate(all_rows)}

    def similarities(rows):
        return frame_similarities(inputs, rows, embedded[[position[int(r)] for r in rows]])

    share = fit_similarity_share(inputs, train_rows, similarities(train_rows))
    return [
        (RANDOM_SPAN, {w: random_spans(inputs, rows) for w, rows in rows_by_window.items()}),
        (FIXED_PRIOR, {w: prior_spans(inputs, rows, train_rows) for w, rows in rows_by_window.items()}),
        (SIMILARITY, {w: similarity_spans(inputs, rows, similarities(rows), share)
                      for w, rows in rows_by_window.items()}),
        (TRUE_FRAMES, {w: true_frame_spans(inputs, rows) for w, rows in rows_by_window.items()}),
    ]


def model_spans(model: MomentModel, decode: DecodeConfig, inputs: MomentInputs,
                rows_by_window: Mapping[str, np.ndarray]) -> dict[str, list]:
    return {window: predict_spans(model, inputs, rows, decode) for window, rows in rows_by_window.items()}


def gate_metric(model: MomentModel, decode: DecodeConfig, inputs: MomentInputs, rows: np.ndarray) -> float:
    """The gate's number for one model: R1@0.7 on the validation window."""
    return float(score_spans(inputs, rows, predict_spans(model, inputs, rows, decode)).hits(1, 0.7).mean())


def rescore_champion(champion: str, inputs: MomentInputs, rows: np.ndarray) -> tuple[float | None, str]:
    """The champion's primary metric on the challenger's validation window, or (None, why
    not): a champion trained on other frame features (another encoder or width) cannot read these."""
    try:
        model, decode = load_version(champion, inputs.encoder, inputs.encoder_version)
        return gate_metric(model, decode, inputs, rows), ""
    except ValueError as err:
        return None, (f"Champion version {champion} was not re-scored ({err}); "
                      "the gate uses the number its own eval recorded.")


def evaluate(inputs: MomentInputs, settings: MomentSettings, challenger_version: str, champion_version: str | None,
             ablation_dirs: Mapping[str, Path], text_embed: Callable[[Sequence[str]], np.ndarray] | None = None
             ) -> EvalOutcome:
    """The registered challenger against the baselines and the ceiling on the validation and
    test windows (plus any ablation trained beside it, as ``moment_<name>`` rows); the
    champion, when there is another one, re-scored on the validation window."""
    model, decode = load_version(challenger_version, inputs.encoder, inputs.encoder_version)
    rows_by_window = held_out_rows(inputs)
    scores = Scores()
    scores.add(MODEL_NAME, inputs, rows_by_window, model_spans(model, decode, inputs, rows_by_window))
    descriptions = {}
    for name, directory in ablation_dirs.items():
        row = f"{MODEL_NAME}_{name}"
        scores.add(row, inputs, rows_by_window, model_spans(*load_trained(directory), inputs, rows_by_window))
        descriptions[row] = f"ablation `{name}`, trained beside the model."
    for name, spans in baseline_rows(inputs, rows_by_window, text_embed):
        scores.add(name, inputs, rows_by_window, spans)
    markdown, plots, summary = moment_report(scores, inputs, rows_by_window, descriptions=descriptions)
    champion_value, note = None, ""
    if champion_version is not None and str(champion_version) != str(challenger_version):
        champion_value, note = rescore_champion(str(champion_version), inputs, rows_by_window[VALIDATION])
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]),
                       champion_value, note)


# ---------------------------------------------------------------------------------------
# the ablations job


def training_record(model_dir: Path) -> dict:
    """What a training run's checkpoint says about it: its heads, fusion, steps, wall-clock."""
    state = read_trainer_state(Path(model_dir) / CHECKPOINT_DIR)
    model = state["config"]["model"]
    seconds = (state.get("extra") or {}).get("train_seconds")
    best = {phase: record.get("best_step") for phase, record in ((state.get("extra") or {}).get("validation")
                                                                 or {}).items()}
    return {"early_fusion": model["fusion"] == "early", "segmentation": bool(model["segmentation"]),
            "distributions": bool(model["distributions"]), "regression": bool(model["regression"]),
            "steps": int(state["config"]["train"]["steps"]), "best_step": best.get("moments"),
            "train_seconds": float(seconds) if seconds is not None else None}


def evaluate_sweeps(inputs: MomentInputs, settings: MomentSettings, model_dir: Path,
                    sweep_dirs: Mapping[str, Path], text_embed: Callable[[Sequence[str]], np.ndarray] | None = None
                    ) -> EvalOutcome:
    """The ablations job's report: each sweep's model against the model it varies (its last
    run in ``model_dir``), with the baselines, in one table; the R1@0.7 and R1@0.5
    differences (model - sweep) on validation and test with paired-bootstrap 90% intervals."""
    rows_by_window = held_out_rows(inputs)
    runs = {MODEL_NAME: Path(model_dir), **{name: Path(path) for name, path in sweep_dirs.items()}}
    scores = Scores()
    for name, path in runs.items():
        scores.add(name, inputs, rows_by_window, model_spans(*load_trained(path), inputs, rows_by_window))
    # The model's spans from the start x end product alone: what its segmentation head adds
    # at decoding, apart from what training with it did to the other heads.
    model, decode = load_trained(runs[MODEL_NAME])
    scores.add(START_END_ONLY, inputs, rows_by_window,
               model_spans(model, dataclasses.replace(decode, segmentation_weight=0.0), inputs, rows_by_window))
    for name, spans in baseline_rows(inputs, rows_by_window, text_embed):
        scores.add(name, inputs, rows_by_window, spans)
    records = {name: training_record(path) for name, path in runs.items()}

    differences = {}
    for name in (*sweep_dirs, START_END_ONLY):
        for window in WINDOWS:
            if not len(rows_by_window[window]):
                continue
            for k, iou in COMPARED:
                key = metric_key(f"R{k}@{iou:g}", window)
                hits = scores.per_query[MODEL_NAME][window].hits(k, iou)
                sweep_hits = scores.per_query[name][window].hits(k, iou)
                differences[f"{name}/{key}"] = {
                    "sweep": name, "metric": key,
                    "difference": scores.metrics[MODEL_NAME][key] - scores.metrics[name][key],
                    "ci": paired_bootstrap_difference(hits, sweep_hits)}

    counts = _counts(inputs, rows_by_window)
    lines = [f"# Moment retrieval ablations: {', '.join(sweep_dirs)} against {MODEL_NAME}", "",
             "Each sweep is the default training with one change (its SPEC entry): `no_segmentation`, "
             "`no_distributions` (spans from the segmentation head) and `no_regression` (spans half a frame "
             "step beyond their frames) drop a head and its loss; `late_fusion` encodes the video and the query "
             f"apart and fuses them only at the top. `{START_END_ONLY}` is the model itself, its spans ranked by the "
             "start x end product alone (no segmentation term): the segmentation head's share at decoding. Validation: "
             f"{counts[VALIDATION]['queries']} queries; test: {counts[TEST]['queries']}.", "",
             "## Moment retrieval", "",
             metrics_table_markdown(scores.metrics, highlight=MODEL_NAME, columns=[
                 *(metric_key(f"R1@{iou:g}", w) for w in WINDOWS for iou in CHARADES_IOUS),
                 metric_key("mIoU", TEST), metric_key("mAP", TEST), metric_key("R5@0.7", TEST)]), "",
             "## Training", "",
             metrics_table_markdown(records, highlight=MODEL_NAME, columns=[
                 "early_fusion", "segmentation", "distributions", "regression", "steps", "best_step",
                 "train_seconds"]),
             "", f"## Differences ({MODEL_NAME} − sweep, in points of recall)", ""]
    for d in differences.values():
        lines.append(f"- {d['sweep']}, {d['metric']}: {signed_points(d['difference'])} "
                     f"(90% CI {signed_points(d['ci'][0])} to {signed_points(d['ci'][1])})")
    markdown = "\n".join(lines) + "\n"
    plots = {f"r1_over_iou_{TEST}": r1_curve_png(scores, TEST, list(scores.metrics), MODEL_NAME)} \
        if len(rows_by_window[TEST]) else {}
    # No "oracle" key: the overview reads eval summaries only, and sweeps are not baselines.
    summary = {"model": MODEL_NAME, "baselines": list(sweep_dirs), "metrics": scores.metrics,
               "differences": differences, "training": records,
               "primary_metrics": [HEADLINE_METRIC, metric_key("R1@0.5", TEST), PRIMARY_METRIC],
               "lower_is_better": []}
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]))
