"""eval_overview: one report across every model's evaluation, DVC metrics and plots data."""

import math
from datetime import datetime, timezone

import dagster as dg
import mlflow

from mmpipe.eval.overview import discover_reports, mlflow_metric_name, write_overview
from mmpipe.registry.mlflow_registry import RunContext, git_commit, start_run
from mmpipe.systems import SPECS
from mmpipe.versioning import dvc_tracked_hash
from orchestration.automation import EAGER
from orchestration.metadata import png_metadata
from orchestration.names import EVAL_OVERVIEW
from orchestration.partitions import SINGLE_RUN
from orchestration.policies import IO_RETRY
from orchestration.resources import PipelinePaths

# Every system's eval asset writes a summary under storage/reports/<name>/ (write_report);
# the overview follows them all and finds the reports on disk.
EVAL_REPORT_ASSETS = [spec.eval_asset for spec in SPECS]


@dg.asset(name=EVAL_OVERVIEW, group_name="eval", kinds={"mlflow", "markdown", "dvc"}, deps=EVAL_REPORT_ASSETS,
          code_version="1", automation_condition=EAGER, backfill_policy=SINGLE_RUN, retry_policy=IO_RETRY,
          description="Every model vs its best baseline vs oracle, with the trend since the previous "
                      "run; DVC metrics in storage/metrics/, plots data in storage/plots/.")
def eval_overview(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
    reports = discover_reports(paths.storage("reports"))
    commit = git_commit()
    overview = write_overview(
        reports, paths.storage("overview"), paths.storage("metrics"), paths.storage("plots"),
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_commit=commit, run_id=context.run_id,
    )
    run_context = RunContext(data_version=dvc_tracked_hash(paths.dvc_path) or "untracked",
                             orchestrator_run_id=context.run_id, asset_key="eval_overview")
    with start_run("eval_overview", "eval_overview", run_context) as run:
        mlflow.log_metrics({mlflow_metric_name(f"{family}/{key}"): value
                            for family, flat in overview.metrics.items() for key, value in flat.items()})
        mlflow.log_artifacts(str(overview.paths["markdown"].parent), artifact_path="overview")
    gains = {f"{row.family}/{row.metric}": row.gain
             for rows in overview.comparisons.values() for row in rows
             if row.gain is not None and math.isfinite(row.gain)}
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(overview.markdown),
        "models": dg.MetadataValue.json(sorted(overview.comparisons)),
        "gains_over_best_baseline": dg.MetadataValue.json(gains),
        **{f"plot_{name}": png_metadata(png, name) for name, png in overview.plots.items()},
        "report_path": dg.MetadataValue.path(str(overview.paths["markdown"])),
        "html_path": dg.MetadataValue.path(str(overview.paths["html"])),
        "mlflow_run_id": run.info.run_id,
    })


overview_assets = [eval_overview]
