"""The CTR loss: binary cross-entropy of click logits."""

import torch
import torch.nn.functional as F


def click_loss(logits: torch.Tensor, clicked: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, clicked.float())
