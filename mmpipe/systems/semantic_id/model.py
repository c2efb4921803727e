"""The behavior-aware item encoder and the RQ-VAE semantic-ID codebook (the models only).

* :class:`BehaviorEncoder`: a residual MLP on PinCLIP's fused pin embedding, centred by
  the training pins' mean: x + MLP(x), L2-normalised. Its last layer starts at zero, so
  before training it *is* the (centred) PinCLIP space and the contrastive fine-tuning only moves it as far as
  co-engagement asks.
* :class:`ResidualQuantizer`: L levels of K codes. Level l quantizes the residual the
  levels before it left (r_0 = z, r_{l+1} = r_l - e_l); the straight-through estimator
  passes the decoder's gradient to the encoder unchanged; the codebook loss pulls codes
  to their residuals and the commitment loss (weight β) the residuals to their codes.
  Each level is initialised by k-means on the first batch it sees, and a code no batch
  used for ``dead_after`` steps is reset to a residual of the current batch.
* :class:`RQVAE`: MLP encoder → residual quantizer → MLP decoder back to the input space.
* :class:`SemanticIDModel`: both together, what is trained, registered and served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 128  # PinCLIP's fused embedding width (set from the data)
    hidden: int = 256


@dataclass(frozen=True)
class CodebookConfig:
    dim: int = 128  # the behavior embedding's width (set from the data)
    hidden: int = 256
    # The space the codes live in. On the small world 64 reconstructs best (validation cosine
    # 0.9884 at 64 vs 0.9846 at 32, 1500 codebook steps vs 900).
    latent: int = 64
    levels: int = 3
    codes: int = 64  # K per level
    commitment: float = 0.25  # β: the encoder's pull towards its codes
    dead_after: int = 20  # steps without a use before a code is reset from the batch


@dataclass(frozen=True)
class SemanticIDConfig:
    encoder: EncoderConfig = EncoderConfig()
    codebook: CodebookConfig = CodebookConfig()


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class BehaviorEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.delta = mlp([config.dim, config.hidden, config.dim])
        nn.init.zeros_(self.delta[-1].weight)  # starts as the identity on PinCLIP's space
        nn.init.zeros_(self.delta[-1].bias)
        # PinCLIP's fused embeddings share one dominant direction (any two pins' cosine is
        # near 1), which leaves cosines, InfoNCE and the codes little to work with; the
        # training pins' mean is removed first (set by the training task, kept in the weights).
        self.register_buffer("center", torch.zeros(config.dim))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = F.normalize(F.normalize(fused, dim=-1) - self.center, dim=-1)
        return F.normalize(x + self.delta(x), dim=-1)


def kmeans(points: torch.Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """[k, D] centroids of ``points`` [N >= k, D] by Lloyd's algorithm from k-means++ seeds;
    a cluster left empty takes the point farthest from its centroid."""
    n = len(points)
    if n < k:
        raise ValueError(f"k-means of {k} codes needs at least {k} points, got {n}")
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [points[first]]
    nearest = ((points - points[first]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: the next seed drawn in proportion to the squared distance
        weights = nearest / nearest.sum() if nearest.sum() > 0 else torch.full_like(nearest, 1 / n)
        chosen = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(points[chosen])
        nearest = torch.minimum(nearest, ((points - points[chosen]) ** 2).sum(1))
    centroids = torch.stack(centroids)
    for _ in range(iterations):
        distances = torch.cdist(points, centroids)
        assignment = distances.argmin(1)
        for c in range(k):
            members = points[assignment == c]
            if len(members):
                centroids[c] = members.mean(0)
            else:
                farthest = int(distances.gather(1, assignment[:, None]).squeeze(1).argmax())
                centroids[c] = points[farthest]
    return centroids


@dataclass
class Quantized:
    quantized: torch.Tensor  # [B, D] sum of the chosen codes, straight-through to the input
    codes: torch.Tensor  # [B, L] long
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    residuals: list[torch.Tensor]  # the residual each level quantized (detached)


class ResidualQuantizer(nn.Module):
    def __init__(self, levels: int, codes: int, dim: int, commitment: float = 0.25, dead_after: int = 20):
        super().__init__()
        self.levels, self.n_codes, self.dim = levels, codes, dim
        self.commitment, self.dead_after = commitment, dead_after
        self.codebooks = nn.Parameter(torch.randn(levels, codes, dim) * 0.01)
        # Buffers, so a checkpoint resumes with the same initialisation state and dead-code clocks.
        self.register_buffer("initialised", torch.zeros(levels, dtype=torch.bool))
        self.register_buffer("steps_unused", torch.zeros(levels, codes, dtype=torch.long))

    def nearest(self, residual: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(code index [B], squared distance to every code [B, K]) at ``level``."""
        distances = torch.cdist(residual, self.codebooks[level]) ** 2
        return distances.argmin(1), distances

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> Quantized:
        """Quantize ``z`` [B, D]. In training mode an uninitialised level first runs k-means
        on this batch's residuals, and usage clocks tick for the dead-code reset."""
        residual = z
        total = torch.zeros_like(z)
        codes, residuals = [], []
        codebook_loss = commitment_loss = z.new_zeros(())
        for level in range(self.levels):
            if self.training and not bool(self.initialised[level]):
                with torch.no_grad():
                    self.codebooks.data[level] = kmeans(residual.detach(), self.n_codes, generator=generator)
                    self.initialised[level] = True
            index, _ = self.nearest(residual.detach(), level)
            code = self.codebooks[level][index]
            codebook_loss = codebook_loss + F.mse_loss(code, residual.detach())
            commitment_loss = commitment_loss + F.mse_loss(residual, code.detach())
            residuals.append(residual.detach())
            codes.append(index)
            total = total + code
            residual = residual - code.detach()
            if self.training:
                self._tick(level, index)
        # Straight-through: forward the codes, backward the identity to z.
        quantized = z + (total - z).detach()
        return Quantized(quantized, torch.stack(codes, 1), codebook_loss, self.commitment * commitment_loss,
                         residuals)

    @torch.no_grad()
    def _tick(self, level: int, index: torch.Tensor) -> None:
        used = torch.zeros(self.n_codes, dtype=torch.bool, device=index.device)
        used[index] = True
        self.steps_unused[level] = torch.where(used, 0, self.steps_unused[level] + 1)

    @torch.no_grad()
    def reset_dead_codes(self, residuals: list[torch.Tensor], generator: torch.Generator | None = None) -> int:
        """Move every code unused for ``dead_after`` steps onto a random residual of this
        batch at its level (``residuals``: :attr:`Quantized.residuals`); returns how many moved."""
        moved = 0
        for level, residual in enumerate(residuals):
            dead = torch.nonzero(self.steps_unused[level] >= self.dead_after).flatten()
            if not len(dead):
                continue
            picks = torch.randint(len(residual), (len(dead),), generator=generator)
            self.codebooks.data[level, dead] = residual[picks]
            self.steps_unused[level, dead] = 0
            moved += len(dead)
        return moved

    @torch.no_grad()
    def quantize_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, D] sum of the codes [B, L] name."""
        return sum(self.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))


class RQVAE(nn.Module):
    """Encoder: a linear map onto the ``latent`` principal axes of the first batch plus a
    residual MLP starting at zero; decoder: the map's transpose plus its own zero-started
    MLP. So training starts from residual k-means in the data's principal subspace (what
    plain RQ-KMeans does, a strong start on a few thousand items), and the MLPs and codes
    move from there on the reconstruction loss; a randomly initialised MLP auto-encoder
    first has to find that subspace and, on the small world, ended below RQ-KMeans."""

    def __init__(self, config: CodebookConfig):
        super().__init__()
        self.config = config
        self.project = nn.Parameter(torch.empty(config.latent, config.dim))
        nn.init.orthogonal_(self.project)
        self.register_buffer("project_initialised", torch.zeros((), dtype=torch.bool))
        self.encoder_delta = mlp([config.dim, config.hidden, config.latent])
        self.decoder_delta = mlp([config.latent, config.hidden, config.dim])
        for delta in (self.encoder_delta, self.decoder_delta):
            nn.init.zeros_(delta[-1].weight)
            nn.init.zeros_(delta[-1].bias)
        self.quantizer = ResidualQuantizer(config.levels, config.codes, config.latent, config.commitment,
                                           config.dead_after)

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.project) + self.encoder_delta(x)

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, self.project.t()) + self.decoder_delta(z)

    @torch.no_grad()
    def _init_projection(self, x: torch.Tensor) -> None:
        """The first batch's top ``latent`` right singular vectors (uncentred: the inputs
        are already centred unit vectors), as many as the batch has."""
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        rank = min(len(vh), self.config.latent)
        self.project.data[:rank] = vh[:rank]
        self.project_initialised.fill_(True)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Quantized]:
        if self.training and not bool(self.project_initialised):
            self._init_projection(x)
        quantized = self.quantizer(self.encoder(x), generator)
        return self.decoder(quantized.quantized), quantized

    @torch.no_grad()
    def codes_and_distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, L], squared distance of the last level's residual to every last-level
        code [B, K]): what collision resolution reassigns by."""
        residual = self.encoder(x)
        codes = []
        for level in range(self.config.levels):
            index, distances = self.quantizer.nearest(residual, level)
            codes.append(index)
            residual = residual - self.quantizer.codebooks[level][index]
        return torch.stack(codes, 1), distances

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.quantize_codes(codes))


