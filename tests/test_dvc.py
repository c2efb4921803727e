"""DVC versioning of the landing zone: a real add → push → wipe → pull round trip."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmpipe.versioning import directory_md5, dvc_tracked_hash
from tests.conftest import PROJECT_ROOT

DVC = str(Path(sys.executable).parent / "dvc")


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_project_dvc_config_has_a_local_default_remote():
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / ".dvc" / "config")
    default = config["core"]["remote"]
    url = config[f"'remote \"{default}\"'"]["url"]
    assert "://" not in url, "the default remote must be a local path so push/pull work offline"


def test_dvc_yaml_stages_call_the_dagster_entry_point():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert stages, "dvc.yaml declares no stages"
    for name, stage in stages.items():
        assert "dagster asset materialize" in stage["cmd"], name
        for out in stage.get("outs", []):
            out_path = out if isinstance(out, str) else next(iter(out))
            assert not out_path.startswith("data/"), f"{name}: outputs must live outside data/"


@pytest.mark.slow
def test_every_system_has_its_dvc_stage_from_the_factory():
    from mmpipe.systems import SPECS
    from orchestration.lifecycle import dvc_stage

    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for spec in SPECS:
        assert stages.get(spec.name) == dvc_stage(spec), f"dvc.yaml's {spec.name} stage differs from dvc_stage(SPEC)"


def test_add_push_wipe_pull_round_trip(tiny_world, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run([DVC, "init", "-q"], repo)
    _run([DVC, "config", "core.analytics", "false"], repo)
    _run([DVC, "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    shutil.copytree(tiny_world, repo / "data" / "raw")
    before = directory_md5(repo / "data")

    _run([DVC, "add", "-q", "data"], repo)
    _run([DVC, "push", "-q"], repo)
    tracked = dvc_tracked_hash(repo / "data.dvc")
    assert tracked and tracked.endswith(".dir")

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([DVC, "pull", "-q"], repo)

    assert directory_md5(repo / "data") == before
    assert dvc_tracked_hash(repo / "data.dvc") == tracked
