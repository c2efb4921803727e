"""MAC as an MLflow pyfunc, its per-day video embeddings, the video index and text->video search.

**Serving input** is a DataFrame with two optional columns; each row fills exactly one:

    text    a caption or query                                   ->  kind "text"
    frames  base64 of an ``.npy`` file of uint8 RGB frames:
              [T, S, S, 3]  a clip of T >= 1 frames              ->  kind "video"
              [S, S, 3]     one image                            ->  kind "image"

The frames travel as one ``.npy`` per row, not as PNG frames: one value carries a whole
clip losslessly with its shape, numpy alone decodes it (``allow_pickle=False``: a served
value cannot run code), and it is exactly what the frame store holds, so base64 of
``storage/frames/<day>/<video_id>.npy`` serves a stored video as the pipeline embedded it.
Frames must be square (the frame store's are); any side is resized to the model's.

A clip is embedded the way the pipeline embeds videos: ``n_clips`` clips of ``n_frames``
frames (the number the model was trained with), clip c taking the frame at (c + 0.5) /
n_clips of each of ``n_frames`` equal segments (:func:`mmpipe.systems.mac.data.clip_offsets`),
unmasked, their embeddings averaged; an image is a one-frame clip.
A text runs through the text tower (the packaged MiniLM unless the model was logged with
another) cut at the token length its training captions were cut at, then MAC's text
encoder. The output has the L2-normalised embedding in ``embedding`` and the row's kind in
``kind``. Text, video and image embeddings share one space (InfoNCE pulls a caption
towards its video), so a text embedding searches the video index directly.

A logged model holds these artifacts:

    weights     model.safetensors, MAC's state dict
    config      mac.json: {"model": MACConfig, "clip": {"n_frames", "n_clips"},
                           "text": {"max_length", "tower"}}
    text_model  the text tower's directory, only when it is not the packaged MiniLM
    code/       the mmpipe source (``code_paths``), so the model loads without mmpipe installed

**Files** the pipeline writes (paths under ``project_root()``)::

    storage/embeddings/videos/created_at=<day>.parquet   one row per video of the day:
        video_id, created_at, video (the mean of its inference clips' embeddings),
        frame_embeddings (the first stored frame of each second as a one-frame clip, in time
        order), frame_t_s, frame_is_blank, model_version
    storage/index/videos/video/          VectorIndex of the video embeddings
    storage/index/videos/partitions.json the model version and the days it holds

**Search** (:class:`VideoSearcher`, behind ``mmpipe search --videos``): the query's text
embedding against the video index; for each hit, the best-matching second is the time of
the stored frame whose embedding is closest to the query (blank frames only when the video
has nothing else). The query is embedded by the model version the index was built from
(recorded in ``partitions.json``; the champion when it was embedded), so query and index
always share a space even while a new champion's embeddings are being written.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from mmpipe.embeddings import MODEL_VERSION, EmbeddingsNotFoundError, embedding_files, embedding_frame
from mmpipe.index.faiss_index import IndexConfig, VectorIndex
from mmpipe.index.incremental import SyncReport, index_quality, read_state, sync_index
from mmpipe.media.features import VideoFeaturesConfig
from mmpipe.media.frames import INDEX_FILE, load_frames, read_frame_index
from mmpipe.nn.text_tower import TextFeatures, encode_texts, load_text_encoder
from mmpipe.params import project_root
from mmpipe.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    RunContext,
    configure,
    register_logged_model,
)
from mmpipe.registry.pyfunc import log_model_with_text_tower, read_logged_record
from mmpipe.registry.serving import (RUN_PIPELINE_FIRST, SearchSetupError, require_tracking_store,
                                     resolve_model_uri as registry_model_uri, serving_version,
                                     version_uri as registered_version_uri)
from mmpipe.serving.service import COUNT, TEXT as TEXT_PARAM, NotReady, Operation, Param, ServingPaths
from mmpipe.spec import Trained
from mmpipe.systems.mac.data import VideoClips
from mmpipe.systems.mac.model import MAC, MACConfig
from mmpipe.systems.mac.train import MACSettings, embed_clips
from mmpipe.train.checkpoint import STATE_FILE as CHECKPOINT_STATE_FILE
from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state

REGISTERED_NAME = "mac"
CONFIG_FILE = "mac.json"

TEXT, VIDEO, IMAGE = "text", "video", "image"  # the pyfunc's kinds; VIDEO is also the store's column
FRAMES = "frames"  # the pyfunc's clip column
VIDEO_ID = "video_id"
FRAME_EMBEDDINGS, FRAME_T_S, FRAME_IS_BLANK = "frame_embeddings", "frame_t_s", "frame_is_blank"

DEFAULT_INDEX_DIR = Path("storage/index/videos")
DEFAULT_EMBEDDINGS_DIR = Path("storage/embeddings/videos")
DEFAULT_VIDEOS_TABLE = Path("storage/validated/videos")  # day partitions <YYYY-MM-DD>.parquet


# ---------------------------------------------------------------------------------------
# clips and frames as the pyfunc carries them


def encode_frames(frames: np.ndarray) -> str:
    """The pyfunc's ``frames`` value: base64 of an ``.npy`` of uint8 [T, S, S, 3] (or [S, S, 3])."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_frames(value: str | bytes) -> np.ndarray:
    """uint8 frames [T, S, S, 3] or one image [S, S, 3] from a ``frames`` value (base64 text,
    or the ``.npy`` bytes themselves); a clear ValueError for anything else."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"frames are not valid base64: {err}") from None
    try:
        frames = np.load(io.BytesIO(value), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"frames are not an .npy array: {err}") from None
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, S, S, 3] or [S, S, 3] RGB, got {frames.dtype} {frames.shape}")
    if frames.shape[-3] != frames.shape[-2] or frames.shape[-2] == 0 or (frames.ndim == 4 and not len(frames)):
        raise ValueError(f"frames must be non-empty and square, got {frames.shape}")
    return frames


def make_pyfunc_input(texts: Sequence[str | None], frames: Sequence[np.ndarray | None]) -> pd.DataFrame:
    """The serving DataFrame for rows of (text or None, uint8 frames or None)."""
    if len(texts) != len(frames):
        raise ValueError(f"{len(texts)} texts but {len(frames)} frame arrays")
    return pd.DataFrame({TEXT: list(texts),
                         FRAMES: [None if clip is None else encode_frames(clip) for clip in frames]})


def _present_text(value) -> str | None:
    # Missing values arrive as None, NaN or pd.NA depending on how the frame was built.
    return value if isinstance(value, str) and value.strip() else None


def encode_clips(model: MAC, clips: Sequence[np.ndarray], n_frames: int, batch_size: int = 64,
                 n_clips: int = 1) -> np.ndarray:
    """Unmasked embeddings [N, E] of clips (uint8 [T_i, S, S, 3] each): the mean of
    ``n_clips`` clips of ``n_frames`` frames, through the same ``embed_clips`` that
    validation and the eval embed videos with, so a served clip embeds as an indexed one."""
    store = VideoClips([str(i) for i in range(len(clips))], list(clips))
    return embed_clips(model, store, range(len(clips)), n_frames, n_clips, batch_size)


def encode_single_frames(model: MAC, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Embeddings [N, E] of frames (uint8 [S, S, 3] each), each as a one-frame clip."""
    return encode_clips(model, [frame[None] for frame in frames], 1, batch_size)


