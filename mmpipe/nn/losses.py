"""Contrastive losses for PinCLIP, after open_clip's ``ClipLoss``.

Both losses are symmetric InfoNCE with in-batch negatives and take the logit scale as a
multiplier (``exp`` of the model's learned log-scale), which ``clamp_logit_scale_`` keeps
at most ln(100) after every optimizer step, as open_clip does: an unbounded scale makes
the softmax one-hot and training unstable.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated in rank order; one process gets ``features`` back.

    open_clip's ``gather_features`` (``local_loss=False``, ``gather_with_grad=False``):
    ``all_gather`` returns tensors without a gradient, so the local tensor is put back in
    place of its gathered copy, and every rank computes the full-batch loss with exact
    gradients for its own rows. Two additions:

    * ranks may hold different numbers of rows (a global batch that does not split evenly):
      the row counts are gathered first and every part padded to the largest;
    * the local rows' gradient is scaled by the world size. Each rank's gradient then holds
      ``world`` times its rows' share of the full-batch gradient, and the average DDP takes
      (:func:`mmpipe.train.distributed.average_gradients_`) is exactly the full-batch
      gradient, for the encoders and for weights the loss uses directly (a logit scale,
      board proxies) alike. open_clip leaves the encoders' gradient ``1/world`` of it, which
      Adam hides but gradient clipping does not.

    A distributed loss must see other ranks' rows only through this function.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = [torch.zeros(1, dtype=torch.long, device=features.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([features.shape[0]], device=features.device))
    counts = [int(count) for count in counts]
    padded = features.detach()
    if max(counts) > features.shape[0]:
        padded = torch.cat([padded, padded.new_zeros(max(counts) - features.shape[0], *features.shape[1:])])
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    gathered = [part[:count] for part, count in zip(gathered, counts)]
    gathered[rank] = _ScaleGradient.apply(features, float(world))
    return torch.cat(gathered)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE between image i and text i, every other text/image a negative.

    Under ``torch.distributed`` the negatives come from every rank; in one process the
    same code is the plain in-batch loss.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        image_features = gather_features(image_features)
        text_features = gather_features(text_features)
        logits_per_image = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, labels)
                + F.cross_entropy(logits_per_image.T, labels)) / 2


class NeighborAlignmentLoss(nn.Module):
    """Symmetric InfoNCE pulling the fused embeddings of neighbor pins a_i and b_i together.

    ``false_negative_mask[i, j]`` (bool [B, B]) marks pair j as a neighbor of pair i too
    (a shared board, or a shared pin): a_i-b_j and b_j-a_i are then dropped from the
    softmax denominators instead of being pushed apart. The diagonal is the positive and is
    always kept, whatever the mask says. Negatives are local to the batch because the
    mask is.
    """

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: torch.Tensor,
                false_negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = logit_scale * emb_a @ emb_b.T
        if false_negative_mask is not None:
            off_diagonal = ~torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
            excluded = false_negative_mask.to(logits.device).bool() & off_diagonal
            logits = logits.masked_fill(excluded, float("-inf"))
        labels = torch.arange(logits.shape[0], device=logits.device)
        # The mask is read per row for a->b and per column for b->a: masked_fill before
        # the transpose applies mask[i, j] to the (a_i, b_j) logit in both directions.
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class MultiPositiveNeighborLoss(nn.Module):
    """Neighbor alignment over every pin of a batch at once (SupCon's "out" form).

    ``positives[i, j]`` (bool [N, N]) says pins i and j are neighbors (they share a
    board, or form a neighbor pair). Each pin with at least one neighbor in the batch is
    an anchor: its loss is the mean over its neighbors p of -log softmax_j(s_ij)[p], the
    softmax over every other pin of the batch. Pair InfoNCE scores B pairs against B
    negatives; this scores all N(N-1) pin pairs of the same forward pass, which matters
    when each comparison carries as little signal as "shares one of five attributes".
    """

    def forward(self, emb: torch.Tensor, positives: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        n = emb.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=emb.device)
        positives = positives.to(emb.device).bool() & ~self_mask
        anchors = positives.any(dim=1)
        if not anchors.any():
            return emb.sum() * 0.0  # no neighbors in this batch: no signal, no NaN
        logits = (logit_scale * emb @ emb.T).masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(~positives, 0.0)  # also drops the -inf diagonal
        per_anchor = -log_prob.sum(1)[anchors] / positives.sum(1)[anchors]
        return per_anchor.mean()


class BoardProxyLoss(nn.Module):
    """Neighbor alignment through one learned proxy per board (Proxy-NCA, multi-label).

    Every pin is scored against every board's proxy, not against the few dozen other
    pins of its batch, and pulled towards the proxies of the boards it is saved to (a
    soft target spread evenly over them). Two pins on a board meet at its proxy, so
    board neighbors end up close: the same goal as pairwise neighbor InfoNCE, with a
    gradient from all boards at every step instead of the rare in-batch pairs. Boards
    are few and stable (new pins join existing boards), so the proxies are training-only
    state: they live here, not in the model, and go into the checkpoint beside it.
    """

    def __init__(self, n_boards: int, dim: int, temperature: float = 0.2, seed: int = 0):
        super().__init__()
        if n_boards < 1:
            raise ValueError("BoardProxyLoss needs at least one board")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        generator = torch.Generator().manual_seed(seed)  # leaves the global RNG alone
        self.proxies = nn.Parameter(torch.randn(n_boards, dim, generator=generator) * 0.1)

    def forward(self, emb: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
        """``emb`` [N, E] unit rows; ``membership`` [N, n_boards], 1 where pin i is on board b.
        Pins on no board carry no signal and are left out of the mean."""
        membership = membership.to(emb.device, emb.dtype)
        if membership.shape != (emb.shape[0], self.proxies.shape[0]):
            raise ValueError(f"membership must be {(emb.shape[0], self.proxies.shape[0])}, "
                             f"got {tuple(membership.shape)}")
        counts = membership.sum(1)
        on_board = counts > 0
        if not on_board.any():
            return emb.sum() * 0.0 + self.proxies.sum() * 0.0
        logits = emb[on_board] @ F.normalize(self.proxies, dim=-1).T / self.temperature
        target = membership[on_board] / counts[on_board, None]
        return -(target * logits.log_softmax(dim=-1)).sum(1).mean()


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module, max_logit_scale: float | None = None) -> None:
    """Clamp every ``*logit_scale`` parameter of ``model`` to [0, max] in place.

    ``max_logit_scale`` defaults to ``model.config.max_logit_scale`` when the model has
    one, else ln(100). Call it after each optimizer step.
    """
    if max_logit_scale is None:
        max_logit_scale = getattr(getattr(model, "config", None), "max_logit_scale", MAX_LOGIT_SCALE)
    for name, param in model.named_parameters():
        if name.split(".")[-1].endswith("logit_scale"):
            param.clamp_(0, max_logit_scale)
