"""The layout's rules (pyproject's import-linter contracts), and one source for every default."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmpipe.config import apply_overrides, resolve_settings, system_overrides
from mmpipe.systems import SPECS
from tests.conftest import PROJECT_ROOT


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_broken_contract_fails(tmp_path):
    """The contracts can fail: a copy of the config with a rule the code breaks is reported."""
    config = (PROJECT_ROOT / "pyproject.toml").read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text(config + '''
[[tool.importlinter.contracts]]
name = "nothing may import torch (false on purpose)"
type = "forbidden"
source_modules = ["mmpipe.systems"]
forbidden_modules = ["torch"]
''')
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(broken)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout


def _leaves(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_params_yaml_names_only_known_settings_and_the_launchpad_shows_the_resolved_ones(spec):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    scales = [None, *params.get("scales", {})]
    from orchestration.systems import pinclip  # noqa: F401  builds the lifecycle, so its config class
    from orchestration.config import settings_config_class

    for scale in scales:
        scaled = {**params, "world": {"scale": scale or params["world"]["scale"]}}
        settings = resolve_settings(spec.settings, spec.name, scaled)  # raises on an unknown key
        for path, value in _leaves(system_overrides(spec.name, scaled)):
            node = settings
            for part in path.split("."):
                node = getattr(node, part)
            assert node == value, (scale, path)
        launchpad = settings_config_class(settings)()
        assert launchpad.model_dump() == dataclasses.asdict(settings)


def test_an_unknown_setting_is_refused_with_its_path():
    from mmpipe.systems.pinclip.train import PinCLIPSettings

    with pytest.raises(ValueError, match=r"unknown setting 'pinclip.train.stpes'"):
        apply_overrides(PinCLIPSettings(), {"train": {"stpes": 3}}, "pinclip")