# ---------------------------------------------------------------------------------------
# the embedder: a MAC with its text tower


class MACEmbedder:
    """A MAC with what serving needs beside its weights: the clip length it was trained
    with and its text tower (loaded on the first text, so video-only use never loads it)."""

    def __init__(self, model: MAC, n_frames: int, text_max_length: int, text_model_dir: Path | None = None,
                 batch_size: int = 64, n_clips: int = 1):
        self.model = model.eval()
        self.n_frames, self.n_clips = n_frames, n_clips
        self.text_max_length = text_max_length
        self.text_model_dir = text_model_dir
        self.batch_size = batch_size
        self._text_tower = None

    @classmethod
    def from_files(cls, weights: Path, config_path: Path, text_model_dir: Path | None = None) -> MACEmbedder:
        """Load logged artifacts; ``text_model_dir=None`` means the packaged MiniLM."""
        record = read_logged_record(config_path, text_model_dir, "MAC")
        model = MAC(MACConfig.from_dict(record["model"]))
        model.load_state_dict(load_file(str(weights)))
        # versions logged before multi-clip embeddings used the middle clip alone
        return cls(model, record["clip"]["n_frames"], record["text"]["max_length"], text_model_dir,
                   n_clips=record["clip"].get("n_clips", 1))

    @classmethod
    def from_checkpoint(cls, directory: Path, text_model_dir: Path | None = None,
                        text_max_length: int | None = None) -> MACEmbedder:
        """A training checkpoint (``<model dir>/checkpoint``) with the text tower its captions
        were cached by (default: the packaged MiniLM) and their token length (default:
        ``video_features.text_max_length``, what the pipeline's cache uses)."""
        config = read_trainer_state(Path(directory))["config"]
        model = MAC(MACConfig.from_dict(config["model"]))
        load_checkpoint(Path(directory), model, restore_rng=False)
        if text_max_length is None:
            text_max_length = VideoFeaturesConfig.from_params().text_max_length
        return cls(model, config["train"]["n_frames"], text_max_length, text_model_dir,
                   n_clips=config["train"].get("inference_clips", 1))

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def text_tower(self):
        if self._text_tower is None:
            tokenizer, text_model = load_text_encoder(self.text_model_dir)
            if text_model.config.hidden_size != self.model.config.text_hidden_size:
                raise ValueError(f"text tower is {text_model.config.hidden_size} wide but MAC was trained on "
                                 f"{self.model.config.text_hidden_size}-wide text states")
            self._text_tower = tokenizer, text_model
        return self._text_tower

    def text_features(self, texts: Sequence[str]) -> TextFeatures:
        """The text tower's final-layer states of ``texts``, as the training cache holds them."""
        tokenizer, text_model = self.text_tower()
        return encode_texts(list(texts), tokenizer, text_model, max_length=self.text_max_length,
                            batch_size=self.batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings [N, E]: the space the video index is searched in. No text may be empty."""
        empty = [row for row, text in enumerate(texts) if _present_text(text) is None]
        if empty:
            raise ValueError(f"row {empty[0]}: the text is empty")
        self.model.eval()
        parts = []
        for start in range(0, len(texts), self.batch_size):
            text = self.text_features(texts[start:start + self.batch_size])
            parts.append(self.model.encode_text(text.hidden, text.mask).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, self.embed_dim), np.float32)

    def encode_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Video embeddings [N, E] of uint8 clips [T_i, S, S, 3]."""
        return encode_clips(self.model, clips, self.n_frames, self.batch_size, self.n_clips)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings [N, E] of uint8 images [S, S, 3], each a one-frame clip."""
        return encode_single_frames(self.model, images, self.batch_size)

    def embed(self, texts: Sequence[str | None], frames: Sequence[np.ndarray | None]
              ) -> tuple[np.ndarray, list[str]]:
        """One embedding per row (text, video or image: what the row holds) and its kind."""
        if len(texts) != len(frames):
            raise ValueError(f"{len(texts)} texts but {len(frames)} frame arrays")
        texts = [_present_text(text) for text in texts]
        kinds = []
        for row, (text, clip) in enumerate(zip(texts, frames)):
            if text is None and clip is None:
                raise ValueError(f"row {row} has neither text nor frames")
            if text is not None and clip is not None:
                # MAC has no fused embedding: a caption and a clip are two points of one space.
                raise ValueError(f"row {row} has both text and frames; give one per row")
            kinds.append(TEXT if clip is None else VIDEO if clip.ndim == 4 else IMAGE)
        embeddings = np.zeros((len(texts), self.embed_dim), np.float32)
        for kind, encode, values in ((TEXT, self.encode_texts, texts), (VIDEO, self.encode_clips, frames),
                                     (IMAGE, self.encode_images, frames)):
            rows = [row for row, row_kind in enumerate(kinds) if row_kind == kind]
            if rows:
                embeddings[rows] = encode([values[row] for row in rows])
        return embeddings, kinds


class MACPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: see the module docstring for the input and output columns."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        text_model_dir = Path(artifacts["text_model"]) if "text_model" in artifacts else None
        self.embedder = MACEmbedder.from_files(Path(artifacts["weights"]), Path(artifacts["config"]), text_model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        unknown = sorted(set(model_input.columns) - {TEXT, FRAMES})
        if unknown:
            raise ValueError(f"unexpected input columns {unknown}; expected {TEXT!r} and/or {FRAMES!r}")
        missing = [None] * len(model_input)
        texts = model_input[TEXT].tolist() if TEXT in model_input else missing
        frames = []
        for row, value in enumerate(model_input[FRAMES].tolist() if FRAMES in model_input else missing):
            if isinstance(value, (bytes, bytearray)) or (isinstance(value, str) and value.strip()):
                try:
                    frames.append(decode_frames(bytes(value) if not isinstance(value, str) else value))
                except ValueError as err:
                    raise ValueError(f"row {row}: {err}") from None
            else:
                frames.append(None)
        embeddings, kinds = self.embedder.embed(texts, frames)
        return pd.DataFrame({"embedding": list(embeddings), "kind": kinds})





def default_input_example(image_size: int) -> pd.DataFrame:
    """Three rows, one per kind: a text, a two-frame clip, an image (smooth gradients)."""
    gradient = np.linspace(0, 255, image_size, dtype=np.uint8)
    image = np.stack([np.tile(gradient, (image_size, 1)), np.tile(gradient[:, None], (1, image_size)),
                      np.full((image_size, image_size), 128, np.uint8)], axis=-1)
    clip = np.stack([image, image[::-1]])
    return make_pyfunc_input(["a red striped star moves to the left", None, None], [None, clip, image])


def log_mac(model: MAC, text_model_dir: Path | None, run_context: RunContext, *, n_frames: int,
            text_max_length: int, registered_name: str = REGISTERED_NAME,
            input_example: pd.DataFrame | None = None, n_clips: int = 1) -> tuple[str, str]:
    """Log ``model`` as a pyfunc in the active run and register it; return (model_uri, version).

    ``n_frames`` is the clip length it was trained with, ``n_clips`` how many clips a video
    is embedded from; ``text_model_dir`` the text tower
    its captions were cached by (None, or the packaged MiniLM's own directory, pins the
    package; any other directory is logged as an artifact) and ``text_max_length`` the
    token length they were cut at. The new version gets the ``challenger`` alias and the
    run context's tags.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_mac logs into the active MLflow run: "
                           "call it inside mmpipe.registry.mlflow_registry.start_run(...)")
    if not 1 <= n_frames <= model.config.max_frames:
        raise ValueError(f"n_frames must be in [1, {model.config.max_frames}], got {n_frames}")
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    record = {"model": model.config.to_dict(), "clip": {"n_frames": n_frames, "n_clips": n_clips},
              "text": {"max_length": text_max_length}}
    example = default_input_example(model.config.image_size) if input_example is None else input_example
    model_uri = log_model_with_text_tower(
        model, record, CONFIG_FILE, MACPyfunc, MACEmbedder.from_files, text_model_dir, example,
        metadata={"embed_dim": model.config.embed_dim, "n_frames": n_frames, "n_clips": n_clips,
                  "outputs": [TEXT, VIDEO, IMAGE]})
    return model_uri, register_logged_model(model_uri, registered_name, run_context)


