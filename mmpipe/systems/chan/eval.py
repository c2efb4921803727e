"""CHAN's evaluation: query-focused summaries by date window, scored with the QFVS protocol
(:mod:`mmpipe.eval.summarization`) against baselines and the relevance ceiling.

The protocol never sees a model, only each method's selected shots per query
(:class:`MethodSummaries`), so the challenger, the ablations, the baselines and the ceiling
are scored by the same code on the same queries under the same length budget:

* **Windows** (:mod:`mmpipe.eval.splits`, by video creation date): training saw only the
  train window's queries. The validation window's F1 is the promotion gate's and model
  selection's (``F1/validation``), the test window's the report's; nothing is chosen on test.
* **Summaries**: every method keeps, per query, the shots the budget allows (the settings'
  :class:`~mmpipe.eval.summarization.LengthBudget`, the same for every row), in time order.
* **Rows**: ``chan`` (the challenger: its best-scored shots); ``query_similarity`` (cosine of
  the image encoder's text embedding of the query, ``"red, striped"``, and each shot's
  feature, the same registered version that embedded the frames: what the project has
  without training on summaries); ``uniform`` (evenly spaced shots); ``random`` (random
  shots, seeded per query); ``relevance_ceiling`` (the true relevant shots first: what a
  perfect relevance scorer gets under this budget, the oracle row).
* **Gains**: CHAN's F1 minus each baseline's, in points, with a paired-bootstrap 90%
  interval over the queries (:func:`mmpipe.eval.retrieval.paired_comparison`).

``evaluate_sweeps`` (the ablations job): CHAN without local self-attention and without
query-aware global attention against the model, same table, each difference with its interval.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmpipe.eval.report import (bar_plot_png, methods_legend, metrics_table_markdown, report_order, signed_points,
                                windows_sentence)
from mmpipe.eval.retrieval import paired_comparison
from mmpipe.eval.summarization import METRICS, LengthBudget, uniform_selection
from mmpipe.media.features import registry_text_embeddings
from mmpipe.spec import EvalOutcome
from mmpipe.systems.chan.data import TEST, TRAIN, VALIDATION, CHANInputs
from mmpipe.systems.chan.model import CHAN
from mmpipe.systems.chan.serve import load_version_model
from mmpipe.systems.chan.train import CHANSettings, load_trained, qfvs_per_query, score_shots, select_by_scores

WINDOWS = (VALIDATION, TEST)
MODEL_NAME = "chan"
QUERY_SIMILARITY = "query_similarity"
UNIFORM = "uniform"
RANDOM_NAME = "random"
CEILING = "relevance_ceiling"
BASELINES = (QUERY_SIMILARITY, UNIFORM, RANDOM_NAME)
RANDOM_SEED = 0


def metric_key(metric: str, window: str) -> str:
    """How every number is named: ``metric_key("F1", "test")`` is ``"F1/test"``."""
    return f"{metric}/{window}"


# The gate's and the baselines check's metric: F1 on the validation window, so promotion
# never looks at test. The report leads with the same metric on test.
PRIMARY_METRIC = metric_key("F1", VALIDATION)
HEADLINE_METRIC = metric_key("F1", TEST)
HIGHER_IS_BETTER = True

# The ablations job's runs (name -> settings overrides), each against the model.
SWEEPS = {
    "no_local_attention": {"model": {"local_attention": False}},
    "no_global_attention": {"model": {"global_attention": False}},
}

DESCRIPTIONS = {
    MODEL_NAME: "CHAN, the challenger: each query's best-scored shots under the budget.",
    QUERY_SIMILARITY: "cosine of the image encoder's text embedding of the query (its registered pyfunc, the "
                      "version that embedded the frames) and each shot's feature: the budget's most similar shots.",
    UNIFORM: "evenly spaced shots (the middle of equal stretches of the video's shots).",
    RANDOM_NAME: f"random shots (seed {RANDOM_SEED} and the query's row).",
    CEILING: "the query's relevant shots first (then the others in time order): what a perfect relevance "
             "scorer gets under this budget.",
}


# ---------------------------------------------------------------------------------------
# every method's summaries


@dataclass
class MethodSummaries:
    """One method's selected shot positions per query row of each window, and its per-shot
    scores when it scores shots (the plots show them)."""

    name: str
    selections: dict[str, list[np.ndarray]]  # window -> one array per query row
    scores: dict[str, list[np.ndarray]] | None = None


def window_rows(inputs: CHANInputs) -> dict[str, np.ndarray]:
    return {window: inputs.query_rows(window) for window in WINDOWS}


def scored_method(name: str, inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget,
                  score: Callable[[np.ndarray], list[np.ndarray]]) -> MethodSummaries:
    """A method that scores each shot (``score(query rows) -> [scores per row]``): its
    best-scored shots under the budget."""
    scores = {window: score(query_rows) for window, query_rows in rows.items()}
    return MethodSummaries(name, {window: select_by_scores(inputs, rows[window], scores[window], budget)
                                  for window in rows}, scores)


def model_method(name: str, model: CHAN, inputs: CHANInputs, rows: Mapping[str, np.ndarray],
                 budget: LengthBudget) -> MethodSummaries:
    return scored_method(name, inputs, rows, budget, lambda r: score_shots(model, inputs, r))


def query_similarity_method(inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget
                            ) -> MethodSummaries:
    """Cosine of the encoder's text embedding of each query with each shot's feature."""
    all_rows = np.concatenate(list(rows.values()))
    texts = inputs.queries["query"].to_numpy()[all_rows].tolist()
    text = registry_text_embeddings(inputs.encoder, inputs.encoder_version, texts)
    dim = inputs.videos[0].features.shape[1]
    if len(all_rows) and text.shape != (len(all_rows), dim):
        raise ValueError(f"{inputs.encoder} v{inputs.encoder_version} embeds texts as {text.shape[1:]} but its "
                         f"shot features are {dim}-d: they are not one space")
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    by_row = dict(zip(all_rows.tolist(), text))

    def score(query_rows: np.ndarray) -> list[np.ndarray]:  # shot features are unit vectors
        return [inputs.video_of(row).features @ by_row[int(row)] for row in query_rows]

    return scored_method(QUERY_SIMILARITY, inputs, rows, budget, score)


def random_method(inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget,
                  seed: int = RANDOM_SEED) -> MethodSummaries:
    def score(query_rows: np.ndarray) -> list[np.ndarray]:
        return [np.random.default_rng([seed, int(row)]).random(len(inputs.video_of(row))) for row in query_rows]

    return scored_method(RANDOM_NAME, inputs, rows, budget, score)


def ceiling_method(inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget) -> MethodSummaries:
    return scored_method(CEILING, inputs, rows, budget, lambda r: [inputs.relevance(row) for row in r])


def uniform_method(inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget) -> MethodSummaries:
    return MethodSummaries(UNIFORM, {window: [uniform_selection(inputs.video_of(row).durations, budget)
                                              for row in query_rows] for window, query_rows in rows.items()})


# ---------------------------------------------------------------------------------------
# scores


@dataclass
class Scores:
    metrics: dict[str, dict[str, float]]  # method -> metric key -> value
    per_query: dict[str, dict[str, pd.DataFrame]]  # method -> window -> precision, recall, F1 per query


def score_methods(methods: Sequence[MethodSummaries], inputs: CHANInputs, rows: Mapping[str, np.ndarray]) -> Scores:
    """Every method's mean precision, recall and F1 per window (NaN for a window without queries)."""
    metrics: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, pd.DataFrame]] = {}
    for method in methods:
        if method.name in metrics:
            raise ValueError(f"two methods are named {method.name!r}")
        metrics[method.name], per_query[method.name] = {}, {}
        for window, query_rows in rows.items():
            table = qfvs_per_query(inputs, query_rows, method.selections[window])
            per_query[method.name][window] = table
            metrics[method.name].update({metric_key(metric, window): float(table[metric].mean())
                                         if len(table) else math.nan for metric in METRICS})
    return Scores(metrics, per_query)


