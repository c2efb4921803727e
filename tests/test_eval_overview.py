"""The evaluation overview: tables, gains, trend, history, DVC metrics/plots, and the asset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mmpipe.eval.overview import (
    HISTORY_FILE,
    build_overview,
    discover_reports,
    load_report,
    read_history,
    write_overview,
)
from mmpipe.eval.report import write_report
from mmpipe.registry.promotion import GateEvidence
from tests.conftest import PROJECT_ROOT

DVC = str(Path(sys.executable).parent / "dvc")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def alpha_summary(r10: float = 0.3, promotion: dict | None = None) -> dict:
    """A model with a higher-is-better and a lower-is-better primary metric."""
    summary = {
        "model": "alpha_model",
        "baselines": ["b1", "b2"],
        "oracle": "oracle",
        "primary_metrics": ["R@10", "mean_rank"],
        "metrics": {
            "alpha_model": {"R@10": r10, "mean_rank": 5.0, "n_queries": 40},
            "b1": {"R@10": 0.2, "mean_rank": 8.0},
            "b2": {"R@10": 0.25, "mean_rank": 6.0},
            "oracle": {"R@10": 0.5, "mean_rank": 2.0},
        },
    }
    if promotion is not None:
        summary["promotion"] = promotion
    return summary


def beta_summary() -> dict:
    """A summary in the shape of an older PinCLIP report (gains + best_baseline, no primary list)."""
    rows = {
        "fused": {"neighbor_R@10/heldout": 0.02, "neighbor_R@10/cold": 0.01},
        "minilm": {"neighbor_R@10/heldout": 0.016, "neighbor_R@10/cold": 0.012},
        "random": {"neighbor_R@10/heldout": 0.001, "neighbor_R@10/cold": 0.001},
        "attribute_oracle": {"neighbor_R@10/heldout": 0.05, "neighbor_R@10/cold": 0.04},
    }
    keys = ("neighbor_R@10/heldout", "neighbor_R@10/cold")
    return {
        "model": "fused", "baselines": ["minilm", "random"], "oracle": "attribute_oracle", "metrics": rows,
        "best_baseline": dict.fromkeys(keys, "minilm"),
        "gains": {key: rows["fused"][key] / rows["minilm"][key] - 1 for key in keys},
        "gap_closed": {key: (rows["fused"][key] - rows["minilm"][key])
                       / (rows["attribute_oracle"][key] - rows["minilm"][key]) for key in keys},
    }


def write_summary(reports_root: Path, family: str, summary: dict) -> Path:
    return write_report(reports_root / family, f"{family}_eval", f"# {family}\n", {}, summary)["metrics"]


@pytest.fixture
def project(tmp_path):
    """A reports root with two models, and the overview's three output folders."""
    root = tmp_path / "storage"
    write_summary(root / "reports", "alpha", alpha_summary())
    write_summary(root / "reports", "beta", beta_summary())
    # Not summaries: skipped by discovery.
    (root / "reports" / "alpha" / "notes.json").write_text('{"hello": 1}')
    (root / "reports" / "beta" / "broken.json").write_text("{not json")
    return root


def run_overview(root: Path, time: str = "2026-01-01T00:00:00+00:00", commit: str = "abc1234def"):
    return write_overview(root / "reports", root / "overview", root / "metrics", root / "plots",
                          time=time, git_commit=commit, run_id="run-1")


def rows_by_metric(overview, family):
    return {row.metric: row for row in overview.comparisons[family]}


def test_discovers_only_summaries_by_family(project):
    reports = discover_reports(project / "reports")
    assert [(r.family, r.model) for r in reports] == [("alpha", "alpha_model"), ("beta", "fused")]