def register(trained: Trained, settings: MACSettings, run_context: RunContext) -> str:
    """The lifecycle's entry point: log the trained MAC into the active MLflow run and register
    it as the ``challenger``; returns its version. Its captions were the pipeline's video-text
    cache (the packaged MiniLM at ``video_features.text_max_length``), so serving encodes
    queries the same way."""
    text_max_length = VideoFeaturesConfig.from_params().text_max_length
    return log_mac(trained.model, None, run_context, n_frames=settings.train.n_frames,
                   text_max_length=text_max_length, n_clips=settings.train.inference_clips)[1]


def load_embedder(model: str | Path, text_model_dir: Path | None = None,
                  text_max_length: int | None = None) -> MACEmbedder:
    """A :class:`MACEmbedder` from an MLflow model URI (``models:/mac@champion``, ``runs:/...``,
    a local MLflow model directory) or a training checkpoint directory (then
    ``text_model_dir`` and ``text_max_length`` as in ``MACEmbedder.from_checkpoint``)."""
    path = Path(model)
    if path.is_dir() and (path / CHECKPOINT_STATE_FILE).is_file():
        return MACEmbedder.from_checkpoint(path, text_model_dir, text_max_length)
    if str(model).startswith(("models:", "runs:")):
        configure()  # resolve registry/run URIs against the project's tracking store
    return mlflow.pyfunc.load_model(str(model)).unwrap_python_model().embedder


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_version_model(version: str, name: str = REGISTERED_NAME, text_max_length: int | None = None) -> MAC:
    """The MAC of registered ``version``, in eval mode. The pipeline runs it over the video-text
    cache (packaged MiniLM states): a version whose text tower is another, or (when
    ``text_max_length`` is given) whose captions were cut at another length, is refused."""
    uri = version_uri(version, name)
    embedder = load_embedder(uri)
    problems = []
    if mlflow.models.get_model_info(uri).metadata.get("text_model") != "package":
        problems.append("its text tower is not the packaged MiniLM the cache comes from")
    if text_max_length is not None and embedder.text_max_length != text_max_length:
        problems.append(f"it was trained on captions cut at {embedder.text_max_length} tokens, the cache "
                        f"at {text_max_length}")
    if problems:
        raise ValueError(f"{uri} cannot run over the pipeline's video-text cache: {'; '.join(problems)}")
    return embedder.model.eval()


