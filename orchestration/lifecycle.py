"""One factory for every system's lifecycle in Dagster: train, ablations, eval, the
baselines check, the promotion gate, the retraining job and weekly schedule.

Given a system's SPEC (``mmpipe/systems/<name>/__init__.py``) and what only the pipeline
knows about it (:class:`SystemInputs`: which assets it trains on and how to read them), it
returns the Dagster definitions. Everything a system computes is a library call through
the SPEC; nothing here knows which system it builds.

* ``<name>_model`` trains with the resolved settings (dataclass + params.yaml; the
  launchpad can override any field), logs to MLflow and registers the version as
  ``challenger``; each SPEC ablation ``<name>_<ablation>_model`` trains the same way with
  its overrides, unregistered. In the asset's process by default; with the settings'
  ``compute.processes`` above 1, as ``torchrun`` processes launched through Dagster Pipes
  (``orchestration/distributed.py``), which stream their logs and report the metrics and
  the MLflow run back to the materialization.
* ``eval_<name>`` scores the registered challenger (the champion re-scored beside it),
  writes the report, tags the version; its blocking check ``beats_baselines`` holds the
  gate closed unless the challenger beats every SPEC baseline on the primary metric.
* the SPEC's sweeps (``<name>_<sweep>_model``, group ``ablations``) and their report
  ``ablations_<name>`` form the ``<name>_ablations`` job, outside the default run.
* ``<name>_champion`` moves the alias when the challenger is at least as good; its data
  version is the champion version, so what a champion feeds (embeddings, indexes, other
  systems' inputs) goes stale exactly when the champion moves.

When a system's inputs hold no usable example (``NothingToTrain``: a landing zone without
videos, say), its assets materialize with a note saying there is nothing to do instead of
failing, and so do the assets its champion feeds (:func:`champion_or_note`).
"""


import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import mlflow

from mmpipe.config import apply_overrides, resolve_settings, scaled_params, settings_from_dict
from mmpipe.eval.report import write_report
from mmpipe.registry.mlflow_registry import CHALLENGER, CHAMPION, RunContext, configure, start_run, tracking_uri
from mmpipe.registry.promotion import GateEvidence, alias_version, promote_from_evidence, record_eval_metric
from mmpipe.spec import NothingToTrain, SystemSpec
from mmpipe.train.checkpoint import read_trainer_state, readable_checkpoint
from mmpipe.train.distributed import compute_of, set_threads, world
from mmpipe.train.loop import CHECKPOINT_DIR, Logger, mlflow_logger
from mmpipe.versioning import dvc_tracked_hash
from orchestration.automation import AFTER_MODEL, EAGER
from orchestration.config import config_to_settings, settings_config_class
from orchestration.distributed import launch
from orchestration.metadata import png_metadata
from orchestration.names import EVAL_OVERVIEW
from orchestration.partitions import SINGLE_RUN
from orchestration.policies import IO_RETRY, TRAINING_POOL
from orchestration.resources import PipelinePaths

RESUME = "resume"


@dataclass(frozen=True)
class SystemInputs:
    """What the pipeline knows about a system beyond its SPEC: the assets it trains on,
    those a retrain refreshes first, and how to read its inputs from storage."""

    deps: Sequence[str]  # assets the training and eval read
    load: Callable[[PipelinePaths, Any], Any]  # (paths, settings) -> the SPEC's inputs
    refresh: Sequence[str] = ()  # cheap upstream assets a retraining run materializes first
    kinds: frozenset[str] = frozenset({"pytorch", "mlflow"})


ABLATIONS_GROUP = "ablations"