def compare(scores: Scores, model: str, other: str, window: str) -> dict:
    """``model``'s F1 against ``other``'s on a window: the difference in points and the
    relative gain, each with a paired-bootstrap 90% interval over the queries."""
    f1 = {name: scores.per_query[name][window]["F1"].to_numpy() for name in (model, other)}
    return {"metric": metric_key("F1", window), "baseline_name": other, **paired_comparison(f1[model], f1[other])}


def _comparison_line(c: dict, model: str) -> str:
    return (f"{c['metric']}: {model} {c['model']:.3f} vs {c['baseline_name']} {c['baseline']:.3f}: "
            f"{signed_points(c['difference'])} points (90% CI {signed_points(c['difference_ci'][0])} to "
            f"{signed_points(c['difference_ci'][1])})")


# ---------------------------------------------------------------------------------------
# plots


def example_rows(inputs: CHANInputs, rows: np.ndarray, n: int = 4, min_shots: int = 5) -> list[int]:
    """``n`` query rows spread evenly over ``rows``, preferring videos with ``min_shots`` or more shots."""
    long_enough = [int(row) for row in rows if len(inputs.video_of(row)) >= min_shots] or [int(r) for r in rows]
    if not long_enough:
        return []
    return [long_enough[int(i)] for i in np.unique(np.linspace(0, len(long_enough) - 1, n).round().astype(int))]


