"""Training PinCLIP: image↔text contrastive loss plus neighbor alignment over board pairs.

Every batch is a pure function of (seed, step): the pin batch is drawn with
``default_rng([seed, step])`` and the pair batch is batch ``step % n`` of the sampler's epoch
``step // n``. With the optimizer and RNG state in the checkpoint, a run stopped at step k
and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpipe.models.losses import ClipLoss, NeighborAlignmentLoss, clamp_logit_scale_
from mmpipe.models.pinclip import PinCLIP, PinCLIPConfig
from mmpipe.models.text_encoder import TextFeatures
from mmpipe.train.checkpoint import load_checkpoint, save_checkpoint
from mmpipe.train.pin_data import NeighborPairBatchSampler, NeighborPairs, PinDataset

CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class PinCLIPTrainConfig:
    steps: int = 300
    batch_size: int = 128
    pair_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    neighbor_weight: float = 1.0  # λ; 0 trains the image↔text ablation
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    hflip: bool = True  # mirror augmentation: no attribute of the world is handed


@dataclass
class TrainResult:
    model: PinCLIP
    steps: int
    final: dict[str, float]
    history: list[dict[str, float]]
    seconds: float


def lr_at(step: int, cfg: PinCLIPTrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _maybe_flip(pixels: torch.Tensor, rng: np.random.Generator, enabled: bool) -> torch.Tensor:
    if not enabled:
        return pixels
    flip = torch.from_numpy(rng.random(len(pixels)) < 0.5)
    pixels[flip] = pixels[flip].flip(-1)
    return pixels


class _Batches:
    """The (pin rows, pair batch) of any step, deterministically."""

    def __init__(self, train_rows: np.ndarray, pairs: NeighborPairs | None, cfg: PinCLIPTrainConfig):
        if len(train_rows) < 2:
            raise ValueError(f"need at least 2 training pins, got {len(train_rows)}")
        self.train_rows = np.asarray(train_rows)
        self.cfg = cfg
        self.batch_size = min(cfg.batch_size, len(self.train_rows))
        self.sampler = None
        self._epoch, self._epoch_batches = None, []
        if pairs is not None and len(pairs) and cfg.neighbor_weight > 0:
            self.sampler = NeighborPairBatchSampler(pairs, min(cfg.pair_batch_size, len(pairs)),
                                                    seed=cfg.seed, drop_last=len(pairs) >= cfg.pair_batch_size)

    def pin_rows(self, step: int) -> tuple[np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([self.cfg.seed, step])
        return rng.choice(self.train_rows, size=self.batch_size, replace=False), rng

    def pair_batch(self, step: int):
        if self.sampler is None:
            return None
        n = len(self.sampler)
        epoch, index = divmod(step, n)
        if epoch != self._epoch:
            self._epoch, self._epoch_batches = epoch, self.sampler.batch_rows(epoch)
        return self.sampler.make_batch(self._epoch_batches[index])


def train_pinclip(
    model_cfg: PinCLIPConfig,
    cfg: PinCLIPTrainConfig,
    dataset: PinDataset,
    text: TextFeatures,
    train_rows: np.ndarray,
    pairs: NeighborPairs | None = None,
    out_dir: Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train (or resume) a PinCLIP; checkpoints go to ``out_dir/checkpoint``.

    ``stop_after`` ends the run early at that step (with a checkpoint), as an interrupted
    run would; calling again with ``resume=True`` continues it.
    """
    if len(text) != len(dataset):
        raise ValueError(f"text cache has {len(text)} rows, dataset {len(dataset)}")
    torch.manual_seed(cfg.seed)
    model = PinCLIP(model_cfg)
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr)
    clip_loss, neighbor_loss = ClipLoss(), NeighborAlignmentLoss()
    batches = _Batches(train_rows, pairs, cfg)
    checkpoint = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        start = load_checkpoint(checkpoint, model, optimizer)["step"]

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    config_record = {"model": model_cfg.to_dict(), "train": asdict(cfg)}
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    model.train()
    for step in tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress, desc="pinclip"):
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        rows, rng = batches.pin_rows(step)
        pixels = _maybe_flip(dataset.pixels(rows), rng, cfg.hflip)
        out = model(pixels, text.hidden[rows], text.mask[rows])
        loss_clip = clip_loss(out.image_emb, out.text_emb, out.logit_scale)
        loss = loss_clip
        metrics = {"loss_clip": loss_clip.item()}
        pair_batch = batches.pair_batch(step)
        n_images = len(rows)
        if pair_batch is not None:
            both = torch.cat([pair_batch.a, pair_batch.b])
            pair_pixels = _maybe_flip(dataset.pixels(both), rng, cfg.hflip)
            fused = model(pair_pixels, text.hidden[both], text.mask[both]).fused_emb
            half = len(pair_batch.a)
            loss_neighbor = neighbor_loss(fused[:half], fused[half:], out.neighbor_logit_scale,
                                          pair_batch.false_negative_mask)
            loss = loss + cfg.neighbor_weight * loss_neighbor
            metrics["loss_neighbor"] = loss_neighbor.item()
            n_images += len(both)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_logit_scale_(model)
        metrics.update(
            loss=loss.item(), lr=lr_at(step, cfg),
            temperature=float(1 / out.logit_scale.item()),
            neighbor_temperature=float(1 / out.neighbor_logit_scale.item()),
            images_per_s=n_images / (time.perf_counter() - tick),
        )
        history.append({"step": step + 1, **metrics})
        if log is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == end):
            log(step + 1, metrics)
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            save_checkpoint(checkpoint, model, optimizer, step + 1, config_record)
    model.eval()
    final = history[-1] if history else {}
    return TrainResult(model, end, final, history, time.perf_counter() - started)


@torch.no_grad()
def embed_pins(model: PinCLIP, dataset: PinDataset, text: TextFeatures,
               batch_size: int = 256) -> dict[str, np.ndarray]:
    """Image, text and fused embeddings (float32, L2-normalised) of every dataset row."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"image": [], "text": [], "fused": []}
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        out = model(dataset.pixels(rows), text.hidden[rows], text.mask[rows])
        parts["image"].append(out.image_emb.numpy())
        parts["text"].append(out.text_emb.numpy())
        parts["fused"].append(out.fused_emb.numpy())
    dim = model.config.embed_dim
    return {k: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for k, v in parts.items()}