@dataclass
class Lifecycle:
    assets: list[dg.AssetsDefinition]
    asset_checks: list[dg.AssetChecksDefinition]
    training_job: Any
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)
    ablations_job: Any = None  # the SPEC's sweeps and their report; None without sweeps

    def asset(self, name: str) -> dg.AssetsDefinition:
        """One of the lifecycle's assets by name (``SPEC.eval_asset``, ...)."""
        for asset in self.assets:
            if asset.key.to_user_string() == name:
                return asset
        raise KeyError(f"no lifecycle asset {name!r}; have {[a.key.to_user_string() for a in self.assets]}")


def _finite_or_none(value):
    # Dagster float metadata and strict JSON both choke on NaN; "no number" reads as None.
    return None if value is None or not math.isfinite(value) else float(value)


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


def registered_version(spec: SystemSpec, alias: str, required: bool = True) -> str | None:
    """The version of ``spec``'s registered model holding ``alias``; a clear failure when
    none does and one is required."""
    version = alias_version(configure(), spec.registered_model, alias)
    if version is None and required:
        producer = spec.model_asset if alias == CHALLENGER else spec.champion_asset
        raise dg.Failure(description=f"no {spec.registered_model}@{alias} in the MLflow registry at "
                                     f"{tracking_uri()}: materialize {producer} first", allow_retries=False)
    return version


def nothing_to_do(spec: SystemSpec, inputs: SystemInputs, paths: PipelinePaths) -> str | None:
    """Why ``spec`` has nothing to do on the current validated data (its inputs hold no usable
    example), or None when it has something. It loads the inputs: for failure paths only."""
    try:
        inputs.load(paths, trained_settings(spec, paths))
    except NothingToTrain as error:
        return _nothing_note(error)
    return None


def _nothing_note(error: NothingToTrain) -> str:
    return f"nothing to do: {error}"


def champion_or_note(spec: SystemSpec, inputs: SystemInputs, paths: PipelinePaths) -> tuple[str | None, str | None]:
    """(champion version, None), or (None, why there is nothing to do) for what a champion
    feeds; a clear failure when there is no champion for another reason."""
    version = registered_version(spec, CHAMPION, required=False)
    if version is not None:
        return version, None
    note = nothing_to_do(spec, inputs, paths)
    if note is None:
        registered_version(spec, CHAMPION)  # raises: materialize the champion first
    return None, note


def _run_context(context, paths: PipelinePaths) -> RunContext:
    return RunContext(data_version=dvc_tracked_hash(paths.dvc_path) or "untracked",
                      orchestrator_run_id=context.run_id, asset_key=context.asset_key.to_user_string())


def run_training(spec: SystemSpec, settings: Any, data: Any, model_dir, run_context: RunContext, registers: bool,
                 resume: bool, log: Logger | None = None) -> dict:
    """Train ``spec`` on ``data`` into ``model_dir``, log the run to MLflow and (``registers``)
    register the version as challenger; the materialization's metadata. Under torchrun every
    process trains, rank 0 alone talks to MLflow (and returns the metadata; the others {})."""
    set_threads(compute_of(settings))
    if world()[0] != 0:
        spec.train(settings, data, model_dir, resume=resume, log=None)
        return {}
    mlflow_log = mlflow_logger()

    def log_both(step: int, metrics: dict) -> None:
        mlflow_log(step, metrics)
        if log is not None:
            log(step, metrics)

    with start_run(spec.name, run_context.asset_key, run_context) as run:
        trained = spec.train(settings, data, model_dir, resume=resume, log=log_both)
        mlflow.log_params(trained.params)
        mlflow.log_metric("train_seconds", trained.seconds)
        version = spec.register(trained, settings, run_context) if registers else None
    metadata = {"mlflow_run_id": run.info.run_id, "steps": trained.steps,
                "train_seconds": round(trained.seconds, 1), "processes": world()[1],
                **{k: v for k, v in trained.params.items() if k.startswith("train_")},
                **{f"final_{k}": float(v) for k, v in trained.final.items() if k != "step"}}
    if version is not None:
        metadata["registered_model"] = f"{spec.registered_model} version {version} (alias {CHALLENGER})"
        metadata["registered_version"] = version
    return metadata


