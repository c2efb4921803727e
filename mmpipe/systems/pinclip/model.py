"""PinCLIP: a ViT image tower, a cached pretrained text tower, and a fusion transformer.

Three embeddings of the same dimension come out, all L2-normalised, so retrieval can use
any of them:

* ``image_emb``: mean of the ViT patch tokens, projected;
* ``text_emb``: the frozen text tower's cached token states through a small trainable
  adapter (the tower cannot move, so the adapter is what aligns text to images), pooled
  over real tokens and projected;
* ``fused_emb``: in each of ``n_fusion_heads`` heads, learned fusion queries cross-attend
  over [image tokens ; text tokens] (Q-Former / Perceiver style) and are pooled, as a
  residual on top of late fusion ``a * image_emb + b * text_emb``. The residual's output
  projection starts at zero and the learned modality weights ``a, b`` at one, so the
  fused embedding starts as good as the two towers combined and the weak neighbor signal
  only has to teach what late fusion misses, including how much to trust a caption that
  omits what a board is about. Padding tokens are masked out of the keys; a pin with no
  text has a zero ``text_emb`` and still has its image tokens, so cold pins without
  captions get a fused embedding from the image alone. The heads' unit outputs are
  averaged and renormalised: an ensemble, cheap since the heads are small next to the
  towers.

Image-text alignment (``ClipLoss``) trains the towers; neighbor alignment between fused
embeddings of pins that share a board trains the fusion (see ``losses.py``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTModel

from mmpipe.nn.layers import Block, attendable, masked_mean


@dataclass(frozen=True)
class PinCLIPConfig:
    # Image tower: a hybrid ViT, a conv stem then a transformers ViT built from these
    # numbers (36 tokens for a 96 px image). On a fixed CPU budget more steps beat more
    # width, and coarser patches beat finer ones: 6x6 tokens of 4x4 stem cells scored the
    # image tower's test nDCG@10 0.195 against 0.143 for 8x8 tokens of 3x3, in 20% less
    # time (small world, 2 cores, 250 tower + 200 fusion steps). The stem is what makes
    # the budget enough: on the small world, image-text loss at step 200 was 3.59 with
    # it and 4.36 without (ln 128 = 4.85 is chance).
    image_size: int = 96
    patch_size: int = 4  # on the stem's 24 px map: 6x6 tokens
    vit_width: int = 128
    vit_depth: int = 4
    vit_heads: int = 4
    vit_mlp: int = 512
    # Hybrid ViT (as in the ViT paper's hybrids): a small conv stem turns the image into a
    # feature map with ``stem_stride`` times fewer pixels per side, and the ViT cuts that
    # map into ``patch_size`` patches. 0 channels = a plain ViT on raw pixel patches.
    stem_channels: int = 64
    stem_stride: int = 4
    # A local ViTModel directory whose weights replace the random init; its config must
    # match the numbers above (see ``with_pretrained_image_tower``).
    image_tower_path: str | None = None
    # Text side: hidden states of a pretrained tower (all-MiniLM-L6-v2: 384 wide).
    text_hidden_size: int = 384
    text_trainable_layers: int = 0  # 0 = frozen tower; N > 0 tunes its top N layers live
    text_adapter_depth: int = 1  # trainable self-attention blocks over the tower's tokens
    # Fusion transformer: learned queries over [image tokens ; text tokens].
    fusion_width: int = 128
    fusion_depth: int = 2
    fusion_heads: int = 4
    fusion_mlp: int = 512
    n_fusion_queries: int = 8
    # Independently initialised fusion heads whose unit outputs are averaged (renormalised):
    # each head overfits the few thousand training pins in its own way, so the average
    # generalises better. Heads run batched (``fuse_per_head``); for the same compute, 2
    # heads of 256 pins a step beat 4 of 128 (small world, 250-step towers, 150 fusion steps:
    # validation nDCG@10 0.235 vs 0.228).
    n_fusion_heads: int = 2
    embed_dim: int = 128
    dropout: float = 0.0
    init_logit_scale: float = math.log(1 / 0.07)
    # Board neighbors share one or two attributes of five, so even the world's true
    # attributes score a neighbor only a little above a stranger. At CLIP's temperature
    # (0.07) the neighbor loss of those true attributes is *above* chance, and the
    # model's best move is to learn nothing; at 0.25 it is well below (measured on the
    # small world's pair batches: 3.31 vs 3.62 chance, against 4.97 at 0.07).
    init_neighbor_logit_scale: float = math.log(1 / 0.25)
    max_logit_scale: float = math.log(100)

    def __post_init__(self) -> None:
        if self.stem_channels and self.image_tower_path is not None:
            raise ValueError("a pretrained ViT reads pixels: set stem_channels=0 with image_tower_path")
        if self.stem_channels and self.stem_stride not in (2, 4, 8):
            raise ValueError(f"stem_stride must be 2, 4 or 8, got {self.stem_stride}")
        if self.tower_input_size % self.patch_size:
            raise ValueError(f"the image tower's input ({self.tower_input_size} px: image_size "
                             f"{self.image_size} after the stem) is not a multiple of "
                             f"patch_size {self.patch_size}")
        for width, heads, name in [(self.vit_width, self.vit_heads, "vit"),
                                   (self.fusion_width, self.fusion_heads, "fusion")]:
            if width % heads:
                raise ValueError(f"{name} width {width} is not divisible by its {heads} heads")
        if self.text_trainable_layers < 0 or self.n_fusion_queries < 1 or self.n_fusion_heads < 1:
            raise ValueError("text_trainable_layers must be >= 0, n_fusion_queries and n_fusion_heads >= 1")

    @classmethod
    def tiny(cls, **overrides) -> PinCLIPConfig:
        """A model that runs in milliseconds, for tests."""
        sizes = dict(image_size=32, patch_size=8, stem_channels=0, vit_width=32, vit_depth=2, vit_heads=2, vit_mlp=64,
                     text_hidden_size=32, fusion_width=32, fusion_depth=1, fusion_heads=2,
                     fusion_mlp=64, n_fusion_queries=4, n_fusion_heads=1, embed_dim=16)
        return cls(**{**sizes, **overrides})

    @property
    def tower_input_size(self) -> int:
        """Side of what the ViT sees: the image, or the conv stem's feature map."""
        if not self.stem_channels:
            return self.image_size
        if self.image_size % self.stem_stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of "
                             f"stem_stride {self.stem_stride}")
        return self.image_size // self.stem_stride

    def vit_config(self) -> ViTConfig:
        return ViTConfig(
            image_size=self.tower_input_size,
            patch_size=self.patch_size,
            num_channels=self.stem_channels or 3,
            hidden_size=self.vit_width,
            num_hidden_layers=self.vit_depth,
            num_attention_heads=self.vit_heads,
            intermediate_size=self.vit_mlp,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
        )

    def with_pretrained_image_tower(self, path: Path) -> PinCLIPConfig:
        """This config with the ViT sizes read from a local pretrained ViT directory."""
        vit = ViTConfig.from_pretrained(str(path), local_files_only=True)
        return replace(self, image_size=vit.image_size, patch_size=vit.patch_size,
                       vit_width=vit.hidden_size, vit_depth=vit.num_hidden_layers,
                       vit_heads=vit.num_attention_heads, vit_mlp=vit.intermediate_size,
                       stem_channels=0, image_tower_path=str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PinCLIPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PinCLIPConfig fields {unknown}")
        # Configs written before fusion heads existed describe a single-head model.
        return cls(**{"n_fusion_heads": 1, **values})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class ConvStem(nn.Sequential):
    """Stride-2 3x3 convolutions, channels doubling up to ``channels``: local edges and
    colours come from convolutions, which learn them in far fewer steps than a ViT's
    patch projection does from scratch; the transformer then relates the parts."""

    def __init__(self, channels: int, stride: int):
        n_layers = int(math.log2(stride))
        widths = [3] + [max(channels >> (n_layers - 1 - i), 16) for i in range(n_layers)]
        widths[-1] = channels
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(1, c_out), nn.GELU()]
        super().__init__(*layers)


