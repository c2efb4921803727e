"""Training the semantic-ID system: two phases on the shared loop.

Phase "encoder": the behavior encoder on PinCLIP's fused embeddings, symmetric InfoNCE
over co-engagement pairs of the train window's clicks (a batch of pairs, the other
positives as negatives). Early stopping reads co-engagement recall@10 of the validation
window's held-out pairs, searching every pin.

Phase "codebook": the encoder is frozen, its embedding of every train-window pin is
computed once, and the RQ-VAE reconstructs them through L levels of K codes (k-means
initialisation of each level on the first batch, β-weighted commitment, dead codes reset
from the batch after each step). Early stopping reads the mean cosine between the
validation window's embeddings and their reconstructions: the gate's metric.

Batches are pure functions of (seed, step), so a resumed run ends as one that never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmpipe.config import settings_from_dict
from mmpipe.eval.retrieval import neighbor_hits_per_query
from mmpipe.spec import Trained
from mmpipe.systems.semantic_id.data import TRAIN, VALIDATION, PairSettings, SemanticIDInputs
from mmpipe.systems.semantic_id.losses import co_engagement_info_nce, rqvae_loss
from mmpipe.systems.semantic_id.model import SemanticIDConfig, SemanticIDModel
from mmpipe.train.loop import FitResult, Logger, LoopConfig, Phase, TrainingTask, fit, load_trained_model

RECALL_K = 10


@dataclass(frozen=True)
class SemanticIDTrainConfig:
    # On the small world's taste-community world co-engagement recall@10 peaked at step 150
    # and the codebook's validation cosine was 0.9930 at 900 steps against 0.9934 at 1650:
    # these keep the system inside its share of the `make run` budget.
    encoder_steps: int = 200
    encoder_lr: float = 1e-3
    pair_batch_size: int = 512
    temperature: float = 0.05
    codebook_steps: int = 900
    codebook_lr: float = 2e-3
    # Larger than K: the first batch seeds every level's k-means, and the dead-code reset
    # draws from it.
    codebook_batch_size: int = 1024
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    validate_every: int = 50
    patience: int = 4
    seed: int = 0
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 300
    log_every: int = 20


@dataclass(frozen=True)
class SemanticIDSettings:
    """Every default of the semantic-ID system (``params.yaml``'s ``semantic_id:`` overrides
    it). ``model.encoder.dim`` and ``model.codebook.dim`` follow the embeddings trained on."""

    model: SemanticIDConfig = SemanticIDConfig()
    train: SemanticIDTrainConfig = SemanticIDTrainConfig()
    pairs: PairSettings = PairSettings()


@torch.no_grad()
def behavior_embeddings(model: SemanticIDModel, fused: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """[N, D] unit behavior embeddings of PinCLIP fused embeddings [N, D]."""
    model.eval()
    parts = [model.encoder(torch.from_numpy(np.asarray(fused[i:i + batch_size], np.float32))).numpy()
             for i in range(0, len(fused), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.encoder.dim), np.float32)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def co_engagement_hits(embeddings: np.ndarray, pairs: np.ndarray, k: int = RECALL_K) -> tuple[np.ndarray, np.ndarray]:
    """Per query pin of ``pairs`` [P, 2] (rows, both directions): (co-engaged partners found in
    the top k of every pin by cosine, partners): :func:`neighbor_hits_per_query` over rows."""
    ids = [str(row) for row in range(len(embeddings))]
    neighbors: dict[str, set[str]] = {}
    for a, b in pairs.tolist():
        neighbors.setdefault(str(a), set()).add(str(b))
        neighbors.setdefault(str(b), set()).add(str(a))
    queries = sorted(neighbors, key=int)
    rows = np.asarray([int(q) for q in queries], dtype=np.int64)
    vectors = unit(np.asarray(embeddings, np.float32))
    return neighbor_hits_per_query(vectors[rows], queries, vectors, ids, neighbors, k=k)


def co_engagement_recall(embeddings: np.ndarray, pairs: np.ndarray, k: int = RECALL_K) -> float:
    found, total = co_engagement_hits(embeddings, pairs, k)
    return float(np.mean(found / total)) if len(total) else float("nan")


class SemanticIDTask(TrainingTask):
    def __init__(self, settings: SemanticIDSettings, inputs: SemanticIDInputs):
        self.settings, self.inputs, self.cfg = settings, inputs, settings.train
        torch.manual_seed(self.cfg.seed)
        config = settings.model
        config = replace(config, encoder=replace(config.encoder, dim=inputs.dim),
                         codebook=replace(config.codebook, dim=inputs.dim))
        self.model = SemanticIDModel(config)
        self.train_rows = inputs.rows(TRAIN)
        with torch.no_grad():  # the training pins' mean direction, removed before everything else
            self.model.encoder.center.copy_(torch.from_numpy(unit(inputs.fused[self.train_rows]).mean(0)))
        if len(self.train_rows) < config.codebook.codes:
            raise ValueError(f"{len(self.train_rows)} training-window pins cannot seed {config.codebook.codes} codes "
                             "per level: lower model.codebook.codes")
        self.train_pairs = inputs.pairs[TRAIN]
        self.fused = torch.from_numpy(inputs.fused)
        self.behavior: torch.Tensor | None = None  # the frozen encoder's output, for the codebook phase
        self.has_validation = len(inputs.rows(VALIDATION)) > 0
        self.last_residuals: list[torch.Tensor] | None = None

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        encoder, rqvae = self.model.encoder, self.model.rqvae
        encoder_validates = self.has_validation and len(self.inputs.pairs[VALIDATION]) > 0
        phases = []
        if len(self.train_pairs):
            phases.append(Phase(
                "encoder", cfg.encoder_steps, cfg.encoder_lr, warmup_steps=min(cfg.warmup_steps, cfg.encoder_steps),
                make_optimizer=lambda: torch.optim.AdamW(encoder.parameters(), lr=cfg.encoder_lr,
                                                         weight_decay=cfg.weight_decay),
                training_forward=self.encoder_forward,
                validate=self.validate_encoder if encoder_validates else None,
                validate_every=cfg.validate_every, patience=cfg.patience))
        phases.append(Phase(
            "codebook", cfg.codebook_steps, cfg.codebook_lr, warmup_steps=min(cfg.warmup_steps, cfg.codebook_steps),
            begin=self.begin_codebook,
            make_optimizer=lambda: torch.optim.AdamW(rqvae.parameters(), lr=cfg.codebook_lr,
                                                     weight_decay=cfg.weight_decay),
            training_forward=self.codebook_forward,
            validate=self.validate_codebook if self.has_validation else None,
            validate_every=cfg.validate_every, patience=cfg.patience))
        return phases

    def generator(self, step: int) -> tuple[np.random.Generator, torch.Generator]:
        seed = int(np.random.default_rng([self.cfg.seed, step]).integers(2**62))
        return np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def encoder_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        rng, _ = self.generator(step)
        batch = self.train_pairs[rng.choice(len(self.train_pairs), min(self.cfg.pair_batch_size,
                                                                        len(self.train_pairs)), replace=False)]
        flip = rng.random(len(batch)) < 0.5  # pairs are canonical (a < b): either side anchors
        batch = np.where(flip[:, None], batch[:, ::-1], batch)
        anchor = self.model.encoder(self.fused[batch[:, 0]])
        positive = self.model.encoder(self.fused[batch[:, 1]])
        loss = co_engagement_info_nce(anchor, positive, self.cfg.temperature)
        return {"loss": loss, "info_nce": loss.detach()}

    def validate_encoder(self) -> float:
        return co_engagement_recall(behavior_embeddings(self.model, self.inputs.fused), self.inputs.pairs[VALIDATION])

    def begin_codebook(self, fresh: bool) -> None:
        self.model.encoder.requires_grad_(False)
        self.behavior = torch.from_numpy(behavior_embeddings(self.model, self.inputs.fused))
        self.model.train()

    def codebook_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        rng, generator = self.generator(step)
        rows = rng.choice(self.train_rows, min(self.cfg.codebook_batch_size, len(self.train_rows)), replace=False)
        x = self.behavior[rows]
        reconstruction, quantized = self.model.rqvae(x, generator)
        self.last_residuals, self.reset_generator = quantized.residuals, generator
        return rqvae_loss(x, reconstruction, quantized)

    def after_step(self) -> None:
        if self.last_residuals is not None:  # codebook phase: dead codes move onto this batch
            self.model.rqvae.quantizer.reset_dead_codes(self.last_residuals, self.reset_generator)
            self.last_residuals = None

    def validate_codebook(self) -> float:
        x = self.behavior[self.inputs.rows(VALIDATION)]
        codes, _ = self.model.rqvae.codes_and_distances(x)
        return float(F.cosine_similarity(self.model.rqvae.decode_codes(codes), x, dim=-1).mean())


def config_record(settings: SemanticIDSettings, model: SemanticIDModel) -> dict:
    return asdict(replace(settings, model=model.config))


def train_semantic_id(settings: SemanticIDSettings, inputs: SemanticIDInputs, out_dir: Path | None = None,
                      resume: bool = True, stop_after: int | None = None, log: Logger | None = None,
                      progress: bool = False) -> tuple[SemanticIDModel, FitResult]:
    task = SemanticIDTask(settings, inputs)
    cfg = settings.train
    result = fit(task, out_dir, resume=resume, stop_after=stop_after, config_record=config_record(settings, task.model),
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm), log=log,
                 progress=progress, desc="semantic_id")
    return task.model, result


def train(settings: SemanticIDSettings, inputs: SemanticIDInputs, out_dir: Path | None = None, resume: bool = True,
          log: Logger | None = None) -> Trained:
    """The lifecycle's entry point: the encoder, then the codebook, on the train window."""
    model, result = train_semantic_id(settings, inputs, out_dir, resume=resume, log=log)
    params = {**{f"encoder_{k}": v for k, v in asdict(model.config.encoder).items()},
              **{f"codebook_{k}": v for k, v in asdict(model.config.codebook).items()},
              **asdict(settings.train), **{f"pairs_{k}": v for k, v in asdict(settings.pairs).items()},
              "train_pins": len(inputs.rows(TRAIN)), "train_pairs": len(inputs.pairs[TRAIN]),
              "cutoff_date": inputs.windows.train_end, "pinclip_version": inputs.pinclip_version,
              **{f"{phase}_{key}": record[key] for phase, record in result.validation.items()
                 for key in ("best_step", "stopped_at")}}
    return Trained(model, result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> SemanticIDModel:
    return load_trained_model(out_dir, lambda config: SemanticIDModel(settings_from_dict(SemanticIDConfig,
                                                                                        config["model"])))