def _training_asset(spec: SystemSpec, inputs: SystemInputs, run_config: type[dg.Config],
                    variant: str | None, overrides: dict, group: str = "models") -> dg.AssetsDefinition:
    registers = variant is None
    what = spec.description if registers else (
        f"Ablation `{variant}` of {spec.name}: the same training with {json.dumps(overrides)}.")

    @dg.asset(name=spec.model_asset if registers else spec.variant_asset(variant), group_name=group,
              kinds=set(inputs.kinds), deps=list(inputs.deps), code_version="3", backfill_policy=SINGLE_RUN,
              description=what, pool=TRAINING_POOL)
    def train_asset(context: dg.AssetExecutionContext, config: run_config, paths: PipelinePaths):
        settings = apply_overrides(config_to_settings(spec.settings, config, exclude=(RESUME,)), overrides)
        try:
            data = inputs.load(paths, settings)
        except NothingToTrain as error:  # no run, no registered version: eval and promotion say the same
            return dg.MaterializeResult(metadata={"note": _nothing_note(error), "steps": 0})
        run_context = _run_context(context, paths)
        if compute_of(settings).processes > 1:  # torchrun through Dagster Pipes
            return launch(context, spec, settings, paths, run_context, variant, registers, config.resume)
        metadata = run_training(spec, settings, data, spec.model_dir(paths.storage(), variant),
                                run_context, registers, config.resume)
        return dg.MaterializeResult(metadata=metadata)

    return train_asset


def _eval_asset(spec: SystemSpec, inputs: SystemInputs, variants: list[str]) -> dg.AssetsDefinition:
    @dg.asset(name=spec.eval_asset, group_name="eval", kinds={"mlflow", "markdown"},
              deps=[spec.model_asset, *map(spec.variant_asset, variants), *inputs.deps],
              code_version="4", automation_condition=AFTER_MODEL, backfill_policy=SINGLE_RUN, retry_policy=IO_RETRY,
              description=f"The registered challenger ({spec.registered_model}@{CHALLENGER}) against its "
                          f"baselines and ceiling, the champion re-scored beside it; `{spec.primary_metric}` "
                          "is tagged on its version.")
    def eval_asset(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        settings = trained_settings(spec, paths)
        try:
            data = inputs.load(paths, settings)
        except NothingToTrain as error:  # no report: the gate and the overview skip this system
            return dg.MaterializeResult(metadata={"note": _nothing_note(error)})
        challenger = registered_version(spec, CHALLENGER)
        champion = registered_version(spec, CHAMPION, required=False)
        outcome = spec.evaluate(data, settings, challenger, champion,
                                {variant: spec.model_dir(paths.storage(), variant) for variant in variants})
        model_row = outcome.metrics.get(spec.model_method, {})
        evidence = GateEvidence(spec.registered_model, spec.primary_metric, spec.higher_is_better,
                                str(challenger), outcome.challenger_value, champion_version=champion,
                                champion_value=outcome.champion_value, note=outcome.note,
                                requirements=tuple(r.describe() for r in spec.requirements),
                                unmet_requirements=unmet_requirements(spec, model_row))
        markdown = f"{outcome.markdown}\n{evidence.markdown()}"
        summary = {**outcome.summary, "promotion": evidence.to_dict(),
                   "gate": {"metric": spec.primary_metric, "model": spec.model_method,
                            "baselines": list(spec.baselines), "higher_is_better": spec.higher_is_better}}
        files = write_report(spec.report_dir(paths.storage()), f"{spec.name}_eval", markdown, outcome.plots,
                             summary)
        run_context = _run_context(context, paths)
        with start_run(spec.name, spec.eval_asset, run_context) as run:
            mlflow.set_tag("registered_version", challenger)
            mlflow.log_metrics({f"{method}/{key}".replace("@", "_at_"): value
                                for method, row in outcome.metrics.items() for key, value in row.items()
                                if math.isfinite(value)})
            mlflow.log_artifacts(str(files["markdown"].parent), artifact_path="eval")
        record_eval_metric(configure(), spec.registered_model, challenger, spec.primary_metric,
                           outcome.challenger_value,
                           extra={"data_version": run_context.data_version, "mlflow_run_id": run.info.run_id,
                                  "dagster_run_id": context.run_id})
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.md(markdown),
            "gains_over_best_baseline": dg.MetadataValue.json(_jsonable(summary.get("gains", {}))),
            "gain_90pct_interval": dg.MetadataValue.json(_jsonable(summary.get("gain_ci", {}))),
            **{f"plot_{name}": png_metadata(png, name) for name, png in outcome.plots.items()},
            "report_path": dg.MetadataValue.path(str(files["markdown"])),
            "mlflow_run_id": run.info.run_id,
            "challenger_version": challenger,
            "primary_metric": spec.primary_metric,
            "challenger_value": _finite_or_none(outcome.challenger_value),
            "champion_version": champion or "none",
            "champion_value_rescored": _finite_or_none(outcome.champion_value),
        })

    return eval_asset


