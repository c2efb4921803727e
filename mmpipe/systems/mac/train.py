"""Training MAC: masked clips against masked captions, one phase on the shared loop.

A step draws ``batch_size`` different training videos, one of each video's captions and
one random clip of each, masks ``mask_ratio`` of every frame's patches and
``text_mask_ratio`` of every caption's tokens, and aligns the two with InfoNCE. Every batch
(videos, captions, clip frames and both masks) is a pure function of (seed, step), so a
run stopped and resumed ends with the weights of one that never stopped. The phase stops
early on text->video R@5 over the validation window's videos; training never sees them.
Under torchrun every process draws the whole batch (videos, captions, clip frames, mask
noise), encodes its share (``shard``) and the loss gathers the embeddings, so it is the
global batch's InfoNCE (:mod:`mmpipe.train.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmpipe.nn.losses import clamp_logit_scale_
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.spec import Trained
from mmpipe.systems.mac.data import TRAIN, VALIDATION, MACInputs, VideoClips, clip_offsets
from mmpipe.systems.mac.losses import masked_then_align
from mmpipe.systems.mac.model import MAC, MACConfig
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state
from mmpipe.train.distributed import ComputeConfig, shard, to_device
from mmpipe.train.loop import CHECKPOINT_DIR, Logger, LoopConfig, Phase, TrainingTask, fit


@dataclass(frozen=True)
class MACTrainConfig:
    steps: int = 300
    # Videos per step, each once. 32 (and 32 moment queries) for 300 steps measured as well as
    # 64 + 64 for 300 at half the time (small world: validation/test R@5 0.375/0.155 against
    # 0.341/0.157), and better than 64 + 64 for 150 steps (0.341/0.138).
    batch_size: int = 32
    n_frames: int = 8  # frames per clip, spread over the whole video
    # Clips per video averaged at inference (validation, eval, serving; data.clip_offsets).
    # Small world (64 + 64 a step, 300 steps): validation/test text->video R@5 0.341/0.157
    # with 8 clips, 0.324/0.131 for the same model's middle clip; 32 + 32 for 250 steps:
    # 0.352/0.146 with 8 clips, 0.341/0.142 with 4, 0.352/0.140 with 3. Each clip is a
    # forward pass over every video the eval and the embeddings see: 4 keep most of the gain
    # at half the cost of 8 (4 frames a clip instead of 8 lost more: test 0.133-0.138).
    inference_clips: int = 4
    mask_ratio: float = 0.75  # share of each frame's patches dropped in training (0 at inference)
    text_mask_ratio: float = 0.2  # share of each caption's tokens dropped in training
    # Weight of a second masked-then-align loss over moment queries and clips of their true
    # windows (data.MomentClips; 0: captions only), over moment_batch_size queries of
    # different videos a step. On the small world (warm start, lr 2e-4, 300 steps) it took
    # validation R@5 from ~0.29 to 0.335 (test 0.098-0.127 to 0.127), for twice the step time.
    moment_weight: float = 1.0
    # 16 rather than 32 queries: on the 900-video world (seeds 0, 1) validation R@5 0.261 and
    # 0.254 against 0.257 and 0.269 with 32 (test 0.102/0.112 against 0.111/0.120), for
    # 15-30 s less training: what keeps MAC inside its 4 minutes of `make run`.
    moment_batch_size: int = 16
    # From the warm start, 2e-4 did better on validation than 3e-4 (R@5 0.29 against 0.27,
    # small world, captions only); a higher rate moves the image encoder's blocks too far.
    lr: float = 2e-4
    weight_decay: float = 0.05
    warmup_steps: int = 30
    # Early stopping on the validation window: text->video R@5 every validate_every steps.
    validate_every: int = 100  # an 8-frame, several-clip validation costs ~10 steps
    patience: int = 3
    seed: int = 0
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    # Start from the image-text encoder whose frame features the pipeline holds (the
    # champion of `video_features.encoder`), mapped onto MAC's shapes by warm_start_state;
    # False: from scratch. On the small world, 300 masked steps from scratch stayed at
    # chance (test text->video R@5 0.06 against 0.04 for random embeddings).
    warm_start: bool = True

    def __post_init__(self) -> None:
        for name in ("mask_ratio", "text_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class MACSettings:
    """Every MAC default: the model and its training. ``params.yaml``'s ``mac:`` overrides it."""

    model: MACConfig = MACConfig()
    train: MACTrainConfig = MACTrainConfig()
    compute: ComputeConfig = ComputeConfig()  # processes, device, bf16: not part of the checkpoint's config


