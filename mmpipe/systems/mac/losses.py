"""MAC's objective: masked-then-align. The masked clip and the masked caption of the same
video are a positive pair, every other pair of the batch a negative: symmetric InfoNCE
(``mmpipe.nn.losses.ClipLoss``, distributed negatives included) with a learned
temperature. Nothing is reconstructed: the masking only makes each step cheaper and
each view harder."""

from __future__ import annotations

import torch

from mmpipe.nn.losses import ClipLoss


def masked_then_align(video_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE between unit embeddings of masked clips and masked captions, row i with row i."""
    return ClipLoss()(video_emb, text_emb, logit_scale)
