"""The moment retrieval network: a query and a video's frame features in, per-frame scores out.

* **Inputs** are what the shared video features hold: each stored frame's embedding by the
  image encoder's champion (``frame_features``, 2 frames a second by default) and the text
  tower's token states of the query (``query_text_features``). No pixel is read.
* **Frame tokens** read each frame's unit feature with its context (``frame_context``): the
  feature minus the video's mean frame (what is particular to this moment) and its
  differences to the frames either side (what just appeared or left).
* **Early fusion** (the default): before any attention, every frame token is conditioned on
  the query, its tokens pooled by learned weights (added, and multiplied elementwise), so the
  first self-attention over the video already knows what it looks for. Then ``depth`` layers, each a pre-LN
  block over the query tokens (self-attention, cross-attention to the frames) and one over
  the frames (self-attention, cross-attention to the query): two-way cross-attention.
* **Late fusion** (the ablation, the paper's trade-off): the frames and the query are each
  encoded by self-attention alone, ``depth`` layers, so a video's encoding does not depend
  on the query (it could be computed once per video); they meet only at the top, in one
  block whose frames cross-attend to the query tokens, after the same multiplicative
  conditioning.
* **Heads** on the fused frame tokens, each switchable for the ablations:
  ``segmentation`` (a logit per frame: inside a true window or not), ``distributions``
  (start and end logits over the frames, a softmax each) and ``regression`` (per frame,
  the distances in seconds from the frame back to its window's start and on to its end,
  non-negative).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.nn.layers import Block, attendable

EARLY, LATE = "early", "late"


@dataclass(frozen=True)
class MomentConfig:
    # The frame embeddings' width: 0 until training reads it from the frame features (the
    # image encoder decides it), then recorded with the weights.
    frame_dim: int = 0
    text_hidden_size: int = 384  # all-MiniLM-L6-v2's token states
    # Small world, 500 steps: width 128 / mlp 256 reached validation R1@0.7 0.335 against
    # 0.273 for 64 / 128 (test 0.301 against 0.288), for ~25 s more training in `make run`.
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp: int = 256
    dropout: float = 0.0  # crops (train.crop_probability) regularise better here
    max_frames: int = 128  # temporal positions: 64 s at 2 frames a second
    text_positions: int = 64
    fusion: str = EARLY  # or LATE
    # Each frame token also sees its feature minus the video's mean frame and its differences
    # to the ``context_frames`` frames on either side: what is particular to the frame, and
    # what just changed (0: the frame's feature alone).
    context_frames: int = 2
    segmentation: bool = True
    distributions: bool = True
    regression: bool = True

    def __post_init__(self) -> None:
        if self.fusion not in (EARLY, LATE):
            raise ValueError(f"fusion must be {EARLY!r} or {LATE!r}, got {self.fusion!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if not (self.distributions or self.segmentation):
            raise ValueError("a span needs the distributions or the segmentation head to be found")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MomentConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown MomentConfig fields {unknown}")
        return cls(**values)

    def with_frame_dim(self, frame_dim: int) -> MomentConfig:
        if self.frame_dim not in (0, frame_dim):
            raise ValueError(f"the model reads {self.frame_dim}-wide frame features, these are {frame_dim}-wide")
        return dataclasses.replace(self, frame_dim=frame_dim)


@dataclass
class MomentOutput:
    """Per-frame outputs [B, T] (padding frames hold -inf logits / zero offsets); a head
    that is switched off gives None."""

    segmentation: torch.Tensor | None  # logits
    start: torch.Tensor | None  # logits over the frames (softmax over the valid ones)
    end: torch.Tensor | None
    offsets: torch.Tensor | None  # [B, T, 2] seconds back to the start, on to the end


def frame_context(frames: torch.Tensor, frame_mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """[B, T, (2 + 2 * steps) D]: each frame's unit feature, it minus the video's mean unit
    feature, and its differences to the frames 1..``steps`` before and after it (0 where that
    frame is outside the video or padding)."""
    mask = frame_mask[..., None]
    unit = F.normalize(frames, dim=-1) * mask
    mean = unit.sum(1, keepdim=True) / frame_mask.sum(1).clamp(min=1)[:, None, None]
    parts = [unit, (unit - mean) * mask]
    for step in range(1, steps + 1):
        valid = (mask[:, step:] & mask[:, :-step]).to(unit.dtype)
        change = (unit[:, step:] - unit[:, :-step]) * valid
        pad = torch.zeros_like(unit[:, :step])
        parts += [torch.cat([pad, change], 1), torch.cat([change, pad], 1)]
    return torch.cat(parts, -1)


class MomentModel(nn.Module):
    def __init__(self, config: MomentConfig):
        super().__init__()
        if config.frame_dim < 1:
            raise ValueError("MomentConfig.frame_dim is unset: build the model with config.with_frame_dim(D)")
        self.config = c = config
        frame_inputs = (2 + 2 * c.context_frames) * c.frame_dim if c.context_frames else c.frame_dim
        self.frame_in = nn.Sequential(nn.LayerNorm(frame_inputs), nn.Linear(frame_inputs, c.width))
        self.text_in = nn.Sequential(nn.LayerNorm(c.text_hidden_size), nn.Linear(c.text_hidden_size, c.width))
        self.frame_position = nn.Parameter(torch.randn(c.max_frames, c.width) * 0.02)
        self.text_position = nn.Parameter(torch.randn(c.text_positions, c.width) * 0.02)
        self.query_pool = nn.Linear(c.width, 1)  # which query tokens the conditioning reads
        self.condition_add = nn.Linear(c.width, c.width)
        self.condition_gate = nn.Linear(c.width, c.width)
        early = c.fusion == EARLY
        self.text_blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp, c.dropout, cross_attention=early)
                                         for _ in range(c.depth))
        self.video_blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp, c.dropout, cross_attention=early)
                                          for _ in range(c.depth))
        self.top = None if early else Block(c.width, c.heads, c.mlp, c.dropout, cross_attention=True)
        self.norm = nn.LayerNorm(c.width)
        self.segmentation_head = nn.Linear(c.width, 1) if c.segmentation else None
        self.boundary_head = nn.Linear(c.width, 2) if c.distributions else None
        self.regression_head = (nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, 2))
                                if c.regression else None)

    def _condition(self, video: torch.Tensor, query: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        # the query's tokens pooled by learned weights (the attribute words matter, the
        # template's do not), added to and gating every frame token
        weights = self.query_pool(query).squeeze(-1).masked_fill(~attendable(text_mask), float("-inf")).softmax(-1)
        pooled = (weights[..., None] * query).sum(1)
        return video + self.condition_add(pooled)[:, None] + video * self.condition_gate(pooled)[:, None]

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> MomentOutput:
        """``frames`` [B, T, D] with ``frame_mask`` [B, T] (True: a real frame), ``text``
        [B, L, H] token states with ``text_mask`` [B, L]."""
        c = self.config
        n_frames, n_tokens = frames.shape[1], text.shape[1]
        if n_frames > c.max_frames or n_tokens > c.text_positions:
            raise ValueError(f"{n_frames} frames / {n_tokens} tokens, the model has positions for "
                             f"{c.max_frames} / {c.text_positions}: raise max_frames / text_positions")
        frames = frames.float()
        if c.context_frames:
            frames = frame_context(frames, frame_mask, c.context_frames)
        video = self.frame_in(frames) + self.frame_position[:n_frames]
        query = self.text_in(text.float()) + self.text_position[:n_tokens]
        video_keys, text_keys = attendable(frame_mask), attendable(text_mask)
        if self.top is None:
            video = self._condition(video, query, text_mask)
            for text_block, video_block in zip(self.text_blocks, self.video_blocks):
                query = text_block(query, text_keys, video, video_keys)
                video = video_block(video, video_keys, query, text_keys)
        else:
            for text_block, video_block in zip(self.text_blocks, self.video_blocks):
                query = text_block(query, text_keys)
                video = video_block(video, video_keys)
            video = self.top(self._condition(video, query, text_mask), video_keys, query, text_keys)
        video = self.norm(video)
        invalid = ~frame_mask

        def per_frame(logits: torch.Tensor) -> torch.Tensor:
            return logits.masked_fill(invalid, float("-inf"))

        segmentation = start = end = offsets = None
        if self.segmentation_head is not None:
            segmentation = per_frame(self.segmentation_head(video).squeeze(-1))
        if self.boundary_head is not None:
            start, end = (per_frame(logits) for logits in self.boundary_head(video).unbind(-1))
        if self.regression_head is not None:
            offsets = F.softplus(self.regression_head(video)).masked_fill(invalid[..., None], 0.0)
        return MomentOutput(segmentation, start, end, offsets)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices, none on biases, norms and position tables."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            (decay if param.ndim >= 2 and "position" not in name else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------
# reading the outputs as spans


@dataclass(frozen=True)
class DecodeConfig:
    """How per-frame outputs become ranked spans (recorded with the model: serving decodes alike)."""

    max_span_s: float = 10.0  # the longest span considered
    top_k: int = 10  # spans kept per query (moment_detr's mAP reads 10)
    nms_iou: float = 0.5  # a span overlapping a better one this much is dropped
    # With both heads, a span's score adds this times the log-likelihood of its frames'
    # inside/outside mask under the segmentation head (up to a constant: the summed logits
    # of its frames); 0 reads the start x end product alone.
    segmentation_weight: float = 0.25


def span_candidates(times: np.ndarray, frame_step: float, max_span_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (start frame, end frame) with start <= end whose span fits ``max_span_s``."""
    starts, ends = np.triu_indices(len(times))
    keep = times[ends] - times[starts] + frame_step <= max_span_s + 1e-9
    keep |= starts == ends  # a one-frame span is always a candidate
    return starts[keep], ends[keep]


