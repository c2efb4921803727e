"""CHAN as an MLflow pyfunc, the summaries of held-out queries, and a summary you can watch.

**Serving input** is a DataFrame with one row per (video, query):

    query          the query as text, concept words: "red, striped"
    shot_vectors   base64 of an ``.npy`` file of float32 [N, D']: the video's shot vectors as
                   :func:`mmpipe.systems.chan.data.shot_vectors` builds them (each shot's
                   shared shot feature and, when the model's ``frame_extremes`` is set, the
                   max and min of its frame features: D' = 3 D)
    shot_seconds   optional, base64 of an ``.npy`` of float [N]: each shot's duration, needed
                   when the model's length budget is in seconds

The output has ``scores`` (each shot's relevance probability, in shot order) and
``selected`` (the shot positions the model's length budget keeps, in time order). The
query runs through the text tower the model was trained with (the packaged MiniLM unless it
was logged with another), cut at the token length of its training queries.

A logged model holds these artifacts:

    weights     model.safetensors, CHAN's state dict
    config      chan.json: {"model": CHANConfig, "concepts": [the vocabulary's words], "budget": LengthBudget,
                           "text": {"max_length", "tower"}}
    text_model  the text tower's directory, only when it is not the packaged MiniLM
    code/       the mmpipe source (``code_paths``), so the model loads without mmpipe installed

**Files**: ``storage/summaries/chan/video_summaries.json``, the champion's summaries of
every validation- and test-window query (format: ``mmpipe.eval.summarization``).

**Watching a summary** (:func:`summarize_video`, behind ``mmpipe summarize``): a stored
video's detected shots are scored for a free-text query, the budget's best are kept, and
those shots, concatenated in time order, are written as an MP4.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from mmpipe.config import settings_from_dict
from mmpipe.eval.summarization import LengthBudget, SummaryShot, VideoSummary, select_shots, write_summaries
from mmpipe.layout import resolve_inside
from mmpipe.media.decode import write_spans_mp4
from mmpipe.media.features import FeatureTable, VideoFeaturesConfig, read_frame_features, read_shot_features
from mmpipe.nn.text_tower import TextFeatures, encode_texts, load_text_encoder
from mmpipe.partitions import read_days
from mmpipe.registry.mlflow_registry import CHALLENGER, CHAMPION, RunContext, configure, register_logged_model
from mmpipe.registry.pyfunc import (decode_base64_image, encode_base64_image, log_model_with_text_tower,
                                     read_logged_record)
from mmpipe.registry.serving import resolve_model_uri as registry_model_uri
from mmpipe.registry.serving import serving_version
from mmpipe.registry.serving import version_uri as registered_version_uri
from mmpipe.serving.service import ID, TEXT, NotReady, Operation, Param, ServingPaths, UnknownId
from mmpipe.spec import Trained
from mmpipe.systems.chan.data import CHANInputs, shot_vectors
from mmpipe.systems.chan.model import CHAN, CHANConfig
from mmpipe.systems.chan.train import CHANSettings, score_shots, select_by_scores

REGISTERED_NAME = "chan"
CONFIG_FILE = "chan.json"
QUERY, SHOT_VECTORS, SHOT_SECONDS = "query", "shot_vectors", "shot_seconds"
SUMMARIES_FILE = Path("summaries") / "chan" / "video_summaries.json"  # under storage/


def encode_array(array: np.ndarray) -> str:
    """A pyfunc array value: base64 of the ``.npy`` file of ``array``."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return encode_base64_image(buffer.getvalue())


