"""The shared video inputs of the video systems (video-text retrieval, moment retrieval,
query-focused summarization): frame embeddings by a registered image encoder, shot
embeddings pooled from them, and the text tower's token states of every video text.
Each has one reader here; the systems and the assets' metadata read through them.

**Frame features** go through the registry's generic pyfunc contract, never a system's
code: a DataFrame with an ``image`` column (base64 PNG of the stored frame) in, an
``embedding`` column out. Any registered image encoder can embed frames
(``video_features.encoder`` in params.yaml names its registered model; the pipeline uses
the version holding ``champion``). A day's videos go through the model in batches of
``batch_size`` frames, one ``predict`` call each, across video boundaries.

**Reuse.** A video's frame features are stored once per (encoder, version): a day's file
keeps a digest (content hash) of each video's stored frames, and recomputing the day
encodes only the videos whose digest the file does not already hold. A rerun, or a new
day, encodes nothing twice; changed frames (say, a new ``frames.size``) are encoded
again. A new encoder version writes into a folder of its own, so the features of the
version before stay valid and are found again after a rollback.

**Shot features**: per detected shot, the L2-normalised mean of its non-blank frames'
features (all its frames when every one is blank; the frame nearest the shot's middle
when sampling put none inside a very short shot).

**Query text features**: the text tower's token states (``TextFeatures``) of every video
caption, moment query and summarization query (its concept words as one phrase,
"red, striped"), keyed by (source table, id). Incremental like the pin caption cache:
texts whose content hash the cache already holds are copied, only new ones encoded.

Files (under ``storage/``, see ``mmpipe.layout``)::

    features/frames/<encoder>/v<version>/<YYYY-MM-DD>.npz  one day: ``embedding`` float32 [N, D]
        and the frame index (video_id, frame_index, t_s, shot_id, is_blank; row i of both is
        the same frame), each video's frames digest, encoder name/version/model URI
    features/frames/<encoder>/current.json   the version frame features were last computed by
    features/shots/<encoder>/v<version>/<YYYY-MM-DD>.npz   one day: ``embedding`` [M, D] and
        video_id, shot_id, start_s, end_s, n_frames (stored frames in the shot), n_pooled,
        pooled_from (content / all_frames / nearest_frame)
    features/video_text.safetensors   TextFeatures of every video text; the row keys
        (source, id, video_id, text, text_key) in its metadata

Every file is written whole and atomically (one file per day: index and vectors cannot
disagree).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.config import scaled_params
from mmpipe.io import atomic_path, write_bytes_atomic
from mmpipe.media.frames import INDEX_FILE, SHOTS_FILE, load_frames
from mmpipe.nn.text_tower import TextFeatures, default_text_model_dir, encode_texts_reusing
from mmpipe.partitions import day_file

# The pipeline's names for what produces each input: readers name them in their errors.
VALIDATED_FRAMES_ASSET = "validated_frames"
FRAME_FEATURES_ASSET = "frame_features"
SHOT_FEATURES_ASSET = "shot_features"
QUERY_TEXT_FEATURES_ASSET = "query_text_features"

FRAME_COLUMNS = ["video_id", "frame_index", "t_s", "shot_id", "is_blank"]
SHOT_COLUMNS = ["video_id", "shot_id", "start_s", "end_s", "n_frames", "n_pooled", "pooled_from"]
# What a shot's vector averages: its non-blank frames, all its frames (every one blank), or
# the frame nearest its middle (no sampled frame inside the shot).
CONTENT, ALL_FRAMES, NEAREST_FRAME = "content", "all_frames", "nearest_frame"
TEXT_KEY_COLUMNS = ["source", "id", "video_id", "text"]
CURRENT_FILE = "current.json"
QUERY_TEXT_FILE = "video_text.safetensors"

# The tables whose texts the video systems read, with the id and text columns of each.
TEXT_SOURCES: dict[str, tuple[str, str]] = {
    "video_captions": ("caption_id", "caption"),
    "moment_queries": ("query_id", "query"),
    "summary_queries": ("query_id", "concepts"),
}


class VideoFeaturesNotFoundError(FileNotFoundError):
    """An input the video systems read has not been computed (the message names the asset)."""


@dataclass(frozen=True)
class VideoFeaturesConfig:
    """``video_features:`` in params.yaml (scale presets merged)."""

    encoder: str = "pinclip"  # registered model whose champion embeds the frames
    batch_size: int = 256  # frames per pyfunc predict call
    text_max_length: int = 32  # tokens kept per video text (queries are short; as encode_texts)

    @classmethod
    def from_params(cls, params: Mapping | None = None) -> VideoFeaturesConfig:
        section = dict(scaled_params(params).get("video_features") or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown video_features settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**section)


# ---------------------------------------------------------------------------------------
# paths


def _version_dir(storage: Path, kind: str, encoder: str, version: str) -> Path:
    if not _is_plain_name(encoder) or not _is_plain_name(str(version)):
        raise ValueError(f"encoder {encoder!r} / version {version!r} cannot name a folder")
    return Path(storage) / "features" / kind / encoder / f"v{version}"


def frame_features_file(storage: Path, encoder: str, version: str, day: str) -> Path:
    return day_file(_version_dir(storage, "frames", encoder, version), day, suffix=".npz")


def shot_features_file(storage: Path, encoder: str, version: str, day: str) -> Path:
    return day_file(_version_dir(storage, "shots", encoder, version), day, suffix=".npz")


def query_text_features_file(storage: Path) -> Path:
    return Path(storage) / "features" / QUERY_TEXT_FILE


def frame_store_days(storage: Path) -> list[str]:
    """The days ``validated_frames`` has written (``storage/frames/<day>/index.parquet``)."""
    root = Path(storage) / "frames"
    if not root.is_dir():
        return []
    return sorted(path.parent.name for path in root.glob(f"*/{INDEX_FILE}") if _is_day(path.parent.name))


def current_version(storage: Path, encoder: str) -> str:
    """The version of ``encoder`` the frame features were last computed by."""
    path = Path(storage) / "features" / "frames" / encoder / CURRENT_FILE
    if not path.is_file():
        raise VideoFeaturesNotFoundError(f"no frame features by {encoder!r} under {path.parent}: "
                                         f"materialize {FRAME_FEATURES_ASSET}")
    return str(json.loads(path.read_text())["version"])


# ---------------------------------------------------------------------------------------
# the encoder: a registered model version through the pyfunc contract


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(frame: np.ndarray) -> bytes:
    """An RGB uint8 frame [H, W, 3] as a PNG file, lossless (the encoder sees exactly the
    stored pixels).

    Written here rather than by PIL because it is the per-frame cost of the pyfunc path:
    no row filter and a stored (level 0) deflate stream make it ~20x faster to write than
    PIL's PNG and faster to decode; the size (H * (3W + 1) bytes) does not matter in memory.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
    height, width, _ = frame.shape
    scanlines = np.zeros((height, 3 * width + 1), np.uint8)  # column 0: filter type 0 (None)
    scanlines[:, 1:] = frame.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 0)) + _png_chunk(b"IEND", b""))


