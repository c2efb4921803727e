"""Training the moment model: the train window's queries, one phase on the shared loop.

A step draws ``batch_size`` training queries (a pure function of (seed, step), so a stopped
and resumed run ends with the weights of one that never stopped), runs them with their
videos' frame features and sums the heads' losses (``losses.moment_losses``). The phase
stops early on R1@0.7 over the validation window's queries, the gate's metric; training
never sees their windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmpipe.eval.moment import MomentScores, score_windows
from mmpipe.spec import Trained
from mmpipe.systems.moment.data import TRAIN, VALIDATION, MomentInputs, make_batch
from mmpipe.systems.moment.losses import moment_losses
from mmpipe.systems.moment.model import DecodeConfig, MomentConfig, MomentModel, decode_batch
from mmpipe.train.checkpoint import read_trainer_state
from mmpipe.train.loop import CHECKPOINT_DIR, Logger, LoopConfig, Phase, TrainingTask, fit, load_trained_model

GATE_IOU = 0.7  # early stopping reads R1 at this IoU, as the promotion gate does


@dataclass(frozen=True)
class MomentTrainConfig:
    steps: int = 500
    batch_size: int = 32  # queries per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    boundary_smoothing: float = 0.2  # share of a boundary's target mass moved to its neighbour frames
    # Share of training queries whose video is cut to a random run of frames around its
    # windows (data.crop_range): the moment at other positions, in shorter videos.
    crop_probability: float = 0.5
    segmentation_weight: float = 2.0
    distributions_weight: float = 0.5
    l1_weight: float = 1.0
    giou_weight: float = 1.0
    # Early stopping on the validation window: R1@0.7 every validate_every steps.
    validate_every: int = 50
    patience: int = 4
    seed: int = 0
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 20

    def __post_init__(self) -> None:
        if not 0.0 <= self.boundary_smoothing < 1.0:
            raise ValueError(f"boundary_smoothing must be in [0, 1), got {self.boundary_smoothing}")

    def loss_weights(self) -> dict[str, float]:
        return {"segmentation": self.segmentation_weight, "distributions": self.distributions_weight,
                "l1": self.l1_weight, "giou": self.giou_weight}


@dataclass(frozen=True)
class MomentSettings:
    """Every moment default: the model, its training and its decoding. ``params.yaml``'s
    ``moment:`` overrides it."""

    model: MomentConfig = MomentConfig()
    train: MomentTrainConfig = MomentTrainConfig()
    decode: DecodeConfig = DecodeConfig()


@dataclass
class TrainResult:
    model: MomentModel
    steps: int
    final: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    validation: dict[str, dict] = field(default_factory=dict)


@torch.no_grad()
def predict_spans(model: MomentModel, inputs: MomentInputs, rows: np.ndarray, decode: DecodeConfig,
                  batch_size: int = 128) -> list[list[list[float]]]:
    """Each query's top spans ``[[start_s, end_s, score], ...]`` (best first), rows of ``inputs.queries``."""
    model.eval()
    step = inputs.frame_step
    spans = []
    for begin in range(0, len(rows), batch_size):
        batch = make_batch(inputs, rows[begin:begin + batch_size], with_labels=False)
        output = model(batch.frames, batch.frame_mask, batch.text, batch.text_mask)
        durations = np.array([inputs.duration(int(row)) for row in batch.rows])
        spans += decode_batch(output, batch.frame_mask, batch.times, durations, step, decode)
    return spans


def score_spans(inputs: MomentInputs, rows: np.ndarray, spans: list[list[list[float]]]) -> MomentScores:
    """The standalone evaluator's per-query scores of ``spans`` against the queries' true windows."""
    return score_windows(inputs.queries["query_id"].astype(str).to_numpy()[rows].tolist(),
                         [np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in spans],
                         [inputs.true_windows(int(row)) for row in rows])


