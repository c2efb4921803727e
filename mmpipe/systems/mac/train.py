"""Training MAC: masked clips against masked captions, one phase on the shared loop.

A step draws ``batch_size`` different training videos, one of each video's captions and
one random clip of each, masks ``mask_ratio`` of every frame's patches and
``text_mask_ratio`` of every caption's tokens, and aligns the two with InfoNCE. Every batch
(videos, captions, clip frames and both masks) is a pure function of (seed, step), so a
run stopped and resumed ends with the weights of one that never stopped. The phase stops
early on text->video R@5 over the validation window's videos; training never sees them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmpipe.nn.losses import clamp_logit_scale_
from mmpipe.spec import Trained
from mmpipe.systems.mac.data import TRAIN, VALIDATION, MACInputs
from mmpipe.systems.mac.losses import masked_then_align
from mmpipe.systems.mac.model import MAC, MACConfig
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state
from mmpipe.train.loop import CHECKPOINT_DIR, Logger, LoopConfig, Phase, TrainingTask, fit


@dataclass(frozen=True)
class MACTrainConfig:
    steps: int = 300
    batch_size: int = 64  # videos per step, each once
    n_frames: int = 8  # frames per clip, spread over the whole video
    mask_ratio: float = 0.75  # share of each frame's patches dropped in training (0 at inference)
    text_mask_ratio: float = 0.2  # share of each caption's tokens dropped in training
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 30
    # Early stopping on the validation window: text->video R@5 every validate_every steps.
    validate_every: int = 50
    patience: int = 3
    seed: int = 0
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("mask_ratio", "text_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class MACSettings:
    """Every MAC default: the model and its training. ``params.yaml``'s ``mac:`` overrides it."""

    model: MACConfig = MACConfig()
    train: MACTrainConfig = MACTrainConfig()


@dataclass
class TrainResult:
    model: MAC
    steps: int
    final: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    validation: dict[str, dict] = field(default_factory=dict)


@torch.no_grad()
def embed_videos(model: MAC, inputs: MACInputs, rows: np.ndarray, n_frames: int, batch_size: int = 64) -> np.ndarray:
    """Unmasked embeddings [len(rows), E] of each video's middle clip (the same every call)."""
    model.eval()
    size = model.config.image_size
    parts = [model.encode_video(inputs.clips.pixels(rows[start:start + batch_size], n_frames, size)).numpy()
             for start in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), np.float32)


