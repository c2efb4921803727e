"""Transformer building blocks shared by every system: attention with a key padding mask,
a pre-LN block with optional cross-attention, and masked pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` with a key padding mask."""

    def __init__(self, width: int, heads: int, dropout: float, explicit: bool = False):
        super().__init__()
        # explicit: softmax(q k^T) v written out, which torch.vmap batches natively (its SDPA
        # kernel falls back to a loop there); for short sequences it costs the same.
        self.explicit = explicit
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, n_query, width = x.shape
        head_dim = width // self.heads
        q = self.query(x).view(batch, n_query, self.heads, head_dim).transpose(1, 2)
        k, v = self.key_value(context).view(batch, -1, 2, self.heads, head_dim).unbind(2)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if self.explicit:
            scores = (q @ k.transpose(-2, -1)) / head_dim**0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            y = F.dropout(scores.softmax(-1), self.dropout, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, n_query, width))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float, cross_attention: bool = False,
                 explicit_attention: bool = False):
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout, explicit_attention)
        self.cross_attention = cross_attention
        if cross_attention:
            self.ln_query = nn.LayerNorm(width)
            self.ln_context = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads, dropout, explicit_attention)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width),
                                 nn.Dropout(dropout))

    def forward(self, x, x_mask=None, context=None, context_mask=None) -> torch.Tensor:
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, x_mask)
        if self.cross_attention:
            x = x + self.cross_attn(self.ln_query(x), self.ln_context(context), context_mask)
        return x + self.mlp(self.ln_mlp(x))


def attendable(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with all-padding rows opened up: softmax over no keys is NaN, and those
    rows' outputs are never read (pooling and fusion mask them again)."""
    return mask | ~mask.any(dim=1, keepdim=True)


def unpadded_length(mask: torch.Tensor) -> int:
    """Tokens to keep of right-padded rows ``mask`` [..., L]: up to the last real token of
    any row (at least one). Every reader of the tokens masks the padding, so cutting the
    padding that no row needs changes no output and saves the work spent on it."""
    real = mask.reshape(-1, mask.shape[-1]).any(0).nonzero()
    return int(real.max()) + 1 if len(real) else 1


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
