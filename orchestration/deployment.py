"""Where the graph runs, chosen by one environment variable: ``MMPIPE_MODE``.

Each mode is a Dagster instance (``deploy/dagster/<mode>/dagster.yaml``, which the Makefile
copies to ``$DAGSTER_HOME``) and an executor (here, for the single ``Definitions``):

* ``embedded`` (default): SQLite under ``$DAGSTER_HOME``, steps in the run's process; no server.
* ``postgres``: the instance in PostgreSQL (shared history for a team), steps in-process.
* ``celery``: the PostgreSQL instance, every step a Celery task on workers fed by a Redis
  broker (``deploy/dagster/celery/celery.yaml``: the executor and the workers read it alike).
* ``k8s``: Dagster's Helm chart writes the instance (``deploy/k8s/values.yaml``); every step a
  Kubernetes Job (``dagster-k8s``, installed in the image: ``Dockerfile``).
"""

import os
from pathlib import Path

import dagster as dg
import yaml

from mmpipe.params import PROJECT_ROOT

MODE_VARIABLE = "MMPIPE_MODE"
MODES = ("embedded", "postgres", "celery", "k8s")
DEPLOY_DIR = PROJECT_ROOT / "deploy"
CELERY_CONFIG = DEPLOY_DIR / "dagster" / "celery" / "celery.yaml"


def current_mode() -> str:
    mode = os.environ.get(MODE_VARIABLE) or "embedded"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={mode!r} is not a mode; choose one of {', '.join(MODES)}")
    return mode


def instance_config(mode: str) -> Path:
    """The ``dagster.yaml`` of ``mode`` (the Helm chart writes k8s's own)."""
    if mode == "k8s":
        raise ValueError("the k8s mode's dagster.yaml comes from Dagster's Helm chart: deploy/k8s/values.yaml")
    return DEPLOY_DIR / "dagster" / mode / "dagster.yaml"


def celery_executor_config() -> dict:
    """The ``execution: config:`` block the Celery workers are started with (env sources kept)."""
    return yaml.safe_load(CELERY_CONFIG.read_text())["execution"]["config"]


def executor(mode: str | None = None) -> dg.ExecutorDefinition:
    mode = mode or current_mode()
    if mode == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_executor_config(), name="celery")
    if mode == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as error:
            raise ImportError(f"{MODE_VARIABLE}=k8s needs dagster-k8s, which the image installs (Dockerfile); "
                              "pip install dagster-k8s to run it elsewhere") from error
        return k8s_job_executor
    # One process: each step is short and a subprocess per step would spend most of its time
    # importing torch / Great Expectations on 2 cores.
    return dg.in_process_executor
