"""One evaluation overview across every model: model vs best baseline vs oracle, and the trend.

Every model's evaluation writes a summary JSON with :func:`mmpipe.eval.report.write_report`
under ``storage/reports/<family>/``. This module reads them all (or a given list) and
writes, for the whole project:

* ``overview.md`` and a self-contained ``overview.html``: one table per model, a row per
  primary metric: the model, its best baseline, the oracle, the relative gain over the
  baseline, the share of the baseline-to-oracle gap closed, and the trend against the
  previous champion (from the summary) or else the previous overview run;
* PNG bar plots (model vs best baseline vs oracle; gap closed across models);
* ``history.jsonl``: one line per overview run, appended atomically; it is what the
  next run compares against;
* DVC metrics ``<metrics_dir>/<family>.json``: a flat ``{"<method>/<metric>": number}``
  dict (``dvc metrics show`` prints nested keys joined by dots, flat ones as they are);
* DVC plots data ``<plots_dir>/<family>/<metric>.csv``: ``method,role,value`` per method.

The summary contract (what a model's evaluation must write):

``model`` (str), ``baselines`` (list of str), ``oracle`` (str or null), and ``metrics``
(``{method: {metric: number}}``) are required. Optional: ``primary_metrics`` (list; by
default the keys of ``gains``, else every metric of the model's row), ``best_baseline``
(``{metric: method}``; by default the best baseline by value), ``lower_is_better`` (list
of metrics; by default names ending in rank or loss), and ``promotion``: the promotion
gate's evidence (``mmpipe.registry.promotion.GateEvidence.to_dict()``: ``metric``,
``higher_is_better``, ``champion_version``, ``champion_value``), whose re-scored champion
is the trend's reference for that metric.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmpipe.eval.report import bar_plot_png, write_report
from mmpipe.eval.retrieval import relative_gain
from mmpipe.io import write_bytes_atomic

OVERVIEW_NAME = "overview"
HISTORY_FILE = "history.jsonl"
GAP_PLOT = "all_models_gap_closed"
_REQUIRED_KEYS = ("model", "baselines", "oracle", "metrics")
_LOWER_IS_BETTER = re.compile(r"(rank|loss)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _finite(value) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _optional(value) -> float | None:
    return float(value) if _finite(value) else None


def safe_name(text: str) -> str:
    """One file-name component from a metric or model name.

    >>> safe_name("neighbor_R@10/heldout")
    'neighbor_R_10_heldout'
    """
    return _UNSAFE.sub("_", text).strip("_.") or "unnamed"


def mlflow_metric_name(key: str) -> str:
    """MLflow metric names allow letters, digits and ``_-. :/``; ``@`` becomes ``_at_``.

    >>> mlflow_metric_name("pinclip/neighbor_R@10/heldout")
    'pinclip/neighbor_R_at_10/heldout'
    """
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key.replace("@", "_at_"))


# ---------------------------------------------------------------------------------------
# reading the per-model summaries


@dataclass(frozen=True)
class ModelReport:
    """One model's evaluation summary; ``family`` names its files (``pinclip``, ``mac`` ...)."""

    family: str
    path: Path
    summary: dict

    @property
    def model(self) -> str:
        return str(self.summary["model"])


def is_summary(data) -> bool:
    return isinstance(data, dict) and all(key in data for key in _REQUIRED_KEYS)


def load_report(path: Path, family: str | None = None) -> ModelReport:
    """Read one summary JSON; ``family`` defaults to its directory's name."""
    path = Path(path)
    summary = json.loads(path.read_text())
    if not is_summary(summary):
        raise ValueError(f"{path} is not an evaluation summary: it needs keys {list(_REQUIRED_KEYS)}")
    if summary["model"] not in summary["metrics"]:
        raise ValueError(f"{path}: the model {summary['model']!r} has no metrics row")
    return ModelReport(family=safe_name(family or path.parent.name), path=path, summary=summary)