def shot_scores_png(inputs: CHANInputs, rows: Sequence[int], window: str, model: MethodSummaries,
                    others: Sequence[MethodSummaries], scores: Scores) -> bytes:
    """Per example query, one panel: the model's score of each shot (bars, filled where the
    summary keeps the shot), the other scoring methods' scores (lines, min-max scaled), and
    the true relevant shots (shaded)."""
    in_window = list(inputs.query_rows(window))
    fig = Figure(figsize=(9.0, 2.4 * len(rows)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Figure + Agg canvas, not pyplot: no global state, safe in threads
    for panel, row in enumerate(rows, start=1):
        ax = fig.add_subplot(len(rows), 1, panel)
        at = in_window.index(row)
        video, query = inputs.video_of(row), inputs.queries.iloc[row]
        x = np.arange(len(video))
        for shot in np.flatnonzero(inputs.relevance(row)):
            ax.axvspan(shot - 0.5, shot + 0.5, color="tab:green", alpha=0.15, linewidth=0)
        chosen = np.zeros(len(video), bool)
        chosen[model.selections[window][at]] = True
        values = model.scores[window][at]
        ax.bar(x, values, color=np.where(chosen, "tab:blue", "white"), edgecolor="tab:blue", label=f"{model.name}")
        for other in others:
            if other.scores is None:
                continue
            line = np.asarray(other.scores[window][at], float)
            spread = line.max() - line.min()
            ax.plot(x, (line - line.min()) / spread if spread > 0 else np.full_like(line, 0.5), marker="o",
                    linewidth=1, label=f"{other.name} (scaled)")
        f1 = {name: scores.per_query[name][window]["F1"].iat[at] for name in (model.name, *(o.name for o in others))}
        ax.set_title(f"{video.video_id}, \"{query['query']}\": F1 " + ", ".join(f"{n} {v:.2f}" for n, v in f1.items()),
                     fontsize=8)
        ax.set_xticks(x, [f"{s:.1f}s" for s in video.start_s], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score", fontsize=8)
    ax.set_xlabel("shot (start time); shaded: relevant; filled bars: kept by the summary", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # same numbers, same bytes (DVC)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# the report


def _table_columns(window: str) -> list[str]:
    return [metric_key(metric, window) for metric in METRICS]


def chan_report(scores: Scores, inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget,
                plot_methods: Sequence[MethodSummaries], model: str = MODEL_NAME,
                baselines: Sequence[str] = BASELINES, descriptions: Mapping[str, str] | None = None
                ) -> tuple[str, dict[str, bytes], dict]:
    """Markdown, the PNG plots and the summary (for ``write_report`` and the overview)."""
    metrics = scores.metrics
    order = report_order(metrics, model, baselines)
    described = {**DESCRIPTIONS, **(descriptions or {})}
    comparisons = {f"{baseline}/{window}": compare(scores, model, baseline, window)
                   for window in WINDOWS if len(rows[window]) for baseline in baselines}
    best = {window: max(baselines, key=lambda name: metrics[name][metric_key("F1", window)])
            for window in WINDOWS if len(rows[window])}
    w = inputs.windows
    n_videos = {window: inputs.queries.loc[rows[window], "video_id"].nunique() for window in WINDOWS}
    train_rows = inputs.query_rows(TRAIN)
    lines = [f"# CHAN evaluation: {model}", ""]
    if TEST in best:
        c = comparisons[f"{best[TEST]}/{TEST}"]
        lines += [f"**Test window, against the best baseline:** {_comparison_line(c, model)}; the relevance "
                  f"ceiling is {metrics.get(CEILING, {}).get(HEADLINE_METRIC, math.nan):.3f}.", ""]
    lines += [
        windows_sentence(w, "video", {TRAIN: f"{len(train_rows)} queries",
                                      **{window: f"{len(rows[window])} queries over {n_videos[window]} videos"
                                         for window in (VALIDATION, TEST)}}, PRIMARY_METRIC) + " QFVS protocol: shot similarity is the IoU of the "
        "shots' concept sets, selected and relevant shots are matched one-to-one by maximum weight, precision = "
        "matched weight / selected shots, recall = matched weight / relevant shots. Length budget, every method: "
        f"{budget.describe()}.", ""]
    for window in (TEST, VALIDATION):
        if not len(rows[window]):
            lines += [f"## {window.capitalize()} window: no queries", ""]
            continue
        lines += [f"## {window.capitalize()} window ({len(rows[window])} queries)", "",
                  metrics_table_markdown({name: metrics[name] for name in order}, columns=_table_columns(window),
                                         highlight=model), ""]
        lines += [f"- {_comparison_line(comparisons[f'{baseline}/{window}'], model)}" for baseline in baselines]
        lines.append("")
    roles = {CEILING: "ceiling", **dict.fromkeys(baselines, "baseline"), model: "model"}
    lines += ["## Rows", "", *methods_legend(order, roles, described)]
    markdown = "\n".join(lines) + "\n"

    plots = {}
    if len(rows[TEST]):
        plots["f1_test"] = bar_plot_png(metrics, HEADLINE_METRIC, "QFVS F1, test window")
        model_summaries = next(m for m in plot_methods if m.name == model)
        others = [m for m in plot_methods if m.name != model]
        examples = example_rows(inputs, rows[TEST])
        plots["shot_scores_test_examples"] = shot_scores_png(inputs, examples, TEST, model_summaries, others, scores)
    headline = {window: comparisons[f"{best[window]}/{window}"] for window in best}
    summary = {
        "model": model, "baselines": list(baselines), "oracle": CEILING if CEILING in metrics else None,
        "primary_metrics": [HEADLINE_METRIC, metric_key("precision", TEST), metric_key("recall", TEST), PRIMARY_METRIC],
        "best_baseline": {metric_key("F1", window): best[window] for window in best},
        "gains": {c["metric"]: c["gain"] for c in headline.values()},
        "gain_ci": {c["metric"]: c["gain_ci"] for c in headline.values()},
        "difference": {key: c["difference"] for key, c in comparisons.items()},
        "difference_ci": {key: c["difference_ci"] for key, c in comparisons.items()},
        "metrics": {name: metrics[name] for name in order},
        "windows": {"train_end": w.train_end, "test_start": w.test_start},
        "cutoff_date": w.train_end,
        "queries": {TRAIN: len(train_rows), **{window: len(rows[window]) for window in WINDOWS}},
        "budget": budget.to_dict(),
    }
    return markdown, plots, summary


# ---------------------------------------------------------------------------------------
# the whole evaluation, and the gate's evidence


def baseline_methods(inputs: CHANInputs, rows: Mapping[str, np.ndarray], budget: LengthBudget
                     ) -> list[MethodSummaries]:
    return [query_similarity_method(inputs, rows, budget), uniform_method(inputs, rows, budget),
            random_method(inputs, rows, budget), ceiling_method(inputs, rows, budget)]


def gate_metric(model: CHAN, inputs: CHANInputs, budget: LengthBudget) -> float:
    """The gate's number for one model: F1 on the validation window."""
    rows = {VALIDATION: inputs.query_rows(VALIDATION)}
    scores = score_methods([model_method("scored", model, inputs, rows, budget)], inputs, rows)
    return float(scores.metrics["scored"][PRIMARY_METRIC])


def rescore_champion(champion: str, inputs: CHANInputs, budget: LengthBudget) -> tuple[float | None, str]:
    """The champion's primary metric on the challenger's validation window under the same
    budget, or (None, why not): a champion that cannot read today's inputs (another text
    tower or query length, shot vectors of another width) is not re-scored."""
    try:
        model = load_version_model(champion)
        if model.config.shot_dim != inputs.shot_dim:
            raise ValueError(f"it reads {model.config.shot_dim}-d shot vectors, these are {inputs.shot_dim}-d")
    except ValueError as err:
        return None, (f"Champion version {champion} was not re-scored ({err}); "
                      "the gate uses the number its own eval recorded.")
    return gate_metric(model, inputs, budget), ""


def evaluate(inputs: CHANInputs, settings: CHANSettings, challenger_version: str, champion_version: str | None,
             ablation_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The registered challenger against the baselines and the ceiling on the validation and
    test windows (plus any ablation trained beside it, as ``chan_<name>`` rows), every
    method under ``settings.budget``; the champion, when there is another one, re-scored on
    the validation window."""
    budget = settings.budget
    model = load_version_model(challenger_version)
    rows = window_rows(inputs)
    methods = [model_method(MODEL_NAME, model, inputs, rows, budget)]
    descriptions = {}
    for name, directory in ablation_dirs.items():
        row = f"{MODEL_NAME}_{name}"
        methods.append(model_method(row, load_trained(directory), inputs, rows, budget))
        descriptions[row] = f"ablation `{name}`, trained beside the model."
    baselines = baseline_methods(inputs, rows, budget)
    scores = score_methods([*methods, *baselines], inputs, rows)
    markdown, plots, summary = chan_report(scores, inputs, rows, budget, [methods[0], baselines[0]],
                                           descriptions=descriptions)
    champion_value, note = None, ""
    if champion_version is not None and str(champion_version) != str(challenger_version):
        champion_value, note = rescore_champion(str(champion_version), inputs, budget)
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]),
                       champion_value, note)


def evaluate_sweeps(inputs: CHANInputs, settings: CHANSettings, model_dir: Path,
                    sweep_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The ablations job's report: each sweep's model (the last run in its directory) against
    the model it varies (``model_dir``), with the baselines, in one table; the F1 difference
    (model - sweep) on validation and test with a paired-bootstrap 90% interval over the queries."""
    budget = settings.budget
    rows = window_rows(inputs)
    runs = {MODEL_NAME: Path(model_dir), **{name: Path(path) for name, path in sweep_dirs.items()}}
    methods = [model_method(name, load_trained(path), inputs, rows, budget) for name, path in runs.items()]
    scores = score_methods([*methods, *baseline_methods(inputs, rows, budget)], inputs, rows)
    differences = {f"{name}/{metric_key('F1', window)}": compare(scores, MODEL_NAME, name, window)
                   for name in sweep_dirs for window in WINDOWS if len(rows[window])}
    lines = [f"# CHAN ablations: {', '.join(sweep_dirs)} against {MODEL_NAME}", "",
             "Each sweep is the default training with the overrides of its SPEC entry: `no_local_attention` drops "
             "the self-attention inside each segment, `no_global_attention` the query-aware attention across "
             f"segments. Validation: {len(rows[VALIDATION])} queries; test: {len(rows[TEST])}. Same QFVS protocol "
             f"and budget ({budget.describe()}) as the eval report.", "",
             metrics_table_markdown(scores.metrics, highlight=MODEL_NAME,
                                    columns=[*_table_columns(VALIDATION), *_table_columns(TEST)]), "",
             f"## Differences ({MODEL_NAME} − sweep, in points of F1)", ""]
    lines += [f"- {name.split('/')[0]}: {_comparison_line(c, MODEL_NAME)}" for name, c in differences.items()]
    markdown = "\n".join(lines) + "\n"
    plots = {"ablations_f1_test": bar_plot_png(scores.metrics, HEADLINE_METRIC, "Ablations: QFVS F1, test")
             } if len(rows[TEST]) else {}
    summary = {"model": MODEL_NAME, "baselines": list(sweep_dirs), "metrics": scores.metrics,
               "differences": {key: {"difference": c["difference"], "ci": c["difference_ci"]}
                               for key, c in differences.items()},
               "primary_metrics": [HEADLINE_METRIC, PRIMARY_METRIC], "budget": budget.to_dict()}
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]))