@torch.no_grad()
def embed_captions(model: MAC, inputs: MACInputs, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Unmasked embeddings [len(rows), E] of captions (rows of ``inputs.captions``)."""
    model.eval()
    parts = [model.encode_text(*inputs.text.tokens(rows[start:start + batch_size])).numpy()
             for start in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), np.float32)


def text_to_video_recall(model: MAC, inputs: MACInputs, window: str, n_frames: int, k: int = 5) -> float:
    """Share of the window's captions whose video ranks in the top ``k`` among the window's
    videos (ties count against): the validation score, cheap enough to run during training."""
    video_rows = inputs.video_rows(window)
    caption_rows = inputs.caption_rows(window)
    if not len(video_rows) or not len(caption_rows):
        return 0.0
    videos = embed_videos(model, inputs, video_rows, n_frames)
    captions = embed_captions(model, inputs, caption_rows)
    position = np.full(len(inputs.videos), -1)
    position[video_rows] = np.arange(len(video_rows))
    truth = position[inputs.captions["video_row"].to_numpy()[caption_rows]]
    scores = captions @ videos.T
    true_scores = scores[np.arange(len(caption_rows)), truth]
    ranks = (scores >= true_scores[:, None]).sum(1)
    return float(np.mean(ranks <= k))


class MACTask(TrainingTask):
    """MAC's one phase for the shared loop (:func:`mmpipe.train.loop.fit`)."""

    def __init__(self, settings: MACSettings, inputs: MACInputs):
        self.settings, self.inputs = settings, inputs
        self.cfg = settings.train
        torch.manual_seed(self.cfg.seed)
        if inputs.text.hidden.shape[1] > settings.model.text_positions:
            raise ValueError(f"captions of {inputs.text.hidden.shape[1]} tokens, the text encoder has positions "
                             f"for {settings.model.text_positions}: raise model.text_positions")
        self.model = MAC(settings.model)
        self.train_rows = inputs.video_rows(TRAIN)
        self.captions = inputs.captions_of(self.train_rows)
        self.train_rows = np.asarray([row for row in self.train_rows if row in self.captions])
        if len(self.train_rows) < 2:
            raise ValueError(f"MAC needs at least 2 captioned training videos, got {len(self.train_rows)}")
        self.has_validation = len(inputs.caption_rows(VALIDATION)) > 0

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        return [Phase("align", cfg.steps, cfg.lr, warmup_steps=cfg.warmup_steps,
                      make_optimizer=lambda: torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), lr=cfg.lr),
                      training_forward=self.training_forward,
                      validate=self.validate if self.has_validation else None,
                      validate_every=cfg.validate_every, patience=cfg.patience)]

    def after_step(self) -> None:
        clamp_logit_scale_(self.model)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator, torch.Generator]:
        """The step's video rows, one caption row each, and the generators of its clips and masks."""
        rng = np.random.default_rng([self.cfg.seed, step])
        rows = rng.choice(self.train_rows, size=min(self.cfg.batch_size, len(self.train_rows)), replace=False)
        captions = np.asarray([rng.choice(self.captions[int(row)]) for row in rows])
        masks = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return rows, captions, rng, masks

    def training_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        cfg = self.cfg
        rows, captions, rng, masks = self.batch(step)
        pixels = self.inputs.clips.pixels(rows, cfg.n_frames, self.model.config.image_size, rng)
        video = self.model.encode_video(pixels, cfg.mask_ratio, masks)
        hidden, mask = self.inputs.text.tokens(captions)
        text = self.model.encode_text(hidden, mask, cfg.text_mask_ratio, masks)
        logit_scale = self.model.logit_scale.exp()
        loss = masked_then_align(video, text, logit_scale)
        return {"loss": loss, "temperature": 1 / logit_scale.detach(), "videos": len(rows)}

    def validate(self) -> float:
        return text_to_video_recall(self.model, self.inputs, VALIDATION, self.cfg.n_frames)


def train_mac(settings: MACSettings, inputs: MACInputs, out_dir: Path | None = None, resume: bool = True,
              stop_after: int | None = None, log: Logger | None = None, progress: bool = False) -> TrainResult:
    """Train (or resume) MAC with the shared loop; checkpoints go to ``out_dir/checkpoint``."""
    task = MACTask(settings, inputs)
    cfg = settings.train
    record = {"model": settings.model.to_dict(), "train": asdict(cfg)}
    result = fit(task, out_dir, resume=resume, stop_after=stop_after, config_record=record,
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm),
                 log=log, progress=progress, desc="mac")
    return TrainResult(task.model, result.steps, result.final, result.history, result.seconds, result.validation)


def train(settings: MACSettings, inputs: MACInputs, out_dir: Path | None = None, resume: bool = True,
          log: Logger | None = None) -> Trained:
    """The lifecycle's entry point: MAC on the inputs' training videos."""
    result = train_mac(settings, inputs, out_dir, resume=resume, log=log)
    params = {**settings.model.to_dict(), **asdict(settings.train),
              "train_videos": len(inputs.video_rows(TRAIN)), "train_captions": len(inputs.caption_rows(TRAIN)),
              "cutoff_date": inputs.windows.train_end,
              **{f"{phase}_best_step": record["best_step"] for phase, record in result.validation.items()},
              **{f"{phase}_stopped_at": record["stopped_at"] for phase, record in result.validation.items()}}
    return Trained(result.model, result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> MAC:
    """The MAC a training run left in ``out_dir`` (its last checkpoint), in eval mode."""
    checkpoint = Path(out_dir) / CHECKPOINT_DIR
    config = read_trainer_state(checkpoint)["config"]
    model = MAC(MACConfig.from_dict(config["model"]))
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()
