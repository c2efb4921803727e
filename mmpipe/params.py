"""Read ``params.yaml``: the defaults shared by DVC stages and Dagster asset config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The project directory: ``MMPIPE_ROOT`` if set, else the checkout this package lives in."""
    return Path(os.environ.get("MMPIPE_ROOT", PROJECT_ROOT)).resolve()


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.exists():
        raise FileNotFoundError(f"parameter file {path} not found")
    return yaml.safe_load(path.read_text()) or {}