# ---------------------------------------------------------------------------------------
# a day's embeddings: each video's middle clip, and each of its stored frames


def embed_day(model: MAC, videos: pd.DataFrame, frames_root: Path, n_frames: int, model_version: str,
              batch_size: int = 64, n_clips: int = 1) -> pd.DataFrame:
    """The embedding store's rows for the validated ``videos`` (video_id, created_at) of a day:
    per video the mean of its ``n_clips`` clips of ``n_frames`` frames, unmasked (``video``), and the
    first stored frame of each second as a one-frame clip (``frame_embeddings``, with ``frame_t_s``
    and ``frame_is_blank`` from the frame index), so a search can say which second matches a
    query best (a search names a second, so finer frames would cost without telling more).

    ``frames_root`` is the frame store (``storage/frames``: ``<day>/<video_id>.npy`` and
    ``<day>/index.parquet``). Videos it holds no frames of (frame extraction quarantined
    them) are left out; a day without a frame store is an error.
    """
    videos = videos.drop_duplicates(VIDEO_ID).reset_index(drop=True)
    ids, days, clips, t_s, blank, per_second = [], [], [], [], [], []
    for day, day_videos in videos.groupby("created_at", sort=True):
        day_dir = Path(frames_root) / str(day)
        if not (day_dir / INDEX_FILE).is_file():
            raise FileNotFoundError(f"no frame store for {day} ({day_dir / INDEX_FILE} is missing): "
                                    f"materialize validated_frames for {day}")
        index = read_frame_index(day_dir).sort_values([VIDEO_ID, "frame_index"], kind="stable")
        rows_of = index.groupby(VIDEO_ID, sort=False).indices
        for video_id in day_videos[VIDEO_ID].astype(str):
            if video_id not in rows_of:
                continue
            rows = index.iloc[rows_of[video_id]]
            ids.append(video_id)
            days.append(str(day))
            clips.append(load_frames(day_dir, video_id)[rows["frame_index"].to_numpy()])
            times = rows["t_s"].to_numpy(np.float64)
            seconds = first_of_each_second(times)
            t_s.append(times[seconds])
            blank.append(rows["is_blank"].to_numpy(bool)[seconds])
            per_second.append(seconds)
    video = encode_clips(model, clips, n_frames, batch_size, n_clips)
    per_frame = encode_single_frames(model, [frame for clip, seconds in zip(clips, per_second)
                                             for frame in clip[seconds]], batch_size * 4)
    bounds = np.cumsum([0, *map(len, per_second)])
    frame = embedding_frame(ids, days, {VIDEO: video}, model_version, id_column=VIDEO_ID)
    frame.insert(3, FRAME_EMBEDDINGS, pd.Series([list(per_frame[start:stop]) for start, stop in
                                                 zip(bounds[:-1], bounds[1:])], dtype=object))
    frame.insert(4, FRAME_T_S, pd.Series(t_s, dtype=object))
    frame.insert(5, FRAME_IS_BLANK, pd.Series(blank, dtype=object))
    return frame