def png_base64(frame: np.ndarray) -> str:
    """A frame as the pyfunc's ``image`` value: base64 of :func:`png_bytes`."""
    return base64.b64encode(png_bytes(frame)).decode("ascii")


class PyfuncImageEncoder:
    """Registered model ``name`` at ``version`` as an image encoder: uint8 frames in, one
    float32 vector per frame out, through ``predict(DataFrame({"image": ...}))["embedding"]``,
    ``batch_size`` frames a call.

    The model is loaded on the first :meth:`encode`, so a day whose videos are all stored
    loads nothing. ``predict`` replaces the MLflow model (any callable with the same contract).
    """

    def __init__(self, name: str, version: str, batch_size: int = 256,
                 predict: Callable[[pd.DataFrame], pd.DataFrame] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.name, self.version, self.batch_size = name, str(version), batch_size
        self._predict = predict
        self.calls = 0  # predict calls made (tests and metadata read it)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self._predict is None:  # mlflow is imported only here: the readers never need it
            import mlflow

            from mmpipe.registry.mlflow_registry import configure

            configure()
            self._predict = mlflow.pyfunc.load_model(self.model_uri).predict
        self.calls += 1
        return self._predict(frame)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """float32 [N, D] embeddings of uint8 ``frames`` [N, H, W, 3]."""
        parts = []
        for start in range(0, len(frames), self.batch_size):
            images = [png_base64(frame) for frame in frames[start:start + self.batch_size]]
            out = self.predict(pd.DataFrame({"image": images}))
            if "embedding" not in out.columns or len(out) != len(images):
                raise ValueError(f"{self.model_uri} returned {list(out.columns)} x {len(out)} rows for "
                                 f"{len(images)} images; the contract is one 'embedding' per image row")
            parts.append(np.stack([np.asarray(vector, dtype=np.float32) for vector in out["embedding"]]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def registry_text_embeddings(model_name: str, version: str, texts: Sequence[str], batch_size: int = 256,
                             predict: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> np.ndarray:
    """[len(texts), D] text embeddings by registered model ``model_name`` at ``version``
    through the registry's pyfunc contract (a ``text`` column in, an ``embedding`` column
    out): the image encoder's own text side, in the space of its frame features, reached
    without importing the system that registered it. ``predict`` replaces the MLflow model."""
    uri = f"models:/{model_name}/{version}"
    if predict is None:
        import mlflow

        from mmpipe.registry.mlflow_registry import configure

        configure()
        predict = mlflow.pyfunc.load_model(uri).predict
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        out = predict(pd.DataFrame({"text": batch}))
        if "embedding" not in out.columns or len(out) != len(batch):
            raise ValueError(f"{uri} returned {list(out.columns)} x {len(out)} rows for {len(batch)} texts; "
                             "the contract is one 'embedding' per text row")
        parts.append(np.stack([np.asarray(vector, dtype=np.float32) for vector in out["embedding"]]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------
# the stored tables: one .npz per day (row columns + embedding + meta), written atomically


@dataclass(frozen=True)
class FeatureTable:
    """Rows of a feature store (frames or shots) and their vectors: row i of ``index`` is
    row i of ``embedding``. Rows of one video are contiguous, in time order."""

    index: pd.DataFrame  # FRAME_COLUMNS or SHOT_COLUMNS, and ``day``
    embedding: np.ndarray  # float32 [N, D]
    encoder: str
    version: str

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    def video_rows(self) -> dict[str, np.ndarray]:
        """Row positions of each video, in the order videos appear."""
        return {str(video): rows for video, rows in self.index.groupby("video_id", sort=False).indices.items()}

    def by_video(self) -> dict[str, np.ndarray]:
        """Each video's vectors [T, D] (frames or shots in time order)."""
        return {video: self.embedding[rows] for video, rows in self.video_rows().items()}

    def of_video(self, video_id: str) -> np.ndarray:
        rows = np.flatnonzero(self.index["video_id"].to_numpy() == video_id)
        if not len(rows):
            raise KeyError(f"video {video_id!r} has no stored features")
        return self.embedding[rows]


def _write_table(path: Path, index: pd.DataFrame, embedding: np.ndarray, meta: dict,
                 extra: Mapping[str, np.ndarray] = ()) -> Path:
    arrays = {f"row.{name}": _numpy_column(index[name]) for name in index.columns}
    arrays.update({f"extra.{name}": array for name, array in dict(extra).items()})
    arrays["embedding"] = np.ascontiguousarray(embedding, dtype=np.float32)
    arrays["meta"] = np.array(json.dumps({**meta, "columns": list(index.columns)}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path


def _read_table(path: Path) -> tuple[pd.DataFrame, np.ndarray, dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        index = pd.DataFrame({name: stored[f"row.{name}"] for name in meta["columns"]})
        extra = {key.removeprefix("extra."): stored[key] for key in stored.files if key.startswith("extra.")}
        return index, stored["embedding"], meta, extra


def _numpy_column(series: pd.Series) -> np.ndarray:
    # Strings as fixed-width unicode, so the file loads without pickle.
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        return series.astype(str).to_numpy(dtype=str)
    return series.to_numpy()


def _concat_tables(parts: list[tuple[pd.DataFrame, np.ndarray]], encoder: str, version: str) -> FeatureTable:
    dims = {embedding.shape[1] for _, embedding in parts if len(embedding)}
    if len(dims) > 1:
        raise ValueError(f"stored features of {encoder} v{version} have different widths {sorted(dims)}")
    dim = dims.pop() if dims else 0
    index = pd.concat([index for index, _ in parts], ignore_index=True)
    embedding = np.concatenate([e.reshape(len(e), dim) for _, e in parts]) if parts else np.zeros((0, dim))
    return FeatureTable(index, embedding.astype(np.float32, copy=False), encoder, version)


# ---------------------------------------------------------------------------------------
# frame features


def frames_digest(frames: np.ndarray) -> str:
    """Content address of a video's stored frames (shape, dtype and every pixel)."""
    digest = hashlib.blake2b(f"{frames.dtype}{frames.shape}".encode(), digest_size=12)
    digest.update(np.ascontiguousarray(frames).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class DayCounts:
    day: str
    videos: int
    frames: int
    encoded_videos: int
    encoded_frames: int
    reused_videos: int
    seconds: float


@dataclass(frozen=True)
class FrameFeaturesReport:
    encoder: str
    version: str
    model_uri: str
    days: list[DayCounts] = field(default_factory=list)
    predict_calls: int = 0

    def total(self, name: str) -> int:
        return sum(getattr(day, name) for day in self.days)

    @property
    def images_per_second(self) -> float | None:
        """Encoder throughput over the frames encoded this run (PNG + predict), None if none were."""
        seconds = sum(day.seconds for day in self.days if day.encoded_frames)
        frames = self.total("encoded_frames")
        return frames / seconds if frames and seconds > 0 else None


def update_frame_features(storage: Path, days: Sequence[str], encoder: PyfuncImageEncoder) -> FrameFeaturesReport:
    """Frame features of each day's stored frames by ``encoder``, reusing what its version
    already stored; then record ``encoder``'s version as the current one."""
    report = [_update_day_frames(Path(storage), day, encoder) for day in sorted(days)]
    current = {"encoder": encoder.name, "version": encoder.version, "model_uri": encoder.model_uri}
    path = Path(storage) / "features" / "frames" / encoder.name / CURRENT_FILE
    write_bytes_atomic((json.dumps(current, indent=2) + "\n").encode(), path)
    return FrameFeaturesReport(encoder.name, encoder.version, encoder.model_uri, report, encoder.calls)


def _frame_index(storage: Path, day: str) -> pd.DataFrame:
    path = Path(storage) / "frames" / day / INDEX_FILE
    if not path.is_file():
        raise VideoFeaturesNotFoundError(f"no frame store for day {day} ({path} is missing): "
                                         f"materialize {VALIDATED_FRAMES_ASSET} for {day}")
    index = pd.read_parquet(path, columns=FRAME_COLUMNS)
    # Rows of one video together, in time order (the store writes them so; this makes it a rule).
    order = pd.Index(index["video_id"].unique())
    index = index.assign(_video=order.get_indexer(index["video_id"]))
    return index.sort_values(["_video", "frame_index"], kind="stable").drop(columns="_video").reset_index(drop=True)


def _update_day_frames(storage: Path, day: str, encoder: PyfuncImageEncoder) -> DayCounts:
    started = time.perf_counter()
    index = _frame_index(storage, day)
    target = frame_features_file(storage, encoder.name, encoder.version, day)
    stored_embedding, stored_rows, stored_digest = None, None, {}
    if target.exists():  # what this encoder version stored for the day: reusable by frames digest
        stored_index, stored_embedding, _, extra = _read_table(target)
        stored_digest = dict(zip(extra["digest_video"].tolist(), extra["digest"].tolist()))
        stored_rows = pd.MultiIndex.from_arrays([stored_index["video_id"].astype(str),
                                                 stored_index["frame_index"].astype(np.int64)])

    frames_dir = storage / "frames" / day
    digests, reused, pending = {}, {}, []  # pending: (video, its rows in index, its frames)
    for video_id, rows in index.groupby("video_id", sort=False).indices.items():
        frames = load_frames(frames_dir, video_id, mmap=True)
        frame_index = index["frame_index"].to_numpy()[rows]
        if len(frame_index) and frame_index.max() >= len(frames):
            raise ValueError(f"{frames_dir / video_id}.npy has {len(frames)} frames but the index names frame "
                             f"{frame_index.max()}: rematerialize {VALIDATED_FRAMES_ASSET} for {day}")
        digests[video_id] = frames_digest(frames)
        if stored_digest.get(video_id) == digests[video_id]:
            found = stored_rows.get_indexer(pd.MultiIndex.from_arrays(
                [np.full(len(rows), video_id, dtype=object), frame_index.astype(np.int64)]))
            if (found >= 0).all():
                reused[video_id] = (rows, found)
                continue
        pending.append((video_id, rows, frames[frame_index]))

    encoded = encoder.encode(np.concatenate([f for _, _, f in pending])) if pending else None
    dims = {stored_embedding.shape[1]} if reused else set()
    if encoded is not None:
        dims.add(encoded.shape[1])
    if len(dims) > 1:
        raise ValueError(f"{encoder.model_uri} now returns {encoded.shape[1]}-wide vectors, {target} holds "
                         f"{stored_embedding.shape[1]}-wide ones of the same version")
    embedding = np.zeros((len(index), dims.pop() if dims else 0), np.float32)
    for rows, found in reused.values():
        embedding[rows] = stored_embedding[found]
    offset = 0
    for _, rows, frames in pending:
        embedding[rows] = encoded[offset:offset + len(rows)]
        offset += len(rows)

    meta = {"encoder": encoder.name, "version": encoder.version, "model_uri": encoder.model_uri, "day": day}
    videos = list(digests)
    _write_table(target, index, embedding, meta, {"digest_video": np.array(videos, dtype=str),
                                                  "digest": np.array([digests[v] for v in videos], dtype=str)})
    return DayCounts(day, videos=len(digests), frames=len(index), encoded_videos=len(pending),
                     encoded_frames=sum(len(rows) for _, rows, _ in pending), reused_videos=len(reused),
                     seconds=time.perf_counter() - started)


def _resolve(storage: Path, days: Sequence[str] | None, encoder: str | None, version: str | None
             ) -> tuple[list[str], str, str]:
    encoder = encoder or VideoFeaturesConfig.from_params().encoder
    version = str(version) if version is not None else current_version(storage, encoder)
    if days is None:
        days = frame_store_days(storage)
        if not days:
            raise VideoFeaturesNotFoundError(f"no frame store under {Path(storage) / 'frames'}: "
                                             f"materialize {VALIDATED_FRAMES_ASSET}")
    return sorted(days), encoder, version


def _read_days(storage: Path, kind: str, asset: str, days: Sequence[str], encoder: str, version: str
               ) -> FeatureTable:
    file_of = frame_features_file if kind == "frames" else shot_features_file
    missing = [day for day in days if not file_of(storage, encoder, version, day).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VideoFeaturesNotFoundError(
            f"no {kind} features by {encoder} v{version} for {shown} (under "
            f"{_version_dir(storage, kind, encoder, version)}): materialize {asset} for those days")
    parts = []
    for day in days:
        index, embedding, meta, _ = _read_table(file_of(storage, encoder, version, day))
        if (meta["encoder"], str(meta["version"])) != (encoder, version):
            raise ValueError(f"{file_of(storage, encoder, version, day)} was written by {meta['encoder']} "
                             f"v{meta['version']}, not {encoder} v{version}")
        parts.append((index.assign(day=day), embedding))
    return _concat_tables(parts, encoder, version)


def read_frame_features(storage: Path, days: Sequence[str] | None = None, encoder: str | None = None,
                        version: str | None = None) -> FeatureTable:
    """Frame features of ``days`` (default: every day of the frame store) by ``encoder``
    (default: params.yaml's) at ``version`` (default: the one they were last computed by).
    ``.by_video()`` gives each video's [T, D] array; ``.index`` the frames' video_id,
    frame_index, t_s, shot_id, is_blank and day. A day not computed by that version is an
    error naming the asset to materialize."""
    days, encoder, version = _resolve(Path(storage), days, encoder, version)
    return _read_days(Path(storage), "frames", FRAME_FEATURES_ASSET, days, encoder, version)


# ---------------------------------------------------------------------------------------
# shot features


def pool_shot_features(frames: FeatureTable, shots: pd.DataFrame) -> FeatureTable:
    """One L2-normalised vector per row of ``shots`` (video_id, shot_id, start_s, end_s):
    the mean of the shot's non-blank frames, of all its frames if every one is blank, or
    the frame nearest its middle if no sampled frame falls inside it."""
    shots = shots[["video_id", "shot_id", "start_s", "end_s"]].reset_index(drop=True)
    index, embedding = frames.index, frames.embedding
    dim = frames.dim
    keys = pd.MultiIndex.from_arrays([shots["video_id"].astype(str), shots["shot_id"].astype(np.int64)])
    shot_of_frame = keys.get_indexer(pd.MultiIndex.from_arrays(
        [index["video_id"].astype(str), index["shot_id"].astype(np.int64)]))
    known = shot_of_frame >= 0
    content = known & ~index["is_blank"].to_numpy(dtype=bool)

    def sums(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = np.zeros((len(shots), dim), np.float64)
        np.add.at(total, shot_of_frame[mask], embedding[mask])
        return total, np.bincount(shot_of_frame[mask], minlength=len(shots))

    content_sum, n_content = sums(content)
    all_sum, n_frames = sums(known)
    pooled = np.where((n_content > 0)[:, None], content_sum / np.maximum(n_content, 1)[:, None],
                      all_sum / np.maximum(n_frames, 1)[:, None])
    n_pooled = np.where(n_content > 0, n_content, n_frames)
    pooled_from = np.where(n_content > 0, CONTENT, np.where(n_frames > 0, ALL_FRAMES, NEAREST_FRAME))
    for shot in np.flatnonzero(n_frames == 0):  # a shot shorter than the sampling step
        video_rows = np.flatnonzero(index["video_id"].to_numpy() == shots.at[shot, "video_id"])
        if not len(video_rows):
            raise ValueError(f"shot {shots.at[shot, 'shot_id']} of video {shots.at[shot, 'video_id']!r} "
                             "has no frame features")
        middle = (shots.at[shot, "start_s"] + shots.at[shot, "end_s"]) / 2
        nearest = video_rows[np.argmin(np.abs(index["t_s"].to_numpy()[video_rows] - middle))]
        pooled[shot], n_pooled[shot] = embedding[nearest], 1
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    pooled = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    table = shots.assign(n_frames=n_frames.astype(np.int64), n_pooled=n_pooled.astype(np.int64),
                         pooled_from=pooled_from.astype(str))
    return FeatureTable(table[SHOT_COLUMNS], pooled, frames.encoder, frames.version)


def update_shot_features(storage: Path, days: Sequence[str], encoder: str, version: str) -> FeatureTable:
    """Pool each day's frame features (``encoder`` at ``version``) over the day's detected
    shots (``storage/frames/<day>/shots.parquet``) and store them; returns every day's."""
    storage, parts = Path(storage), []
    for day in sorted(days):
        frames = read_frame_features(storage, [day], encoder, version)
        shots_path = storage / "frames" / day / SHOTS_FILE
        if not shots_path.is_file():
            raise VideoFeaturesNotFoundError(f"no detected shots for {day} ({shots_path} is missing): "
                                             f"materialize {VALIDATED_FRAMES_ASSET} for {day}")
        shots = pool_shot_features(frames, pd.read_parquet(shots_path))
        _write_table(shot_features_file(storage, encoder, version, day), shots.index, shots.embedding,
                     {"encoder": encoder, "version": version, "day": day})
        parts.append((shots.index.assign(day=day), shots.embedding))
    return _concat_tables(parts, encoder, version)


def read_shot_features(storage: Path, days: Sequence[str] | None = None, encoder: str | None = None,
                       version: str | None = None) -> FeatureTable:
    """Shot features of ``days`` (defaults as :func:`read_frame_features`): ``.index`` has
    video_id, shot_id, start_s, end_s, n_frames, n_pooled, pooled_from and day."""
    days, encoder, version = _resolve(Path(storage), days, encoder, version)
    return _read_days(Path(storage), "shots", SHOT_FEATURES_ASSET, days, encoder, version)


# ---------------------------------------------------------------------------------------
# query text features


def concept_phrase(concepts) -> str:
    """A summarization query's concept words as one phrase: ["red", "striped"] -> "red, striped"."""
    if isinstance(concepts, str):
        return concepts.strip()
    words = (str(word).strip() for word in concepts if word is not None and not pd.isna(word))
    return ", ".join(word for word in words if word)


def video_texts(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every text of the validated ``tables`` (named as in TEXT_SOURCES; a table may be
    left out): one row each with source, id, video_id, text, in table order."""
    unknown = sorted(set(tables) - set(TEXT_SOURCES))
    if unknown:
        raise KeyError(f"unknown text tables {unknown}; expected some of {list(TEXT_SOURCES)}")
    parts = []
    for source, (id_column, text_column) in TEXT_SOURCES.items():
        if source not in tables:
            continue
        table = tables[source]
        missing = sorted({id_column, "video_id", text_column} - set(table.columns))
        if missing:
            raise ValueError(f"{source} lacks columns {missing}")
        texts = table[text_column].map(concept_phrase) if source == "summary_queries" else table[text_column]
        parts.append(pd.DataFrame({"source": source, "id": table[id_column].astype(str).to_numpy(),
                                   "video_id": table["video_id"].astype(str).to_numpy(),
                                   "text": texts.fillna("").astype(str).to_numpy()}))
    if not parts:
        return pd.DataFrame({column: pd.Series(dtype=str) for column in TEXT_KEY_COLUMNS})
    return pd.concat(parts, ignore_index=True)[TEXT_KEY_COLUMNS]


@dataclass(frozen=True)
class QueryTextFeatures:
    """Text-tower states of video texts: row i of ``text`` is row i of ``keys``."""

    keys: pd.DataFrame  # source, id, video_id, text
    text: TextFeatures

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, source: str) -> QueryTextFeatures:
        """The rows of one source table, in its order."""
        rows = np.flatnonzero(self.keys["source"].to_numpy() == source)
        return QueryTextFeatures(self.keys.iloc[rows].reset_index(drop=True), self.text.take(rows))

    def rows(self, source: str, ids: Sequence[str]) -> np.ndarray:
        """Row positions of (source, id) pairs; an id not stored is a KeyError."""
        stored = pd.MultiIndex.from_arrays([self.keys["source"], self.keys["id"]])
        found = stored.get_indexer(pd.MultiIndex.from_arrays([[source] * len(ids), [str(i) for i in ids]]))
        if (found < 0).any():
            absent = [str(i) for i, row in zip(ids, found) if row < 0][:5]
            raise KeyError(f"{source} ids {absent} have no stored text features: "
                           f"rematerialize {QUERY_TEXT_FEATURES_ASSET}")
        return found


def update_query_text_features(storage: Path, texts: pd.DataFrame, max_length: int = 32,
                               text_model_dir: Path | None = None) -> tuple[QueryTextFeatures, dict[str, int]]:
    """Rewrite the video-text cache for ``texts`` (:func:`video_texts`), copying the rows of
    texts it already holds when it was built by the same tower at the same ``max_length``
    and encoding the others. Returns the features and counts (``encoded`` distinct texts,
    ``reused`` rows)."""
    path = query_text_features_file(storage)
    texts = texts[TEXT_KEY_COLUMNS].reset_index(drop=True)
    signature = {"max_length": max_length, "text_tower": str(text_model_dir or default_text_model_dir())}
    previous, previous_keys = None, []
    if path.exists():
        stored = TextFeatures.load_metadata(path)
        if "rows" in stored and all(stored.get(key) == value for key, value in signature.items()):
            previous, previous_keys = TextFeatures.load(path), stored["rows"]["text_key"]
    text, keys, n_encoded = encode_texts_reusing(texts["text"].tolist(), previous, previous_keys, text_model_dir,
                                                 max_length)
    rows = {column: texts[column].astype(str).tolist() for column in TEXT_KEY_COLUMNS}
    text.save(path, metadata={"rows": {**rows, "text_key": keys}, **signature})
    cached = set(previous_keys)
    reused = sum(key in cached for key in keys)
    return QueryTextFeatures(texts, text), {"encoded": n_encoded, "reused": reused}


def read_query_text_features(storage: Path, sources: Sequence[str] | None = None) -> QueryTextFeatures:
    """The video-text cache (every source, or ``sources`` in their order): ``.keys`` (source,
    id, video_id, text) and ``.text`` (TextFeatures: token states, mask, pooled)."""
    path = query_text_features_file(storage)
    if not path.is_file():
        raise VideoFeaturesNotFoundError(f"no video text features at {path}: materialize {QUERY_TEXT_FEATURES_ASSET}")
    rows = TextFeatures.load_metadata(path)["rows"]
    features = QueryTextFeatures(pd.DataFrame({column: rows[column] for column in TEXT_KEY_COLUMNS}),
                                 TextFeatures.load(path))
    if sources is None:
        return features
    unknown = sorted(set(sources) - set(TEXT_SOURCES))
    if unknown:
        raise KeyError(f"unknown text sources {unknown}; the cache holds {list(TEXT_SOURCES)}")
    parts = [features.select(source) for source in sources]
    return QueryTextFeatures(pd.concat([part.keys for part in parts], ignore_index=True),
                             TextFeatures.concat([part.text for part in parts]))


def text_states_of(storage: Path, source: str, ids: Sequence[str]) -> TextFeatures:
    """The cached text-tower states of ``source``'s rows ``ids``, row i for ``ids[i]``: the
    cache's rows follow its own table order, so a system aligns them with its table by id
    (an id the cache lacks is an error asking to rematerialize the cache)."""
    cached = read_query_text_features(storage, [source])
    return cached.text.take(cached.rows(source, [str(i) for i in ids]))


# ---------------------------------------------------------------------------------------


def _is_plain_name(value: str) -> bool:
    return (bool(value) and value.strip() == value and value not in (".", "..")
            and not any(c in value for c in "/\\\x00"))


def _is_day(name: str) -> bool:
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True