def test_gain_and_gap_closed_in_both_metric_directions(project):
    overview = build_overview(discover_reports(project / "reports"))
    alpha = rows_by_metric(overview, "alpha")
    assert list(alpha) == ["R@10", "mean_rank"]

    recall = alpha["R@10"]
    assert (recall.baseline, recall.baseline_value, recall.oracle_value) == ("b2", 0.25, 0.5)
    assert recall.gain == pytest.approx(0.3 / 0.25 - 1)  # +20%
    assert recall.gap_closed == pytest.approx((0.3 - 0.25) / (0.5 - 0.25))  # 20% of the gap

    rank = alpha["mean_rank"]  # lower is better: best baseline is the lowest, gain positive
    assert not rank.higher_is_better
    assert (rank.baseline, rank.baseline_value) == ("b2", 6.0)
    assert rank.gain == pytest.approx((6.0 - 5.0) / 6.0)
    assert rank.gap_closed == pytest.approx((5.0 - 6.0) / (2.0 - 6.0))  # 25%


def test_pinclip_style_summary_agrees_with_its_own_gains(project):
    overview = build_overview(discover_reports(project / "reports"))
    beta = rows_by_metric(overview, "beta")
    summary = beta_summary()
    assert list(beta) == ["neighbor_R@10/heldout", "neighbor_R@10/cold"]
    for metric, row in beta.items():
        assert row.baseline == summary["best_baseline"][metric] == "minilm"
        assert row.gain == pytest.approx(summary["gains"][metric])
        assert row.gap_closed == pytest.approx(summary["gap_closed"][metric])
    assert beta["neighbor_R@10/cold"].gain == pytest.approx(0.01 / 0.012 - 1)  # worse than baseline


def test_markdown_table_values_and_first_run_trend(project):
    overview = run_overview(project)
    md = overview.markdown
    assert "## alpha: `alpha_model`" in md and "## beta: `fused`" in md
    assert "| R@10 | 0.3 | 0.25 (b2) | 0.5 (oracle) | +20.0% | 20% | n/a | first run |" in md
    assert "| mean_rank (lower is better) | 5 | 6 (b2) | 2 (oracle) | +16.7% | 25% | n/a | first run |" in md
    assert "| neighbor_R@10/cold | 0.01 | 0.012 (minilm) | 0.04 (attribute_oracle) | -16.7% |" in md
    html = (project / "overview" / "overview.html").read_text()
    assert "<td>0.25 (b2)</td>" in html and html.count("data:image/png;base64,") == len(overview.plots)
    assert (project / "overview" / "overview.md").read_text() == md


def test_trend_against_the_previous_run_and_history(project):
    run_overview(project, time="2026-01-01T00:00:00+00:00", commit="aaaaaaa111")
    write_summary(project / "reports", "alpha", alpha_summary(r10=0.35))
    second = run_overview(project, time="2026-01-02T00:00:00+00:00", commit="bbbbbbb222")

    recall = rows_by_metric(second, "alpha")["R@10"]
    assert recall.reference == "previous run (2026-01-01 00:00, aaaaaaa)"
    assert recall.reference_value == 0.3 and recall.delta == pytest.approx(0.05) and recall.improved
    assert "| 0.3 | ▲ +0.05 |" in second.markdown
    unchanged = rows_by_metric(second, "alpha")["mean_rank"]
    assert unchanged.delta == 0 and "| 5 | = +0 |" in second.markdown

    history = read_history(project / "overview" / HISTORY_FILE)
    assert [entry["git_commit"] for entry in history] == ["aaaaaaa111", "bbbbbbb222"]
    assert history[0]["models"]["alpha"] == {"model": "alpha_model",
                                             "metrics": {"R@10": 0.3, "mean_rank": 5.0}}
    assert history[1]["models"]["alpha"]["metrics"]["R@10"] == 0.35
    assert history[1]["run_id"] == "run-1"


def test_rescored_champion_in_the_summary_is_the_trend_reference(project):
    run_overview(project)  # a history exists, but the champion wins
    evidence = GateEvidence(registered_model="alpha", metric="R@10", higher_is_better=True,
                            challenger_version="4", challenger_value=0.35,
                            champion_version="3", champion_value=0.4)
    write_summary(project / "reports", "alpha", alpha_summary(r10=0.35, promotion=evidence.to_dict()))
    rows = rows_by_metric(run_overview(project), "alpha")
    assert (rows["R@10"].reference, rows["R@10"].reference_value) == ("champion v3", 0.4)
    assert rows["R@10"].delta == pytest.approx(-0.05) and rows["R@10"].improved is False
    assert rows["mean_rank"].reference.startswith("previous run")  # the gate judged R@10 only