def first_of_each_second(t_s: np.ndarray) -> np.ndarray:
    """Positions (in time order) of the first of the frames at times ``t_s`` within each second.

    >>> first_of_each_second(np.array([0.0, 0.5, 1.0, 1.5, 3.2])).tolist()
    [0, 2, 4]
    """
    _, first = np.unique(np.floor(np.asarray(t_s, np.float64)).astype(np.int64), return_index=True)
    return np.sort(first)


def best_second(frame_embeddings: np.ndarray, t_s: np.ndarray, is_blank: np.ndarray, query: np.ndarray
                ) -> tuple[float, float]:
    """(t_s, score) of the frame most similar to ``query``; blank frames only when the video
    has nothing else (a near-constant frame matches nothing in particular)."""
    candidates = np.flatnonzero(~np.asarray(is_blank, bool))
    if not len(candidates):
        candidates = np.arange(len(t_s))
    scores = np.asarray(frame_embeddings, np.float32)[candidates] @ np.asarray(query, np.float32)
    best = candidates[int(np.argmax(scores))]
    return float(t_s[best]), float(scores.max())


def read_frame_embeddings(source: Path | Sequence[Path], video_ids: Sequence[str]) -> dict[str, dict]:
    """Each stored video's frame embeddings [F, E], frame times, blank flags and model version,
    for ``video_ids`` (a video found on two days counts once, the later)."""
    files = embedding_files(source)
    if not files:
        raise EmbeddingsNotFoundError(f"no video embeddings at {source}: the pipeline has not embedded yet")
    found: dict[str, dict] = {}
    columns = [VIDEO_ID, FRAME_EMBEDDINGS, FRAME_T_S, FRAME_IS_BLANK, MODEL_VERSION]
    for path in files:
        if pq.read_metadata(path).num_rows == 0:  # a day without videos: its columns have no type to filter on
            continue
        table = pd.read_parquet(path, columns=columns, filters=[(VIDEO_ID, "in", [str(v) for v in video_ids])])
        for row in table.itertuples(index=False):
            found[row.video_id] = {"embeddings": np.stack(row.frame_embeddings).astype(np.float32),
                                   "t_s": np.asarray(row.frame_t_s, np.float64),
                                   "is_blank": np.asarray(row.frame_is_blank, bool),
                                   "model_version": str(row.model_version)}
    return found


