"""Shared fixtures: one tiny generated world per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The raw root of a tiny world (seed 0). Treat it as read-only."""
    from mmpipe.world.generate import generate_world

    root = tmp_path_factory.mktemp("tiny_world") / "raw"
    generate_world(root, "tiny", progress=False, workers=2)  # see test_world: bytes do not depend on it
    return root


VIDEO_TABLES = ("videos", "moment_queries", "video_captions", "video_shots", "summary_queries")


def pins_only_landing_zone(world: Path, root: Path) -> Path:
    """``world`` as a user without videos delivers it at ``root``: every video table with its
    columns and types but no row, no video file (the pins' truth stays, for their eval)."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(world, root, ignore=shutil.ignore_patterns("videos"))
    for table in VIDEO_TABLES:
        path = root / f"{table}.parquet"
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    return root


def tiny_run_environment(patch: pytest.MonkeyPatch, storage: Path) -> None:
    """The environment of a tiny pipeline run into ``storage``: its own MLflow store and
    artifacts, and the tiny preset (a smoke run reports, not blocks, on baselines)."""
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{storage / 'mlflow.db'}")
    patch.setenv("MMPIPE_SCALE", "tiny")
    patch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(storage / "mlruns"))


@pytest.fixture(scope="session")
def materialized(tiny_world, tmp_path_factory):
    """(result, storage, instance) of the whole graph materialized on the tiny world, as
    `make run` does (tests/test_pipeline.py), once per session: the pipeline's tests and
    the serving tests read the same run. Treat it as read-only: a test that changes the
    registry or storage works on a copy."""
    import dagster as dg

    from tests.test_pipeline import _materialize_all

    storage = tmp_path_factory.mktemp("storage")
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        tiny_run_environment(patch, storage)
        result = _materialize_all(tiny_world, storage, instance)
    return result, storage, instance
