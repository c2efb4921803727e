"""Training PinCLIP: image↔text contrastive loss plus neighbor alignment over the board graph.

One forward pass per step serves both losses: the step's pins are the pins of a batch of
neighbor pairs, topped up with random training pins to ``batch_size``. Image↔text
InfoNCE runs over all of them, neighbor alignment over their fused embeddings (by
default against one learned proxy per board, ``BoardProxyLoss``). The image tower is
most of the cost, so sharing the pass makes a step with pairs cost what a step without
them does. A second phase trains the fusion module alone on cached tower outputs.

Every batch is a pure function of (seed, step): the pair batch is batch ``step % n`` of
the sampler's epoch ``step // n`` and the top-up is drawn with ``default_rng([seed,
step])``. With the optimizer and RNG state in the checkpoint, a run stopped at step k and
resumed ends with the same weights as one that never stopped. Under torchrun every process
forms the whole step batch (rows, flips, caption states), runs its share of the pins
(``shard``) through the towers and gathers the embeddings, so both losses are the
global batch's (:mod:`mmpipe.train.distributed`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmpipe.nn.layers import unpadded_length
from mmpipe.nn.losses import BoardProxyLoss, ClipLoss, clamp_logit_scale_, gather_features
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.spec import Trained
from mmpipe.systems.pinclip.data import (VALIDATION, NeighborPairBatchSampler, NeighborPairs, PairBatch, PinCLIPInputs,
                                         PinDataset, QuerySet)
from mmpipe.systems.pinclip.losses import NEIGHBOR_LOSSES, neighbor_loss
from mmpipe.systems.pinclip.model import PinCLIP, PinCLIPConfig
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state
from mmpipe.train.distributed import ComputeConfig, shard, to_device
from mmpipe.train.loop import CHECKPOINT_DIR, Logger, LoopConfig, Phase, TrainingTask, fit


@dataclass(frozen=True)
class PinCLIPTrainConfig:
    # 200 steps: on the small world, 250 gained test nDCG@10 0.006 (fused) and 0.011
    # (image tower) for 25% more tower time.
    steps: int = 200
    batch_size: int = 128  # pins per step: the pair batch's pins, topped up with random ones
    pair_batch_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 24
    neighbor_weight: float = 1.0  # λ; 0 trains the image↔text ablation
    # λ ramps up linearly over these first steps: pulling neighbors together before the
    # towers see anything only teaches them to agree on noise.
    neighbor_warmup_steps: int = 64
    # "proxies": each pin of the step against every board's learned proxy (BoardProxyLoss);
    # "boards": every two pins of the step that share a board are neighbors
    # (MultiPositiveNeighborLoss over all N pins); "pairs": InfoNCE over the sampled pairs only.
    neighbor_loss: str = "proxies"
    # Fusion phase: the towers frozen, only the fusion module trains on neighbor alignment
    # over cached tower outputs, with bigger batches since no image passes through a tower.
    # At most: early stopping on validation may end it sooner. On the small world the
    # validation nDCG@10 stops rising by step 200 (0.224 at 50, 0.250 at 200, 0.249 at 250).
    fusion_steps: int = 200
    fusion_lr: float = 1e-3
    fusion_batch_size: int = 256
    fusion_pair_batch_size: int = 96
    # The fusion phase's neighbor loss: "proxies" (BoardProxyLoss: each pin against every
    # board's learned proxy) or, as in the tower phase, "boards" / "pairs".
    fusion_loss: str = "proxies"
    proxy_temperature: float = 0.2
    proxy_lr: float = 1e-2  # proxies start random and must move faster than the fusion weights
    # Start the fusion phase from a freshly initialised fusion module (late fusion exactly)
    # rather than the one the tower phase's neighbor loss shaped alongside the towers.
    fusion_reinit: bool = True
    # Tower phase, proxies only: the same board proxies also pull the text-only embedding,
    # with this weight relative to the fused one's. The fused embedding reaches the text
    # tower only through its late-fusion weight, so without it the text tower learns little
    # of what boards group, and the fusion has little from captions to add to the image.
    text_neighbor_weight: float = 1.0

    # Early stopping of the fusion phase on the validation window: nDCG@10 of related pins
    # every validate_every steps (0: never); the phase stops after `patience` scores without
    # a new best and keeps the best weights. Training never sees a validation pin.
    validate_every: int = 50
    patience: int = 2

    seed: int = 0
    grad_clip_norm: float = 0.0  # 0: no clipping
    checkpoint_every: int = 100
    log_every: int = 10
    hflip: bool = True  # mirror augmentation: no attribute of the world is handed

    def __post_init__(self) -> None:
        for name in ("neighbor_loss", "fusion_loss"):
            if getattr(self, name) not in NEIGHBOR_LOSSES:
                raise ValueError(f"{name} must be one of {NEIGHBOR_LOSSES}, got {getattr(self, name)!r}")
        if self.text_neighbor_weight < 0:
            raise ValueError(f"text_neighbor_weight must be >= 0, got {self.text_neighbor_weight}")
        if self.text_neighbor_weight and self.neighbor_loss != "proxies":
            raise ValueError("text_neighbor_weight needs neighbor_loss='proxies' (the text "
                             f"embedding is pulled to the board proxies), got {self.neighbor_loss!r}")


@dataclass(frozen=True)
class PinCLIPSettings:
    """Every PinCLIP default, in one place: the model, its training, and the caption length
    of the text tower cache. ``params.yaml``'s ``pinclip:`` overrides any of it."""

    model: PinCLIPConfig = PinCLIPConfig()
    train: PinCLIPTrainConfig = PinCLIPTrainConfig()
    text_max_length: int = 48  # tokens per caption in the text tower cache
    compute: ComputeConfig = ComputeConfig()  # processes, device, bf16: not part of the checkpoint's config