def test_without_a_rescored_champion_the_trend_uses_history(project):
    run_overview(project)
    evidence = GateEvidence(registered_model="alpha", metric="R@10", higher_is_better=True,
                            challenger_version="1", challenger_value=0.35)  # first version: no champion
    write_summary(project / "reports", "alpha", alpha_summary(r10=0.35, promotion=evidence.to_dict()))
    recall = rows_by_metric(run_overview(project), "alpha")["R@10"]
    assert recall.reference.startswith("previous run") and recall.reference_value == 0.3


def test_dvc_metrics_and_plots_files(project):
    run_overview(project)
    alpha = json.loads((project / "metrics" / "alpha.json").read_text())
    assert alpha == pytest.approx({
        "alpha_model/R@10": 0.3, "alpha_model/mean_rank": 5.0, "alpha_model/n_queries": 40,
        "best_baseline/R@10": 0.25, "oracle/R@10": 0.5, "gain/R@10": 0.2, "gap_closed/R@10": 0.2,
        "best_baseline/mean_rank": 6.0, "oracle/mean_rank": 2.0,
        "gain/mean_rank": 1 / 6, "gap_closed/mean_rank": 0.25,
    })
    assert sorted(p.name for p in (project / "metrics").iterdir()) == ["alpha.json", "beta.json"]
    csv_text = (project / "plots" / "alpha" / "R_10.csv").read_text()
    assert csv_text.splitlines() == [
        "method,role,value", "alpha_model,model,0.3", "b1,baseline,0.2", "b2,baseline,0.25",
        "oracle,oracle,0.5",
    ]
    assert sorted(p.name for p in (project / "plots" / "beta").iterdir()) == [
        "neighbor_R_10_cold.csv", "neighbor_R_10_heldout.csv"]
    pngs = sorted(p.name for p in (project / "overview").glob("*.png"))
    assert pngs == ["all_models_gap_closed.png", "alpha_R_10.png", "alpha_mean_rank.png",
                    "beta_neighbor_R_10_cold.png", "beta_neighbor_R_10_heldout.png"]
    assert all((project / "overview" / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)


def test_files_of_a_vanished_model_are_removed(project):
    run_overview(project)
    shutil.rmtree(project / "reports" / "beta")
    overview = run_overview(project)
    assert list(overview.comparisons) == ["alpha"]
    assert [p.name for p in (project / "metrics").iterdir()] == ["alpha.json"]
    assert not list((project / "plots" / "beta").glob("*.csv"))
    assert not list((project / "overview").glob("beta_*.png"))


def test_a_given_list_of_reports_and_bad_input(project, tmp_path):
    only = [load_report(project / "reports" / "alpha" / "alpha_eval.json")]
    overview = build_overview(only)
    assert list(overview.comparisons) == ["alpha"]
    with pytest.raises(ValueError, match="no evaluation reports"):
        build_overview([])
    with pytest.raises(ValueError, match="not an evaluation summary"):
        load_report(project / "reports" / "alpha" / "notes.json")
    bad = tmp_path / "history.jsonl"
    bad.write_text('{"models": {}}\n{oops\n')
    with pytest.raises(ValueError, match="history.jsonl:2"):
        read_history(bad)


# ---------------------------------------------------------------------------------------
# DVC: the project's declarations, read by the real CLI in a throwaway git repo


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _evaluate_stage() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]


def test_evaluate_stage_declares_overview_metrics_and_plots():
    stage = _evaluate_stage()
    assert "--select eval_overview" in stage["cmd"]
    assert [next(iter(m)) for m in stage["metrics"]] == ["storage/metrics"]
    assert [next(iter(p)) for p in stage["plots"]] == ["storage/plots"]
    assert all(next(iter(m.values()))["cache"] is False for m in stage["metrics"] + stage["plots"])


