"""The one training loop every system trains with.

A system describes *what* a step computes as a :class:`TrainingTask`: its model, its
training-only state (``aux``: a loss's learned proxies, say) and one or more
:class:`Phase` objects, each with its own steps, learning rate, optimizer and
``training_forward(step) -> {"loss": tensor, ...}``. The loop owns everything else and
never asks which model it trains:

* the learning-rate schedule (linear warmup, cosine decay to a floor), per phase, scaled
  per parameter group by its ``lr_scale``;
* backward, optional gradient clipping, the optimizer step, the task's ``after_step``
  (clamping a logit scale, for example);
* atomic safetensors checkpoints (:mod:`mmpipe.train.checkpoint`) every
  ``checkpoint_every`` steps and at the end, written by rank 0 only, with the run's
  wall-clock so far (``extra.train_seconds``, resumes added up) and each validated phase's
  outcome (``extra.validation``: best step, stop step, scores);
* exact resume: model, aux, optimizer and RNG come back from the checkpoint, a phase
  resumed mid-way gets its optimizer state back, a phase entered afresh starts its own;
  with batches that are pure functions of the step, a stopped-and-resumed run ends with
  the weights of one that never stopped;
* the progress bar, and metrics every ``log_every`` steps to a callback
  (:func:`mlflow_logger` sends them to the active MLflow run);
* a loss that is NaN or infinite stops the run before its update with a
  :class:`~mmpipe.train.checkpoint.NonFiniteError` naming the step, the phase and the
  loss terms that are not finite; the last checkpoint stays the one written before it
  (and a checkpoint is never written of non-finite weights);
* early stopping: a phase with ``validate`` (a score on held-out data, higher is better)
  is scored every ``validate_every`` steps and at its end; after ``patience`` scores
  without a new best it stops, and the phase ends with the weights of its best score
  (model and aux). The checkpoint then marks the phase done, so a resumed run goes on
  with the next one;
* where it runs (``compute``, :class:`~mmpipe.train.distributed.ComputeConfig`): the device
  (the model and aux move there for training and come back to the CPU at the end; a task
  puts its batches on ``task.device``), bf16 autocast of the forward, and data parallelism
  under torchrun (:mod:`mmpipe.train.distributed`): equal weights on every process at the
  start, gradients averaged after backward, validation scored by rank 0 and its score
  shared, so every process stops together. The task shards its global batch and gathers
  its embeddings; the loop never asks how.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mmpipe.train.checkpoint import (NonFiniteError, load_checkpoint, load_optimizer_state, read_trainer_state,
                                    readable_checkpoint, save_checkpoint)
from mmpipe.train.distributed import (ComputeConfig, autocast, average_gradients_, barrier, broadcast_float,
                                      broadcast_parameters_, select_device, world)

CHECKPOINT_DIR = "checkpoint"

Metrics = dict[str, float]
Logger = Callable[[int, Metrics], None]


def cosine_lr(step: int, peak: float, steps: int, warmup_steps: int = 0, floor: float = 0.1) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``floor * peak`` at ``steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(steps - warmup_steps, 1)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class Phase:
    """A stretch of steps with one optimizer and one learning-rate schedule.

    ``begin(fresh)`` runs when the loop enters the phase, before its optimizer is built:
    ``fresh`` is False when a run resumes in the middle of it (set up caches, but do not
    re-initialise what the checkpoint restored).
    """

    name: str
    steps: int
    lr: float
    make_optimizer: Callable[[], torch.optim.Optimizer]
    training_forward: Callable[[int], dict[str, torch.Tensor | float]]
    warmup_steps: int = 0
    lr_floor: float = 0.1
    begin: Callable[[bool], None] | None = None
    validate: Callable[[], float] | None = None  # held-out score of the current weights, higher is better
    validate_every: int = 0
    patience: int = 2  # scores without a new best before the phase stops

    def lr_at(self, phase_step: int) -> float:
        return cosine_lr(phase_step, self.lr, self.steps, self.warmup_steps, self.lr_floor)


class TrainingTask:
    """What a system hands the loop. Subclasses set ``model`` (and ``aux``) and define
    :meth:`phases`; ``after_step`` runs after every optimizer step."""

    model: nn.Module
    aux: nn.Module | None = None
    device: torch.device = torch.device("cpu")  # where the loop put the model: batches go there too

    def phases(self) -> Sequence[Phase]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to clamp a learned temperature)."""


@dataclass(frozen=True)
class LoopConfig:
    checkpoint_every: int = 100
    log_every: int = 10
    grad_clip_norm: float = 0.0  # 0: no clipping


@dataclass
class FitResult:
    steps: int  # the step the run stopped at (the total, unless stopped early)
    final: Metrics  # the last metrics of every phase that ran, merged
    history: list[Metrics] = field(default_factory=list)
    seconds: float = 0.0
    # per validated phase: {"best_step", "best_score", "stopped_at", "scores": [[step, score], ...]}
    validation: dict[str, dict] = field(default_factory=dict)


