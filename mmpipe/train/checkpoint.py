"""Checkpoints as safetensors + JSON, written atomically, loadable without pickle.

A checkpoint directory holds::

    model.safetensors      the model's state dict
    optimizer.safetensors  every tensor of the optimizer state, flattened by key
    trainer_state.json     step, config, optimizer hyper-parameters, scalars, metrics
    rng.safetensors        the torch CPU RNG state, so dropout continues identically on resume

The directory is built beside its target and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
AUX_FILE = "aux.safetensors"  # training-only weights, e.g. a loss's board proxies


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, slots in state_dict["state"].items():
        for slot, value in slots.items():
            key = f"{param_id}.{slot}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    aux: torch.nn.Module | None = None,
) -> Path:
    """Write a checkpoint directory atomically. ``aux`` holds training-only weights that
    are not part of the model (a loss's learned proxies): saved beside it, never in it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / MODEL_FILE))
        if aux is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in aux.state_dict().items()},
                      str(staging / AUX_FILE))
        trainer_state: dict[str, Any] = {"step": step, "config": config, "extra": extra or {}}
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(staging / "optimizer.safetensors"))
            trainer_state["optimizer"] = meta
        save_file({"torch": torch.get_rng_state()}, str(staging / "rng.safetensors"))
        (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=str))
        # Swap directories: move the old one aside first so the target is never half-written.
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_trainer_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {directory} ({STATE_FILE} missing)")
    return json.loads(path.read_text())


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    aux: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer, RNG and ``aux`` state when given); return the trainer state."""
    directory = Path(directory)
    trainer_state = read_trainer_state(directory)
    model.load_state_dict(load_file(str(directory / MODEL_FILE)))
    if aux is not None:
        if not (directory / AUX_FILE).exists():
            raise FileNotFoundError(f"checkpoint {directory} has no {AUX_FILE} to restore "
                                    f"{type(aux).__name__} from")
        aux.load_state_dict(load_file(str(directory / AUX_FILE)))
    if optimizer is not None:
        load_optimizer_state(directory, optimizer, trainer_state)
    if restore_rng and (directory / "rng.safetensors").exists():
        torch.set_rng_state(load_file(str(directory / "rng.safetensors"))["torch"])
    return trainer_state


def load_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer,
                         trainer_state: dict[str, Any] | None = None) -> None:
    """Restore ``optimizer`` from a checkpoint (a no-op when it saved none)."""
    trainer_state = read_trainer_state(directory) if trainer_state is None else trainer_state
    if "optimizer" in trainer_state:
        tensors = load_file(str(Path(directory) / "optimizer.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, trainer_state["optimizer"]))
