"""The CTR model: DIN-style target attention over the user's click history, items
represented by a hashed ID, one embedding table per semantic-ID level and the multimodal
embedding with zero-initialised residual codebooks.

An item's vector is the concatenation of the parts its config switches on:

* ``id``: a hashed item-ID embedding, **zero-initialised**, so an item no training batch
  held (every cold item, unless its bucket collides) contributes exactly nothing;
  ``id_dropout`` zeroes it for a share of training items so the rest of the model learns to
  rank without it, as it must on cold items.
* ``semantic_ids``: one table per level, ``E_l[c_l]``, concatenated: items with equal codes
  at a level share that level's row, which is how a cold item borrows what warm items with
  its codes taught.
* ``multimodal``: ``W (z + Σ_l A_l[c_l])`` with ``z`` the frozen stored embedding and
  ``A_l`` a residual codebook per level, **zero-initialised** so training starts from the
  plain embedding, and moved by the CTR loss only (the light alignment of the encoder's
  space to behaviour; the encoder itself is not trained here).

The user is her DIN interest vector (attention weights from an MLP of [history item,
target, difference, product], unnormalised as in DIN, padding masked to zero), a hashed
user-ID embedding, her country and sign-up age. An MLP of those and the target gives a
logit, to which a learned per-position bias is added (the position effect is additive in
the log-odds, separate from relevance). Item features live in buffers (the item table), so
a batch is just item rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CTRConfig:
    use_id: bool = True
    use_user_id: bool = True  # a hashed user-ID embedding and taste vector (users are warm: all trained on)
    use_semantic_ids: bool = True
    use_multimodal: bool = True
    # Level l's table keyed by the code prefix (c_1..c_l) instead of c_l alone: below the first
    # level a residual code means nothing without the codes above it ("prefix n-grams", as in
    # Singh et al., Better Generalization with Semantic IDs). Prefixes past prefix_buckets are hashed.
    semantic_id_prefix: bool = False
    prefix_buckets: int = 1 << 14
    residual_codebooks: bool = True  # needs use_semantic_ids (the codes index A_l) and use_multimodal
    id_dim: int = 16
    semantic_id_dim: int = 8  # per level
    multimodal_dim: int = 32
    user_dim: int = 16
    taste_dim: int = 32
    country_dim: int = 4
    attention_hidden: int = 32
    hidden: int = 64
    id_dropout: float = 0.5
    memorization_l2: float = 0.0  # weight of ItemEncoder.memorization_penalty in the loss
    item_buckets: int = 1 << 16
    user_buckets: int = 1 << 14
    countries: int = 1  # unknown + the training countries
    positions: int = 20
    levels: int = 3
    codes: int = 64
    embedding_dim: int = 128
    n_items: int = 1

    def __post_init__(self) -> None:
        if not (self.use_id or self.use_semantic_ids or self.use_multimodal):
            raise ValueError("an item needs at least one of use_id, use_semantic_ids, use_multimodal")
        if self.residual_codebooks and not (self.use_semantic_ids and self.use_multimodal):
            raise ValueError("residual_codebooks add A_l[c_l] to the multimodal embedding: they need "
                             "use_semantic_ids and use_multimodal")

    @property
    def item_dim(self) -> int:
        return (self.id_dim * self.use_id + self.semantic_id_dim * self.levels * self.use_semantic_ids
                + self.multimodal_dim * self.use_multimodal)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ItemEncoder(nn.Module):
    """Item rows -> item vectors (see the module doc); row -1 is padding (a zero vector)."""

    def __init__(self, config: CTRConfig):
        super().__init__()
        self.config = c = config
        # The item table as buffers: saved with the weights, so a served model scores by row.
        self.register_buffer("buckets", torch.zeros(c.n_items, dtype=torch.long))
        self.register_buffer("codes", torch.zeros(c.n_items, c.levels, dtype=torch.long))
        self.register_buffer("embedding", torch.zeros(c.n_items, c.embedding_dim))
        if c.use_id:
            self.ids = nn.Embedding(c.item_buckets, c.id_dim)
            nn.init.zeros_(self.ids.weight)
        self.register_buffer("table_rows", torch.zeros(c.n_items, c.levels, dtype=torch.long))
        if c.use_semantic_ids:
            self.levels = nn.ModuleList(nn.Embedding(self.table_size(level), c.semantic_id_dim)
                                        for level in range(c.levels))
            for table in self.levels:
                nn.init.normal_(table.weight, std=0.05)
        if c.use_multimodal:
            self.project = nn.Linear(c.embedding_dim, c.multimodal_dim)
        if c.residual_codebooks:
            self.residual = nn.ParameterList(nn.Parameter(torch.zeros(c.codes, c.embedding_dim))
                                             for _ in range(c.levels))

    def memorization_penalty(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the ID and semantic-ID rows that ``rows`` (unique, >= 0) use:
        DIN's mini-batch aware regularisation, which decays only the rows a batch touches
        (with a handful of impressions per item, these tables otherwise memorise noise)."""
        total = rows.new_zeros((), dtype=torch.float)
        if self.config.use_id:
            total = total + self.ids(self.buckets[rows]).pow(2).sum(-1).mean()
        if self.config.use_semantic_ids:
            codes = self.table_rows[rows]
            total = total + sum(table(codes[:, level]).pow(2).sum(-1).mean() for level, table in enumerate(self.levels))
        return total

    def memorizing_parameters(self) -> list[nn.Parameter]:
        """The per-item and per-code tables (hashed IDs, semantic-ID levels): what can learn
        one item's clicks by heart, unlike the shared maps of the content."""
        tables = ([self.ids.weight] if self.config.use_id else []) + \
            ([table.weight for table in self.levels] if self.config.use_semantic_ids else [])
        return tables

    def table_size(self, level: int) -> int:
        c = self.config
        return min(c.codes ** (level + 1), c.prefix_buckets) if c.semantic_id_prefix else c.codes

    def set_items(self, buckets: torch.Tensor, codes: torch.Tensor | None, embedding: torch.Tensor) -> None:
        with torch.no_grad():
            self.buckets.copy_(buckets)
            if codes is not None:
                self.codes.copy_(codes)
                prefix = torch.zeros_like(codes[:, 0])
                for level in range(codes.shape[1]):
                    if self.config.semantic_id_prefix:  # the prefix as a number in base K, hashed when large
                        prefix = prefix * self.config.codes + codes[:, level]
                        size = self.table_size(level)
                        # A multiplicative (Fibonacci) hash, its high 32 bits, when the prefixes
                        # outnumber the rows: a plain modulo merges prefixes by their low digits.
                        key = prefix if self.config.codes ** (level + 1) <= size else \
                            ((prefix * -7046029254386353131) >> 32) & 0xFFFFFFFF
                        self.table_rows[:, level] = torch.remainder(key, size)
                    else:
                        self.table_rows[:, level] = codes[:, level]
            self.embedding.copy_(embedding)

    def aligned_embedding(self, rows: torch.Tensor) -> torch.Tensor:
        """z + Σ_l A_l[c_l] of item ``rows`` (z alone without residual codebooks)."""
        z = self.embedding[rows]
        if self.config.residual_codebooks:
            codes = self.codes[rows]
            z = z + sum(book[codes[..., level]] for level, book in enumerate(self.residual))
        return z

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """[..., item_dim] vectors of item ``rows`` [...], the ID part first."""
        pad = rows < 0
        safe = rows.clamp_min(0)
        parts = []
        if self.config.use_id:
            parts.append(self.ids(self.buckets[safe]))
        if self.config.use_semantic_ids:
            codes = self.table_rows[safe]
            parts.extend(table(codes[..., level]) for level, table in enumerate(self.levels))
        if self.config.use_multimodal:
            parts.append(self.project(self.aligned_embedding(safe)))
        return torch.cat(parts, -1).masked_fill(pad.unsqueeze(-1), 0.0)


