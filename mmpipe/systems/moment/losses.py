"""The moment model's multi-task objective, one term per head (a switched-off head adds none):

* **segmentation**: binary cross-entropy of every real frame's logit against "inside a true
  window" (the union of the query's windows);
* **distributions**: cross-entropy of the start (and end) softmax over the frames against
  each window's start (end) frame, with label smoothing toward the neighbouring frames
  (``boundary_smoothing`` of the mass moves to the frames either side): a boundary annotated
  a frame early or late costs little, and a query with several windows spreads its target
  over their boundaries;
* **regression**: on the frames inside a window, L1 of the predicted offsets (seconds back
  to the start, on to the end) plus the temporal GIoU loss of the span they imply,
  ``[t - back, t + on]``, against the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmpipe.systems.moment.data import Batch
from mmpipe.systems.moment.model import MomentOutput


def boundary_targets(frames: list, n_frames: torch.Tensor, width: int, smoothing: float) -> torch.Tensor:
    """[B, width] target distributions: per query, ``1 - smoothing`` on each boundary frame
    and ``smoothing`` shared by its neighbours inside the video (all of it on the frame when
    it has none), averaged over the query's windows."""
    targets = torch.zeros(len(frames), width)
    for i, (boundaries, n) in enumerate(zip(frames, n_frames.tolist())):
        for frame in boundaries.tolist():
            neighbours = [k for k in (frame - 1, frame + 1) if 0 <= k < n]
            targets[i, frame] += (1 - smoothing) if neighbours else 1.0
            for k in neighbours:
                targets[i, k] += smoothing / len(neighbours)
        targets[i] /= len(boundaries)
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(target * log_softmax(logits)); -inf logits (padding) carry no target."""
    log_probs = logits.log_softmax(-1).masked_fill(torch.isinf(logits), 0.0)
    return -(targets * log_probs).sum(-1).mean()


def temporal_giou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of 1-D spans [..., 2] (start, end), elementwise.

    >>> temporal_giou(torch.tensor([[0.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0, 3.0], [2.0, 3.0]])).tolist()
    [0.3333333432674408, -0.3333333432674408]
    """
    inter = (torch.minimum(pred[..., 1], true[..., 1]) - torch.maximum(pred[..., 0], true[..., 0])).clamp(min=0)
    union = (pred[..., 1] - pred[..., 0]) + (true[..., 1] - true[..., 0]) - inter
    hull = torch.maximum(pred[..., 1], true[..., 1]) - torch.minimum(pred[..., 0], true[..., 0])
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def moment_losses(output: MomentOutput, batch: Batch, boundary_smoothing: float = 0.2,
                  weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Each switched-on head's loss and their weighted sum ``loss`` (``weights`` by head:
    segmentation, distributions, l1, giou; 1 each by default)."""
    weights = {"segmentation": 1.0, "distributions": 1.0, "l1": 1.0, "giou": 1.0, **(weights or {})}
    labels = batch.labels
    if labels is None:
        raise ValueError("the losses need a batch made with labels")
    width = batch.frame_mask.shape[1]
    n_frames = batch.frame_mask.sum(1)
    losses: dict[str, torch.Tensor] = {}
    if output.segmentation is not None:
        inside = torch.zeros(len(labels), width)
        for i, label in enumerate(labels):
            inside[i, :len(label.inside)] = torch.from_numpy(label.inside)
        valid = batch.frame_mask
        logits = output.segmentation[valid]
        losses["loss_segmentation"] = F.binary_cross_entropy_with_logits(logits, inside[valid])
    if output.start is not None:
        starts = boundary_targets([label.starts for label in labels], n_frames, width, boundary_smoothing)
        ends = boundary_targets([label.ends for label in labels], n_frames, width, boundary_smoothing)
        losses["loss_distributions"] = (soft_cross_entropy(output.start, starts)
                                        + soft_cross_entropy(output.end, ends)) / 2
    if output.offsets is not None:
        rows, frames, true_offsets = [], [], []
        for i, label in enumerate(labels):
            inside = torch.from_numpy(label.inside).nonzero().squeeze(1)
            rows.append(torch.full_like(inside, i))
            frames.append(inside)
            true_offsets.append(torch.from_numpy(label.offsets)[inside])
        rows, frames, true_offsets = torch.cat(rows), torch.cat(frames), torch.cat(true_offsets)
        predicted = output.offsets[rows, frames]
        t = batch.times[rows, frames]
        pred_span = torch.stack([t - predicted[:, 0], t + predicted[:, 1]], -1)
        true_span = torch.stack([t - true_offsets[:, 0], t + true_offsets[:, 1]], -1)
        losses["loss_l1"] = F.l1_loss(predicted, true_offsets)
        losses["loss_giou"] = (1 - temporal_giou(pred_span, true_span)).mean()
    total = sum(weights[name.removeprefix("loss_")] * value for name, value in losses.items())
    return {"loss": total, **{name: value.detach() for name, value in losses.items()}}
