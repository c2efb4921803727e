"""Evaluation reports: a markdown table, bar plots and a metrics JSON per model.

Every report puts the model next to its baselines and the oracle, methods as rows and
metrics as columns, so one glance says how much of the achievable gap the model closed.
The same files feed MLflow artifacts, Dagster metadata and DVC metrics.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmpipe.io import write_bytes_atomic

# Report and plot names become file names: keep them to one safe path component.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RESERVED_KEYS = ("markdown", "metrics")


def _format_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))  # counts such as n_queries read badly as 120.000
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def metrics_table_markdown(
    rows: Mapping[str, Mapping[str, float]],
    columns: list[str] | None = None,
    highlight: str | None = None,
) -> str:
    """A markdown table: one row per method (model, baselines, oracle), one column per metric.

    Floats show 3 decimals, integers as they are, a missing metric as "–". ``columns``
    defaults to every metric in order of first appearance; ``highlight`` names the row
    to set in bold (usually the model being reported).
    """
    if highlight is not None and highlight not in rows:
        raise ValueError(f"highlight {highlight!r} is not one of the rows")
    if columns is None:
        columns = list(dict.fromkeys(key for metrics in rows.values() for key in metrics))

    lines = [
        "| " + " | ".join(["method", *map(_escape, columns)]) + " |",
        "|" + "---|" + "---:|" * len(columns),  # metrics right-aligned so decimals line up
    ]
    for method, metrics in rows.items():
        cells = [_escape(method), *(_format_value(metrics.get(column)) for column in columns)]
        if method == highlight:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_plot_png(rows: Mapping[str, Mapping[str, float]], metric: str, title: str) -> bytes:
    """One bar per method for ``metric``, value printed on each bar; PNG bytes.

    Methods without a finite value for the metric are left out.
    """
    values = {
        method: float(metrics[metric])
        for method, metrics in rows.items()
        if metrics.get(metric) is not None and math.isfinite(float(metrics[metric]))
    }
    if not values:
        raise ValueError(f"no method has a value for {metric!r}")

    # Figure + Agg canvas, not pyplot: no global figure state, safe in worker threads.
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(values)), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.margins(y=0.15)  # head-room for the value labels
    if len(values) > 4:
        ax.tick_params(axis="x", labelrotation=30)
    buffer = io.BytesIO()
    # No "Software" stamp: identical numbers give identical bytes, so DVC sees no change.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _jsonable(value):
    """Plain JSON types; NaN and ±inf become null so strict parsers (DVC, jq) accept the file."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    directory: Path,
    name: str,
    markdown: str,
    plots: Mapping[str, bytes],
    metrics: Mapping,
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.json`` (the metrics) and ``<plot>.png`` for each plot.

    Each file is written atomically. Returns the paths keyed ``"markdown"``,
    ``"metrics"`` and by plot name.
    """
    directory = Path(directory)
    for label in (name, *plots):
        if not _SAFE_NAME.fullmatch(label):
            raise ValueError(f"{label!r} is not a plain file name (letters, digits, _ . -)")
    clashing = set(plots) & set(_RESERVED_KEYS)
    if clashing:
        raise ValueError(f"plot names {sorted(clashing)} are reserved for the report files")

    paths = {
        "markdown": write_bytes_atomic(markdown.encode("utf-8"), directory / f"{name}.md"),
        "metrics": write_bytes_atomic(
            (json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n").encode("utf-8"),
            directory / f"{name}.json",
        ),
    }
    for plot, png in plots.items():
        paths[plot] = write_bytes_atomic(png, directory / f"{plot}.png")
    return paths


def methods_legend(order, roles: Mapping[str, str], descriptions: Mapping[str, str]) -> list[str]:
    """One markdown bullet per method of ``order``: its name in bold, its role (``roles``;
    "other" when it has none) and its description, when it has one."""
    return [f"- **{name}** ({roles.get(name, 'other')})" + (f": {descriptions[name]}" if descriptions.get(name) else "")
            for name in order]


def windows_sentence(windows, created: str, counts: Mapping[str, str], gate_metric: str) -> str:
    """The date split of a report in one sentence: the cut-offs of ``windows``
    (mmpipe.eval.splits.DateWindows), what each window holds (``counts``: window -> "848
    queries", "44 videos, 176 captions"...) and the metric the promotion gate reads.
    ``created``: what is dated ("pin", "video")."""
    return (f"Windows by {created} creation date: train before **{windows.train_end}** ({counts['train']}, the only "
            f"ones training saw), validation {windows.train_end} to {windows.test_start} ({counts['validation']}: the "
            f"promotion gate reads `{gate_metric}`), test from **{windows.test_start}** ({counts['test']}).")


def signed_points(value: float) -> str:
    """A difference of two shares in points: 0.123 -> "+12.3"; "n/a" when not a number."""
    return f"{100 * value:+.1f}" if value is not None and math.isfinite(value) else "n/a"


def times(value: float) -> str:
    """A ratio: 1.5 -> "1.50x"; "inf", or "n/a" when not a number."""
    if value is None or math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}x"


def comparison_line(c: Mapping) -> str:
    """One line of a model against its best baseline (:func:`mmpipe.eval.retrieval.paired_comparison`
    plus ``metric`` and ``best_baseline``): the values, the ratio and the difference with their intervals."""
    return (f"{c['metric']}: {c['model']:.3f} vs best baseline {c['best_baseline']} {c['baseline']:.3f}: "
            f"{times(c['ratio'])} (90% CI {times(c['ratio_ci'][0])} to {times(c['ratio_ci'][1])}), "
            f"{signed_points(c['difference'])} points (90% CI {signed_points(c['difference_ci'][0])} to "
            f"{signed_points(c['difference_ci'][1])})")


# What a report summary keeps of each comparison of the model with its best baseline
# (summary field -> comparison key), for the overview and the DVC metrics.
COMPARISON_FIELDS = {"best_baseline": "best_baseline", "gains": "gain", "gain_ci": "gain_ci", "ratio": "ratio",
                     "ratio_ci": "ratio_ci", "difference": "difference", "difference_ci": "difference_ci"}


def comparisons_summary(comparisons: Mapping[str, Mapping]) -> dict:
    """``{field: {metric: value}}`` of comparisons keyed by metric (see COMPARISON_FIELDS)."""
    return {field: {metric: c[key] for metric, c in comparisons.items()} for field, key in COMPARISON_FIELDS.items()}


def report_order(metrics: Mapping[str, Mapping], model: str, baselines) -> list[str]:
    """The rows of a report: the model, its baselines, then every other method scored; a
    model or baseline without metrics is an error naming what there is."""
    missing = [name for name in (model, *baselines) if name not in metrics]
    if missing:
        raise ValueError(f"no metrics for {missing}; have {sorted(metrics)}")
    return list(dict.fromkeys([model, *baselines, *metrics]))


def line_plot_png(series: Mapping[str, Mapping[str, float]], ylabel: str, title: str, xlabel: str = "") -> bytes:
    """One line per method over shared categorical x values (the keys of each method's
    mapping, in first-seen order); missing or non-finite points are left out. PNG bytes."""
    xs = list(dict.fromkeys(x for values in series.values() for x in values))
    if not xs:
        raise ValueError("no points to plot")
    fig = Figure(figsize=(6.0, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, values in series.items():
        points = [(i, float(values[x])) for i, x in enumerate(xs)
                  if values.get(x) is not None and math.isfinite(float(values[x]))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
