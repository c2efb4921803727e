"""CHAN: a convolutional hierarchical attention network scoring each shot's relevance to a query
(after Xiao et al., "Convolutional Hierarchical Attention Network for Query-Focused Video
Summarization", AAAI 2020), over concept evidence.

Input: a video's shot vectors [N, D] (the shared ``shot_features``, optionally with the
extremes of the shot's frame features: ``data.py``) and the query's cached text-tower token
states (``"red, striped"``). ``concepts`` names the vocabulary the training shots are
annotated with (colours, shapes, patterns); the config holds only its size (``n_concepts``).

1. **Concept evidence.** A linear 1-D convolution reads, from each shot's vector and its
   neighbours' (``evidence_kernel``), a logit per concept that the shot shows it. It is
   fitted first, on its own (``train.py``), to the annotations of every training shot (far
   richer supervision than two queries' relevance per video), then kept: being linear, it
   generalises from the few thousand shots a world has, where a deep encoder of the raw
   vectors memorises them (on the small world a deep encoder's concept AUC peaked at 0.73,
   the linear read-out reaches 0.75).
2. **Segments.** The evidence is projected to ``width`` and cut into segments of
   ``segment_shots`` consecutive shots (the last one padded).
3. **Local encoding, per segment.** ``conv_layers`` residual 1-D convolutions along the
   shots, max-pooling by ``pool`` (a segment of 4 shots becomes 2 tokens), then **local
   self-attention** among the pooled tokens of the segment (a pre-LN transformer block).
4. **Query-aware global attention** across the whole video: every pooled token attends to
   the tokens of every segment with additive attention whose energies depend on the query,
   ``e_ij = v . tanh(W_a h_i + W_b h_j + W_q q)``, so which distant shots inform a shot
   depends on what is asked for.
5. **Upsampling** back to shot resolution: each pooled token is repeated over the ``pool``
   shots it came from and added to the shots' convolutional features (a skip connection);
   a head turns the result into a correction of each shot's concept logits (an object seen
   in the shots around a shot is likely in it too).
6. **Query relevance.** A head reads from the query which concepts it names (``p_q``); a
   shot's relevance logit is the mean log-probability that it shows them,
   ``sum_v p_q(v) log p_s(v) / sum_v p_q(v)``, scaled and shifted by two learned numbers.
   Training fits it to per-shot relevance with BCE, beside the concept BCEs (``losses.py``).

The two attentions can be switched off (``local_attention``, ``global_attention``): the
ablations job trains each without one. On the small world neither moves test F1 by a point
(90% intervals within +-0.8): the concept evidence carries the model there; a world whose
relevance depends more on what happens around a shot would need them more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.nn.layers import Block, attendable, masked_mean


@dataclass(frozen=True)
class CHANConfig:
    shot_dim: int = 128  # width of the shot vectors (set from the data when training starts)
    # Shot vectors carry the max and min of the shot's frame features beside its shot feature
    # (mmpipe/systems/chan/data.py): the pipeline reads frame_features for them.
    frame_extremes: bool = True
    text_hidden_size: int = 384  # all-MiniLM-L6-v2's token states
    width: int = 128
    segment_shots: int = 4  # consecutive shots per segment
    pool: int = 2  # max-pooling stride inside a segment (must divide segment_shots)
    conv_layers: int = 2
    conv_kernel: int = 3
    evidence_kernel: int = 3  # shots the concept evidence of a shot reads: itself and its neighbours
    heads: int = 4
    mlp: int = 256
    dropout: float = 0.1
    local_attention: bool = True
    global_attention: bool = True
    # Size of the concept vocabulary, set from the training shots' annotations when training
    # starts (like shot_dim).
    n_concepts: int = 0

    def __post_init__(self) -> None:
        if self.segment_shots % self.pool:
            raise ValueError(f"pool {self.pool} must divide segment_shots {self.segment_shots}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        for name in ("conv_kernel", "evidence_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (same-length convolutions), got {getattr(self, name)}")


class QueryAwareAttention(nn.Module):
    """Additive attention of every token over every token of its video, with energies
    conditioned on the query: ``e_ij = v . tanh(W_a h_i + W_b h_j + W_q q)``."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.from_token = nn.Linear(width, width, bias=False)
        self.to_token = nn.Linear(width, width, bias=False)
        self.from_query = nn.Linear(width, width)
        self.energy = nn.Linear(width, 1, bias=False)
        self.value = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        h = self.norm(tokens)  # [B, T, W]
        hidden = (self.from_token(h)[:, :, None] + self.to_token(h)[:, None, :]
                  + self.from_query(query)[:, None, None])  # [B, T, T, W]
        energies = self.energy(torch.tanh(hidden)).squeeze(-1)  # [B, T(i), T(j)]
        energies = energies.masked_fill(~attendable(mask)[:, None, :], float("-inf"))
        weights = self.dropout(energies.softmax(-1))
        return tokens + weights @ self.value(h)