class MomentTask(TrainingTask):
    """The moment model's one phase for the shared loop (:func:`mmpipe.train.loop.fit`)."""

    def __init__(self, settings: MomentSettings, inputs: MomentInputs):
        self.settings, self.inputs = settings, inputs
        self.cfg = settings.train
        torch.manual_seed(self.cfg.seed)
        self.model = MomentModel(settings.model.with_frame_dim(inputs.frame_dim))
        self.train_rows = inputs.query_rows(TRAIN)
        if len(self.train_rows) < 2:
            raise ValueError(f"the moment model needs at least 2 training queries, got {len(self.train_rows)}")
        self.validation_rows = inputs.query_rows(VALIDATION)

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        return [Phase("moments", cfg.steps, cfg.lr, warmup_steps=cfg.warmup_steps,
                      make_optimizer=lambda: torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), lr=cfg.lr),
                      training_forward=self.training_forward,
                      validate=self.validate if len(self.validation_rows) else None,
                      validate_every=cfg.validate_every, patience=cfg.patience)]

    def batch_rows(self, step: int) -> tuple[np.ndarray, np.random.Generator]:
        """The step's query rows and the generator of its crops."""
        rng = np.random.default_rng([self.cfg.seed, step])
        return rng.choice(self.train_rows, size=min(self.cfg.batch_size, len(self.train_rows)), replace=False), rng

    def training_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        rows, rng = self.batch_rows(step)
        batch = make_batch(self.inputs, rows, crop_rng=rng, crop_probability=self.cfg.crop_probability)
        output = self.model(batch.frames, batch.frame_mask, batch.text, batch.text_mask)
        losses = moment_losses(output, batch, self.cfg.boundary_smoothing, self.cfg.loss_weights())
        return {**losses, "queries": len(batch.rows)}

    def validate(self) -> float:
        spans = predict_spans(self.model, self.inputs, self.validation_rows, self.settings.decode)
        return float(score_spans(self.inputs, self.validation_rows, spans).hits(1, GATE_IOU).mean())


def settings_record(settings: MomentSettings, frame_dim: int) -> dict:
    """What a checkpoint records of its settings (the model with the frame width it read)."""
    return {"model": settings.model.with_frame_dim(frame_dim).to_dict(), "train": asdict(settings.train),
            "decode": asdict(settings.decode)}


def train_moment(settings: MomentSettings, inputs: MomentInputs, out_dir: Path | None = None, resume: bool = True,
                 stop_after: int | None = None, log: Logger | None = None, progress: bool = False) -> TrainResult:
    """Train (or resume) the moment model with the shared loop; checkpoints go to ``out_dir/checkpoint``."""
    task = MomentTask(settings, inputs)
    cfg = settings.train
    result = fit(task, out_dir, resume=resume, stop_after=stop_after,
                 config_record=settings_record(settings, inputs.frame_dim),
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm),
                 log=log, progress=progress, desc="moment")
    return TrainResult(task.model, result.steps, result.final, result.history, result.seconds, result.validation)


def train(settings: MomentSettings, inputs: MomentInputs, out_dir: Path | None = None, resume: bool = True,
          log: Logger | None = None) -> Trained:
    """The lifecycle's entry point: the moment model on the inputs' training queries."""
    result = train_moment(settings, inputs, out_dir, resume=resume, log=log)
    params = {**settings.model.with_frame_dim(inputs.frame_dim).to_dict(), **asdict(settings.train),
              **{f"decode_{key}": value for key, value in asdict(settings.decode).items()},
              "train_queries": len(inputs.query_rows(TRAIN)),
              "train_videos": int((inputs.videos["window"] == TRAIN).sum()),
              "cutoff_date": inputs.windows.train_end, "frame_encoder": inputs.encoder,
              "frame_encoder_version": inputs.encoder_version, "frame_step_s": inputs.frame_step,
              **{f"{phase}_best_step": record["best_step"] for phase, record in result.validation.items()},
              **{f"{phase}_stopped_at": record["stopped_at"] for phase, record in result.validation.items()}}
    return Trained(result.model, result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> tuple[MomentModel, DecodeConfig]:
    """The model a training run left in ``out_dir`` (its last checkpoint), in eval mode, and
    the decoding it was trained with."""
    model = load_trained_model(out_dir, lambda config: MomentModel(MomentConfig.from_dict(config["model"])))
    return model, DecodeConfig(**read_trainer_state(Path(out_dir) / CHECKPOINT_DIR)["config"]["decode"])
