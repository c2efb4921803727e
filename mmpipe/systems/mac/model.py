"""MAC: a masked video encoder and a masked text encoder aligned contrastively.

* Video: a plain ViT over T frames. Each frame is cut into ``patch_size`` patches with a
  linear patch embedding (no conv stem: a stem runs on every pixel before any token could
  be dropped, and the point of masking is to drop work from the first layer on); spatial
  and temporal position embeddings are added, then, per frame, a random ``mask_ratio`` of
  the patches is dropped MAE-style (:func:`random_masking`) and only the visible tokens
  enter the transformer. Attention is joint over space and time: with 75% of the patches
  gone a clip of 8 frames is 72 tokens, short enough that full attention costs less than
  divided attention's two passes, and any patch can attend to any frame, which is what
  motion ("moves to the left") needs. A single image is a clip of one frame ("omnivorous").
* Text: the pretrained MiniLM's cached token states (``query_text_features``), a random
  ``text_mask_ratio`` of the real tokens dropped the same way, then a small trainable
  transformer. Running MiniLM live on masked input tokens would cost a forward pass of a
  22M-parameter tower per caption per step on two CPU cores, more than the whole video
  side; masking its cached states costs nothing and keeps the masked-then-align recipe.
* Both are layer-normed, mean-pooled over the tokens they kept, projected and
  L2-normalised; a learned temperature scales their similarities (``logit_scale``,
  clamped as open_clip does).
* The shapes are PinCLIP's (a per-patch copy of its conv stem, its ViT's width and depth,
  its text adapter's), so training can start from the image encoder's champion
  (``train.warm_start_state``): from scratch, a few hundred CPU steps on a few hundred
  videos stay near chance.

Masking is a training device: at inference both ratios are 0 and every token is seen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.nn.layers import Block, attendable, masked_mean


@dataclass(frozen=True)
class MACConfig:
    image_size: int = 96
    patch_size: int = 16  # 6x6 patches per 96 px frame
    # Patch stem: each kept patch through two stride-2 3x3 convolutions (half, then all
    # of these channels, each with a GroupNorm, as PinCLIP's image stem) before its linear
    # embedding (0: the plain linear patch embedding). It runs per patch, after masking, so
    # a dropped patch still costs nothing; it gives the encoder the local colour/edge
    # detectors a transformer from scratch takes many steps to learn, and the shape of the
    # image encoder's stem that training starts from (train.warm_start_state).
    patch_stem_channels: int = 64
    max_frames: int = 8  # temporal position embeddings: clips of up to this many frames
    # PinCLIP's ViT size: on two CPU cores the default run's budget buys a few hundred
    # masked steps of this, and the world's captions name a handful of attributes.
    width: int = 128
    depth: int = 4
    # The first ``local_depth`` blocks attend within each frame, the rest across the whole
    # clip (ViViT's factorised encoder: space first, then space-time). The image encoder
    # training starts from saw single frames, so its blocks start as frame-local blocks
    # (a clip starts as its frames' mean image embedding) and the joint blocks after them,
    # starting as identity, learn what happens over time. Measured on the small world
    # (depth 5, local_depth 4, warm start, lr 2e-4, best of 300 steps on validation): step 0
    # test R@5 0.091 against joint attention's 0.068, trained 0.114 against joint's
    # 0.098-0.127; no better, so joint stays the default (0: no frame-local block).
    local_depth: int = 0
    heads: int = 4
    mlp: int = 512
    text_hidden_size: int = 384  # all-MiniLM-L6-v2's token states
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    text_mlp: int = 512
    text_positions: int = 64  # the longest caption (in tokens) the text encoder has positions for
    embed_dim: int = 128
    dropout: float = 0.0
    init_temperature: float = 0.07
    max_logit_scale: float = math.log(100)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.local_depth <= self.depth:
            raise ValueError(f"local_depth {self.local_depth} must be between 0 and depth {self.depth}")
        for width, heads in ((self.width, self.heads), (self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"width {width} is not divisible by {heads} heads")

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MACConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MACConfig fields {unknown}")
        return cls(**values)


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - mask_ratio`` of the tokens of each row, as MAE does: sort uniform
    noise, keep the tokens with the smallest. ``x`` is [N, L, D]; returns the kept tokens
    [N, L_keep, D] and their positions ``ids_keep`` [N, L_keep] (in the order kept).
    ``noise`` [N, L]: the uniform draw to use instead of one from ``generator`` (the rows of
    a larger batch's draw, when ``x`` is one process's share of it)."""
    n, length, width = x.shape
    len_keep = max(1, int(length * (1 - mask_ratio)))
    if noise is None:
        noise = torch.rand(n, length, device=x.device, generator=generator)
    ids_keep = torch.argsort(noise, dim=1)[:, :len_keep]
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, width)), ids_keep


