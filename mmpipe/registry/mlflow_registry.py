"""The one MLflow helper every model uses: tracking location, run tags, registration, aliases.

Tracking defaults to a SQLite store in the project (``mlflow.db``, artifacts in ``mlruns/``);
``MLFLOW_TRACKING_URI`` overrides it (e.g. an ``mlflow server`` on 127.0.0.1, or a team's
PostgreSQL: ``postgresql://user:password@host:5432/mlflow``).
``MMPIPE_MLFLOW_ARTIFACTS`` moves the artifacts of new experiments: a directory, or an object
store URI such as ``s3://bucket/mlruns`` (with ``MLFLOW_S3_ENDPOINT_URL`` for an S3-compatible
server and the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmpipe.params import project_root

CHALLENGER = "challenger"
CHAMPION = "champion"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def configure() -> MlflowClient:
    """Point MLflow at the project's tracking store and return a client for it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or project_root(),
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@dataclass(frozen=True)
class RunContext:
    """Where a training run came from: recorded as tags on the run and the model version."""

    data_version: str = "unknown"  # DVC hash of data/ (or a content hash)
    orchestrator_run_id: str = "none"  # the Dagster run id, when run by Dagster
    asset_key: str = "none"

    def tags(self) -> dict[str, str]:
        return {
            "git_commit": git_commit(),
            "data_version": self.data_version,
            "dagster_run_id": self.orchestrator_run_id,
            "asset_key": self.asset_key,
        }


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A server decides where its artifacts go; database stores (SQLite, PostgreSQL) would put them
    # in ./mlruns of whatever the cwd is (each Celery worker's own), so pin them to the project.
    server = os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://"))
    try:
        return client.create_experiment(name, artifact_location=None if server else artifact_location(name))
    except MlflowException:
        # another process (a Celery worker) created it since the lookup
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def artifact_location(experiment: str) -> str:
    """Where a new experiment's artifacts go: ``MMPIPE_MLFLOW_ARTIFACTS``/<experiment>.

    Database stores default artifacts to ./mlruns of whatever the cwd is, so the default is pinned
    to the project. A URI (``s3://bucket/prefix``) is kept as it is: a Path would fold its ``//``.
    """
    root = os.environ.get("MMPIPE_MLFLOW_ARTIFACTS") or str(project_root() / "mlruns")
    if "://" in root:
        return f"{root.rstrip('/')}/{experiment}"
    return (Path(root).resolve() / experiment).as_uri()


@contextmanager
def start_run(experiment: str, run_name: str, context: RunContext, params: dict[str, Any] | None = None
              ) -> Iterator[mlflow.ActiveRun]:
    client = configure()
    experiment_id = _experiment_id(client, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=context.tags()) as run:
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield run


def register_logged_model(model_uri: str, name: str, context: RunContext) -> str:
    """Register a logged model under ``name``, tag it, alias it ``challenger``; return its version."""
    client = configure()
    version = mlflow.register_model(model_uri, name, tags=context.tags()).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)


def model_uri_for_alias(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"