# ---------------------------------------------------------------------------------------
# the video index, kept in step with the per-day embeddings


def sync_video_index(index_root: Path, embeddings_dir: Path, cfg: IndexConfig = IndexConfig()) -> SyncReport:
    """Bring the video index under ``index_root`` up to the embeddings in ``embeddings_dir``,
    with the pin index's rules (``mmpipe.index.incremental``: new days added, a changed day
    or another model version rebuilds)."""
    return sync_index(index_root, embeddings_dir, (VIDEO,), VIDEO_ID, "video", cfg)


def video_index_quality(index_root: Path, embeddings_dir: Path, n_queries: int = 500, k: int = 10,
                        seed: int = 0) -> dict[str, float | str]:
    """The index factory, recall@k against exact search and queries per second."""
    quality = index_quality(index_root, embeddings_dir, (VIDEO,), n_queries, k, seed, id_column=VIDEO_ID)
    return {key.removeprefix(f"{VIDEO}_"): value for key, value in quality.items()}


# ---------------------------------------------------------------------------------------
# search: videos for a text query, with the best-matching second (`mmpipe search --videos`)


def resolve_model_uri(name: str = REGISTERED_NAME, aliases: Sequence[str] = (CHAMPION, CHALLENGER)) -> str:
    """``models:/name@alias`` for the first alias that is set (champion, else challenger)."""
    return registry_model_uri(name, aliases)