def test_metrics_and_plots_folders_are_not_git_ignored():
    """dvc metrics diff reads old revisions from git: the files must be committable."""
    for path in ("storage/metrics/pinclip.json", "storage/plots/pinclip/x.csv"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT_ROOT)
        assert proc.returncode == 1, f"{path} is git-ignored"
    ignored = subprocess.run(["git", "check-ignore", "-q", "storage/overview/overview.md"], cwd=PROJECT_ROOT)
    assert ignored.returncode == 0


@pytest.fixture
def dvc_repo(tmp_path, project):
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "test@example.com"], repo)
    _run(["git", "config", "user.name", "test"], repo)
    _run([DVC, "init", "-q"], repo)
    _run([DVC, "config", "core.analytics", "false"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": _evaluate_stage()}}))
    shutil.copytree(project / "reports", repo / "storage" / "reports")
    return repo


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "dvc.yaml", "storage/metrics", "storage/plots"], repo)
    _run(["git", "commit", "-q", "-m", message], repo)


def test_dvc_metrics_show_and_diff_across_commits(dvc_repo):
    storage = dvc_repo / "storage"
    run_overview(storage)
    _commit(dvc_repo, "first eval")

    shown = json.loads(_run([DVC, "metrics", "show", "--json"], dvc_repo))
    files = shown[""]["data"]
    assert set(files) == {"storage/metrics/alpha.json", "storage/metrics/beta.json"}
    assert files["storage/metrics/alpha.json"]["data"]["alpha_model/R@10"] == 0.3
    assert files["storage/metrics/beta.json"]["data"]["fused/neighbor_R@10/heldout"] == 0.02

    write_summary(storage / "reports", "alpha", alpha_summary(r10=0.35))
    run_overview(storage)
    _commit(dvc_repo, "better alpha")

    diff = json.loads(_run([DVC, "metrics", "diff", "HEAD~1", "HEAD", "--json"], dvc_repo))
    change = diff["storage/metrics/alpha.json"]["alpha_model/R@10"]
    assert (change["old"], change["new"]) == (0.3, 0.35)
    assert change["diff"] == pytest.approx(0.05)
    assert "storage/metrics/beta.json" not in diff  # unchanged files are not listed

    plots = json.loads(_run([DVC, "plots", "show", "--json"], dvc_repo))
    assert not plots.get("errors")
    values = plots["data"]["storage/plots/alpha/R_10.csv"][0]["content"]["data"]["values"]
    assert [(v["method"], float(v["value"])) for v in values][:2] == [("alpha_model", 0.35), ("b1", 0.2)]


# ---------------------------------------------------------------------------------------
# the Dagster asset on fabricated reports


def test_eval_overview_asset_materializes_and_logs_to_mlflow(project, monkeypatch):
    from mlflow import MlflowClient

    from orchestration.assets.overview import eval_overview
    from orchestration.resources import PipelinePaths

    tracking = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(project / "mlruns"))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([eval_overview], instance=instance,
                            resources={"paths": PipelinePaths(storage_dir=str(project))})
    assert result.success

    metadata = result.asset_materializations_for_node("eval_overview")[0].metadata
    assert "| R@10 | 0.3 | 0.25 (b2) |" in metadata["report"].value
    assert metadata["models"].value == ["alpha", "beta"]
    assert metadata["gains_over_best_baseline"].value["alpha/R@10"] == pytest.approx(0.2)
    assert "data:image/png;base64," in metadata["plot_alpha_R_10"].value
    assert (project / "metrics" / "alpha.json").exists()

    run = MlflowClient(tracking_uri=tracking).get_run(metadata["mlflow_run_id"].value)
    assert run.data.metrics["alpha/alpha_model/R_at_10"] == pytest.approx(0.3)
    assert run.data.tags["asset_key"] == "eval_overview"
    artifacts = {a.path for a in MlflowClient(tracking_uri=tracking).list_artifacts(run.info.run_id, "overview")}
    assert {"overview/overview.md", "overview/overview.html", "overview/history.jsonl"} <= artifacts
