"""Sensors: retrain a system when enough new data arrived or the embeddings drift; record
every failed run where a user sees it.

The decision itself lives in :mod:`mmpipe.registry.retraining`; the sensor reads the
champion from MLflow and the validated pins and embeddings from storage, and turns the
decision into one ``RunRequest`` (its ``run_key`` names the champion version and the
trigger, so one trigger never launches two runs) or a ``SkipReason`` with the numbers.
"""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from mmpipe.io import append_jsonl
from mmpipe.params import load_params
from mmpipe.registry.mlflow_registry import configure, tracking_uri
from mmpipe.registry.retraining import RetrainCursor, RetrainingPolicy, retraining_decision
from mmpipe.spec import SystemSpec
from orchestration.resources import PipelinePaths

FAILURES_FILE = "run_failures.jsonl"
FAILURE_TAG = "mmpipe/failure_record"

_IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


_DEFAULT_POLICY = RetrainingPolicy.from_params(load_params())


class RetrainingThresholds(dg.ConfigurableResource):
    """When the retraining sensor fires; defaults from ``params.yaml`` ``retraining:``."""

    min_new_pins: int = _DEFAULT_POLICY.min_new_pins
    drift_threshold: float = _DEFAULT_POLICY.drift_threshold
    min_drift_pins: int = _DEFAULT_POLICY.min_drift_pins
    max_reference_pins: int = _DEFAULT_POLICY.max_reference_pins

    def policy(self) -> RetrainingPolicy:
        return RetrainingPolicy(self.min_new_pins, self.drift_threshold, self.min_drift_pins,
                                self.max_reference_pins)


def _missing_sqlite_store() -> Path | None:
    uri = tracking_uri()
    store = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    return store if store is not None and not store.exists() else None


def retraining_sensor(spec: SystemSpec, job, validated_table: str = "pins",
                      embeddings: tuple[str, ...] = ("embeddings", "pins")) -> dg.SensorDefinition:
    """``<name>_retraining_sensor``: requests ``job`` when a retrain would add at least
    ``min_new_pins`` items the champion never trained on, or when the newest day's
    embeddings (by the champion) drift from its training items."""

    @dg.sensor(
        name=f"{spec.name}_retraining_sensor",
        job=job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Requests a {job.name} run when a retrain would add at least retraining.min_new_pins "
                    f"items the champion never trained on, or when the newest day's embeddings shift from "
                    "the champion's training items by retraining.drift_threshold (params.yaml). One run per "
                    "trigger (run_key); skips say the numbers.",
    )
    def sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths, retraining: RetrainingThresholds):
        running = context.instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=_IN_PROGRESS), limit=1)
        if running:
            return dg.SkipReason(f"{job.name} run {running[0].run_id} is still in progress")
        missing = _missing_sqlite_store()
        if missing is not None:
            return dg.SkipReason(f"no MLflow tracking store at {missing} yet: no champion to retrain")
        cursor = RetrainCursor.from_json(context.cursor)
        decision = retraining_decision(
            configure(), spec.registered_model, paths.storage("validated"), paths.storage(*embeddings),
            retraining.policy(), cursor, table=validated_table,
        )
        new_cursor = decision.cursor.to_json() if decision.cursor != cursor else None
        if not decision.fire:
            return dg.SensorResult(skip_reason=dg.SkipReason(decision.reason), cursor=new_cursor)
        context.log.info(f"requesting {decision.run_key}: {decision.reason}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=decision.run_key, tags=decision.tags())],
            cursor=new_cursor,
        )

    return sensor


def failure_record(context: dg.RunFailureSensorContext) -> dict:
    """One failed run as a plain record: which job, which steps, why, and who launched it."""
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        while error is not None and error.cause is not None:  # Dagster wraps the user's exception
            error = error.cause
        steps.append({"step": event.step_key,
                      "error": error.message.strip() if error else (event.message or ""),
                      "error_type": error.cls_name if error else None})
    launched_by = {key: value for key, value in run.tags.items()
                   if key in ("dagster/sensor_name", "dagster/schedule_name", "dagster/run_key",
                              "dagster/backfill") or key.startswith("mmpipe/")}
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": run.run_id,
        "job": run.job_name,
        "assets": sorted(key.to_user_string() for key in (run.asset_selection or [])),
        "failed_steps": steps,
        "message": context.failure_event.message,
        "launched_by": launched_by,
    }


@dg.run_failure_sensor(
    name="record_run_failures",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Appends every failed run (job, failed steps, error, launcher) to "
                f"storage/failures/{FAILURES_FILE} and tags the run with where its record is.",
)
def record_run_failures(context: dg.RunFailureSensorContext, paths: PipelinePaths) -> None:
    record = failure_record(context)
    path = append_jsonl(record, paths.storage("failures") / FAILURES_FILE)
    steps = ", ".join(step["step"] for step in record["failed_steps"]) or "none"
    context.instance.add_run_tags(record["run_id"], {FAILURE_TAG: str(path)})
    context.log.warning(f"run {record['run_id']} of {record['job']} failed (steps: {steps}); "
                        f"recorded in {path}")