class _EarlyStopping:
    """Best score and weights of one phase so far; says when to stop."""

    def __init__(self, phase: Phase, task: TrainingTask):
        self.phase, self.task = phase, task
        self.best_score, self.best_step, self.best_state = -math.inf, None, None
        self.scores: list[list[float]] = []
        self.since_best = 0

    def due(self, phase_step: int) -> bool:
        every = self.phase.validate_every
        return self.phase.validate is not None and every > 0 and (phase_step % every == 0
                                                                  or phase_step == self.phase.steps)

    def score(self, step: int) -> bool:
        """Score the current weights at global ``step``; True when the phase should stop."""
        self.task.model.eval()
        with torch.no_grad():  # rank 0's score on every process: they stop at the same step
            value = broadcast_float(self.phase.validate() if world()[0] == 0 else None)
        self.task.model.train()
        self.scores.append([step, value])
        if value > self.best_score:
            self.best_score, self.best_step, self.since_best = value, step, 0
            modules = [self.task.model] + ([self.task.aux] if self.task.aux is not None else [])
            self.best_state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
        else:
            self.since_best += 1
        return self.since_best >= self.phase.patience

    def restore_best(self) -> None:
        if self.best_state is None:
            return
        modules = [self.task.model] + ([self.task.aux] if self.task.aux is not None else [])
        for module, state in zip(modules, self.best_state):
            module.load_state_dict(state)

    def summary(self, stopped_at: int) -> dict:
        return {"best_step": self.best_step, "best_score": self.best_score, "stopped_at": stopped_at,
                "scores": self.scores}


def mlflow_logger() -> Logger:
    """Metrics to the active MLflow run, at their step."""
    import mlflow

    return lambda step, metrics: mlflow.log_metrics(metrics, step=step)


def _scalar(value) -> float:
    return float(value.detach().item()) if torch.is_tensor(value) else float(value)


def _require_finite_loss(outputs: dict, step: int, phase: str, checkpoint: Path | None, saved: int | None) -> None:
    """Stop before a non-finite loss reaches the weights, naming what went wrong where.

    One host sync a step (the loss is read as a float anyway for the metrics)."""
    if math.isfinite(_scalar(outputs["loss"])):
        return
    terms = {name: _scalar(value) for name, value in outputs.items()
             if (torch.is_tensor(value) and value.numel() == 1) or isinstance(value, float)}
    bad = ", ".join(f"{name}={value}" for name, value in terms.items() if not math.isfinite(value))
    kept = (f"the last checkpoint, step {saved} at {checkpoint}, is kept" if saved is not None
            else "no checkpoint was written" if checkpoint is not None else "no checkpoint directory")
    raise NonFiniteError(f"non-finite loss at step {step} of phase {phase!r}: {bad}; training stopped before "
                         f"this update ({kept})")


def config_changes(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """What differs between two configuration records, one ``key: old -> new`` each (nested
    keys joined by dots), compared as JSON (a tuple equals a list).

    >>> config_changes({"model": {"width": 64, "depth": 3}}, {"model": {"width": 128, "depth": 3}})
    ['model.width: 64 -> 128']
    """
    stored, current = json.loads(json.dumps(stored)), json.loads(json.dumps(current))
    changes = []
    for key in sorted(set(stored) | set(current), key=str):
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old} -> {new}")
    return changes


def _resumable(checkpoint: Path, config_record: dict | None) -> bool:
    """Whether the checkpoint continues this run: it was written with the same configuration.
    Another configuration (new defaults, a launchpad override) trains afresh: resuming would
    load weights of other shapes, or take a finished run of other settings for this one."""
    stored = read_trainer_state(checkpoint).get("config")
    if config_record is None or stored is None:
        return True
    changes = config_changes(stored, config_record)
    if changes:
        shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
        logging.getLogger(__name__).warning(
            "not resuming %s: it was trained with another configuration (%s); training afresh", checkpoint, shown)
    return not changes