class SemanticIDModel(nn.Module):
    """The behavior encoder and the codebook over its output."""

    def __init__(self, config: SemanticIDConfig):
        super().__init__()
        self.config = config
        self.encoder = BehaviorEncoder(config.encoder)
        self.rqvae = RQVAE(config.codebook)


def resolve_collisions(codes: np.ndarray, last_distances: np.ndarray, taken: Iterable[tuple[int, ...]] = ()
                       ) -> tuple[np.ndarray, int]:
    """Unique semantic IDs by balanced re-assignment on the last level.

    ``codes`` [N, L] are the nearest codes, ``last_distances`` [N, K] each item's squared
    distance from its last-level residual to every last-level code, ``taken`` the IDs
    already held by items coded earlier (earlier days, same codebook). Items claim IDs
    best fit first (smallest distance to their own last code); an item whose ID is taken
    moves to the nearest last-level code still free under its prefix, so every level
    stays a nearest-or-next-nearest code and the ID keeps its L levels (the CTR model's
    per-level tables need no extra, meaningless level). Only when all K codes under a
    prefix are taken does an item keep its nearest code. Returns (codes, items left
    colliding).
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    used = set(map(tuple, taken))
    own = last_distances[np.arange(len(codes)), codes[:, -1]] if len(codes) else np.zeros(0)
    unresolved = 0
    for item in np.argsort(own, kind="stable"):
        wanted = tuple(codes[item].tolist())
        if wanted in used:
            prefix = wanted[:-1]
            free = next((int(c) for c in np.argsort(last_distances[item], kind="stable")
                         if prefix + (int(c),) not in used), None)
            if free is None:
                unresolved += 1
            else:
                codes[item, -1] = free
                wanted = prefix + (free,)
        used.add(wanted)
    return codes, unresolved