@dataclass
class TrainResult:
    model: PinCLIP
    steps: int
    final: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    validation: dict[str, dict] = field(default_factory=dict)  # per phase, as FitResult.validation


def neighbor_weight_at(step: int, cfg: PinCLIPTrainConfig) -> float:
    if step >= cfg.neighbor_warmup_steps:
        return cfg.neighbor_weight
    return cfg.neighbor_weight * step / cfg.neighbor_warmup_steps


def _maybe_flip(pixels: torch.Tensor, rng: np.random.Generator, enabled: bool, batch_size: int | None = None,
                part: slice = slice(None)) -> torch.Tensor:
    """Mirror a random half of a batch of ``batch_size`` pins (default: ``pixels``'s), of which
    ``pixels`` are rows ``part``: the draw is the whole batch's, so a shard flips the pins
    the whole batch would."""
    if not enabled:
        return pixels
    flip = torch.from_numpy(rng.random(len(pixels) if batch_size is None else batch_size) < 0.5)[part]
    pixels[flip] = pixels[flip].flip(-1)
    return pixels


@dataclass
class StepBatch:
    rows: np.ndarray  # dataset rows of the step's pins, each once
    pairs: PairBatch | None  # the neighbor pairs among them
    pair_a: np.ndarray | None = None  # position in ``rows`` of each pair's first pin
    pair_b: np.ndarray | None = None


