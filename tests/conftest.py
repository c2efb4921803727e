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