def _ablations_report_asset(spec: SystemSpec, inputs: SystemInputs) -> dg.AssetsDefinition:
    sweeps = list(spec.sweeps)

    @dg.asset(name=f"ablations_{spec.name}", group_name=ABLATIONS_GROUP, kinds={"markdown"},
              # the baselines the main job trains (spec.ablations) too: a system's ladder may start at one
              deps=[spec.model_asset, *map(spec.variant_asset, [*spec.ablations, *sweeps]), *inputs.deps],
              code_version="1",
              backfill_policy=SINGLE_RUN,
              description=f"The sweeps of {spec.name} ({', '.join(sweeps)}) and its main-job baselines "
                          f"({', '.join(spec.ablations) or 'none'}) against the model they vary, on the "
                          "validation and test windows, each difference with its bootstrap interval.")
    def ablations_report(paths: PipelinePaths) -> dg.MaterializeResult:
        settings = trained_settings(spec, paths)
        # the main job's baselines (spec.ablations) beside the sweeps: the ladder a report reads may start at one
        dirs = {variant: spec.model_dir(paths.storage(), variant) for variant in [*spec.ablations, *sweeps]}
        try:
            data = inputs.load(paths, settings)
        except NothingToTrain as error:
            return dg.MaterializeResult(metadata={"note": _nothing_note(error)})
        outcome = spec.evaluate_sweeps(data, settings, spec.model_dir(paths.storage()), dirs)
        files = write_report(spec.ablations_report_dir(paths.storage()),
                             f"{spec.name}_ablations", outcome.markdown, outcome.plots, outcome.summary)
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.md(outcome.markdown), "report_path": dg.MetadataValue.path(str(files["markdown"])),
            **{f"plot_{name}": png_metadata(png, name) for name, png in outcome.plots.items()}})

    return ablations_report


def trained_settings(spec: SystemSpec, paths: PipelinePaths) -> Any:
    """The settings the model's last training run used (its checkpoint records them), so
    the eval reads inputs the way the challenger was trained; the resolved defaults when
    there is no checkpoint."""
    checkpoint = spec.model_dir(paths.storage()) / CHECKPOINT_DIR
    if readable_checkpoint(checkpoint) is None:
        return resolve_settings(spec.settings, spec.name)
    return settings_from_dict(spec.settings, read_trainer_state(checkpoint)["config"])


def _report_path(spec: SystemSpec, paths: PipelinePaths):
    return spec.report_dir(paths.storage()) / f"{spec.name}_eval.json"


def _read_summary(spec: SystemSpec, paths: PipelinePaths) -> tuple[dict, str]:
    report = _report_path(spec, paths)
    if not report.exists():
        raise dg.Failure(description=f"no eval report at {report}: materialize {spec.eval_asset} first",
                         allow_retries=False)
    return json.loads(report.read_text()), str(report)


