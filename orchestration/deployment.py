"""Where the graph runs, chosen by one environment variable: ``MMPIPE_MODE``.

Each mode is a Dagster instance (``deploy/dagster/<mode>/dagster.yaml``, which the Makefile
copies to ``$DAGSTER_HOME``) and an executor (here, for the single ``Definitions``):

* ``embedded`` (default): SQLite under ``$DAGSTER_HOME``, steps in the run's process; no server.
* ``multiprocess``: the same SQLite instance, every step in a process of its own, at most
  ``MMPIPE_CONCURRENCY`` (default: the cores) at once; each sets its torch threads to its
  share of the cores (:func:`share_cores`). One machine, its cores kept busy by independent steps.
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
from mmpipe.train.distributed import CONCURRENCY_ENV, threads_per_process

MODE_VARIABLE = "MMPIPE_MODE"
MODES = ("embedded", "multiprocess", "postgres", "celery", "k8s")
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
    if mode == "multiprocess":
        return dg.multiprocess_executor.configured(multiprocess_config(), name="multiprocess")
    # One process: each step is short and a subprocess per step would spend most of its time
    # importing torch / Great Expectations on 2 cores.
    return dg.in_process_executor


# Steps a multiprocess run may start at once when that differs from the cores' divisor: a chain
# of torch steps keeps every core (MMPIPE_CONCURRENCY=1) while its light checks, whose time is
# mostly the step process's start, overlap with it (orchestration/parallel_runs.py).
MAX_STEPS_ENV = "MMPIPE_MAX_STEPS"


def multiprocess_config() -> dict:
    """The multiprocess executor's config: ``MMPIPE_MAX_STEPS`` (default ``concurrency()``) steps
    at once, each forked from a server that has imported this code location once
    (``forkserver``), instead of a fresh interpreter importing torch, Dagster and GX per step."""
    steps = int(os.environ.get(MAX_STEPS_ENV) or concurrency())
    # Named: Dagster preloads a run's module only for a job loaded from one, not `-m` Definitions.
    return {"max_concurrent": max(1, steps),
            "start_method": {"forkserver": {"preload_modules": ["orchestration.definitions"]}}}


def concurrency() -> int:
    """How many steps may run at once: ``MMPIPE_CONCURRENCY``, else the cores this process may use."""
    value = os.environ.get(CONCURRENCY_ENV)
    if value:
        return max(1, int(value))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cores(mode: str | None = None) -> int:
    """Torch threads of a step process: its share of the cores when steps run side by side.

    The multiprocess executor starts every step in a fresh process that loads the code location,
    so this runs once per step; ``MMPIPE_CONCURRENCY`` is exported first so the processes
    (and ``set_threads`` in the trainings) divide the cores by the same number. Other modes
    run one step per process at a time: torch keeps all the cores.
    """
    import torch

    if (mode or current_mode()) != "multiprocess":
        return torch.get_num_threads()
    os.environ.setdefault(CONCURRENCY_ENV, str(concurrency()))
    threads = threads_per_process()
    torch.set_num_threads(threads)
    return threads