class CHAN(nn.Module):
    def __init__(self, config: CHANConfig, concepts: Sequence[str] = ()):
        super().__init__()
        self.config = c = config
        n_concepts = c.n_concepts
        if n_concepts < 1:
            raise ValueError("CHAN needs a concept vocabulary (CHANConfig.n_concepts, from the training shots)")
        if concepts and len(concepts) != n_concepts:
            raise ValueError(f"{len(concepts)} concept names for {n_concepts} concepts")
        self.concepts = tuple(concepts)  # the vocabulary's words, when known (serving records them)
        self.evidence = nn.Conv1d(c.shot_dim, n_concepts, c.evidence_kernel, padding=c.evidence_kernel // 2)
        self.evidence_in = nn.Sequential(nn.Linear(n_concepts, c.width), nn.GELU(), nn.Linear(c.width, c.width))
        self.query_in = nn.Sequential(nn.LayerNorm(c.text_hidden_size), nn.Linear(c.text_hidden_size, c.width))
        self.query_mlp = nn.Sequential(nn.GELU(), nn.Linear(c.width, c.width))
        self.convs = nn.ModuleList(nn.Conv1d(c.width, c.width, c.conv_kernel, padding=c.conv_kernel // 2)
                                   for _ in range(c.conv_layers))
        self.conv_norms = nn.ModuleList(nn.LayerNorm(c.width) for _ in range(c.conv_layers))
        self.local = Block(c.width, c.heads, c.mlp, c.dropout) if c.local_attention else None
        self.global_attention = QueryAwareAttention(c.width, c.dropout) if c.global_attention else None
        self.out_norm = nn.LayerNorm(c.width)
        self.context_concepts = nn.Linear(c.width, n_concepts)
        nn.init.zeros_(self.context_concepts.weight)  # training starts from the evidence alone
        nn.init.zeros_(self.context_concepts.bias)
        self.query_concepts = nn.Linear(c.width, n_concepts)
        self.match_scale = nn.Parameter(torch.ones(()))
        self.match_bias = nn.Parameter(torch.zeros(()))

    def encode_query(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, width]: the query's token states, projected and mean-pooled over its real tokens."""
        pooled = masked_mean(self.query_in(hidden.float()), mask)
        return pooled + self.query_mlp(pooled)

    def _segments(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """[B * S, segment_shots, W] segments and their mask, and S (segments per video)."""
        b, n, w = x.shape
        size = self.config.segment_shots
        n_segments = max(1, -(-n // size))
        pad = n_segments * size - n
        x = F.pad(x, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
        return x.reshape(b * n_segments, size, w), mask.reshape(b * n_segments, size), n_segments

    def encode_shots(self, evidence: torch.Tensor, shot_mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """[B, N, width]: each shot's concept evidence in the context of its segment and, through
        the query, of its video."""
        c = self.config
        b, n, _ = evidence.shape
        x = self.evidence_in(evidence)
        segments, seg_mask, n_segments = self._segments(x, shot_mask)
        keep = seg_mask[..., None].to(segments.dtype)
        conv = segments * keep
        for norm, layer in zip(self.conv_norms, self.convs):  # padding shots stay zero
            conv = (conv + F.gelu(layer(norm(conv).transpose(1, 2)).transpose(1, 2))) * keep
        pooled = F.max_pool1d((conv + (keep - 1) * 1e4).transpose(1, 2), c.pool).transpose(1, 2)
        pooled_mask = seg_mask.reshape(-1, c.segment_shots // c.pool, c.pool).any(-1)
        pooled = pooled * pooled_mask[..., None]  # an all-padding window pooled -1e4: zero it
        if self.local is not None:
            pooled = self.local(pooled, attendable(pooled_mask))
        tokens = pooled.reshape(b, n_segments * pooled.shape[1], c.width)
        token_mask = pooled_mask.reshape(b, -1)
        if self.global_attention is not None:
            tokens = self.global_attention(tokens, token_mask, query)
        upsampled = tokens.repeat_interleave(c.pool, dim=1)  # [B, S * segment_shots, W]
        shot_level = conv.reshape(b, n_segments * c.segment_shots, c.width) + upsampled
        return self.out_norm(shot_level[:, :n])

    def concept_logits(self, shots: torch.Tensor, shot_mask: torch.Tensor, query_hidden: torch.Tensor,
                       query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each shot's concept evidence [B, N, V] (linear in its and its neighbours' vectors;
        padding shots are zeros), the query encoding [B, width] and the concepts it names [B, V]."""
        query = self.encode_query(query_hidden, query_mask)
        vectors = (shots.float() * shot_mask[..., None]).transpose(1, 2)
        return self.evidence(vectors).transpose(1, 2), query, self.query_concepts(query)

    def forward_with_concepts(self, shots: torch.Tensor, shot_mask: torch.Tensor, query_hidden: torch.Tensor,
                              query_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Relevance logits [B, N] of each shot to its video's query (padding shots: -inf), and
        the concept logits: ``evidence`` and ``shots`` (after context) [B, N, V], ``query`` [B, V]."""
        evidence, query, query_concepts = self.concept_logits(shots, shot_mask, query_hidden, query_mask)
        shot_concepts = evidence + self.context_concepts(self.encode_shots(evidence, shot_mask, query))
        named = torch.sigmoid(query_concepts)[:, None]  # [B, 1, V]: how surely the query names v
        shown = F.logsigmoid(shot_concepts)  # [B, N, V]: log-probability the shot shows v
        match = (named * shown).sum(-1) / named.sum(-1).clamp(min=1e-6)
        logits = (self.match_scale * match + self.match_bias).masked_fill(~shot_mask, float("-inf"))
        return logits, {"evidence": evidence, "shots": shot_concepts, "query": query_concepts}

    def forward(self, shots: torch.Tensor, shot_mask: torch.Tensor, query_hidden: torch.Tensor,
                query_mask: torch.Tensor) -> torch.Tensor:
        """Relevance logits [B, N] of each shot to its video's query (padding shots: -inf)."""
        return self.forward_with_concepts(shots, shot_mask, query_hidden, query_mask)[0]