@dataclass
class TrainResult:
    model: MAC
    steps: int
    final: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    validation: dict[str, dict] = field(default_factory=dict)


# Where each tensor of an image-text encoder checkpoint goes in MAC: a ViT image tower as
# transformers (>= 5) names it, behind an optional conv stem, and a text adapter of
# mmpipe.nn Blocks over the cached text-tower states (PinCLIP's layout). {i}: a block number.
_WARM_START_NAMES = {
    "image_stem.{i}.": "video.patch_embed.stem.{i}.",
    "image_tower.embeddings.patch_embeddings.projection.": "video.patch_embed.linear.",
    "image_tower.layers.{i}.layernorm_before.": "video.blocks.{i}.ln_self.",
    "image_tower.layers.{i}.attention.q_proj.": "video.blocks.{i}.self_attn.query.",
    "image_tower.layers.{i}.attention.o_proj.": "video.blocks.{i}.self_attn.out.",
    "image_tower.layers.{i}.layernorm_after.": "video.blocks.{i}.ln_mlp.",
    "image_tower.layers.{i}.mlp.fc1.": "video.blocks.{i}.mlp.0.",
    "image_tower.layers.{i}.mlp.fc2.": "video.blocks.{i}.mlp.2.",
    "image_tower.layernorm.": "video.norm.",
    "image_proj.": "video.proj.",
    "text_in.": "text.input.",
    "text_adapter.{i}.": "text.blocks.{i}.",
    "text_ln.": "text.norm.",
    "text_proj.": "text.proj.",
}


def _rename(name: str) -> str | None:
    for source, target in _WARM_START_NAMES.items():
        head, _, tail = source.partition("{i}")
        if not tail:
            if name.startswith(source):
                return target + name[len(source):]
            continue
        if name.startswith(head):
            number, dot, rest = name[len(head):].partition(".")
            if number.isdigit() and dot and ("." + rest).startswith(tail):
                return target.format(i=number) + ("." + rest)[len(tail):]
    return None


@torch.no_grad()
def warm_start_state(source: dict[str, torch.Tensor], model: MAC) -> dict[str, torch.Tensor]:
    """MAC's state dict with every tensor the image-text encoder checkpoint ``source`` has
    a place for, the rest as ``model`` has them. A frame becomes a token sequence the way
    the source's image tower makes one (the stem per patch rather than over the whole
    frame, the ViT's patch projection as a linear map, its CLS token left out: the source
    pools patch tokens); time starts neutral (zero temporal positions), so a one-frame clip
    starts as the source's image embedding. Blocks without a counterpart start as identity
    (zero output projections). Shapes that differ are an error naming both."""
    if any(name.startswith("text_top_layers.") for name in source):
        raise ValueError("the source tunes its text tower's top layers live; MAC reads the cached final "
                         "states, so its text side cannot start from it: train MAC with warm_start: false")
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # never write into model
    loaded: set[str] = set()
    mismatched = []

    def put(name: str, value: torch.Tensor, from_name: str) -> None:
        if name not in state or state[name].numel() != value.numel():
            mismatched.append(f"{from_name} {tuple(value.shape)} -> {name} "
                              f"{tuple(state[name].shape) if name in state else 'absent'}")
            return
        state[name] = value.reshape(state[name].shape).to(state[name].dtype).clone()
        loaded.add(name)

    for name, value in source.items():
        layer = name.removeprefix("image_tower.layers.")
        if layer != name and ".attention.k_proj." in name:  # key and value make one projection
            number, suffix = layer.split(".")[0], name.rsplit(".", 1)[1]
            value_name = name.replace(".attention.k_proj.", ".attention.v_proj.")
            put(f"video.blocks.{number}.self_attn.key_value.{suffix}", torch.cat([value, source[value_name]]), name)
        elif name == "image_tower.embeddings.position_embeddings":
            put("video.spatial_pos", value[0, 1:], name)  # without the CLS token's
        elif name == "logit_scale":
            put("logit_scale", value, name)
        elif (target := _rename(name)) is not None:
            put(target, value, name)
    if mismatched:
        raise ValueError("the image-text encoder does not fit MAC's shapes (set the model's sizes to the "
                         "encoder's): " + "; ".join(mismatched[:6]))
    if not any(name.startswith("video.blocks.") for name in loaded):
        raise ValueError("nothing of the source maps onto MAC's video encoder: is it an image-text encoder "
                         "with a transformers ViT image tower?")
    state["video.temporal_pos"].zero_()
    state["text.pos"].zero_()
    for tower in ("video", "text"):
        for i in range(len(getattr(model, tower).blocks)):
            prefix = f"{tower}.blocks.{i}."
            if not any(name.startswith(prefix) for name in loaded):
                for out in ("self_attn.out", "mlp.2"):
                    state[f"{prefix}{out}.weight"].zero_()
                    state[f"{prefix}{out}.bias"].zero_()
    return state