def decode_query(times: np.ndarray, duration: float, frame_step: float, cfg: DecodeConfig,
                 segmentation: np.ndarray | None, start: np.ndarray | None, end: np.ndarray | None,
                 offsets: np.ndarray | None) -> list[list[float]]:
    """One query's top spans ``[[start_s, end_s, score], ...]``, best first, from its valid
    frames' outputs (times [T]; logits [T]; offsets [T, 2]).

    A candidate (i, j) scores ``log p_start(i) + log p_end(j)`` with the distributions head
    (plus ``segmentation_weight`` times its frames' summed segmentation logits), else the
    summed segmentation logits alone (the most likely inside/outside mask under independent
    frames). The reported score, monotone in the ranking one, is the softmax of the scores
    over the candidates (p_start(i) p_end(j) renormalised over the allowed pairs), else the
    sigmoid of the summed logits. Its bounds are the regression head's, read at its boundary
    frames (``t_i - back_i``, ``t_j + on_j``), else half a frame step beyond them; clipped to
    the video. Greedy temporal NMS keeps ``top_k`` spans."""
    times = np.asarray(times, dtype=np.float64)
    i, j = span_candidates(times, frame_step, cfg.max_span_s)
    if segmentation is not None:
        cumulative = np.concatenate([[0.0], np.cumsum(segmentation, dtype=np.float64)])
        inside = cumulative[j + 1] - cumulative[i]
    if start is not None:
        log_start, log_end = _log_softmax(start), _log_softmax(end)
        score = log_start[i] + log_end[j]
        if segmentation is not None and cfg.segmentation_weight:
            score = score + cfg.segmentation_weight * inside
        reported = np.exp(score - score.max()) / np.exp(score - score.max()).sum()
    else:
        score = inside
        reported = 1 / (1 + np.exp(-score))
    if offsets is not None:
        begin, finish = times[i] - offsets[i, 0], times[j] + offsets[j, 1]
    else:
        begin, finish = times[i] - frame_step / 2, times[j] + frame_step / 2
    begin, finish = np.clip(begin, 0.0, duration), np.clip(finish, 0.0, duration)
    order = np.argsort(-score, kind="stable")
    kept: list[int] = []
    for candidate in order:
        if finish[candidate] <= begin[candidate]:
            continue
        if kept:
            k = np.asarray(kept)
            inter = np.clip(np.minimum(finish[k], finish[candidate]) - np.maximum(begin[k], begin[candidate]), 0, None)
            union = (finish[k] - begin[k]) + (finish[candidate] - begin[candidate]) - inter
            if (inter / union >= cfg.nms_iou).any():
                continue
        kept.append(int(candidate))
        if len(kept) == cfg.top_k:
            break
    return [[float(begin[c]), float(finish[c]), float(reported[c])] for c in kept]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def decode_batch(output: MomentOutput, frame_mask: torch.Tensor, times: torch.Tensor, durations: np.ndarray,
                 frame_step: float, cfg: DecodeConfig) -> list[list[list[float]]]:
    """:func:`decode_query` for every row of a batch's outputs."""
    def column(tensor, row, n):
        return None if tensor is None else tensor[row, :n].detach().numpy()

    spans = []
    for row, n in enumerate(frame_mask.sum(1).tolist()):
        spans.append(decode_query(times[row, :n].numpy(), float(durations[row]), frame_step, cfg,
                                  column(output.segmentation, row, n), column(output.start, row, n),
                                  column(output.end, row, n), column(output.offsets, row, n)))
    return spans