class _Batches:
    """The pins and neighbor pairs of any step, deterministically."""

    def __init__(self, train_rows: np.ndarray, pairs: NeighborPairs | None, cfg: PinCLIPTrainConfig):
        if len(train_rows) < 2:
            raise ValueError(f"need at least 2 training pins, got {len(train_rows)}")
        self.train_rows = np.asarray(train_rows)
        self.cfg = cfg
        self.batch_size = min(cfg.batch_size, len(self.train_rows))
        self.sampler = None
        self.pairs = pairs
        self._epoch, self._epoch_batches = None, []
        self._board_rows: np.ndarray | None = None
        if pairs is not None and len(pairs) and cfg.neighbor_weight > 0:
            self.sampler = NeighborPairBatchSampler(pairs, min(cfg.pair_batch_size, len(pairs)),
                                                    seed=cfg.seed, drop_last=len(pairs) >= cfg.pair_batch_size)

    def step_batch(self, step: int) -> tuple[StepBatch, np.random.Generator]:
        """The pair batch's pins (a pin in two pairs comes once: a duplicate would be its
        own false negative in the image↔text loss) topped up with random training pins."""
        rng = np.random.default_rng([self.cfg.seed, step])
        pairs = self.pair_batch(step)
        if pairs is None:
            return StepBatch(rng.choice(self.train_rows, size=self.batch_size, replace=False), None), rng
        pair_rows = np.unique(np.concatenate([pairs.a.numpy(), pairs.b.numpy()]))
        others = np.setdiff1d(self.train_rows, pair_rows)
        n_fill = min(max(self.batch_size - len(pair_rows), 0), len(others))
        rows = np.concatenate([pair_rows, rng.choice(others, size=n_fill, replace=False)])
        return StepBatch(rows, pairs, np.searchsorted(pair_rows, pairs.a.numpy()),
                         np.searchsorted(pair_rows, pairs.b.numpy())), rng

    def board_pin_batch(self, step: int) -> StepBatch:
        """Training pins on at least one board, drawn uniformly: what the proxy loss sees.
        Pair batches would weigh every board alike (pairs are capped per board), which
        over-samples the pins of small boards against the pins a search serves."""
        if self._board_rows is None:
            on_board = [row for row in self.train_rows.tolist() if self.pairs.boards_of_row.get(row)]
            self._board_rows = np.asarray(on_board, dtype=np.int64)
        rng = np.random.default_rng([self.cfg.seed, step])
        size = min(self.batch_size, len(self._board_rows))
        return StepBatch(rng.choice(self._board_rows, size=size, replace=False), None)

    def positives(self, batch: StepBatch) -> torch.Tensor:
        """bool [n, n] over the step's pins: they share a board, or are one of its pairs."""
        positives = self.pairs.neighbor_matrix(batch.rows)
        positives[batch.pair_a, batch.pair_b] = True
        positives[batch.pair_b, batch.pair_a] = True
        return positives

    def pair_batch(self, step: int):
        if self.sampler is None:
            return None
        n = len(self.sampler)
        epoch, index = divmod(step, n)
        if epoch != self._epoch:
            self._epoch, self._epoch_batches = epoch, self.sampler.batch_rows(epoch)
        return self.sampler.make_batch(self._epoch_batches[index])