@torch.no_grad()
def embed_clips(model: MAC, clips: VideoClips, rows: Sequence[int], n_frames: int, n_clips: int = 1,
                batch_size: int = 64) -> np.ndarray:
    """Unmasked unit embeddings [len(rows), E] of videos ``rows`` of ``clips``: the mean of
    their ``n_clips`` inference clips' embeddings (``data.clip_offsets``; 1: the middle
    clip), renormalised; the same every call."""
    model.eval()
    rows, size = np.asarray(rows, dtype=np.int64), model.config.image_size
    if not len(rows):
        return np.zeros((0, model.config.embed_dim), np.float32)
    device = model.logit_scale.device
    total = torch.zeros(len(rows), model.config.embed_dim)
    for offset in clip_offsets(n_clips):
        for start in range(0, len(rows), batch_size):
            pixels = clips.pixels(rows[start:start + batch_size], n_frames, size, offset=offset)
            total[start:start + batch_size] += model.encode_video(to_device(pixels, device)).cpu()
    return F.normalize(total, dim=-1).numpy()


def embed_videos(model: MAC, inputs: MACInputs, rows: np.ndarray, n_frames: int, n_clips: int = 1,
                 batch_size: int = 64) -> np.ndarray:
    """Unmasked embeddings [len(rows), E] of videos (rows of ``inputs.videos``): :func:`embed_clips`."""
    return embed_clips(model, inputs.clips, rows, n_frames, n_clips, batch_size)