def patchify(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[..., 3, H, W] pixels -> [..., (H/p)*(W/p), 3*p*p] patches, row by row."""
    *lead, channels, height, width = frames.shape
    p, k = patch_size, len(lead)
    x = frames.reshape(*lead, channels, height // p, p, width // p, p)
    x = x.permute(*range(k), k + 1, k + 3, k, k + 2, k + 4)  # [..., H/p, W/p, C, p, p]
    return x.reshape(*lead, (height // p) * (width // p), channels * p * p)


class PatchEmbedding(nn.Module):
    """Flattened patches [..., 3*p*p] -> tokens [..., width], one patch at a time."""

    def __init__(self, config: MACConfig):
        super().__init__()
        self.patch_size = p = config.patch_size
        c = config.patch_stem_channels
        if c == 0:
            self.stem = None
            self.linear = nn.Linear(3 * p * p, config.width)
            return
        if p % 4:
            raise ValueError(f"the patch stem halves a patch twice: patch_size {p} must be a multiple of 4")
        half = max(c // 2, 16)
        self.stem = nn.Sequential(nn.Conv2d(3, half, 3, stride=2, padding=1), nn.GroupNorm(1, half), nn.GELU(),
                                  nn.Conv2d(half, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.GELU())
        self.linear = nn.Linear(c * (p // 4) ** 2, config.width)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.stem is None:
            return self.linear(patches)
        *lead, _ = patches.shape
        # channels_last: oneDNN's CPU convolutions take half the time on it (embedding 300
        # videos: 3.4 s of convolution against 6.6 s, which makes the whole ~10% faster);
        # flatten(1) below still reads (C, H, W) order, so the tokens are the same.
        patches = patches.reshape(-1, 3, self.patch_size, self.patch_size)
        x = self.stem(patches.contiguous(memory_format=torch.channels_last))
        return self.linear(x.flatten(1)).reshape(*lead, -1)


class VideoEncoder(nn.Module):
    def __init__(self, config: MACConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbedding(config)
        self.spatial_pos = nn.Parameter(torch.zeros(config.patches_per_frame, config.width))
        self.temporal_pos = nn.Parameter(torch.zeros(config.max_frames, config.width))
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp, config.dropout)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.embed_dim, bias=False)

    def forward(self, frames: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Unit embeddings [B, E] of clips ``frames`` [B, T, 3, H, W] (T = 1: images); the
        masking draws from ``generator``, or sorts ``noise`` [B*T, patches per frame]."""
        batch, n_frames = frames.shape[:2]
        if n_frames > self.config.max_frames:
            raise ValueError(f"clips of {n_frames} frames, the model has position embeddings for "
                             f"{self.config.max_frames}")
        patches = patchify(frames, self.config.patch_size).flatten(0, 1)  # [B*T, N, 3*p*p]
        pos = (self.spatial_pos + self.temporal_pos[:n_frames, None]).repeat(batch, 1, 1)  # [B*T, N, D]
        # Mask each frame on its own (the same share of every frame is seen). The position
        # embeddings are fixed to their patches before masking, as in MAE; the patch
        # embedding works on each patch alone, so embedding only the kept patches is the
        # same as embedding all and dropping, for a quarter of the work.
        if mask_ratio > 0:
            patches, ids_keep = random_masking(patches, mask_ratio, generator, noise)
            pos = torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        x = self.patch_embed(patches) + pos  # [B*T, N_keep, D]
        local = self.config.local_depth
        for block in self.blocks[:local]:  # within each frame
            x = block(x)
        x = x.reshape(batch, -1, self.config.width)  # [B, T * N_keep, D]
        for block in self.blocks[local:]:  # across the clip
            x = block(x)
        return F.normalize(self.proj(self.norm(x).mean(1)), dim=-1)


class TextEncoder(nn.Module):
    """A small transformer over the frozen tower's cached token states."""

    def __init__(self, config: MACConfig):
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.text_hidden_size, config.text_width)
        self.pos = nn.Parameter(torch.zeros(config.text_positions, config.text_width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(config.text_width, config.text_heads, config.text_mlp, config.dropout)
                                    for _ in range(config.text_depth))
        self.norm = nn.LayerNorm(config.text_width)
        self.proj = nn.Linear(config.text_width, config.embed_dim, bias=False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Unit embeddings [B, E] of cached token states ``hidden`` [B, L, H] with ``mask``
        [B, L] (True: a real token). Masking drops a share of each caption's real tokens
        (drawn from ``generator``, or by ``noise`` [B, L])."""
        length = hidden.shape[1]
        if length > self.pos.shape[0]:
            raise ValueError(f"captions of {length} tokens, the text encoder takes at most {self.pos.shape[0]}")
        x = self.input(hidden.to(self.input.weight.dtype)) + self.pos[:length]
        keep = mask.bool()
        if mask_ratio > 0:
            keep = keep & _keep_real_tokens(keep, mask_ratio, generator, noise)
        x = x * keep.unsqueeze(-1)
        attend = attendable(keep)
        for block in self.blocks:
            x = block(x, attend)
        return F.normalize(self.proj(masked_mean(self.norm(x), keep)), dim=-1)


def _keep_real_tokens(mask: torch.Tensor, mask_ratio: float, generator: torch.Generator | None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """True for a random ``1 - mask_ratio`` of each row's real tokens (at least one): the
    text counterpart of :func:`random_masking`, over rows of different lengths, so the
    drop is a mask rather than a gather."""
    if noise is None:
        noise = torch.rand(mask.shape, device=mask.device, generator=generator)
    noise = noise.masked_fill(~mask, 2.0)  # padding sorts last, never kept
    rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    n_keep = (mask.sum(1, keepdim=True) * (1 - mask_ratio)).floor().clamp(min=1)
    return rank < n_keep


class MAC(nn.Module):
    def __init__(self, config: MACConfig):
        super().__init__()
        self.config = config
        self.video = VideoEncoder(config)
        self.text = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def encode_video(self, frames: torch.Tensor, mask_ratio: float = 0.0,
                     generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.video(frames, mask_ratio, generator, noise)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] as one-frame clips."""
        return self.video(images.unsqueeze(1))

    def encode_text(self, hidden: torch.Tensor, mask: torch.Tensor, mask_ratio: float = 0.0,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.text(hidden, mask, mask_ratio, generator, noise)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on matrices only, never on biases, norms, position
        embeddings or the logit scale."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (decay if param.ndim >= 2 and not name.endswith("pos") else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
