"""What every step benchmark measures the same way: the machine's fp32 matmul peak, and one
training step's time, FLOPs (``torch.utils.flop_counter.FlopCounterMode``, forward and
backward: matmuls, convolutions and attention, not elementwise work), FLOP/s and MFU; and what
their synthetic batches share: a step as the shared loop takes it (:func:`loop_step`), padding
masks, and the video systems' input shapes at a scale (:func:`video_shapes`)."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from figures import Figure

from mmpipe.config import resolve_settings
from mmpipe.params import load_params
from mmpipe.systems.pinclip.train import PinCLIPSettings
from mmpipe.world.config import world_config


def step_benchmark_arguments(doc: str, steps: int, rounds: int | None = None) -> argparse.ArgumentParser:
    """The options every step benchmark takes, ``--rounds`` where ``rounds`` gives its default
    (more can be added to the parser)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", default="small", help="params.yaml scale preset of the model")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the settings' batch_size")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds of each step; the best counts")
    return parser


def settings_for(settings_class: type, section: str, scale: str, threads: int):
    """A system's resolved settings at ``scale`` (its params.yaml preset), on ``threads``
    threads, with the RNG seeded: what a step benchmark measures."""
    os.environ["MMPIPE_SCALE"] = scale  # which params.yaml preset resolve_settings merges
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return resolve_settings(settings_class, section)


@dataclass(frozen=True)
class VideoShapes:
    """What a video system's batch holds at a scale: frame features of ``frame_dim``, sampled
    at ``sample_fps``, from videos of ``shortest_s`` to ``longest_s`` seconds (a batch pads
    to its longest video)."""

    frame_dim: int
    sample_fps: float
    shortest_s: float
    longest_s: float

    def frames(self, seconds: float) -> int:
        """Frames stored of a video of ``seconds`` (one every 1 / sample_fps from t = 0)."""
        return max(1, math.ceil(seconds * self.sample_fps))


def video_shapes(scale: str) -> VideoShapes:
    """The video systems' inputs at ``scale``, the params.yaml preset that is also the world's
    (``MMPIPE_SCALE`` sets both): the world's video lengths, params' ``frames.sample_fps``,
    and the frame features' width, the ``embed_dim`` of ``video_features.encoder`` (PinCLIP)."""
    params = load_params()
    encoder = params["video_features"]["encoder"]
    if encoder != "pinclip":
        raise ValueError(f"video_features.encoder is {encoder!r}: the step benchmarks know PinCLIP's width only")
    os.environ["MMPIPE_SCALE"] = scale
    frame_dim = resolve_settings(PinCLIPSettings, "pinclip").model.embed_dim
    shortest, longest = world_config(scale).video_seconds
    return VideoShapes(frame_dim, float(params["frames"]["sample_fps"]), shortest, longest)


def padding_mask(rows: int, longest: int, shortest: int = 1) -> torch.Tensor:
    """bool [rows, longest]: each row's first n positions real, n drawn from [shortest,
    longest], the first row full (a padded batch is as long as its longest member)."""
    lengths = torch.randint(min(shortest, longest), longest + 1, (rows,))
    lengths[0] = longest
    return torch.arange(longest) < lengths[:, None]


def loop_step(loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
              clip_norm: float = 0.0) -> Callable[[], None]:
    """One training step as the shared loop (``mmpipe.train.loop.fit``) takes it: the task's
    loss, backward, the gradients clipped to ``clip_norm`` (0: not clipped), the optimizer's step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
    return step


def matmul_flops_per_second(n: int = 2048, repeats: int = 8, trials: int = 3) -> float:
    """The best of ``trials`` timings: a shared 2-core machine's clock and neighbours vary."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


@dataclass(frozen=True)
class StepCost:
    seconds: float  # per step, the best of the timed rounds
    flops: float  # per step

    def mfu(self, benchmark: str, name: str, peak: float, threads: int) -> Figure:
        """Achieved FLOP/s of the step against the machine's fp32 matmul FLOP/s: the MFU."""
        return Figure(benchmark, f"{name} MFU", self.flops / self.seconds / 1e9, "GFLOP/s",
                      f"fp32 matmul, {threads} threads", peak / 1e9,
                      f"{self.seconds * 1000:.1f} ms, {self.flops / 1e9:.2f} GFLOP per step")

    def line(self, name: str, peak: float) -> str:
        return (f"{name:<22} {self.seconds * 1000:9.1f} ms/step {self.flops / 1e9:9.2f} GFLOP/step "
                f"{self.flops / self.seconds / 1e9:8.1f} GFLOP/s   MFU {self.flops / self.seconds / peak:6.1%}")


def measure(step: Callable[[], None], steps: int, rounds: int = 1) -> StepCost:
    """Warm up, count one step's FLOPs, then time ``steps`` steps ``rounds`` times (best round)."""
    step()  # warm up: allocator, autograd graph
    with FlopCounterMode(display=False) as counter:
        step()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - started) / steps)
    return StepCost(best, counter.get_total_flops())