class PinCLIPTask(TrainingTask):
    """PinCLIP's two phases for the shared loop (:func:`mmpipe.train.loop.fit`): the
    towers on image-text + neighbor alignment, then the fusion heads alone over cached
    tower outputs. Steps ``[0, cfg.steps)`` are the first, ``[cfg.steps, cfg.steps +
    cfg.fusion_steps)`` the second (none without neighbor pairs)."""

    def __init__(self, model_cfg: PinCLIPConfig, cfg: PinCLIPTrainConfig, dataset: PinDataset,
                 text: TextFeatures, train_rows: np.ndarray, pairs: NeighborPairs | None = None,
                 validation: QuerySet | None = None):
        if len(text) != len(dataset):
            raise ValueError(f"text cache has {len(text)} rows, dataset {len(dataset)}")
        self.model_cfg, self.cfg = model_cfg, cfg
        self.dataset, self.text, self.pairs = dataset, text, pairs
        torch.manual_seed(cfg.seed)
        self.model = PinCLIP(model_cfg)
        self.batches = _Batches(train_rows, pairs, cfg)
        self.fusion_steps = cfg.fusion_steps if self.batches.sampler is not None else 0
        self.aux = _board_proxies(model_cfg, cfg, pairs, tower_phase=self.batches.sampler is not None,
                                  fusion_phase=self.fusion_steps > 0)
        self.towers: TowerCache | None = None
        self.fusion_batches: list[_Batches] = []
        self.validation = validation if validation is not None and len(validation.rows) else None

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        towers = Phase("towers", cfg.steps, cfg.lr, warmup_steps=cfg.warmup_steps,
                       make_optimizer=lambda: _optimizer(self.model, cfg, fusion_phase=False, proxies=self.aux),
                       training_forward=self.tower_forward)
        fusion = Phase("fusion", self.fusion_steps, cfg.fusion_lr, begin=self.begin_fusion,
                       make_optimizer=lambda: _optimizer(self.model, cfg, fusion_phase=True, proxies=self.aux),
                       training_forward=self.fusion_forward,
                       validate=self.validate_fusion if self.validation is not None else None,
                       validate_every=cfg.validate_every, patience=cfg.patience)
        return [towers, fusion]

    def after_step(self) -> None:
        clamp_logit_scale_(self.model)

    def tower_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        return _tower_losses(self.model, self.batches, step, self.cfg, self.dataset, self.text, self.aux)

    def begin_fusion(self, fresh: bool) -> None:
        if fresh and self.cfg.fusion_reinit:
            _reinit_fusion(self.model, self.model_cfg, self.cfg.seed)
        # Every pin when validating: the validation queries search the whole corpus.
        rows = np.arange(len(self.dataset)) if self.validation is not None else self.batches.train_rows
        self.towers = TowerCache.build(self.model, self.dataset, self.text, rows)
        # Each head sees its own draw of pins (head 0 the draw a single head would see).
        self.fusion_batches = [_Batches(self.batches.train_rows, self.pairs, replace(
            self.cfg, seed=self.cfg.seed + head, batch_size=self.cfg.fusion_batch_size,
            pair_batch_size=self.cfg.fusion_pair_batch_size)) for head in range(self.model_cfg.n_fusion_heads)]

    def fusion_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        return _fusion_losses(self.model, self.fusion_batches, self.towers, step, self.cfg, self.aux)

    def validate_fusion(self, k: int = 10, chunk: int = 512) -> float:
        """nDCG@k of the validation queries over every pin, by the fused embedding (all heads)
        of the cached towers: the eval's primary metric, without a tower pass."""
        rows = np.arange(len(self.dataset))
        fused = torch.cat([self.model.fuse(*self.towers.rows(rows[start:start + chunk]))
                           for start in range(0, len(rows), chunk)]).cpu().numpy()
        return self.validation.mean_ndcg(fused, k)


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
    log: Logger | None = None,
    progress: bool = False,
    text_max_length: int | None = None,
    validation: QuerySet | None = None,
    compute: ComputeConfig = ComputeConfig(),
) -> TrainResult:
    """Train (or resume) a PinCLIP with the shared loop; checkpoints go to
    ``out_dir/checkpoint``. ``stop_after`` ends the run early at that step (with a
    checkpoint), as an interrupted run would; ``resume=True`` continues it, in either phase.
    The checkpoint records the settings (with ``text_max_length``, the cache's caption length).
    With ``validation`` (related-pins queries of the validation window) the fusion phase
    stops early on their nDCG@10 and keeps its best weights. ``compute``: the device, bf16
    autocast; under torchrun every process calls this and they train as one (DDP).
    """
    task = PinCLIPTask(model_cfg, cfg, dataset, text, train_rows, pairs, validation)
    record = {"model": model_cfg.to_dict(), "train": asdict(cfg)}
    if text_max_length is not None:
        record["text_max_length"] = text_max_length
    result = fit(task, out_dir, resume=resume, stop_after=stop_after, config_record=record,
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm),
                 log=log, progress=progress, desc="pinclip", compute=compute)
    return TrainResult(task.model, result.steps, result.final, result.history, result.seconds, result.validation)