def baselines_beaten(spec: SystemSpec, metrics: dict[str, dict[str, float]]) -> tuple[bool, dict]:
    """Whether the model's primary metric beats every baseline's (strictly, in the SPEC's
    direction); with the numbers behind the answer."""
    def value(method):
        number = metrics.get(method, {}).get(spec.primary_metric)
        return None if number is None or not math.isfinite(number) else float(number)

    model = value(spec.model_method)
    baselines = {name: value(name) for name in spec.baselines}
    scored = {name: number for name, number in baselines.items() if number is not None}
    if model is None or not scored:
        return False, {"model": model, "baselines": baselines}
    best = (max if spec.higher_is_better else min)(scored, key=scored.get)
    beaten = all((model > number) if spec.higher_is_better else (model < number) for number in scored.values())
    return beaten, {"model": model, "best_baseline": best, "best_baseline_value": scored[best],
                    "baselines": baselines}


def unmet_requirements(spec: SystemSpec, model_row: dict[str, float]) -> tuple[str, ...]:
    """Each of the SPEC's requirements the model's eval row fails, said with its value."""
    return tuple(reason for reason in (r.unmet(model_row) for r in spec.requirements) if reason is not None)


def _baselines_check(spec: SystemSpec, inputs: SystemInputs) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.eval_asset, name="beats_baselines", blocking=True,
                    description=f"The challenger's `{spec.primary_metric}` beats every baseline "
                                f"({', '.join(spec.baselines)}); the promotion gate waits on it.")
    def beats_baselines(paths: PipelinePaths) -> dg.AssetCheckResult:
        if not _report_path(spec, paths).exists() and (note := nothing_to_do(spec, inputs, paths)):
            return dg.AssetCheckResult(passed=True, metadata={"note": note})
        summary, _ = _read_summary(spec, paths)
        passed, numbers = baselines_beaten(spec, summary.get("metrics", {}))
        severity = scaled_params()["promotion"]["baselines_check_severity"]
        return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity(severity), metadata={
            "metric": spec.primary_metric, "model": _finite_or_none(numbers.get("model")),
            "best_baseline": numbers.get("best_baseline") or "none",
            "best_baseline_value": _finite_or_none(numbers.get("best_baseline_value")),
            "baselines": dg.MetadataValue.json(_jsonable(numbers["baselines"]))})

    return beats_baselines


def _champion_asset(spec: SystemSpec, inputs: SystemInputs) -> dg.AssetsDefinition:
    @dg.asset(name=spec.champion_asset, group_name="models", kinds={"mlflow"}, deps=[spec.eval_asset],
              code_version="2", automation_condition=EAGER, backfill_policy=SINGLE_RUN, retry_policy=IO_RETRY,
              description=f"The promotion gate: moves {spec.registered_model}@{CHAMPION} to the evaluated "
                          f"challenger only when its `{spec.primary_metric}` is at least the champion's; "
                          "every decision is tagged on the version (promotion.*). Its data version is the "
                          "champion version: what the champion feeds goes stale when it moves.")
    def champion_asset(paths: PipelinePaths) -> dg.MaterializeResult:
        if not _report_path(spec, paths).exists() and (note := nothing_to_do(spec, inputs, paths)):
            return dg.MaterializeResult(data_version=dg.DataVersion(f"{spec.registered_model}/none"),
                                        metadata={"note": note, "champion_version": "none"})
        summary, report = _read_summary(spec, paths)
        if "promotion" not in summary:
            raise dg.Failure(description=f"{report} has no promotion section: rematerialize {spec.eval_asset}",
                             allow_retries=False)
        decision = promote_from_evidence(configure(), GateEvidence.from_dict(summary["promotion"]))
        files = write_report(spec.report_dir(paths.storage()), f"{spec.name}_promotion", decision.markdown(), {},
                             decision.to_dict())
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"{spec.registered_model}/{decision.champion or 'none'}"),
            metadata={
                "decision": decision.outcome, "promoted": decision.promote, "reason": decision.reason,
                "metric": decision.metric, "challenger_version": decision.version,
                "challenger_value": _finite_or_none(decision.challenger_value),
                "champion_value": _finite_or_none(decision.champion_value),
                "previous_champion_version": decision.previous_champion or "none",
                "champion_version": decision.champion or "none",
                "decision_path": dg.MetadataValue.path(str(files["metrics"])),
            })

    return champion_asset