class PinCLIPOutput(NamedTuple):
    image_emb: torch.Tensor  # [B, E], unit norm
    text_emb: torch.Tensor  # [B, E], unit norm (zero for a pin without text)
    fused_emb: torch.Tensor  # [B, E], unit norm
    logit_scale: torch.Tensor  # scalar multiplier (exp of the learned log-scale) for ClipLoss
    neighbor_logit_scale: torch.Tensor  # same, for NeighborAlignmentLoss


class FusionHead(nn.Module):
    """Learned queries cross-attend over [image tokens ; text tokens]; their pooled output
    is a residual on late fusion ``a * image_emb + b * text_emb`` (see the module doc)."""

    def __init__(self, c: PinCLIPConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(c.n_fusion_queries, c.fusion_width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(c.fusion_width, c.fusion_heads, c.fusion_mlp, c.dropout, cross_attention=True,
                  explicit_attention=True)  # vmapped over heads: see PinCLIP.fuse_per_head
            for _ in range(c.fusion_depth)
        )
        self.ln = nn.LayerNorm(c.fusion_width)
        self.proj = nn.Linear(c.fusion_width, c.embed_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # the head starts as late fusion exactly
        self.modality_weights = nn.Parameter(torch.ones(2))  # late fusion's image and text weights

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor,
                image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(context.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, None, context, context_mask)
        residual = self.proj(self.ln(queries).mean(1))
        image_weight, text_weight = self.modality_weights
        return F.normalize(image_weight * image_emb + text_weight * text_emb + residual, dim=-1)


# State-dict names of the single fusion head before FusionHead existed -> its names now.
_LEGACY_FUSION_KEYS = (("fusion_queries", "fusion_heads.0.queries"), ("fusion.", "fusion_heads.0.blocks."),
                       ("fusion_ln.", "fusion_heads.0.ln."), ("fusion_proj.", "fusion_heads.0.proj."),
                       ("modality_weights", "fusion_heads.0.modality_weights"))


def _rename_legacy_fusion_keys(state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: checkpoints and registered versions written with one
    unnamed fusion module load into ``fusion_heads.0``."""
    for old, new in _LEGACY_FUSION_KEYS:
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class PinCLIP(nn.Module):
    def __init__(self, config: PinCLIPConfig, text_model: nn.Module | None = None):
        """``text_model`` (the pretrained text tower) is needed only when
        ``config.text_trainable_layers > 0``: its top layers are copied in and tuned."""
        super().__init__()
        self.config = config
        c = config

        self.image_stem = ConvStem(c.stem_channels, c.stem_stride) if c.stem_channels else nn.Identity()
        self.image_tower = ViTModel(c.vit_config(), add_pooling_layer=False)
        if c.image_tower_path is not None:
            self._load_pretrained_image_tower(Path(c.image_tower_path))
        self.image_proj = nn.Linear(c.vit_width, c.embed_dim, bias=False)
        self.image_to_fusion = nn.Linear(c.vit_width, c.fusion_width)

        self.text_top_layers = nn.ModuleList()
        self._text_tower_config = None
        if c.text_trainable_layers > 0:
            if text_model is None:
                raise ValueError("text_trainable_layers > 0 needs the pretrained text_model "
                                 "to copy its top layers from")
            if text_model.config.hidden_size != c.text_hidden_size:
                raise ValueError(f"text model is {text_model.config.hidden_size} wide, "
                                 f"config says {c.text_hidden_size}")
            layers = text_model.encoder.layer
            if c.text_trainable_layers > len(layers):
                raise ValueError(f"text model has {len(layers)} layers, "
                                 f"cannot tune {c.text_trainable_layers}")
            top = layers[-c.text_trainable_layers:]
            self.text_top_layers = nn.ModuleList(copy.deepcopy(layer) for layer in top)
            self.text_top_layers.requires_grad_(True)
            self._text_tower_config = text_model.config
        self.text_in = nn.Linear(c.text_hidden_size, c.fusion_width)
        self.text_adapter = nn.ModuleList(
            Block(c.fusion_width, c.fusion_heads, c.fusion_mlp, c.dropout)
            for _ in range(c.text_adapter_depth)
        )
        self.text_ln = nn.LayerNorm(c.fusion_width)
        self.text_proj = nn.Linear(c.fusion_width, c.embed_dim, bias=False)

        # Tells the fusion queries which tokens are pixels and which are words.
        self.modality_embedding = nn.Parameter(torch.randn(2, c.fusion_width) * 0.02)
        self.fusion_heads = nn.ModuleList(FusionHead(c) for _ in range(c.n_fusion_heads))
        self._register_load_state_dict_pre_hook(_rename_legacy_fusion_keys)

        # Separate temperatures: board neighbors are a looser notion of "same" than a pin
        # and its own caption, so the neighbor loss may settle on a softer one.
        self.logit_scale = nn.Parameter(torch.tensor(c.init_logit_scale))
        self.neighbor_logit_scale = nn.Parameter(torch.tensor(c.init_neighbor_logit_scale))

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on matrices only, never on biases, norms or the
        logit scales (decaying a temperature towards 1 would fight the loss)."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
                {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]

    def fusion_parameters(self) -> list[nn.Parameter]:
        """What the fusion phase trains: the fusion heads (with their late-fusion weights)
        and the neighbor temperature; everything the towers' outputs pass through after
        they are cached."""
        prefixes = ("fusion_heads.", "neighbor_logit_scale")
        return [p for name, p in self.named_parameters() if name.startswith(prefixes)]

    def _load_pretrained_image_tower(self, path: Path) -> None:
        pretrained = ViTModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
        mine, theirs = self.image_tower.config, pretrained.config
        for key in ("image_size", "patch_size", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size"):
            if getattr(mine, key) != getattr(theirs, key):
                raise ValueError(f"pretrained ViT at {path} has {key}={getattr(theirs, key)}, "
                                 f"config says {getattr(mine, key)}; build the config with "
                                 "with_pretrained_image_tower()")
        self.image_tower.load_state_dict(pretrained.state_dict())

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels float [B, 3, S, S] (normalised) -> (fusion tokens [B, 1+P, W_f], emb [B, E])."""
        # [CLS ; patches], the ViT's final LayerNorm applied.
        # channels_last through the stem and into the ViT's patch projection: oneDNN's
        # convolutions and their backward run several times faster on it on CPU (a copy back
        # to NCHW before the ViT cost 10% of a tower step).
        stem = self.image_stem(pixels.contiguous(memory_format=torch.channels_last))
        states = self.image_tower(pixel_values=stem).last_hidden_state
        # Mean of patch tokens rather than CLS: a ViT trained from scratch on a few thousand
        # images learns a usable average long before a usable CLS token.
        emb = F.normalize(self.image_proj(states[:, 1:].mean(1)), dim=-1)
        tokens = self.image_to_fusion(states) + self.modality_embedding[0]
        return tokens, emb

    def encode_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached tower states [B, L, H], mask bool [B, L] -> (fusion tokens [B, L, W_f], emb [B, E]).

        A pin without text (all-False mask row) gets a zero ``emb``: cosine 0 with everything."""
        mask = mask.bool()
        keys = attendable(mask)
        x = self.text_in(self.text_tower_top(hidden, keys))
        for block in self.text_adapter:
            x = block(x, keys)
        x = self.text_ln(x)
        emb = F.normalize(self.text_proj(masked_mean(x, mask)), dim=-1)
        return x + self.modality_embedding[1], emb

    def text_tower_top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The tuned top layers of the text tower over the cached states below them
        (identity when the tower is frozen): together, exactly the tower's final states."""
        hidden = hidden.to(self.text_in.weight.dtype)
        if not len(self.text_top_layers):
            return hidden
        from transformers.masking_utils import create_bidirectional_mask

        tower_mask = create_bidirectional_mask(config=self._text_tower_config, inputs_embeds=hidden,
                                               attention_mask=mask.long())
        for layer in self.text_top_layers:
            hidden = layer(hidden, tower_mask)
        return hidden

    def fuse(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
             image_emb: torch.Tensor, text_emb: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Fused embedding [B, E] from the outputs of ``encode_image`` and ``encode_text``:
        the renormalised mean of every fusion head's, or fusion head ``head``'s alone.

        Text is optional per pin: an all-False ``text_mask`` row leaves only the image
        tokens as keys and a zero ``text_emb``, and the result is exactly image-only fusion."""
        if head is not None:
            return self.fusion_heads[head](*self._fusion_context(image_tokens, text_tokens, text_mask),
                                           image_emb, text_emb)
        per_head = self.fuse_per_head(image_tokens, text_tokens, text_mask, image_emb, text_emb, shared=True)
        return per_head[0] if len(per_head) == 1 else F.normalize(per_head.mean(0), dim=-1)

    def fuse_per_head(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                      image_emb: torch.Tensor, text_emb: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """[H, B, E]: every fusion head in one batched call. With ``shared`` all heads read
        the same [B, ...] pins; otherwise each input has a leading head axis [H, B, ...],
        head h's own pins. The heads' parameters are stacked along that axis and the one
        head module is vmapped over it, so H heads cost one set of batched matmuls instead
        of H Python-level passes; gradients flow back to each head's own parameters."""
        if len(self.fusion_heads) == 1 and shared:
            return self.fuse(image_tokens, text_tokens, text_mask, image_emb, text_emb, head=0)[None]
        context, context_mask = self._fusion_context(image_tokens, text_tokens, text_mask)
        per_head = [dict(head.named_parameters()) for head in self.fusion_heads]
        stacked = {name: torch.stack([params[name] for params in per_head]) for name in per_head[0]}
        template = self.fusion_heads[0]

        def one_head(params, *inputs):
            return torch.func.functional_call(template, params, inputs)

        inputs = (context, context_mask, image_emb, text_emb)
        in_dims = (0, *([None] * 4 if shared else [0] * 4))
        return torch.vmap(one_head, in_dims=in_dims, randomness="different")(stacked, *inputs)

    @staticmethod
    def _fusion_context(image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                        text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[image tokens ; text tokens] and its key mask (every image token is real)."""
        context = torch.cat([image_tokens, text_tokens], dim=-2)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.bool, device=image_tokens.device)
        return context, torch.cat([image_mask, text_mask.bool()], dim=-1)

    def forward(self, pixels: torch.Tensor, text_hidden: torch.Tensor,
                text_mask: torch.Tensor) -> PinCLIPOutput:
        image_tokens, image_emb = self.encode_image(pixels)
        text_tokens, text_emb = self.encode_text(text_hidden, text_mask)
        fused_emb = self.fuse(image_tokens, text_tokens, text_mask, image_emb, text_emb)
        return PinCLIPOutput(image_emb, text_emb, fused_emb,
                             self.logit_scale.exp(), self.neighbor_logit_scale.exp())