class TargetAttention(nn.Module):
    """DIN's activation unit: weight_i = MLP([h_i, t, h_i - t, h_i * t]), padding weighted 0,
    interest = Σ_i weight_i h_i (no softmax: the sum keeps how much of the history fits)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = mlp([4 * dim, hidden, 1])

    def forward(self, history: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B, H, d], target [B, d], mask [B, H] (True: a real item) -> (interest [B, d], weights [B, H])."""
        t = target.unsqueeze(1).expand_as(history)
        weights = self.score(torch.cat([history, t, history - t, history * t], -1)).squeeze(-1)
        weights = weights * mask
        return (weights.unsqueeze(-1) * history).sum(1), weights


class CTRModel(nn.Module):
    def __init__(self, config: CTRConfig):
        super().__init__()
        self.config = c = config
        self.items = ItemEncoder(c)
        self.attention = TargetAttention(c.item_dim, c.attention_hidden)
        self.users = nn.Embedding(c.user_buckets, c.user_dim)
        nn.init.normal_(self.users.weight, std=0.05)
        self.country = nn.Embedding(c.countries, c.country_dim)
        self.position_bias = nn.Embedding(c.positions, 1)
        nn.init.zeros_(self.position_bias.weight)
        # The user's own taste meets the item's content as a product (an MLP of a
        # concatenation learns multiplicative user x item effects poorly).
        self.user_item = nn.Linear(c.item_dim, c.user_dim)
        # ...and as a logit term of its own: the world's clicks (and most taste) are a sum of
        # user x attribute affinities, a dot product of a user vector and item features.
        self.taste = nn.Embedding(c.user_buckets, c.taste_dim)
        nn.init.zeros_(self.taste.weight)
        self.item_taste = mlp([c.item_dim, c.hidden, c.taste_dim])
        width = 3 * c.item_dim + 2 * c.user_dim + c.country_dim + 2  # + tenure, log history length
        self.head = mlp([width, c.hidden, c.hidden // 2, 1])

    def forward(self, target: torch.Tensor, history: torch.Tensor, user: torch.Tensor, country: torch.Tensor,
                tenure: torch.Tensor, position: torch.Tensor, id_keep: torch.Tensor | None = None,
                history_id_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Click logits [B] of target item rows [B] with history item rows [B, H] (-1: padding)."""
        if not self.config.use_user_id:  # every user shares bucket 0: the history alone says who she is
            user = torch.zeros_like(user)
        # Each distinct item of the batch is encoded once (histories repeat items); the ID
        # dropout is per occurrence, applied to the ID columns (the first id_dim) after.
        rows = torch.cat([target.unsqueeze(1), history], 1)
        unique, inverse = torch.unique(rows, return_inverse=True)
        vectors = self.items(unique)[inverse]
        if self.config.use_id and (id_keep is not None or history_id_keep is not None):
            keep = torch.cat([(torch.ones_like(target, dtype=vectors.dtype) if id_keep is None else id_keep).unsqueeze(1),
                              torch.ones_like(history, dtype=vectors.dtype) if history_id_keep is None
                              else history_id_keep], 1)
            d = self.config.id_dim
            vectors = torch.cat([vectors[..., :d] * keep.unsqueeze(-1), vectors[..., d:]], -1)
        t, h = vectors[:, 0], vectors[:, 1:]
        mask = (history >= 0).float()
        interest, _ = self.attention(h, t, mask)
        length = torch.log1p(mask.sum(1, keepdim=True))
        u = self.users(user)
        x = torch.cat([interest, t, interest * t, u, u * self.user_item(t), self.country(country),
                       tenure.unsqueeze(-1), length], -1)
        positions = position.clamp(0, self.config.positions - 1)
        taste = (self.taste(user) * self.item_taste(t)).sum(-1)
        return self.head(x).squeeze(-1) + taste + self.position_bias(positions).squeeze(-1)
