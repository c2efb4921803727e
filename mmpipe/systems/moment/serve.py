"""The moment model as an MLflow pyfunc, its held-out predictions as JSONL, and the
``mmpipe moment`` lookup.

**Serving input** is a DataFrame, one row per (query, video):

    query              the query text
    frame_embeddings   the video's frame features, [T][D] (each stored frame's embedding by
                       the image encoder version the model was trained on; ``frame_features``)
    frame_t_s          the frames' times in seconds, [T]
    duration_s         the video's duration (optional: the last frame plus half a step)

and the output has ``pred_relevant_windows``, the top spans ``[[start_s, end_s, score], ...]``
best first, as moment_detr's prediction files hold them. The query runs through the text
tower (the packaged MiniLM unless the model was logged with another) cut at the token
length its training queries were cut at.

A logged model holds these artifacts:

    weights     model.safetensors, the moment model's state dict
    config      moment.json: {"model": MomentConfig, "decode": DecodeConfig,
                              "frames": {"encoder", "version", "step_s"},
                              "text": {"max_length", "tower"}}
    text_model  the text tower's directory, only when it is not the packaged MiniLM
    code/       the mmpipe source (``code_paths``), so the model loads without mmpipe installed

The frame features a version reads must come from the encoder version it was trained on
(``frames`` in moment.json, and the MLflow metadata): another encoder's embeddings live in
another space, and the pipeline refuses them (:func:`load_version`).

**Files** the pipeline writes (``moment_predictions``, by the champion)::

    storage/predictions/moment/<window>.jsonl       one line per held-out query (validation, test)
    storage/predictions/moment/<window>_gt.jsonl    their true windows, for ``mmpipe eval-moments``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from mmpipe.eval.moment import PREDICTION_KEY, prediction_record, truth_record, write_jsonl
from mmpipe.media.features import VideoFeaturesConfig, read_frame_features
from mmpipe.nn.text_tower import TextFeatures, encode_texts, load_text_encoder
from mmpipe.registry.mlflow_registry import RunContext, configure, register_logged_model
from mmpipe.registry.pyfunc import log_model_with_text_tower, read_logged_record
from mmpipe.layout import truth_path
from mmpipe.partitions import read_days
from mmpipe.registry.serving import resolve_model_uri, serving_version, version_uri as registered_version_uri
from mmpipe.serving.service import COUNT, ID, TEXT, NotReady, Operation, Param, ServingPaths, UnknownId
from mmpipe.spec import Trained
from mmpipe.systems.moment.data import MomentInputs
from mmpipe.systems.moment.model import DecodeConfig, MomentConfig, MomentModel, MomentOutput, decode_query
from mmpipe.systems.moment.train import MomentSettings, predict_spans

REGISTERED_NAME = "moment"
CONFIG_FILE = "moment.json"
QUERY, FRAME_EMBEDDINGS, FRAME_T_S, DURATION_S = "query", "frame_embeddings", "frame_t_s", "duration_s"


class MomentPredictor:
    """A moment model with what serving needs beside its weights: its decoding, the frame
    features it reads (encoder, version, step) and its text tower (loaded on first use)."""

    def __init__(self, model: MomentModel, decode: DecodeConfig, frames: dict, text_max_length: int,
                 text_model_dir: Path | None = None):
        self.model = model.eval()
        self.decode = decode
        self.encoder, self.encoder_version = str(frames["encoder"]), str(frames["version"])
        self.frame_step = float(frames["step_s"])
        self.text_max_length = text_max_length
        self.text_model_dir = text_model_dir
        self._text_tower = None

    @classmethod
    def from_files(cls, weights: Path, config_path: Path, text_model_dir: Path | None = None) -> MomentPredictor:
        """Load logged artifacts; ``text_model_dir=None`` means the packaged MiniLM."""
        record = read_logged_record(config_path, text_model_dir, "the moment model")
        model = MomentModel(MomentConfig.from_dict(record["model"]))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, DecodeConfig(**record["decode"]), record["frames"], record["text"]["max_length"],
                   text_model_dir)

    def text_features(self, texts: Sequence[str]) -> TextFeatures:
        """The text tower's final-layer states of ``texts``, as the training cache holds them."""
        if self._text_tower is None:
            tokenizer, text_model = load_text_encoder(self.text_model_dir)
            if text_model.config.hidden_size != self.model.config.text_hidden_size:
                raise ValueError(f"text tower is {text_model.config.hidden_size} wide but the moment model was "
                                 f"trained on {self.model.config.text_hidden_size}-wide text states")
            self._text_tower = tokenizer, text_model
        return encode_texts(list(texts), *self._text_tower, max_length=self.text_max_length)

    @torch.no_grad()
    def predict(self, queries: Sequence[str], frame_embeddings: Sequence[np.ndarray], frame_times: Sequence[np.ndarray],
                durations: Sequence[float | None]) -> list[list[list[float]]]:
        """Each (query, video)'s top spans ``[[start_s, end_s, score], ...]``, best first."""
        empty = [row for row, text in enumerate(queries) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise ValueError(f"row {empty[0]}: the query is empty")
        text = self.text_features(queries)
        spans = []
        for row, (frames, times, duration) in enumerate(zip(frame_embeddings, frame_times, durations)):
            frames = np.asarray(frames, dtype=np.float32)
            times = np.asarray(times, dtype=np.float64)
            if frames.ndim != 2 or frames.shape[1] != self.model.config.frame_dim or len(frames) != len(times) \
                    or not len(frames):
                raise ValueError(f"row {row}: frame_embeddings must be [T, {self.model.config.frame_dim}] with one "
                                 f"time per frame, got {frames.shape} and {times.shape[0]} times")
            hidden, mask = text.tokens([row])
            output: MomentOutput = self.model(torch.from_numpy(frames)[None], torch.ones(1, len(frames), dtype=bool),
                                              hidden, mask)

            def column(tensor):
                return None if tensor is None else tensor[0].numpy()

            end_s = float(duration) if duration is not None and np.isfinite(duration) else \
                float(times[-1]) + self.frame_step / 2
            spans.append(decode_query(times, end_s, self.frame_step, self.decode, column(output.segmentation),
                                      column(output.start), column(output.end), column(output.offsets)))
        return spans


class MomentPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: see the module docstring for the input and output columns."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        text_model_dir = Path(artifacts["text_model"]) if "text_model" in artifacts else None
        self.embedder = MomentPredictor.from_files(Path(artifacts["weights"]), Path(artifacts["config"]),
                                                   text_model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = [column for column in (QUERY, FRAME_EMBEDDINGS, FRAME_T_S) if column not in model_input]
        if missing:
            raise ValueError(f"missing input columns {missing}; expected {QUERY!r}, {FRAME_EMBEDDINGS!r}, "
                             f"{FRAME_T_S!r} and optionally {DURATION_S!r}")
        durations = model_input[DURATION_S].tolist() if DURATION_S in model_input else [None] * len(model_input)
        spans = self.embedder.predict(model_input[QUERY].tolist(),
                                      [np.stack([np.asarray(v, np.float32) for v in frames])
                                       for frames in model_input[FRAME_EMBEDDINGS]],
                                      list(model_input[FRAME_T_S]), durations)
        return pd.DataFrame({PREDICTION_KEY: spans})


def make_pyfunc_input(queries: Sequence[str], frame_embeddings: Sequence[np.ndarray],
                      frame_times: Sequence[np.ndarray], durations: Sequence[float] | None = None) -> pd.DataFrame:
    """The serving DataFrame for (query, a video's frame features and times[, duration]) rows."""
    frame = pd.DataFrame({QUERY: list(queries),
                          FRAME_EMBEDDINGS: [np.asarray(f, np.float32).tolist() for f in frame_embeddings],
                          FRAME_T_S: [np.asarray(t, np.float64).tolist() for t in frame_times]})
    if durations is not None:
        frame[DURATION_S] = [np.nan if d is None else float(d) for d in durations]
    return frame


def default_input_example(frame_dim: int, frame_step: float) -> pd.DataFrame:
    """Two queries over a 6-frame video of smooth vectors, one without its duration (so the
    signature marks ``duration_s`` optional)."""
    frames = np.cos(np.outer(np.arange(6), np.arange(frame_dim)) / frame_dim).astype(np.float32)
    return make_pyfunc_input(["the red striped star moves to the left", "a blue disc"], [frames, frames],
                             [np.arange(6) * frame_step] * 2, [6 * frame_step, None])


def log_moment(model: MomentModel, decode: DecodeConfig, frames: dict, text_model_dir: Path | None,
               run_context: RunContext, *, text_max_length: int, registered_name: str = REGISTERED_NAME,
               input_example: pd.DataFrame | None = None) -> tuple[str, str]:
    """Log ``model`` as a pyfunc in the active run and register it as the ``challenger``;
    return (model_uri, version). ``frames`` names the frame features it was trained on
    (encoder, version, step_s); ``text_model_dir`` and ``text_max_length`` the text tower and
    token length of its training queries (None pins the packaged MiniLM)."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_moment logs into the active MLflow run: "
                           "call it inside mmpipe.registry.mlflow_registry.start_run(...)")
    record = {"model": model.config.to_dict(), "decode": asdict(decode),
              "frames": {"encoder": str(frames["encoder"]), "version": str(frames["version"]),
                         "step_s": float(frames["step_s"])},
              "text": {"max_length": text_max_length}}
    example = (default_input_example(model.config.frame_dim, record["frames"]["step_s"])
               if input_example is None else input_example)
    model_uri = log_model_with_text_tower(
        model, record, CONFIG_FILE, MomentPyfunc, MomentPredictor.from_files, text_model_dir, example,
        metadata={"frame_encoder": record["frames"]["encoder"], "frame_encoder_version": record["frames"]["version"],
                  "frame_dim": model.config.frame_dim, "frame_step_s": record["frames"]["step_s"]})
    return model_uri, register_logged_model(model_uri, registered_name, run_context)


def register(trained: Trained, settings: MomentSettings, run_context: RunContext) -> str:
    """The lifecycle's entry point: log the trained model into the active MLflow run and
    register it as the ``challenger``; returns its version. Its queries were the pipeline's
    video-text cache (the packaged MiniLM at ``video_features.text_max_length``), its frames
    the encoder version ``trained.params`` records."""
    frames = {"encoder": trained.params["frame_encoder"], "version": trained.params["frame_encoder_version"],
              "step_s": trained.params["frame_step_s"]}
    return log_moment(trained.model, settings.decode, frames, None, run_context,
                      text_max_length=VideoFeaturesConfig.from_params().text_max_length)[1]


def load_predictor(model: str) -> MomentPredictor:
    """A :class:`MomentPredictor` from an MLflow model URI (``models:/moment@champion``,
    ``runs:/...``, a local MLflow model directory)."""
    if str(model).startswith(("models:", "runs:")):
        configure()  # resolve registry/run URIs against the project's tracking store
    return mlflow.pyfunc.load_model(str(model)).unwrap_python_model().embedder


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_version(version: str, encoder: str, encoder_version: str, name: str = REGISTERED_NAME
                 ) -> tuple[MomentModel, DecodeConfig]:
    """The model of registered ``version`` (eval mode) and its decoding, refused when it was
    trained on other frame features than ``encoder`` v``encoder_version``'s or on queries
    the pipeline's video-text cache does not hold (another text tower or token length)."""
    uri = version_uri(version, name)
    predictor = load_predictor(uri)
    problems = []
    if (predictor.encoder, predictor.encoder_version) != (str(encoder), str(encoder_version)):
        problems.append(f"it reads frame features by {predictor.encoder} v{predictor.encoder_version}, these are "
                        f"by {encoder} v{encoder_version}")
    if mlflow.models.get_model_info(uri).metadata.get("text_model") != "package":
        problems.append("its text tower is not the packaged MiniLM the cache comes from")
    if predictor.text_max_length != VideoFeaturesConfig.from_params().text_max_length:
        problems.append(f"it was trained on queries cut at {predictor.text_max_length} tokens")
    if problems:
        raise ValueError(f"{uri} cannot run over the pipeline's inputs: {'; '.join(problems)}")
    return predictor.model, predictor.decode


# ---------------------------------------------------------------------------------------
# held-out predictions as JSONL, and one video's lookup


def write_predictions(model: MomentModel, decode: DecodeConfig, inputs: MomentInputs, out_dir: Path,
                      windows: Sequence[str]) -> dict[str, int]:
    """``<window>.jsonl`` (the model's spans) and ``<window>_gt.jsonl`` (the true windows) of
    each window's queries under ``out_dir``; returns the query count of each window."""
    counts = {}
    queries = inputs.queries
    for window in windows:
        rows = inputs.query_rows(window)
        spans = predict_spans(model, inputs, rows, decode)
        ids, videos, texts = (queries[c].astype(str).to_numpy()[rows] for c in ("query_id", "video_id", "query"))
        write_jsonl([prediction_record(q, v, t, s) for q, v, t, s in zip(ids, videos, texts, spans)],
                    Path(out_dir) / f"{window}.jsonl")
        write_jsonl([truth_record(q, v, t, inputs.true_windows(int(row)), inputs.duration(int(row)))
                     for q, v, t, row in zip(ids, videos, texts, rows)], Path(out_dir) / f"{window}_gt.jsonl")
        counts[window] = len(rows)
    return counts


def moment_lookup(video_id: str, query: str, storage: Path, model: str | None = None
                  ) -> tuple[list[list[float]], MomentPredictor]:
    """Top spans of ``query`` in stored video ``video_id`` by ``model`` (default: the registered
    champion, else the challenger), over the frame features of the encoder version it was
    trained on (``storage/features/frames/...``)."""
    predictor = load_predictor(model or resolve_model_uri(REGISTERED_NAME))
    features = read_frame_features(Path(storage), encoder=predictor.encoder, version=predictor.encoder_version)
    frames, times = video_frames(features, video_id)
    spans = predictor.predict([query], [frames], [times], [None])[0]
    return spans, predictor


# ---------------------------------------------------------------------------------------
# warm serving (`mmpipe serve`): a stored video's moments for a query, loaded once


def video_frames(features, video_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame features [T, D], times [T]) of one video of a frame-feature table, in time order."""
    rows = np.flatnonzero(features.index["video_id"].astype(str).to_numpy() == str(video_id))
    if not len(rows):
        raise KeyError(f"video {video_id!r} has no frame features by {features.encoder} v{features.version}")
    times = features.index["t_s"].to_numpy(np.float64)[rows]
    order = np.argsort(times, kind="stable")
    return features.embedding[rows][order], times[order]


def known_windows(storage: Path, raw_root: Path) -> dict[tuple[str, str], list[list[float]]]:
    """The true windows of every annotated (video id, query text): the world's truth
    (``_truth/moments.parquet``) where the landing zone has it, else the annotation's own
    ``windows`` (a user's QVHighlights / Charades-STA file)."""
    path = Path(storage) / "validated" / "moment_queries.parquet"
    if not path.is_file():
        return {}
    queries = pd.read_parquet(path, columns=["query_id", "video_id", "query", "windows"])
    truth_file = truth_path(raw_root, "moments")
    truth: dict[str, list[list[float]]] = {}
    if truth_file.is_file():
        moments = pd.read_parquet(truth_file, columns=["query_id", "start_s", "end_s"])
        for query_id, start, end in zip(moments["query_id"].astype(str), moments["start_s"], moments["end_s"]):
            truth.setdefault(query_id, []).append([float(start), float(end)])
    found = {}
    for query_id, video_id, query, windows in zip(queries["query_id"].astype(str), queries["video_id"].astype(str),
                                                  queries["query"].astype(str), queries["windows"]):
        annotated = [[float(start), float(end)] for start, end in windows] if windows is not None else []
        found[(video_id, query.strip().lower())] = sorted(truth.get(query_id, annotated))
    return found


@dataclass
class MomentServing:
    """One loaded version: its predictor, every video's frame features (by the encoder
    version it was trained on), the videos' durations and the known true windows."""

    version: str
    predictor: MomentPredictor
    frames: dict[str, tuple[np.ndarray, np.ndarray]]
    durations: dict[str, float]
    truth: dict[tuple[str, str], list[list[float]]]


class MomentService:
    """The moment model's serving side (:class:`mmpipe.serving.service.Service`): the
    registered champion (else the challenger), over the stored frame features."""

    name = "moment"
    registered_model = REGISTERED_NAME

    def __init__(self, paths: ServingPaths):
        self.storage, self.raw = Path(paths.storage), Path(paths.raw)
        self.operations = (
            Operation("moments", "moments", "where in a stored video a query happens: the top spans, "
                      "with the true windows where they are known",
                      (Param("video", ID, "a video id"),
                       Param("q", TEXT, "a moment query, e.g. 'the red striped circle moves to the left'"),
                       Param("k", COUNT, "number of spans", default=5)), self.moments),)

    def target_version(self) -> str | None:
        return serving_version(REGISTERED_NAME)

    def load(self, version: str) -> MomentServing:
        predictor = load_predictor(version_uri(version))
        predictor.text_features(["warm up"])  # the text tower loaded now, not by the first request
        try:
            features = read_frame_features(self.storage, encoder=predictor.encoder, version=predictor.encoder_version)
        except FileNotFoundError as err:
            raise NotReady(str(err)) from None
        frames = {video_id: video_frames(features, video_id)
                  for video_id in features.index["video_id"].astype(str).unique()}
        durations = {}
        videos_dir = self.storage / "validated" / "videos"
        if videos_dir.is_dir():
            videos = read_days(videos_dir, columns=["video_id", "duration_s"])
            durations = dict(zip(videos["video_id"].astype(str), videos["duration_s"].astype(float)))
        return MomentServing(str(version), predictor, frames, durations, known_windows(self.storage, self.raw))

    @staticmethod
    def moments(served: MomentServing, video: str, q: str, k: int) -> dict:
        stored = served.frames.get(video)
        if stored is None:
            raise UnknownId(f"unknown video {video!r}: no frame features by {served.predictor.encoder} "
                            f"v{served.predictor.encoder_version} hold it")
        embeddings, times = stored
        duration = served.durations.get(video)
        spans = served.predictor.predict([q], [embeddings], [times], [duration])[0]
        return {"video_id": video, "query": q, "duration_s": duration,
                "truth": served.truth.get((video, q.strip().lower())),
                "results": [{"start_s": round(float(start), 3), "end_s": round(float(end), 3),
                             "score": round(float(score), 6)} for start, end, score in spans[:k]]}
