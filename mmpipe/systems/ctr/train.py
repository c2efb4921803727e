"""Training the CTR model on the shared loop: one phase, BCE on the train window's
impressions, early stopping on the validation window.

The early-stopping score is the mean of the validation window's cold-item AUC (the gate's
primary metric) and its overall AUC (which the gate must not see drop): stopping on the
cold AUC alone could keep weights that rank warm items worse. Batches are pure functions
of (seed, step), so a resumed run ends as one that never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mmpipe.config import settings_from_dict
from mmpipe.eval.classification import roc_auc
from mmpipe.spec import Trained
from mmpipe.systems.ctr.data import TRAIN, VALIDATION, CTRInputs, DataSettings
from mmpipe.systems.ctr.losses import click_loss
from mmpipe.systems.ctr.model import CTRConfig, CTRModel
from mmpipe.train.loop import FitResult, Logger, LoopConfig, Phase, TrainingTask, fit, load_trained_model


@dataclass(frozen=True)
class CTRTrainConfig:
    # On the small world every variant of the ladder scored best on validation at step 700:
    # 1000 steps with patience 2 stop by then plus two looks, inside the budget of `make run`.
    steps: int = 1000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-5
    # The learning rate of the ID and semantic-ID tables relative to the rest: with ~13
    # training impressions an item they learn noise faster than the shared content path
    # learns taste (on the small world the full model peaked at step 300 and fell after).
    table_lr_scale: float = 1.0
    warmup_steps: int = 50
    validate_every: int = 100
    patience: int = 2
    seed: int = 0
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 50


@dataclass(frozen=True)
class CTRSettings:
    """Every default of the CTR system (``params.yaml``'s ``ctr:`` overrides it). The model's
    table sizes (items, codes, levels, embedding width, countries) follow the data."""

    model: CTRConfig = CTRConfig()
    train: CTRTrainConfig = CTRTrainConfig()
    data: DataSettings = DataSettings()
    # The multimodal embedding: "fused" (PinCLIP's) or "behavior" (the semantic-ID system's
    # behavior-aware encoder, whose space the codes quantize). On the small world both give
    # the same content-only DIN (validation AUC 0.668 / 0.667) and a linear probe reads the
    # main object's attributes better from fused (colour 0.85 vs 0.77, shape 0.60 vs 0.49).
    embedding: str = "fused"


def sized_config(config: CTRConfig, inputs: CTRInputs) -> CTRConfig:
    items = inputs.items
    has_codes = items.codes is not None
    if (config.use_semantic_ids or config.residual_codebooks) and not has_codes:
        raise ValueError("this variant uses semantic IDs but the item table has none")
    return replace(config, n_items=len(items.ids), embedding_dim=int(items.embedding.shape[1]),
                   levels=int(items.codes.shape[1]) if has_codes else config.levels,
                   codes=int(items.codes_per_level) if has_codes else config.codes,
                   countries=len(inputs.countries) + 1, item_buckets=inputs.settings.item_buckets,
                   user_buckets=inputs.settings.user_buckets)


def build_model(config: CTRConfig, inputs: CTRInputs) -> CTRModel:
    model = CTRModel(config)
    codes = torch.from_numpy(inputs.items.codes.copy()) if inputs.items.codes is not None else None
    model.items.set_items(torch.from_numpy(inputs.item_buckets), codes, torch.from_numpy(inputs.items.embedding))
    return model


def batch_tensors(inputs: CTRInputs, rows: np.ndarray) -> dict[str, torch.Tensor]:
    frame = inputs.impressions
    return {"target": torch.from_numpy(inputs.item_row[rows]), "history": torch.from_numpy(inputs.history[rows]),
            "user": torch.from_numpy(inputs.user_bucket[rows]), "country": torch.from_numpy(inputs.country[rows]),
            "tenure": torch.from_numpy(inputs.tenure[rows]),
            "position": torch.from_numpy(frame["position"].to_numpy(np.int64)[rows].copy())}


@torch.no_grad()
def predict(model: CTRModel, inputs: CTRInputs, rows: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities of impressions ``rows`` (every ID kept: no dropout at inference)."""
    model.eval()
    parts = [torch.sigmoid(model(**batch_tensors(inputs, rows[i:i + batch_size]))).numpy()
             for i in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def validation_score(model: CTRModel, inputs: CTRInputs) -> float:
    rows = inputs.rows(VALIDATION)
    p = predict(model, inputs, rows)
    clicked = inputs.impressions["clicked"].to_numpy()[rows]
    cold = inputs.impressions["cold"].to_numpy()[rows]
    overall = roc_auc(p, clicked)
    cold_auc = roc_auc(p[cold], clicked[cold]) if cold.any() else float("nan")
    return float(np.nanmean([overall, cold_auc]))


@dataclass
class TrainedCTR:
    """A trained model with what serving needs beside its weights: the pin id of each item
    row and the country of each index (both far too long for MLflow params)."""

    model: CTRModel
    item_ids: list[str]
    countries: list[str]
    embedding: str
    codebook_version: str | None
    data: DataSettings


class CTRTask(TrainingTask):
    def __init__(self, settings: CTRSettings, inputs: CTRInputs):
        self.settings, self.inputs, self.cfg = settings, inputs, settings.train
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(sized_config(settings.model, inputs), inputs)
        self.train_rows = inputs.rows(TRAIN)
        if not len(self.train_rows):
            raise ValueError("no impressions in the train window")
        self.clicked = torch.from_numpy(inputs.impressions["clicked"].to_numpy(np.int64).copy())
        self.has_validation = len(inputs.rows(VALIDATION)) > 0

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        return [Phase("ctr", cfg.steps, cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps),
                      make_optimizer=self.make_optimizer,
                      training_forward=self.forward,
                      validate=(lambda: validation_score(self.model, self.inputs)) if self.has_validation else None,
                      validate_every=cfg.validate_every, patience=cfg.patience)]

    def make_optimizer(self) -> torch.optim.Optimizer:
        tables = self.model.items.memorizing_parameters()
        table_ids = {id(p) for p in tables}
        rest = [p for p in self.model.parameters() if id(p) not in table_ids]
        groups = [{"params": rest}] + ([{"params": tables, "lr_scale": self.cfg.table_lr_scale}] if tables else [])
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def forward(self, step: int) -> dict[str, torch.Tensor | float]:
        seed = int(np.random.default_rng([self.cfg.seed, step]).integers(2**62))
        rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        rows = rng.choice(self.train_rows, min(self.cfg.batch_size, len(self.train_rows)), replace=False)
        batch = batch_tensors(self.inputs, rows)
        keep = 1.0 - self.model.config.id_dropout
        id_keep = torch.bernoulli(torch.full(batch["target"].shape, keep), generator=generator)
        history_keep = torch.bernoulli(torch.full(batch["history"].shape, keep), generator=generator)
        logits = self.model(**batch, id_keep=id_keep, history_id_keep=history_keep)
        bce = click_loss(logits, self.clicked[rows])
        out = {"loss": bce, "bce": bce.detach()}
        if self.model.config.memorization_l2 > 0:
            used = torch.unique(torch.cat([batch["target"], batch["history"].flatten()]))
            penalty = self.model.items.memorization_penalty(used[used >= 0])
            out.update(loss=bce + self.model.config.memorization_l2 * penalty, memorization=penalty.detach())
        return out


def config_record(settings: CTRSettings, model: CTRModel) -> dict:
    return asdict(replace(settings, model=model.config))


def train_ctr(settings: CTRSettings, inputs: CTRInputs, out_dir: Path | None = None, resume: bool = True,
              stop_after: int | None = None, log: Logger | None = None, progress: bool = False
              ) -> tuple[CTRModel, FitResult]:
    task = CTRTask(settings, inputs)
    cfg = settings.train
    result = fit(task, out_dir, resume=resume, stop_after=stop_after, config_record=config_record(settings, task.model),
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm), log=log,
                 progress=progress, desc="ctr")
    return task.model, result


def train(settings: CTRSettings, inputs: CTRInputs, out_dir: Path | None = None, resume: bool = True,
          log: Logger | None = None) -> Trained:
    """The lifecycle's entry point."""
    model, result = train_ctr(settings, inputs, out_dir, resume=resume, log=log)
    record = result.validation.get("ctr", {})
    params = {**asdict(model.config), **asdict(settings.train), **{f"data_{k}": v for k, v in asdict(settings.data).items()},
              "embedding": settings.embedding, "train_impressions": len(inputs.rows(TRAIN)),
              "cutoff_date": inputs.windows.train_end, "codebook_version": inputs.items.codebook_version,
              "best_step": record.get("best_step"), "stopped_at": record.get("stopped_at")}
    return Trained(TrainedCTR(model, list(inputs.items.ids), list(inputs.countries), settings.embedding,
                              inputs.items.codebook_version, inputs.settings),
                   result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> CTRModel:
    return load_trained_model(out_dir, lambda config: CTRModel(settings_from_dict(CTRConfig, config["model"])))