class VideoSearcher:
    """Videos nearest to a text query, over the saved video index and the embedding store.

    ``model``: a loaded :class:`MACEmbedder`, an MLflow model URI or a checkpoint directory;
    None means the registered version the index was built from (so the query lands in the
    index's space), or ``mac@champion`` / ``@challenger`` when the index does not say.
    """

    def __init__(self, model: str | Path | MACEmbedder | None = None, index_dir: Path = DEFAULT_INDEX_DIR,
                 embeddings: Path | Sequence[Path] = DEFAULT_EMBEDDINGS_DIR,
                 videos_table_path: Path = DEFAULT_VIDEOS_TABLE, text_model_dir: Path | None = None):
        self._model = model
        self.index_dir = Path(index_dir)
        self.embeddings = embeddings
        self.videos_table_path = Path(videos_table_path)
        self.text_model_dir = text_model_dir
        self._index: VectorIndex | None = None
        self._titles: pd.Series | None = None

    @classmethod
    def from_project(cls, model: str | Path | MACEmbedder | None = None, **overrides) -> VideoSearcher:
        """A searcher over the default files of the project at ``project_root()``."""
        root = project_root()
        paths = {"index_dir": root / DEFAULT_INDEX_DIR, "embeddings": root / DEFAULT_EMBEDDINGS_DIR,
                 "videos_table_path": root / DEFAULT_VIDEOS_TABLE}
        return cls(model, **{**paths, **overrides})

    @property
    def index_version(self) -> str | None:
        """The registered version whose embeddings the index holds (None when not recorded)."""
        state = read_state(self.index_dir)
        return None if state is None or state.get("model_version") is None else str(state["model_version"])

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            try:
                self._index = VectorIndex.load(self.index_dir / VIDEO)
            except FileNotFoundError:
                raise SearchSetupError(f"no video index at {self.index_dir / VIDEO}; {RUN_PIPELINE_FIRST}") from None
        return self._index

    @property
    def embedder(self) -> MACEmbedder:
        if not isinstance(self._model, MACEmbedder):
            from mlflow.exceptions import MlflowException

            model = self._model
            if model is None:
                version = self.index_version
                require_tracking_store()
                model = version_uri(version) if version is not None else resolve_model_uri()
            try:
                self._model = load_embedder(model, self.text_model_dir)
            except (MlflowException, OSError) as err:
                raise SearchSetupError(f"cannot load the model {model}: {err}") from err
        return self._model

    def titles(self) -> pd.Series:
        """Title by video id; empty when the validated videos are not there (titles only decorate)."""
        if self._titles is None:
            titles = pd.Series(dtype=object)
            if self.videos_table_path.exists():
                videos = pd.read_parquet(self.videos_table_path, columns=[VIDEO_ID, "title"]).drop_duplicates(VIDEO_ID)
                titles = pd.Series(videos["title"].to_numpy(), index=videos[VIDEO_ID].astype(str), dtype=object)
            self._titles = titles
        return self._titles

    def search_text(self, query: str, k: int = 10) -> pd.DataFrame:
        if not query.strip():
            raise ValueError("the text query is empty")
        self.index  # a missing index fails before seconds of model loading
        return self.search_vector(self.embedder.encode_texts([query])[0], k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> pd.DataFrame:
        """Top-``k`` videos for one query vector: video_id, score, best_s (the time of the
        stored frame nearest the query), frame_score, title."""
        index = self.index
        if len(vector) != index.dim:
            raise ValueError(f"query has dim {len(vector)}, the video index {index.dim}: "
                             "the model and the index come from different runs")
        scores, found = index.search(np.asarray(vector, np.float32)[None], min(k, index.ntotal))
        ids = found[0]
        try:
            frames = read_frame_embeddings(self.embeddings, ids)
        except EmbeddingsNotFoundError:
            raise SearchSetupError(f"no video embeddings at {self.embeddings}; {RUN_PIPELINE_FIRST}") from None
        indexed = self.index_version
        best = []
        for video_id in ids:
            stored = frames.get(video_id)
            if stored is None:
                raise SearchSetupError(f"video {video_id} is indexed but has no stored frame embeddings in "
                                       f"{self.embeddings}: materialize faiss_video_index")
            if indexed is not None and stored["model_version"] != indexed:
                # A new champion rewrote the embeddings after the index was built: the frames
                # and the query would live in different spaces.
                raise SearchSetupError(f"video {video_id}'s embeddings are by version {stored['model_version']}, "
                                       f"the index by {indexed}: materialize faiss_video_index")
            best.append(best_second(stored["embeddings"], stored["t_s"], stored["is_blank"], vector))
        return pd.DataFrame({"video_id": ids, "score": [float(s) for s in scores[0][:len(ids)]],
                             "best_s": [t for t, _ in best], "frame_score": [s for _, s in best],
                             "title": self.titles().reindex(ids).fillna("").tolist()})


# ---------------------------------------------------------------------------------------
# warm serving (`mmpipe serve`): text -> videos with the best-matching second, loaded once


@dataclass
class VideoServing:
    """One loaded version: its searcher (model and index), and every indexed video's frame
    embeddings, title and duration in memory."""

    version: str
    searcher: VideoSearcher
    frames: dict[str, dict]
    durations: dict[str, float]


class VideoService:
    """MAC's serving side (:class:`mmpipe.serving.service.Service`): the version that built
    the video index (``partitions.json``), as :class:`VideoSearcher` embeds queries, so a new
    champion is served once ``video_embeddings`` and ``faiss_video_index`` are rebuilt by it."""

    name = "mac"
    registered_model = REGISTERED_NAME

    def __init__(self, paths: ServingPaths):
        self.storage = Path(paths.storage)
        self.index_dir = self.storage / "index" / "videos"
        self.operations = (
            Operation("text", "text_to_videos", "videos matching a text query, with the second that matches best",
                      (Param("q", TEXT_PARAM, "a text query, e.g. 'a red star moves left'"),
                       Param("k", COUNT, "number of videos", default=10)), self.text),)

    def target_version(self) -> str | None:
        state = read_state(self.index_dir)
        if state is not None and state.get("model_version") is not None:
            return str(state["model_version"])
        return serving_version(REGISTERED_NAME)

    def load(self, version: str) -> VideoServing:
        state = read_state(self.index_dir)
        if state is not None and str(state.get("model_version")) not in (str(version), "None"):
            raise NotReady(f"the video index holds version {state['model_version']}'s embeddings, not {version}'s")
        searcher = VideoSearcher(load_embedder(version_uri(version)), index_dir=self.index_dir,
                                 embeddings=self.storage / "embeddings" / "videos",
                                 videos_table_path=self.storage / "validated" / "videos")
        try:
            frames = read_frame_embeddings(searcher.embeddings, searcher.index.ids)
        except EmbeddingsNotFoundError as err:
            raise NotReady(str(err)) from None
        stale = sorted(video_id for video_id, stored in frames.items() if stored["model_version"] != str(version))
        if stale:
            raise NotReady(f"{len(stale)} videos' frame embeddings (e.g. {stale[0]}) are not by version {version}")
        searcher.titles()
        searcher.embedder.text_tower()  # loaded now, not by the first request
        durations = {}
        if searcher.videos_table_path.exists():
            videos = pd.read_parquet(searcher.videos_table_path, columns=[VIDEO_ID, "duration_s"])
            durations = dict(zip(videos[VIDEO_ID].astype(str), videos["duration_s"].astype(float)))
        return VideoServing(str(version), searcher, frames, durations)

    @staticmethod
    def text(served: VideoServing, q: str, k: int) -> dict:
        vector = served.searcher.embedder.encode_texts([q])[0]
        index = served.searcher.index
        scores, found = index.search(np.asarray(vector, np.float32)[None], min(k, index.ntotal))
        titles = served.searcher.titles()
        results = []
        for video_id, score in zip(found[0], scores[0]):
            stored = served.frames.get(video_id)
            best_s, frame_score = (best_second(stored["embeddings"], stored["t_s"], stored["is_blank"], vector)
                                   if stored is not None else (None, None))
            results.append({"video_id": video_id, "title": str(titles.get(video_id, "")),
                            "score": round(float(score), 6), "best_s": best_s, "frame_score": frame_score,
                            "duration_s": served.durations.get(video_id)})
        return {"query": q, "results": results}