@torch.no_grad()
def embed_captions(model: MAC, inputs: MACInputs, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Unmasked embeddings [len(rows), E] of captions (rows of ``inputs.captions``)."""
    model.eval()
    device = model.logit_scale.device
    parts = []
    for start in range(0, len(rows), batch_size):
        hidden, mask = inputs.text.tokens(rows[start:start + batch_size])
        parts.append(model.encode_text(to_device(hidden, device), to_device(mask, device)).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), np.float32)


def text_to_video_recall(model: MAC, inputs: MACInputs, window: str, n_frames: int, k: int = 5,
                         n_clips: int = 1) -> float:
    """Share of the window's captions whose video ranks in the top ``k`` among the window's
    videos (ties count against), videos embedded from ``n_clips`` clips: the validation
    score, cheap enough to run during training."""
    video_rows = inputs.video_rows(window)
    caption_rows = inputs.caption_rows(window)
    if not len(video_rows) or not len(caption_rows):
        return 0.0
    videos = embed_videos(model, inputs, video_rows, n_frames, n_clips)
    captions = embed_captions(model, inputs, caption_rows)
    position = np.full(len(inputs.videos), -1)
    position[video_rows] = np.arange(len(video_rows))
    truth = position[inputs.captions["video_row"].to_numpy()[caption_rows]]
    scores = captions @ videos.T
    true_scores = scores[np.arange(len(caption_rows)), truth]
    ranks = (scores >= true_scores[:, None]).sum(1)
    return float(np.mean(ranks <= k))


class MACTask(TrainingTask):
    """MAC's one phase for the shared loop (:func:`mmpipe.train.loop.fit`)."""

    def __init__(self, settings: MACSettings, inputs: MACInputs, warm_start: dict[str, torch.Tensor] | None = None):
        """``warm_start``: an image-text encoder's state dict to start from (warm_start_state)."""
        self.settings, self.inputs = settings, inputs
        self.cfg = settings.train
        torch.manual_seed(self.cfg.seed)
        if inputs.text.hidden.shape[1] > settings.model.text_positions:
            raise ValueError(f"captions of {inputs.text.hidden.shape[1]} tokens, the text encoder has positions "
                             f"for {settings.model.text_positions}: raise model.text_positions")
        self.model = MAC(settings.model)
        if warm_start is not None:
            self.model.load_state_dict(warm_start_state(warm_start, self.model))
        self.train_rows = inputs.video_rows(TRAIN)
        self.captions = inputs.captions_of(self.train_rows)
        self.train_rows = np.asarray([row for row in self.train_rows if row in self.captions])
        if len(self.train_rows) < 2:
            raise ValueError(f"MAC needs at least 2 captioned training videos, got {len(self.train_rows)}")
        self.has_validation = len(inputs.caption_rows(VALIDATION)) > 0
        # Training-window moment queries by video: a step draws one query per video, so no
        # clip in the batch is a false negative of another's query.
        self.moment_queries: dict[int, np.ndarray] = {}
        if inputs.moments is not None and self.cfg.moment_weight > 0:
            train_videos = set(self.train_rows.tolist())
            for query, row in enumerate(inputs.moments.video_rows.tolist()):
                if row in train_videos:
                    self.moment_queries.setdefault(row, []).append(query)
            self.moment_queries = {row: np.asarray(queries) for row, queries in self.moment_queries.items()}
        self.moment_videos = np.asarray(sorted(self.moment_queries), dtype=np.int64)

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        return [Phase("align", cfg.steps, cfg.lr, warmup_steps=cfg.warmup_steps,
                      make_optimizer=lambda: torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), lr=cfg.lr),
                      training_forward=self.training_forward,
                      validate=self.validate if self.has_validation else None,
                      validate_every=cfg.validate_every, patience=cfg.patience)]

    def after_step(self) -> None:
        clamp_logit_scale_(self.model)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator, torch.Generator]:
        """The step's video rows, one caption row each, and the generators of its clips and masks."""
        rng = np.random.default_rng([self.cfg.seed, step])
        rows = rng.choice(self.train_rows, size=min(self.cfg.batch_size, len(self.train_rows)), replace=False)
        captions = np.asarray([rng.choice(self.captions[int(row)]) for row in rows])
        masks = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return rows, captions, rng, masks

    def training_forward(self, step: int) -> dict[str, torch.Tensor | float]:
        cfg = self.cfg
        rows, captions, rng, masks = self.batch(step)
        part = shard(len(rows))
        pixels = self.inputs.clips.pixels(rows, cfg.n_frames, self.model.config.image_size, rng, part=part)
        logit_scale = self.model.logit_scale.exp()
        loss = self.masked_pairs_loss(pixels, self.inputs.text, captions, masks, logit_scale, part)
        out = {"loss": loss, "temperature": 1 / logit_scale.detach(), "videos": len(rows)}
        if len(self.moment_videos) > 1:
            moment_loss = self.moment_loss(rng, masks, logit_scale)
            out.update(loss=loss + cfg.moment_weight * moment_loss, caption_loss=loss.detach(),
                       moment_loss=moment_loss.detach())
        return out

    def moment_loss(self, rng: np.random.Generator, masks: torch.Generator, logit_scale: torch.Tensor) -> torch.Tensor:
        """Masked-then-align between moment queries and clips of their true windows: one query
        each of ``moment_batch_size`` different training videos."""
        cfg, moments = self.cfg, self.inputs.moments
        videos = rng.choice(self.moment_videos, size=min(cfg.moment_batch_size, len(self.moment_videos)),
                            replace=False)
        queries = np.asarray([rng.choice(self.moment_queries[int(row)]) for row in videos])
        part = shard(len(videos))
        pixels = self.inputs.clips.pixels(videos, cfg.n_frames, self.model.config.image_size, rng,
                                          within=[moments.frames[q] for q in queries], part=part)
        return self.masked_pairs_loss(pixels, moments.text, queries, masks, logit_scale, part)

    def masked_pairs_loss(self, pixels: torch.Tensor, text: TextFeatures, text_rows: np.ndarray,
                          masks: torch.Generator, logit_scale: torch.Tensor, part: slice | None = None) -> torch.Tensor:
        """Masked-then-align between the clips and rows ``text_rows`` of ``text``, each side
        masked at its training ratio. ``pixels`` are rows ``part`` of the batch (one process's
        share): the mask noise is drawn for the whole batch, in the order the encoders would
        draw it, and cut to ``part``; the loss gathers the other processes' embeddings."""
        cfg, device = self.cfg, self.device
        part = slice(0, len(text_rows)) if part is None else part
        n_frames = pixels.shape[1]
        video_noise = text_noise = None
        if cfg.mask_ratio > 0:
            video_noise = torch.rand(len(text_rows) * n_frames, self.model.config.patches_per_frame,
                                     generator=masks)[part.start * n_frames:part.stop * n_frames]
        hidden, mask = text.tokens(text_rows)  # cut after the longest of the whole batch's texts
        if cfg.text_mask_ratio > 0:
            text_noise = to_device(torch.rand(mask.shape, generator=masks)[part], device)
        video = self.model.encode_video(to_device(pixels, device), cfg.mask_ratio,
                                        noise=None if video_noise is None else to_device(video_noise, device))
        text_emb = self.model.encode_text(to_device(hidden[part], device), to_device(mask[part], device),
                                          cfg.text_mask_ratio, noise=text_noise)
        return masked_then_align(video, text_emb, logit_scale)

    def validate(self) -> float:
        return text_to_video_recall(self.model, self.inputs, VALIDATION, self.cfg.n_frames,
                                    n_clips=self.cfg.inference_clips)


