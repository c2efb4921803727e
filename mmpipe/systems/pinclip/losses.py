"""PinCLIP's objective: image<->text InfoNCE (``mmpipe.nn.losses.ClipLoss``) plus neighbor
alignment over the pin-board graph, in one of three forms:

* ``"proxies"``: each pin against one learned proxy per board (``BoardProxyLoss``), pulled
  to the proxies of its boards; a gradient from every board at every step;
* ``"boards"``: every two pins of the step sharing a board are positives
  (``MultiPositiveNeighborLoss``, SupCon over all N pins);
* ``"pairs"``: InfoNCE over the sampled neighbor pairs only, conflicting pairs masked out of
  the denominators (``NeighborAlignmentLoss``).
"""

from __future__ import annotations

import torch

from mmpipe.nn.losses import BoardProxyLoss, MultiPositiveNeighborLoss, NeighborAlignmentLoss

NEIGHBOR_LOSSES = ("proxies", "boards", "pairs")


def neighbor_loss(fused: torch.Tensor, logit_scale: torch.Tensor, batches, batch, kind: str,
                  proxies: BoardProxyLoss | None) -> torch.Tensor:
    """The neighbor-alignment term of ``kind`` over the step's fused embeddings: ``batches``
    (the train module's ``_Batches``) knows the board graph, ``batch`` the step's pins and pairs."""
    if kind == "proxies":
        return proxies(fused, batches.pairs.board_membership(batch.rows))
    if kind == "boards":
        return MultiPositiveNeighborLoss()(fused, batches.positives(batch), logit_scale)
    return NeighborAlignmentLoss()(fused[batch.pair_a], fused[batch.pair_b], logit_scale,
                                   batch.pairs.false_negative_mask)
