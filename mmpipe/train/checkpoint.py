"""Checkpoints as safetensors + JSON, written atomically, loadable without pickle.

A checkpoint directory holds::

    model.safetensors      the model's state dict
    optimizer.safetensors  every tensor of the optimizer state, flattened by key
    trainer_state.json     step, config, optimizer hyper-parameters, scalars, metrics
    rng.safetensors        the torch CPU RNG state, so dropout continues identically on resume

The directory is built beside its target and renamed into place, so a crash mid-write
leaves the previous checkpoint intact. Renaming a directory over a non-empty one is not
possible, so the swap is two renames: the previous checkpoint to ``.<name>.old``, then the
new one into place. A process killed between them leaves only ``.<name>.old``; every reader
here falls back to it (:func:`readable_checkpoint`), and the next save completes the swap.
Writers of one checkpoint take turns (:func:`mmpipe.io.file_lock`).

Only finite weights are written: a checkpoint of NaN or inf weights would be resumed from
and served, so :func:`save_checkpoint` refuses it (:class:`NonFiniteError`) and the
previous checkpoint stays.
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

from mmpipe.io import file_lock, fsync_path, fsync_tree

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
AUX_FILE = "aux.safetensors"  # training-only weights, e.g. a loss's board proxies


class NonFiniteError(FloatingPointError):
    """A loss or weights went NaN or infinite: training stops and nothing of it is saved."""


def _old(directory: Path) -> Path:
    """Where a save moves the previous checkpoint while it swaps the new one in."""
    return directory.with_name(f".{directory.name}.old")


def readable_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint at ``directory``: itself, or the previous one a save moved
    aside when the process died between its two renames; None when there is neither."""
    directory = Path(directory)
    for candidate in (directory, _old(directory)):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an inf."""
    return [name for name, tensor in state.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


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
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    aux_state = None if aux is None else {k: v.detach().cpu().contiguous() for k, v in aux.state_dict().items()}
    bad = non_finite_tensors(state) + [f"aux.{name}" for name in non_finite_tensors(aux_state or {})]
    if bad:
        raise NonFiniteError(f"not writing checkpoint step {step} to {directory}: non-finite values in "
                             f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; the previous "
                             f"checkpoint is kept")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(directory):
        _write_and_swap(directory, state, aux_state, optimizer, step, config, extra)
    return directory


def _write_and_swap(directory: Path, state: dict[str, torch.Tensor], aux_state: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer | None, step: int, config: dict[str, Any],
                    extra: dict[str, Any] | None) -> None:
    # Staging directories of saves killed mid-write: the lock says no save is running now.
    for stale in directory.parent.glob(f".{directory.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging-", dir=directory.parent))
    try:
        save_file(state, str(staging / MODEL_FILE))
        if aux_state is not None:
            save_file(aux_state, str(staging / AUX_FILE))
        trainer_state: dict[str, Any] = {"step": step, "config": config, "extra": extra or {}}
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(staging / "optimizer.safetensors"))
            trainer_state["optimizer"] = meta
        save_file({"torch": torch.get_rng_state()}, str(staging / "rng.safetensors"))
        (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=str))
        fsync_tree(staging)  # on disk before any rename names it (mmpipe.io: power loss)
        # Swap directories: move the old one aside first so the target is never half-written.
        # With no complete checkpoint at the target (a save died between the renames), the
        # one aside is the latest: keep it there until the new one is in place.
        old = _old(directory)
        if (directory / STATE_FILE).is_file():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        elif directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
        fsync_path(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _require(directory: Path) -> Path:
    found = readable_checkpoint(directory)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {directory} ({STATE_FILE} missing)")
    return found


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return json.loads((_require(directory) / STATE_FILE).read_text())


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    aux: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer, RNG and ``aux`` state when given); return the trainer state."""
    directory = _require(directory)
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
    directory = _require(directory)
    trainer_state = read_trainer_state(directory) if trainer_state is None else trainer_state
    if "optimizer" in trainer_state:
        tensors = load_file(str(directory / "optimizer.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, trainer_state["optimizer"]))
