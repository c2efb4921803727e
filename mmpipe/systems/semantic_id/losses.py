"""The two training objectives: InfoNCE over co-engagement pairs, and the RQ-VAE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmpipe.systems.semantic_id.model import Quantized


def co_engagement_info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of unit vectors [B, D]: row i of ``anchor`` must pick row i of
    ``positive`` (the pin the same user clicked) among the batch's other positives, and back."""
    logits = anchor @ positive.T / temperature
    target = torch.arange(len(anchor), device=anchor.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def rqvae_loss(x: torch.Tensor, reconstruction: torch.Tensor, quantized: Quantized) -> dict[str, torch.Tensor]:
    """Reconstruction (1 - cosine: the primary metric is a cosine, the inputs are unit vectors)
    plus the codebook loss and the β-weighted commitment loss of every level."""
    reconstruction_loss = (1 - F.cosine_similarity(reconstruction, x, dim=-1)).mean()
    loss = reconstruction_loss + quantized.codebook_loss + quantized.commitment_loss
    return {"loss": loss, "reconstruction_loss": reconstruction_loss.detach(),
            "codebook_loss": quantized.codebook_loss.detach(), "commitment_loss": quantized.commitment_loss.detach()}