def train(settings: PinCLIPSettings, inputs: PinCLIPInputs, out_dir: Path | None = None,
          resume: bool = True, log: Logger | None = None) -> Trained:
    """The lifecycle's entry point: PinCLIP on the inputs' training pins."""
    result = train_pinclip(settings.model, settings.train, inputs.dataset, inputs.text, inputs.train_rows,
                           inputs.pairs, out_dir=out_dir, resume=resume, log=log,
                           text_max_length=settings.text_max_length,
                           validation=inputs.protocol.query_sets[VALIDATION], compute=settings.compute)
    # cutoff_date and train_pins are what the retraining sensor reads back from the champion's run.
    params = {**settings.model.to_dict(), **asdict(settings.train), "text_max_length": settings.text_max_length,
              "train_pins": len(inputs.train_rows), "train_pairs": len(inputs.pairs),
              "cutoff_date": inputs.split.cutoff_date,
              **{f"{phase}_best_step": record["best_step"] for phase, record in result.validation.items()},
              **{f"{phase}_stopped_at": record["stopped_at"] for phase, record in result.validation.items()}}
    return Trained(result.model, result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> PinCLIP:
    """The PinCLIP a training run left in ``out_dir`` (its last checkpoint), in eval mode."""
    checkpoint = Path(out_dir) / CHECKPOINT_DIR
    model = PinCLIP(PinCLIPConfig.from_dict(read_trainer_state(checkpoint)["config"]["model"]))
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()


def _board_proxies(model_cfg: PinCLIPConfig, cfg: PinCLIPTrainConfig, pairs: NeighborPairs | None,
                   tower_phase: bool, fusion_phase: bool) -> nn.ModuleList | None:
    """One set of board proxies per fusion head in the fusion phase (heads stay
    independent), else one; the tower phase trains set 0, which fusion head 0 continues."""
    fusion_proxies = fusion_phase and cfg.fusion_loss == "proxies"
    used = (tower_phase and cfg.neighbor_loss == "proxies") or fusion_proxies
    if not used or pairs is None or not pairs.n_boards:
        return None
    n_sets = model_cfg.n_fusion_heads if fusion_proxies else 1
    return nn.ModuleList(BoardProxyLoss(pairs.n_boards, model_cfg.embed_dim, cfg.proxy_temperature,
                                        seed=cfg.seed + head) for head in range(n_sets))


def _reinit_fusion(model: PinCLIP, model_cfg: PinCLIPConfig, seed: int) -> None:
    """Put the fusion parameters back to a fresh model's, deterministically in ``seed``
    and without touching the global RNG stream the run continues with."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        fresh = PinCLIP(replace(model_cfg, text_trainable_layers=0, image_tower_path=None))
    with torch.no_grad():
        for param, fresh_param in zip(model.fusion_parameters(), fresh.fusion_parameters(), strict=True):
            param.copy_(fresh_param)


def _optimizer(model: PinCLIP, cfg: PinCLIPTrainConfig, fusion_phase: bool,
               proxies: nn.ModuleList | None = None) -> torch.optim.Optimizer:
    if fusion_phase:
        model.requires_grad_(False)
        params = model.fusion_parameters()
        for param in params:
            param.requires_grad_(True)
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        if proxies is not None and cfg.fusion_loss == "proxies":
            groups.append({"params": list(proxies.parameters()), "weight_decay": 0.0,
                           "lr_scale": cfg.proxy_lr / cfg.fusion_lr})
        return torch.optim.AdamW(groups, lr=cfg.fusion_lr)
    groups = model.param_groups(cfg.weight_decay)
    if proxies is not None and cfg.neighbor_loss == "proxies":
        groups.append({"params": list(proxies[0].parameters()), "weight_decay": 0.0,
                       "lr_scale": cfg.proxy_lr / cfg.lr})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _tower_losses(model: PinCLIP, batches: _Batches, step: int, cfg: PinCLIPTrainConfig,
                  dataset: PinDataset, text: TextFeatures, proxy_sets: nn.ModuleList | None
                  ) -> dict[str, torch.Tensor | float]:
    """Image-text InfoNCE over the step's pins plus the ramped neighbor alignment of their
    fused (and, with ``text_neighbor_weight``, text) embeddings, from one forward pass. This
    process's share of the pins goes through the towers; the losses see every process's
    embeddings (``ClipLoss`` and ``gather_features``), and the step's labels are the global batch's."""
    batch, rng = batches.step_batch(step)
    rows = torch.from_numpy(batch.rows)
    part = shard(len(rows))
    device = model.logit_scale.device
    pixels = to_device(_maybe_flip(dataset.pixels(rows[part]), rng, cfg.hflip, len(rows), part), device)
    image_tokens, image_emb = model.encode_image(pixels)
    text_hidden, text_mask = text.tokens(rows)  # cut after the longest caption of the whole batch
    text_mask = to_device(text_mask[part], device)
    text_tokens, text_emb = model.encode_text(to_device(text_hidden[part], device), text_mask)
    logit_scale, neighbor_logit_scale = model.logit_scale.exp(), model.neighbor_logit_scale.exp()
    loss = loss_clip = ClipLoss()(image_emb, text_emb, logit_scale)
    losses: dict[str, torch.Tensor | float] = {"loss_clip": loss_clip.detach()}
    proxies = proxy_sets[0] if proxy_sets is not None else None
    if batch.pairs is not None:
        # Fusion head 0 carries the neighbor loss to the towers; the others would only cost
        # time, since the fusion phase trains every head afresh (fusion_reinit) or from it.
        fused = gather_features(model.fuse(image_tokens, text_tokens, text_mask, image_emb, text_emb, head=0))
        loss_neighbor = neighbor_loss(fused, neighbor_logit_scale, batches, batch, cfg.neighbor_loss, proxies)
        if cfg.text_neighbor_weight:
            loss_text = proxies(gather_features(text_emb), batches.pairs.board_membership(batch.rows))
            loss_neighbor = loss_neighbor + cfg.text_neighbor_weight * loss_text
            losses["loss_text_neighbor"] = loss_text.detach()
        weight = neighbor_weight_at(step, cfg)
        loss = loss + weight * loss_neighbor
        losses.update(loss_neighbor=loss_neighbor.detach(), neighbor_weight=weight)
    return {**losses, "loss": loss, "images": len(rows),
            "temperature": 1 / logit_scale.detach(), "neighbor_temperature": 1 / neighbor_logit_scale.detach()}


def _fusion_losses(model: PinCLIP, batches: list[_Batches], towers: TowerCache, step: int,
                   cfg: PinCLIPTrainConfig, proxy_sets: nn.ModuleList | None) -> dict[str, torch.Tensor | float]:
    """Every fusion head on its own batch (and proxies): the mean of their losses, so a
    head's gradient does not depend on how many there are. With proxies every head's batch
    has the same size and all heads run in one batched call (``fuse_per_head``). Each
    process fuses its share of every head's pins and gathers the rest."""
    scale = model.neighbor_logit_scale.exp()
    if cfg.fusion_loss == "proxies":
        head_batches = [head.board_pin_batch(step) for head in batches]
        part = shard(len(head_batches[0].rows))
        inputs = towers.stacked_rows([batch.rows for batch in head_batches])  # [H, B, ...]
        fused = model.fuse_per_head(*(tensor[:, part] for tensor in inputs))
        losses = [proxies(gather_features(fused_head), head.pairs.board_membership(batch.rows))
                  for proxies, fused_head, head, batch in zip(proxy_sets, fused, batches, head_batches)]
    else:
        head_batches = [head.step_batch(step)[0] for head in batches]
        losses = []
        for h, (head, batch) in enumerate(zip(batches, head_batches)):
            part = shard(len(batch.rows))
            fused = gather_features(model.fuse(*(tensor[part] for tensor in towers.rows(batch.rows)), head=h))
            losses.append(neighbor_loss(fused, scale, head, batch, cfg.fusion_loss, None))
    loss = torch.stack(losses).mean()
    return {"loss": loss, "loss_fusion_neighbor": loss.detach(), "pins": sum(len(b.rows) for b in head_batches),
            "neighbor_temperature": 1 / scale.detach()}


@dataclass
class TowerCache:
    """Frozen tower outputs of the training pins, for the fusion phase: ``fuse`` inputs
    without a ViT pass per step. No flip augmentation: the towers are done learning."""

    position: np.ndarray  # dataset row -> row of the tensors below (-1: not cached)
    image_tokens: torch.Tensor
    image_emb: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    text_emb: torch.Tensor

    @classmethod
    @torch.no_grad()
    def build(cls, model: PinCLIP, dataset: PinDataset, text: TextFeatures, rows: np.ndarray,
              batch_size: int = 256) -> TowerCache:
        model.eval()
        device = model.logit_scale.device  # the cache lives where the fusion trains
        # Each chunk is written into tensors sized for every row once the first chunk shows
        # the shapes: a list of chunks concatenated at the end held the cache twice (6 GB of
        # 12 at 100k pins).
        cache: list[torch.Tensor] = []
        for start in range(0, len(rows), batch_size):
            chunk = torch.from_numpy(rows[start:start + batch_size])
            image_tokens, image_emb = model.encode_image(to_device(dataset.pixels(chunk), device))
            # Every chunk at the cache's full caption length, so the chunks fill the same columns.
            mask = to_device(text.mask[chunk].bool(), device)
            text_tokens, text_emb = model.encode_text(to_device(text.hidden[chunk], device), mask)
            outputs = (image_tokens, image_emb, text_tokens, mask, text_emb)
            if not cache:
                cache = [torch.empty((len(rows), *part.shape[1:]), dtype=part.dtype, device=device) for part in outputs]
            for whole, part in zip(cache, outputs):
                whole[start:start + len(chunk)] = part
        if not cache:
            raise ValueError("the fusion phase needs at least one training pin to cache")
        position = np.full(len(dataset), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        return cls(position, *cache)

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``fuse`` arguments (image tokens, text tokens, text mask, image emb, text emb),
        the text cut after the longest caption among ``rows``."""
        return tuple(part[0] for part in self.stacked_rows([rows]))

    def stacked_rows(self, row_sets: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
        """``fuse_per_head`` arguments for one row set per head: each ``rows`` output with a
        leading head axis, the text cut after the longest caption of any set."""
        index = torch.from_numpy(np.stack([self.position[rows] for rows in row_sets]))
        if (index < 0).any():
            raise ValueError("rows outside the cached training pins")
        mask = self.text_mask[index]
        length = unpadded_length(mask)
        return (self.image_tokens[index], self.text_tokens[index, :length], mask[..., :length],
                self.image_emb[index], self.text_emb[index])


@torch.no_grad()
def embed_pins(model: PinCLIP, dataset: PinDataset, text: TextFeatures,
               batch_size: int = 256) -> dict[str, np.ndarray]:
    """Image, text and fused embeddings (float32, L2-normalised) of every dataset row."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"image": [], "text": [], "fused": []}
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        out = model(dataset.pixels(rows), *text.tokens(rows))
        parts["image"].append(out.image_emb.numpy())
        parts["text"].append(out.text_emb.numpy())
        parts["fused"].append(out.fused_emb.numpy())
    dim = model.config.embed_dim
    return {k: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for k, v in parts.items()}


@torch.no_grad()
def embed_images(model: PinCLIP, dataset: PinDataset, batch_size: int = 256) -> np.ndarray:
    """Image-tower embeddings alone (float32, L2-normalised) of every dataset row: no text
    and no fusion pass, for baselines that only read the image side."""
    model.eval()
    parts = [model.encode_image(dataset.pixels(np.arange(start, min(start + batch_size, len(dataset)))))[1].numpy()
             for start in range(0, len(dataset), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), np.float32)
