"""Servers bind to 127.0.0.1 by default, and checkpoints load without pickle.

Both are read from what actually runs: the commands the Makefile, the README and CI start,
the default host of each server program they call, and every ``torch.load`` (and other
pickle-based load) in the code base, so adding an unsafe one fails here.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmpipe.cli import build_parser
from mmpipe.train.checkpoint import save_checkpoint
from tests.conftest import PROJECT_ROOT

LOOPBACK = "127.0.0.1"
CODE_DIRS = ("mmpipe", "orchestration", "benchmarks", "tests")
# Files whose commands start servers: recipes, the quick start and tour, the CI script.
COMMAND_FILES = ("Makefile", "README.md", ".ci/run", "dvc.yaml")
SERVER_COMMAND = re.compile(r"\b(dagster dev|dagster-webserver|dagster-daemon|mlflow (?:server|ui)|"
                            r"mlflow models serve|mmpipe serve|uvicorn|gunicorn|weed server)\b")
HOST_FLAG = re.compile(r"(?:--host|-h|-ip|-ip\.bind)[ =][`'\"]?([\w.:-]*\w)")


def _python_files() -> list[Path]:
    return sorted(path for folder in CODE_DIRS for path in (PROJECT_ROOT / folder).rglob("*.py"))


def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that may unpickle: ``torch.load`` without ``weights_only=True``,
    ``pickle``/``cloudpickle``/``joblib`` loads, ``np.load(..., allow_pickle=True)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "load" in node.value:
            try:  # code in a string: a worker script a test or a launcher runs with python -c
                found += [f"line {node.lineno} (in a string): {hit}" for hit in unsafe_loads(node.value)]
            except SyntaxError:
                pass
            continue
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        keywords = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        name = f"{owner}.{node.func.attr}"
        if name == "torch.load" and keywords.get("weights_only") is not True:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif owner in ("pickle", "cloudpickle", "joblib", "dill") and node.func.attr in ("load", "loads"):
            found.append(f"line {node.lineno}: {name}")
        elif owner in ("np", "numpy") and node.func.attr == "load" and keywords.get("allow_pickle") is True:
            found.append(f"line {node.lineno}: np.load with allow_pickle=True")
    return found


def test_the_unsafe_load_finder_finds_what_it_must():
    assert unsafe_loads("torch.load(path)") == ["line 1: torch.load without weights_only=True"]
    assert unsafe_loads("x = 1\ntorch.load(path, weights_only=False)") == [
        "line 2: torch.load without weights_only=True"]
    assert unsafe_loads("pickle.loads(b)\nnp.load(f, allow_pickle=True)") == [
        "line 1: pickle.loads", "line 2: np.load with allow_pickle=True"]
    assert unsafe_loads('WORKER = """\nimport torch\nx = torch.load(p)\n"""') == [
        "line 1 (in a string): line 3: torch.load without weights_only=True"]
    assert unsafe_loads("torch.load(path, weights_only=True)\nnp.load(f, allow_pickle=False)") == []


def test_no_load_in_the_code_base_can_unpickle():
    offenders = {str(path.relative_to(PROJECT_ROOT)): found for path in _python_files()
                 if path.name != Path(__file__).name and (found := unsafe_loads(path.read_text()))}
    assert offenders == {}


def test_a_checkpoint_is_safetensors_and_json_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ckpt", model, opt, step=1, config={}, aux=torch.nn.Linear(2, 1))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["aux.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
                     "trainer_state.json"]
    assert torch.equal(load_file(str(tmp_path / "ckpt" / "model.safetensors"))["weight"], model.weight)


def _server_commands() -> list[tuple[str, str]]:
    commands = []
    for name in COMMAND_FILES:
        path = PROJECT_ROOT / name
        if path.exists():
            commands += [(name, line.strip()) for line in path.read_text().splitlines() if SERVER_COMMAND.search(line)
                         and not line.lstrip().startswith("#")]
    return commands


def test_every_server_the_project_starts_binds_to_loopback():
    assert HOST_FLAG.findall("`dagster dev -h 0.0.0.0 -p 3000`; mlflow server --host=localhost") == [
        "0.0.0.0", "localhost"]  # what the check below would refuse
    commands = _server_commands()
    assert any(name == "Makefile" and "dagster dev" in line for name, line in commands)  # `make ui`
    for name, line in commands:
        hosts = HOST_FLAG.findall(line)
        assert all(host == LOOPBACK for host in hosts), (name, line)
        if "weed server" in line:  # SeaweedFS binds the machine's address unless -ip says otherwise
            assert hosts, (name, line)
    texts = [(PROJECT_ROOT / name).read_text() for name in COMMAND_FILES if (PROJECT_ROOT / name).exists()]
    assert not any("0.0.0.0" in text for text in texts)


@pytest.mark.parametrize("program", ["dagster-webserver", "mlflow server", "mlflow models serve"])
def test_the_servers_default_host_is_loopback(program):
    """What a command without ``--host`` binds to (``dagster dev`` hands its host to
    dagster-webserver, whose default applies)."""
    if program == "dagster-webserver":
        from dagster_webserver.cli import dagster_webserver as command
    elif program == "mlflow server":
        from mlflow.cli import server as command
    else:
        from mlflow.models.cli import serve as command
    (host,) = [param for param in command.params if param.name == "host"]
    assert host.default == LOOPBACK


def test_no_mmpipe_command_takes_a_host_other_than_loopback():
    """Every server the CLI starts (``mmpipe serve``, and any added later) defaults to loopback."""
    def actions(parser: argparse.ArgumentParser):
        for action in parser._actions:
            yield action
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from actions(sub)

    hosts = [action for action in actions(build_parser()) if "--host" in action.option_strings
             or action.dest in ("host", "bind")]
    assert hosts  # `mmpipe serve --host`
    assert all(action.default == LOOPBACK for action in hosts)