def dvc_stage(spec: SystemSpec) -> dict:
    """``spec``'s stage of ``dvc.yaml``: the default run's lifecycle assets through the same
    Dagster entry point as every stage; its params section and package are its deps, its
    models and reports its outputs. Its primary metric reaches ``dvc metrics diff`` through
    the evaluate stage's ``storage/metrics/<name>.json`` (the eval overview writes it)."""
    selection = ",".join([spec.model_asset, *map(spec.variant_asset, spec.ablations), spec.eval_asset,
                          spec.champion_asset])
    return {
        "cmd": f"dagster asset materialize -m orchestration.definitions --select {selection}",
        "deps": [*spec.data_deps, f"mmpipe/systems/{spec.name}"],
        "params": [spec.name],
        "outs": [{f"storage/models/{spec.name}": {"cache": False}},
                 *({f"storage/models/{spec.name}_{variant}": {"cache": False}} for variant in spec.ablations),
                 {f"storage/reports/{spec.name}": {"cache": False, "persist": True}}],
    }


def lifecycle(spec: SystemSpec, inputs: SystemInputs) -> Lifecycle:
    """The Dagster definitions of ``spec``'s lifecycle (see the module doc)."""
    defaults = resolve_settings(spec.settings, spec.name)
    run_config = settings_config_class(defaults, f"{type(defaults).__name__}RunConfig",
                                       extra={RESUME: (bool, True)})
    variants = list(spec.ablations)
    assets = [_training_asset(spec, inputs, run_config, None, {}),
              *(_training_asset(spec, inputs, run_config, name, dict(overrides))
                for name, overrides in spec.ablations.items()),
              _eval_asset(spec, inputs, variants), _champion_asset(spec, inputs)]
    training_job = dg.define_asset_job(
        f"{spec.name}_training",
        selection=dg.AssetSelection.assets(*inputs.refresh, *(a.key for a in assets), EVAL_OVERVIEW),
        description=f"Retrain {spec.name} (and its ablations) on the current validated data, evaluate the "
                    "new challenger and run the promotion gate.",
        tags={"mmpipe/job": "retrain", "mmpipe/system": spec.name},
    )
    weekly = dg.ScheduleDefinition(
        name=f"weekly_{spec.name}_retrain", job=training_job, cron_schedule="0 3 * * 1",  # Mondays 03:00
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain {spec.name} every week whatever the sensors say; the promotion gate still "
                    "decides whether the new version serves.")
    ablations_job = None
    if spec.sweeps:
        sweep_assets = [*(_training_asset(spec, inputs, run_config, name, dict(overrides), group=ABLATIONS_GROUP)
                          for name, overrides in spec.sweeps.items()), _ablations_report_asset(spec, inputs)]
        assets += sweep_assets
        ablations_job = dg.define_asset_job(
            f"{spec.name}_ablations", selection=dg.AssetSelection.assets(*(a.key for a in sweep_assets)),
            description=f"Train {spec.name}'s sweeps ({', '.join(spec.sweeps)}) and report them against the model.",
            tags={"mmpipe/job": "ablations", "mmpipe/system": spec.name})
    return Lifecycle(assets, [_baselines_check(spec, inputs)], training_job, [weekly], ablations_job)