def discover_reports(reports_root: Path) -> list[ModelReport]:
    """Every summary JSON in ``reports_root/*/``, sorted by family.

    Other JSON files are skipped. A directory holding several summaries names each
    ``<directory>-<file stem>``, so no two reports share a family.
    """
    reports = []
    for directory in sorted(p for p in Path(reports_root).glob("*") if p.is_dir()):
        found = []
        for path in sorted(directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if is_summary(data):
                found.append(path)
        for path in found:
            family = directory.name if len(found) == 1 else f"{directory.name}-{path.stem}"
            reports.append(load_report(path, family))
    return reports


def primary_metrics(summary: Mapping) -> list[str]:
    if summary.get("primary_metrics"):
        return [str(metric) for metric in summary["primary_metrics"]]
    if summary.get("gains"):
        return [str(metric) for metric in summary["gains"]]
    return [m for m, v in summary["metrics"][summary["model"]].items() if _finite(v)]


def _promotion(summary: Mapping, metric: str) -> Mapping:
    """The promotion gate's evidence when it is about ``metric``, else empty."""
    evidence = summary.get("promotion") or {}
    return evidence if evidence.get("metric") == metric else {}


def higher_is_better(summary: Mapping, metric: str) -> bool:
    gate = _promotion(summary, metric)
    if "higher_is_better" in gate:
        return bool(gate["higher_is_better"])
    if "lower_is_better" in summary:
        return metric not in set(summary["lower_is_better"])
    return not _LOWER_IS_BETTER.search(metric)


def role_of(summary: Mapping, method: str) -> str:
    if method == summary["model"]:
        return "model"
    if method == summary.get("oracle"):
        return "oracle"
    return "baseline" if method in summary.get("baselines", []) else "other"


def _value(summary: Mapping, method: str | None, metric: str) -> float | None:
    if method is None:
        return None
    return _optional(summary["metrics"].get(method, {}).get(metric))


def best_baseline(summary: Mapping, metric: str) -> str | None:
    """The summary's own choice if it made one, else the best-scoring baseline."""
    chosen = (summary.get("best_baseline") or {}).get(metric)
    if chosen is not None:
        return str(chosen)
    scored = [(v, b) for b in summary["baselines"] if (v := _value(summary, b, metric)) is not None]
    if not scored:
        return None
    pick = max if higher_is_better(summary, metric) else min
    return pick(scored)[1]


# ---------------------------------------------------------------------------------------
# history: what the previous overview runs saw


def read_history(path: Path) -> list[dict]:
    """The entries of ``history.jsonl``, oldest first; a missing file is an empty history."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not JSON ({error}); fix or remove the line") from error
    return entries


def append_history(path: Path, entry: Mapping) -> Path:
    """Append one JSON line; the whole file is rewritten atomically, never half-written."""
    path = Path(path)
    before = path.read_bytes() if path.exists() else b""
    if before and not before.endswith(b"\n"):
        before += b"\n"
    line = json.dumps(entry, sort_keys=True, allow_nan=False) + "\n"
    return write_bytes_atomic(before + line.encode("utf-8"), path)


def _run_label(entry: Mapping) -> str:
    parts = [str(entry.get("time", "?"))[:16].replace("T", " ")]
    commit = str(entry.get("git_commit") or "")
    if commit and commit != "unknown":
        parts.append(commit[:7])
    return "previous run (" + ", ".join(parts) + ")"


def previous_value(history: Sequence[Mapping], family: str, metric: str) -> tuple[str, float] | None:
    """The latest history entry's value of ``family``'s ``metric``, with a label for it."""
    for entry in reversed(history):
        value = entry.get("models", {}).get(family, {}).get("metrics", {}).get(metric)
        if _finite(value):
            return _run_label(entry), float(value)
    return None


def _reference(report: ModelReport, metric: str, history: Sequence[Mapping]) -> tuple[str, float] | None:
    """What the trend compares to: the champion the eval re-scored, if any, else the last run."""
    gate = _promotion(report.summary, metric)
    if _finite(gate.get("champion_value")):
        version = gate.get("champion_version")
        return (f"champion v{version}" if version is not None else "champion"), float(gate["champion_value"])
    return previous_value(history, report.family, metric)


# ---------------------------------------------------------------------------------------
# comparisons


@dataclass(frozen=True)
class Comparison:
    """One row of a model's table: its primary ``metric`` against baseline, oracle and trend."""

    family: str
    model: str
    metric: str
    higher_is_better: bool
    value: float | None
    baseline: str | None = None
    baseline_value: float | None = None
    oracle: str | None = None
    oracle_value: float | None = None
    reference: str | None = None  # "champion v3" or "previous run (...)"
    reference_value: float | None = None

    def _better_sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0

    @property
    def gain(self) -> float | None:
        """Relative improvement over the best baseline, positive = better whatever the direction."""
        if self.value is None or self.baseline_value is None:
            return None
        return self._better_sign() * relative_gain(self.value, self.baseline_value)

    @property
    def gap_closed(self) -> float | None:
        """(model - baseline) / (oracle - baseline): 0 at the baseline, 1 at the oracle."""
        if None in (self.value, self.baseline_value, self.oracle_value):
            return None
        gap = self.oracle_value - self.baseline_value
        if gap * self._better_sign() <= 0:
            return None  # the oracle is no better than the baseline: no gap to close
        return (self.value - self.baseline_value) / gap

    @property
    def delta(self) -> float | None:
        """Change since the reference, in the metric's own units (sign as the metric's)."""
        if self.value is None or self.reference_value is None:
            return None
        return self.value - self.reference_value

    @property
    def improved(self) -> bool | None:
        delta = self.delta
        return None if delta is None else delta * self._better_sign() > 0


def compare(report: ModelReport, history: Sequence[Mapping] = ()) -> list[Comparison]:
    """One :class:`Comparison` per primary metric of ``report``."""
    summary = report.summary
    oracle = summary.get("oracle")
    rows = []
    for metric in primary_metrics(summary):
        baseline = best_baseline(summary, metric)
        reference = _reference(report, metric, history)
        rows.append(Comparison(
            family=report.family, model=report.model, metric=metric,
            higher_is_better=higher_is_better(summary, metric),
            value=_value(summary, report.model, metric),
            baseline=baseline, baseline_value=_value(summary, baseline, metric),
            oracle=oracle, oracle_value=_value(summary, oracle, metric),
            reference=reference[0] if reference else None,
            reference_value=reference[1] if reference else None,
        ))
    return rows


# ---------------------------------------------------------------------------------------
# DVC metrics and plots data


def dvc_metrics(report: ModelReport, comparisons: Iterable[Comparison]) -> dict[str, float]:
    """Flat numeric metrics of one model for ``dvc metrics show/diff``.

    Every finite metric of the model's row as ``<model>/<metric>``, and for each primary
    metric ``best_baseline/``, ``oracle/``, ``gain/`` and ``gap_closed/<metric>``.
    """
    flat = {
        f"{report.model}/{metric}": value if isinstance(value, int) else float(value)
        for metric, value in report.summary["metrics"][report.model].items() if _finite(value)
    }
    for row in comparisons:
        for prefix, value in (("best_baseline", row.baseline_value), ("oracle", row.oracle_value),
                              ("gain", row.gain), ("gap_closed", row.gap_closed)):
            if _finite(value):
                flat[f"{prefix}/{row.metric}"] = float(value)
    return flat


def plot_rows_csv(report: ModelReport, metric: str) -> bytes:
    """``method,role,value`` for every method scoring ``metric``: a DVC bar-plot series."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "role", "value"])
    for method in report.summary["metrics"]:
        value = _value(report.summary, method, metric)
        if value is not None:
            writer.writerow([method, role_of(report.summary, method), repr(value)])
    return buffer.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------
# rendering


def _fmt(value: float | None) -> str:
    # Significant digits, not decimals: neighbor R@10 over big boards lives around 0.005.
    return "n/a" if value is None else f"{value:.3g}"


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.1%}" if signed else f"{value:.0%}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3g}"


def _with_name(value: float | None, name: str | None) -> str:
    return _fmt(value) if name is None else f"{_fmt(value)} ({name})"


def _trend(row: Comparison) -> str:
    if row.delta is None:
        return "first run"
    arrow = "▲" if row.improved else ("▼" if row.delta != 0 else "=")
    return f"{arrow} {_signed(row.delta)}"


TABLE_COLUMNS = ["metric", "model", "best baseline", "oracle", "gain vs baseline",
                 "gap closed", "previous", "trend"]


def table_cells(row: Comparison) -> list[str]:
    direction = "" if row.higher_is_better else " (lower is better)"
    return [
        row.metric + direction, _fmt(row.value), _with_name(row.baseline_value, row.baseline),
        _with_name(row.oracle_value, row.oracle), _pct(row.gain), _pct(row.gap_closed, signed=False),
        _fmt(row.reference_value), _trend(row),
    ]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def _references(rows: Sequence[Comparison]) -> str:
    labels = list(dict.fromkeys(row.reference for row in rows if row.reference))
    return "; ".join(labels) if labels else "none yet (first overview of this model)"


def report_file(report: ModelReport) -> str:
    """The model's own Markdown report, relative to the reports root."""
    return f"{report.path.parent.name}/{report.path.with_suffix('.md').name}"


def overview_markdown(reports: Sequence[ModelReport], comparisons: Mapping[str, list[Comparison]]) -> str:
    lines = [
        "# Evaluation overview",
        "",
        "Every model against its best baseline and the oracle on its primary metrics. "
        "*Gain* is the relative improvement over the best baseline (positive = better), "
        "*gap closed* the share of the baseline-to-oracle gap the model covers, *trend* the "
        "change since the previous champion (or the previous overview run).",
    ]
    for report in reports:
        rows = comparisons[report.family]
        lines += [
            "", f"## {report.family}: `{report.model}`", "",
            f"Report: `{report_file(report)}`. Previous: {_references(rows)}.", "",
            _md_row(TABLE_COLUMNS),
            "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
            *(_md_row(table_cells(row)) for row in rows),
        ]
    return "\n".join(lines) + "\n"


def overview_html(title: str, reports: Sequence[ModelReport],
                  comparisons: Mapping[str, list[Comparison]], plots: Mapping[str, bytes]) -> str:
    """A self-contained page: the same tables, the plots inlined as base64 PNGs."""
    esc = html.escape
    parts = [
        "<!doctype html>", "<html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right}"
        "td:first-child{text-align:left}</style>",
        "</head><body>", f"<h1>{esc(title)}</h1>",
    ]
    for report in reports:
        rows = comparisons[report.family]
        parts += [
            f"<h2>{esc(report.family)}: <code>{esc(report.model)}</code></h2>",
            f"<p>Report: <code>{esc(report_file(report))}</code>. Previous: {esc(_references(rows))}.</p>",
            "<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS) + "</tr>",
            *("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in table_cells(row)) + "</tr>" for row in rows),
            "</table>",
        ]
        for row in rows:
            name = plot_name(row)
            if name in plots:
                parts.append(_img(name, plots[name]))
    if GAP_PLOT in plots:
        parts += ["<h2>Gap to the oracle closed, all models</h2>", _img(GAP_PLOT, plots[GAP_PLOT])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return f"<p><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'></p>"


def plot_name(row: Comparison) -> str:
    return f"{row.family}_{safe_name(row.metric)}"


def _comparison_bars(row: Comparison) -> tuple[dict[str, dict[str, float]], str]:
    """Bars labelled by role (the table names the methods); tiny fractions shown in percent."""
    values = {label: value for label, value in (
        ("model", row.value), ("best baseline", row.baseline_value), ("oracle", row.oracle_value),
    ) if value is not None}
    if values and all(0 <= v < 0.1 for v in values.values()):
        # e.g. neighbor R@10 over big boards (~0.005) reads as 0.005 at three decimals
        column = f"{row.metric} (%)"
        return {label: {column: 100 * value} for label, value in values.items()}, column
    return {label: {row.metric: value} for label, value in values.items()}, row.metric


def overview_plots(reports: Sequence[ModelReport], comparisons: Mapping[str, list[Comparison]]
                   ) -> dict[str, bytes]:
    """Per model and primary metric: model vs best baseline vs oracle; plus gap closed overall."""
    plots = {}
    for report in reports:
        for row in comparisons[report.family]:
            bars, column = _comparison_bars(row)
            if bars:
                plots[plot_name(row)] = bar_plot_png(bars, column, f"{report.family}: {row.metric}")
    # Tick labels break at "/" so long metric names stack instead of overlapping.
    gaps = {"\n".join([row.family, *row.metric.split("/")]): {"gap closed": row.gap_closed}
            for rows in comparisons.values() for row in rows if row.gap_closed is not None}
    if gaps:
        plots[GAP_PLOT] = bar_plot_png(gaps, "gap closed", "Baseline→oracle gap closed")
    return plots


# ---------------------------------------------------------------------------------------
# the whole overview


@dataclass
class Overview:
    reports: list[ModelReport]
    comparisons: dict[str, list[Comparison]]
    markdown: str
    html: str
    plots: dict[str, bytes]
    metrics: dict[str, dict[str, float]]  # family -> flat DVC metrics
    paths: dict[str, Path] = field(default_factory=dict)


def build_overview(reports: Sequence[ModelReport], history: Sequence[Mapping] = ()) -> Overview:
    """Everything the overview shows, computed without writing a file."""
    if not reports:
        raise ValueError("no evaluation reports to overview; materialize an eval_<model> asset first")
    families = [report.family for report in reports]
    if len(set(families)) != len(families):
        raise ValueError(f"two reports share a family name: {families}")
    comparisons = {report.family: compare(report, history) for report in reports}
    plots = overview_plots(reports, comparisons)
    return Overview(
        reports=list(reports), comparisons=comparisons,
        markdown=overview_markdown(reports, comparisons),
        html=overview_html("Evaluation overview", reports, comparisons, plots),
        plots=plots,
        metrics={report.family: dvc_metrics(report, comparisons[report.family]) for report in reports},
    )


def history_entry(overview: Overview, *, time: str, git_commit: str = "unknown",
                  run_id: str = "none") -> dict:
    """What the next run compares against: each model's primary values (finite ones)."""
    return {
        "time": time, "git_commit": git_commit, "run_id": run_id,
        "models": {
            family: {"model": rows[0].model if rows else None,
                     "metrics": {row.metric: row.value for row in rows if row.value is not None}}
            for family, rows in overview.comparisons.items()
        },
    }


def _remove_stale(directory: Path, pattern: str, keep: Iterable[Path]) -> None:
    keep = {Path(path).resolve() for path in keep}
    for path in Path(directory).glob(pattern):
        if path.is_file() and path.resolve() not in keep:
            path.unlink()


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_dvc_files(overview: Overview, metrics_dir: Path, plots_dir: Path) -> dict[str, Path]:
    """``metrics_dir/<family>.json`` and ``plots_dir/<family>/<metric>.csv``, stale ones removed."""
    paths, metric_files = {}, []
    for report in overview.reports:
        metric_file = write_bytes_atomic(_json_bytes(overview.metrics[report.family]),
                                         Path(metrics_dir) / f"{report.family}.json")
        metric_files.append(metric_file)
        paths[f"metrics/{report.family}"] = metric_file
        plot_files = [
            write_bytes_atomic(plot_rows_csv(report, row.metric),
                               Path(plots_dir) / report.family / f"{safe_name(row.metric)}.csv")
            for row in overview.comparisons[report.family]
        ]
        _remove_stale(Path(plots_dir) / report.family, "*.csv", plot_files)
    _remove_stale(Path(metrics_dir), "*.json", metric_files)
    for directory in Path(plots_dir).glob("*"):
        if directory.is_dir() and directory.name not in overview.comparisons:
            _remove_stale(directory, "*.csv", [])
    return paths


def write_overview(
    reports: Sequence[ModelReport] | Path,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    *,
    time: str,
    git_commit: str = "unknown",
    run_id: str = "none",
) -> Overview:
    """Build the overview from ``reports`` (or every summary under that reports root) and write it.

    Writes ``out_dir/overview.{md,html,json}`` and the PNGs, ``metrics_dir/<family>.json``
    and ``plots_dir/<family>/<metric>.csv`` (files of families or metrics no longer
    reported are removed: the two folders belong to the overview), then appends to
    ``out_dir/history.jsonl``, last, so a failed run leaves the history as it was.
    Every file is written atomically.
    """
    if isinstance(reports, (str, Path)):
        reports = discover_reports(Path(reports))
    out_dir = Path(out_dir)
    history_path = out_dir / HISTORY_FILE
    overview = build_overview(reports, read_history(history_path))

    summary = {
        "models": {
            family: [{**asdict(row), "gain": row.gain, "gap_closed": row.gap_closed, "delta": row.delta}
                     for row in rows]
            for family, rows in overview.comparisons.items()
        },
        "metrics": overview.metrics,
    }
    paths = write_report(out_dir, OVERVIEW_NAME, overview.markdown, overview.plots, summary)
    paths["html"] = write_bytes_atomic(overview.html.encode("utf-8"), out_dir / f"{OVERVIEW_NAME}.html")
    _remove_stale(out_dir, "*.png", [paths[name] for name in overview.plots])

    paths.update(write_dvc_files(overview, metrics_dir, plots_dir))
    entry = history_entry(overview, time=time, git_commit=git_commit, run_id=run_id)
    paths["history"] = append_history(history_path, entry)
    overview.paths = paths
    return overview