def train_mac(settings: MACSettings, inputs: MACInputs, out_dir: Path | None = None, resume: bool = True,
              stop_after: int | None = None, log: Logger | None = None, progress: bool = False,
              warm_start: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train (or resume) MAC with the shared loop; checkpoints go to ``out_dir/checkpoint``.
    ``settings.compute``: the device, bf16 autocast; under torchrun every process calls this
    and they train as one (DDP)."""
    task = MACTask(settings, inputs, warm_start)
    cfg = settings.train
    record = {"model": settings.model.to_dict(), "train": asdict(cfg)}
    result = fit(task, out_dir, resume=resume, stop_after=stop_after, config_record=record,
                 loop=LoopConfig(cfg.checkpoint_every, cfg.log_every, cfg.grad_clip_norm),
                 log=log, progress=progress, desc="mac", compute=settings.compute)
    return TrainResult(task.model, result.steps, result.final, result.history, result.seconds, result.validation)


def warm_start_source(inputs: MACInputs) -> tuple[str, dict[str, torch.Tensor]]:
    """The model URI and weights of the registered version that made ``inputs.frame_features``."""
    # MLflow only here: the model and its benchmarks import this module without it.
    from mmpipe.registry.pyfunc import logged_weights
    from mmpipe.registry.serving import version_uri

    features = inputs.frame_features
    if features is None:
        raise ValueError("warm_start needs the frame features' encoder (MACInputs.frame_features): materialize "
                         "frame_features, or train with warm_start: false")
    uri = version_uri(features.encoder, str(features.version))
    return uri, logged_weights(uri)[0]


def train(settings: MACSettings, inputs: MACInputs, out_dir: Path | None = None, resume: bool = True,
          log: Logger | None = None) -> Trained:
    """The lifecycle's entry point: MAC on the inputs' training videos, started from the
    registered image-text encoder that made the inputs' frame features (``warm_start``)."""
    source, state = warm_start_source(inputs) if settings.train.warm_start else ("none", None)
    result = train_mac(settings, inputs, out_dir, resume=resume, log=log, warm_start=state)
    params = {**settings.model.to_dict(), **asdict(settings.train), "warm_start_from": source,
              "train_videos": len(inputs.video_rows(TRAIN)), "train_captions": len(inputs.caption_rows(TRAIN)),
              "cutoff_date": inputs.windows.train_end,
              **{f"{phase}_best_step": record["best_step"] for phase, record in result.validation.items()},
              **{f"{phase}_stopped_at": record["stopped_at"] for phase, record in result.validation.items()}}
    return Trained(result.model, result.steps, result.seconds, result.final, params)


def load_trained(out_dir: Path) -> MAC:
    """The MAC a training run left in ``out_dir`` (its last checkpoint), in eval mode."""
    checkpoint = Path(out_dir) / CHECKPOINT_DIR
    config = read_trainer_state(checkpoint)["config"]
    model = MAC(MACConfig.from_dict(config["model"]))
    load_checkpoint(checkpoint, model, restore_rng=False)
    return model.eval()