def decode_array(value: str, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(decode_base64_image(value)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{what} is not a base64 .npy array: {err}") from None


def make_pyfunc_input(queries: Sequence[str], shot_vectors: Sequence[np.ndarray],
                      shot_seconds: Sequence[np.ndarray | None] | None = None) -> pd.DataFrame:
    """The serving DataFrame for (query, shot vectors [N, D'], optional durations [N]) rows."""
    if len(queries) != len(shot_vectors) or (shot_seconds is not None and len(shot_seconds) != len(queries)):
        raise ValueError("need one query, one shot-vector array (and one duration array or None) per row")
    frame = pd.DataFrame({QUERY: list(queries),
                          SHOT_VECTORS: [encode_array(np.asarray(f, np.float32)) for f in shot_vectors]})
    if shot_seconds is not None:
        frame[SHOT_SECONDS] = [None if s is None else encode_array(np.asarray(s, np.float64)) for s in shot_seconds]
    return frame


@dataclass
class Summarizer:
    """A CHAN with what serving needs beside its weights: its length budget and text tower
    (loaded on the first query)."""

    model: CHAN
    budget: LengthBudget
    text_max_length: int
    text_model_dir: Path | None = None
    _text_tower: tuple | None = None

    def __post_init__(self) -> None:
        self.model.eval()

    @classmethod
    def from_files(cls, weights: Path, config_path: Path, text_model_dir: Path | None = None) -> Summarizer:
        """Load logged artifacts; ``text_model_dir=None`` means the packaged MiniLM."""
        record = read_logged_record(config_path, text_model_dir, "CHAN")
        model = CHAN(settings_from_dict(CHANConfig, record["model"]), record.get("concepts", ()))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, LengthBudget(**record["budget"]), record["text"]["max_length"], text_model_dir)

    def query_features(self, queries: Sequence[str]) -> TextFeatures:
        """The text tower's final-layer states of ``queries``, as the training cache holds them."""
        if self._text_tower is None:
            self._text_tower = load_text_encoder(self.text_model_dir)
        tokenizer, text_model = self._text_tower
        return encode_texts(list(queries), tokenizer, text_model, max_length=self.text_max_length)

    @torch.no_grad()
    def score(self, queries: Sequence[str], shot_vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per row, each shot's relevance probability to the row's query."""
        empty = [row for row, query in enumerate(queries) if not isinstance(query, str) or not query.strip()]
        if empty:
            raise ValueError(f"row {empty[0]}: the query is empty")
        dim = self.model.config.shot_dim
        bad = [row for row, f in enumerate(shot_vectors) if f.ndim != 2 or f.shape[1] != dim or not len(f)]
        if bad:
            raise ValueError(f"row {bad[0]}: shot vectors must be [N >= 1, {dim}], got {shot_vectors[bad[0]].shape}")
        text = self.query_features(queries)
        longest = max(len(f) for f in shot_vectors)
        shots = torch.zeros(len(queries), longest, dim)
        mask = torch.zeros(len(queries), longest, dtype=torch.bool)
        for i, vectors in enumerate(shot_vectors):
            shots[i, :len(vectors)] = torch.from_numpy(np.asarray(vectors, np.float32))
            mask[i, :len(vectors)] = True
        probabilities = torch.sigmoid(self.model(shots, mask, text.hidden, text.mask))
        return [probabilities[i, :len(f)].numpy() for i, f in enumerate(shot_vectors)]


class CHANPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: see the module docstring for the input and output columns."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        text_model_dir = Path(artifacts["text_model"]) if "text_model" in artifacts else None
        self.embedder = Summarizer.from_files(Path(artifacts["weights"]), Path(artifacts["config"]), text_model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = sorted({QUERY, SHOT_VECTORS} - set(model_input.columns))
        unknown = sorted(set(model_input.columns) - {QUERY, SHOT_VECTORS, SHOT_SECONDS})
        if missing or unknown:
            raise ValueError(f"input columns must be {QUERY!r}, {SHOT_VECTORS!r} and optionally {SHOT_SECONDS!r}; "
                             f"missing {missing}, unexpected {unknown}")
        summarizer: Summarizer = self.embedder
        vectors = [decode_array(value, f"row {row} {SHOT_VECTORS}")
                   for row, value in enumerate(model_input[SHOT_VECTORS])]
        scores = summarizer.score(model_input[QUERY].tolist(), vectors)
        seconds = (model_input[SHOT_SECONDS].tolist() if SHOT_SECONDS in model_input
                   else [None] * len(model_input))
        selected = []
        for row, (score, value) in enumerate(zip(scores, seconds)):
            if isinstance(value, str) and value.strip():
                durations = decode_array(value, f"row {row} {SHOT_SECONDS}")
            elif summarizer.budget.seconds is not None:
                raise ValueError(f"row {row}: the model's budget is {summarizer.budget.seconds:g} s: "
                                 f"give {SHOT_SECONDS}")
            else:
                durations = np.ones(len(score))
            selected.append(select_shots(score, durations, summarizer.budget).tolist())
        return pd.DataFrame({"scores": [score.tolist() for score in scores], "selected": selected})


def default_input_example(shot_dim: int) -> pd.DataFrame:
    """Two rows: five shots of a smooth signal for a two-concept query, with their durations
    (the column is optional: the second row has none), and three shots for one concept."""
    vectors = [np.sin(np.arange(n * shot_dim, dtype=np.float32).reshape(n, shot_dim) / 7) for n in (5, 3)]
    return make_pyfunc_input(["red, striped", "circle"], vectors, [np.full(5, 1.5), None])


def log_chan(model: CHAN, budget: LengthBudget, text_model_dir: Path | None, run_context: RunContext, *,
             text_max_length: int, registered_name: str = REGISTERED_NAME) -> tuple[str, str]:
    """Log ``model`` as a pyfunc in the active run and register it (``challenger`` alias);
    return (model_uri, version). ``text_model_dir``: the text tower its queries were cached
    by (None, or the packaged MiniLM's directory, pins the package), cut at ``text_max_length``."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_chan logs into the active MLflow run: "
                           "call it inside mmpipe.registry.mlflow_registry.start_run(...)")
    record = {"model": asdict(model.config), "concepts": list(model.concepts), "budget": asdict(budget),
              "text": {"max_length": text_max_length}}
    model_uri = log_model_with_text_tower(
        model, record, CONFIG_FILE, CHANPyfunc, Summarizer.from_files, text_model_dir,
        default_input_example(model.config.shot_dim),
        metadata={"shot_dim": model.config.shot_dim, "frame_extremes": model.config.frame_extremes,
                  "concepts": list(model.concepts), "budget": budget.to_dict(),
                  "outputs": ["scores", "selected"]})
    return model_uri, register_logged_model(model_uri, registered_name, run_context)


def register(trained: Trained, settings: CHANSettings, run_context: RunContext) -> str:
    """The lifecycle's entry point: log the trained CHAN into the active MLflow run and register
    it as the ``challenger``; returns its version. Its queries were the pipeline's video-text
    cache (the packaged MiniLM at ``video_features.text_max_length``)."""
    return log_chan(trained.model, settings.budget, None, run_context,
                    text_max_length=VideoFeaturesConfig.from_params().text_max_length)[1]


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def load_summarizer(model: str | Path) -> Summarizer:
    """A :class:`Summarizer` from an MLflow model URI (``models:/chan@champion``, ``runs:/...``)
    or a local MLflow model directory."""
    if str(model).startswith(("models:", "runs:")):
        configure()  # resolve registry/run URIs against the project's tracking store
    return mlflow.pyfunc.load_model(str(model)).unwrap_python_model().embedder


def load_version_summarizer(version: str, name: str = REGISTERED_NAME) -> Summarizer:
    """The :class:`Summarizer` of registered ``version``. The pipeline runs it over the
    video-text cache (packaged MiniLM states at ``video_features.text_max_length``): a version
    whose text tower or query length is another is refused."""
    uri = version_uri(version, name)
    summarizer = load_summarizer(uri)
    problems = []
    if mlflow.models.get_model_info(uri).metadata.get("text_model") != "package":
        problems.append("its text tower is not the packaged MiniLM the cache comes from")
    cache_length = VideoFeaturesConfig.from_params().text_max_length
    if summarizer.text_max_length != cache_length:
        problems.append(f"it was trained on queries cut at {summarizer.text_max_length} tokens, the cache at "
                        f"{cache_length}")
    if problems:
        raise ValueError(f"{uri} cannot run over the pipeline's video-text cache: {'; '.join(problems)}")
    return summarizer


def load_version_model(version: str, name: str = REGISTERED_NAME) -> CHAN:
    """The CHAN of registered ``version`` (checked as :func:`load_version_summarizer`), in eval mode."""
    return load_version_summarizer(version, name).model.eval()


# ---------------------------------------------------------------------------------------
# summaries: of the held-out queries, and of one video for a free-text query


def query_summaries(model: CHAN, inputs: CHANInputs, rows: np.ndarray, budget: LengthBudget) -> list[VideoSummary]:
    """The model's summary of each query row: its selected shots with their scores."""
    scores = score_shots(model, inputs, rows)
    summaries = []
    for row, score, selected in zip(rows, scores, select_by_scores(inputs, rows, scores, budget)):
        video = inputs.video_of(row)
        shots = tuple(SummaryShot(int(video.shot_ids[s]), float(video.start_s[s]), float(video.end_s[s]),
                                  float(score[s])) for s in selected)
        query = inputs.queries.iloc[row]
        summaries.append(VideoSummary(video.video_id, str(query["query"]), shots, str(query["query_id"]), budget))
    return summaries


def write_query_summaries(storage: Path, model: CHAN, inputs: CHANInputs, windows: Sequence[str],
                          budget: LengthBudget, model_name: str) -> tuple[Path, list[VideoSummary]]:
    """Summaries of every query of ``windows`` to ``storage/summaries/chan/video_summaries.json``."""
    rows = np.concatenate([inputs.query_rows(window) for window in windows])
    summaries = query_summaries(model, inputs, rows, budget)
    return write_summaries(Path(storage) / SUMMARIES_FILE, summaries, model=model_name), summaries


def resolve_model_uri(name: str = REGISTERED_NAME, aliases: Sequence[str] = (CHAMPION, CHALLENGER)) -> str:
    """``models:/chan@champion``, else ``@challenger``; a SearchSetupError saying what to run otherwise."""
    return registry_model_uri(name, aliases)


def summarize_video(video_id: str, query: str, out: Path, storage: Path, raw_root: Path,
                    budget: LengthBudget | None = None, model: str | None = None) -> VideoSummary:
    """Score the detected shots of stored video ``video_id`` for ``query`` with CHAN (``model``:
    an MLflow URI, default the champion, else the challenger), keep the budget's best (the
    model's own budget by default) and write them, concatenated in time order, to ``out`` (MP4).

    Reads the validated videos (its file and day), the shot features of its day (by the
    encoder version the features were last computed by) and the raw video file."""
    videos = read_days(Path(storage) / "validated" / "videos")
    row = videos[videos["video_id"].astype(str) == video_id]
    if row.empty:
        raise KeyError(f"video {video_id!r} is not among the validated videos under {Path(storage) / 'validated'}")
    row = row.iloc[0]
    day = str(row["created_at"])
    table = read_shot_features(storage, [day])
    rows = np.flatnonzero(table.index["video_id"].astype(str).to_numpy() == video_id)
    if not len(rows):
        raise KeyError(f"video {video_id!r} has no shot features (its frames may have been quarantined)")
    shots = table.index.iloc[rows]
    summarizer = load_summarizer(model or resolve_model_uri())
    frames = (read_frame_features(storage, [day], table.encoder, table.version)
              if summarizer.model.config.frame_extremes else None)
    vectors = shot_vectors(video_id, shots, table.embedding[rows], frames)
    scores = summarizer.score([query], [vectors])[0]
    budget = budget or summarizer.budget
    durations = (shots["end_s"] - shots["start_s"]).to_numpy(float)
    selected = select_shots(scores, durations, budget)
    chosen = tuple(SummaryShot(int(shots["shot_id"].iat[s]), float(shots["start_s"].iat[s]),
                               float(shots["end_s"].iat[s]), float(scores[s])) for s in selected)
    write_spans_mp4(resolve_inside(Path(raw_root), str(row["video_path"])), [(s.start_s, s.end_s) for s in chosen],
                    Path(out))
    return VideoSummary(video_id, query, chosen, None, budget)


# ---------------------------------------------------------------------------------------
# warm serving (`mmpipe serve`): a stored video's query-focused summary, loaded once


@dataclass
class VideoShots:
    """One stored video's detected shots (shot_id, start_s, end_s) and the vectors CHAN scores."""

    shots: pd.DataFrame
    vectors: np.ndarray


def stored_video_shots(shots: FeatureTable, frames: FeatureTable | None) -> dict[str, VideoShots]:
    """Every video of the shot-feature table, with its shots' vectors as :func:`shot_vectors`
    builds them (frame extremes from ``frames`` when the model reads them)."""
    frame_rows = frames.video_rows() if frames is not None else {}
    found = {}
    for video_id, rows in shots.video_rows().items():
        video_frames = None
        if frames is not None:
            if video_id not in frame_rows:
                continue
            picked = frame_rows[video_id]
            video_frames = FeatureTable(frames.index.iloc[picked], frames.embedding[picked], frames.encoder,
                                        frames.version)
        table = shots.index.iloc[rows].reset_index(drop=True)
        found[video_id] = VideoShots(table, shot_vectors(video_id, table, shots.embedding[rows], video_frames))
    return found


@dataclass
class SummaryServing:
    """One loaded version: its summarizer and every stored video's shot vectors."""

    version: str
    summarizer: Summarizer
    videos: dict[str, VideoShots]


class SummaryService:
    """CHAN's serving side (:class:`mmpipe.serving.service.Service`): the registered champion
    (else the challenger), over the stored shot features (by the encoder version they were
    last computed by, as ``mmpipe summarize`` reads them)."""

    name = "chan"
    registered_model = REGISTERED_NAME

    def __init__(self, paths: ServingPaths):
        self.storage = Path(paths.storage)
        self.operations = (
            Operation("summary", "summary", "a query-focused summary of a stored video: every shot's relevance "
                      "and the shots the model's length budget keeps",
                      (Param("video", ID, "a video id"), Param("q", TEXT, "concept words, e.g. 'red, striped'")),
                      self.summary),)

    def target_version(self) -> str | None:
        return serving_version(REGISTERED_NAME)

    def load(self, version: str) -> SummaryServing:
        summarizer = load_summarizer(version_uri(version))
        summarizer.query_features(["warm up"])  # the text tower loaded now, not by the first request
        try:
            shots = read_shot_features(self.storage)
            frames = (read_frame_features(self.storage, encoder=shots.encoder, version=shots.version)
                      if summarizer.model.config.frame_extremes else None)
        except FileNotFoundError as err:
            raise NotReady(str(err)) from None
        return SummaryServing(str(version), summarizer, stored_video_shots(shots, frames))

    @staticmethod
    def summary(served: SummaryServing, video: str, q: str) -> dict:
        stored = served.videos.get(video)
        if stored is None:
            raise UnknownId(f"unknown video {video!r}: no shot features hold it")
        scores = served.summarizer.score([q], [stored.vectors])[0]
        shots = stored.shots
        durations = (shots["end_s"] - shots["start_s"]).to_numpy(float)
        selected = set(select_shots(scores, durations, served.summarizer.budget).tolist())
        return {"video_id": video, "query": q, "budget": served.summarizer.budget.to_dict(),
                "results": [{"shot_id": int(shot_id), "start_s": round(float(start), 3), "end_s": round(float(end), 3),
                             "score": round(float(score), 6), "selected": position in selected}
                            for position, (shot_id, start, end, score) in
                            enumerate(zip(shots["shot_id"], shots["start_s"], shots["end_s"], scores))]}
