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