def fit(
    task: TrainingTask,
    out_dir: Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    config_record: dict | None = None,
    loop: LoopConfig = LoopConfig(),
    log: Logger | None = None,
    progress: bool = False,
    desc: str = "train",
    compute: ComputeConfig | None = None,
) -> FitResult:
    """Run ``task``'s phases one after another (global step numbers run on across
    phases); checkpoints go to ``out_dir/checkpoint``. ``stop_after`` ends the run at that
    step, with a checkpoint, as an interrupted run would; calling again with
    ``resume=True`` continues it, unless ``config_record`` differs from the one the
    checkpoint was written with (then it trains afresh and says why). ``compute``: the
    device and bf16 autocast, for a task that puts its batches on ``task.device``
    (default: the CPU, where every task can run)."""
    compute = compute or ComputeConfig(device="cpu")
    phases = list(task.phases())
    total = sum(phase.steps for phase in phases)
    checkpoint = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    rank, _ = world()
    start = 0
    if (resume and checkpoint is not None and readable_checkpoint(checkpoint) is not None
            and _resumable(checkpoint, config_record)):
        start = read_trainer_state(checkpoint)["step"]
    saved = start if start else None  # the step of the checkpoint on disk that this run continues
    end = total if stop_after is None else min(total, stop_after)
    history: list[Metrics] = []
    validation: dict[str, dict] = {}
    started = time.perf_counter()
    bar = tqdm(total=total, initial=start, disable=not progress or rank != 0, desc=desc)

    # Wall-clock of the whole run, resumes included, and each validated phase's outcome:
    # the checkpoint carries them, so a report can put a model beside its training cost.
    previous = read_trainer_state(checkpoint).get("extra", {}) if start else {}
    previous_seconds = float(previous.get("train_seconds", 0.0))
    validation.update(previous.get("validation", {}))

    def extra() -> dict:
        return {"train_seconds": previous_seconds + time.perf_counter() - started, "validation": validation}

    if start:  # weights, aux and RNG; optimizer state below, for the phase it belongs to
        load_checkpoint(checkpoint, task.model, aux=task.aux)
    task.device = select_device(compute.device)
    for module in (task.model, task.aux):
        if module is not None:
            module.to(task.device)
    broadcast_parameters_([task.model, task.aux])
    offset = 0
    for phase in phases:
        first, last = offset, offset + phase.steps
        offset = last
        if end <= first or start >= last:
            continue
        if phase.begin is not None:
            phase.begin(start <= first)
        optimizer = phase.make_optimizer()
        if start > first:  # resumed mid-phase; a phase entered afresh starts its own state
            load_optimizer_state(checkpoint, optimizer)
        task.model.train()
        stopping = _EarlyStopping(phase, task)
        stopped_at = None
        for step in range(max(start, first), min(end, last)):
            tick = time.perf_counter()
            lr = phase.lr_at(step - first)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with autocast(task.device, compute.bf16):
                outputs = phase.training_forward(step)
            _require_finite_loss(outputs, step, phase.name, checkpoint, saved)
            optimizer.zero_grad(set_to_none=True)
            outputs["loss"].backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            average_gradients_(params)
            if loop.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(params, loop.grad_clip_norm)
            optimizer.step()
            task.after_step()
            metrics = {name: _scalar(value) for name, value in outputs.items()}
            metrics.setdefault("lr", lr)
            metrics["step_seconds"] = time.perf_counter() - tick
            done = step + 1
            if stopping.due(done - first) and stopping.score(done):
                stopped_at = done
            if stopping.scores and stopping.scores[-1][0] == done:
                metrics[f"validation_{phase.name}"] = stopping.scores[-1][1]
            history.append({"step": done, **metrics})
            if log is not None and rank == 0 and (done % loop.log_every == 0 or done == end
                                                  or stopped_at is not None):
                log(done, metrics)
            if stopped_at is not None:
                break
            if checkpoint is not None and rank == 0 and (done % loop.checkpoint_every == 0 or done == end):
                save_checkpoint(checkpoint, task.model, optimizer, done, config_record or {}, aux=task.aux,
                                extra=extra())
                saved = done
            bar.update()
        # A phase interrupted by stop_after keeps its current weights (its checkpoint resumes
        # it); one that ended, early or not, ends with its best-scored weights, checkpointed
        # as done. (A resumed phase's scores start again from the resume point.)
        phase_over = stopped_at is not None or min(end, last) == last
        if stopping.scores and phase_over:
            stopping.restore_best()
            validation[phase.name] = stopping.summary(stopped_at or stopping.scores[-1][0])
            if stopped_at is not None:
                bar.update(last - stopped_at + 1)
            if checkpoint is not None and rank == 0:
                save_checkpoint(checkpoint, task.model, optimizer, last, config_record or {}, aux=task.aux,
                                extra=extra())
                saved = last
    bar.close()
    barrier()  # no process leaves before rank 0's last checkpoint is written
    for module in (task.model, task.aux):  # callers embed, register and serve on the CPU
        if module is not None:
            module.cpu()
    task.model.eval()
    final: Metrics = {}
    for record in history:  # the last metrics of each phase: a fusion run still reports its towers' loss
        final.update(record)
    return FitResult(end, final, history, previous_seconds + time.perf_counter() - started, validation)


def load_trained_model(out_dir: Path, build: Callable[[dict], nn.Module]) -> nn.Module:
    """The model a training run left in ``out_dir`` (its last checkpoint), in eval mode:
    ``build(config)`` makes it from the config the run recorded, then its weights are loaded."""
    checkpoint = Path(out_dir) / CHECKPOINT_DIR
    model = build(read_trainer_state(checkpoint)["config"])
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()
