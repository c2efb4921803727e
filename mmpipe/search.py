"""Nearest pins to a text query, an image or another pin: the Python API behind ``mmpipe search``.

Which embeddings a query meets, made explicit because PinCLIP's spaces are not one space:

* **text** query -> its PinCLIP text embedding, searched in the **image** index. ClipLoss
  pulls a caption's text embedding towards its own pin's *image* embedding, so text and
  image embeddings share a space; the fused embedding is trained by the neighbor loss
  (fused against fused), never against text.
* **image** query -> its image embedding, in the **image** index.
* **pin** query -> the pin's stored fused embedding, in the **fused** index (neighbor
  alignment makes fused embeddings of board neighbors close); the pin itself is dropped.

``PinSearcher(text_index=..., pin_index=...)`` overrides either choice.

Files (written by the pipeline; paths are the defaults under ``project_root()``)::

    storage/index/pins/image/        PinIndex of image embeddings
    storage/index/pins/fused/        PinIndex of fused embeddings
    storage/embeddings/pins/*.parquet  pin_embeddings partitions: pin_id, image, text, fused
    storage/validated/pins/          captions (title + description), one parquet file per day
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from mmpipe.index.faiss_index import PinIndex
from mmpipe.params import project_root
from mmpipe.train.pin_data import caption_text

# torch, transformers and mlflow are imported where a model is needed (text and image
# queries): loading them takes seconds, and a pin query needs none of them.
if TYPE_CHECKING:
    from mmpipe.registry.pinclip_pyfunc import PinEmbedder

IMAGE_INDEX, FUSED_INDEX = "image", "fused"
EMBEDDING_KINDS = ("image", "text", "fused")

DEFAULT_INDEX_DIR = Path("storage/index/pins")
DEFAULT_PINS_TABLE = Path("storage/validated/pins")  # day partitions <YYYY-MM-DD>.parquet
DEFAULT_EMBEDDINGS_DIR = Path("storage/embeddings/pins")

RUN_PIPELINE_FIRST = "run `make run` first"


class SearchSetupError(FileNotFoundError):
    """A model, index or file the search needs does not exist yet."""


def embedding_files(source: Path | Sequence[Path]) -> list[Path]:
    """The pin_embeddings parquet files: ``source`` itself, the ``*.parquet`` in a
    directory (sorted, so partitions read in date order), or a list of files."""
    if not isinstance(source, (str, os.PathLike)):
        return [Path(path) for path in source]
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.parquet"))
    else:
        files = [source] if source.is_file() else []
    if not files:
        raise SearchSetupError(f"no pin embeddings at {source}; {RUN_PIPELINE_FIRST}")
    return files


def read_pin_embeddings(
    source: Path | Sequence[Path], kind: str = FUSED_INDEX, pin_ids: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """(pin ids, float32 [N, E] vectors of ``kind``) from pin_embeddings parquet files.

    Each file has ``pin_id`` and one list-of-floats column per kind (image, text,
    fused). With ``pin_ids`` only those pins are read (a filter pushed into parquet), in
    file order; ids not found are simply absent from the result.
    """
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
    filters = None if pin_ids is None else [("pin_id", "in", list(pin_ids))]
    frames = [pd.read_parquet(path, columns=["pin_id", kind], filters=filters)
              for path in embedding_files(source)]
    table = pd.concat(frames, ignore_index=True)
    if table.empty:
        return [], np.zeros((0, 0), dtype=np.float32)
    vectors = np.stack([np.asarray(vector, dtype=np.float32) for vector in table[kind]])
    return table["pin_id"].astype(str).tolist(), vectors


def _sqlite_store_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def resolve_model_uri(name: str | None = None, aliases: Sequence[str] | None = None) -> str:
    """``models:/name@alias`` for the first alias that is set: by default the registered
    PinCLIP at ``champion``, else ``challenger``."""
    from mmpipe.registry.mlflow_registry import CHALLENGER, CHAMPION, configure, tracking_uri

    store = _sqlite_store_path(tracking_uri())
    if store is not None and not store.exists():  # opening it would create an empty store
        raise SearchSetupError(f"no MLflow tracking store at {store}; {RUN_PIPELINE_FIRST}")

    from mlflow.exceptions import MlflowException

    from mmpipe.registry.pinclip_pyfunc import REGISTERED_NAME

    name = name or REGISTERED_NAME
    aliases = aliases or (CHAMPION, CHALLENGER)
    client = configure()
    for alias in aliases:
        try:
            client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        return f"models:/{name}@{alias}"
    raise SearchSetupError(f"registered model {name!r} has none of the aliases {list(aliases)}; "
                           f"{RUN_PIPELINE_FIRST} (or pass a model URI / checkpoint directory)")


class PinSearcher:
    """Nearest pins by text, image or pin id, over the saved PinIndex directories.

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
        self._indexes: dict[str, PinIndex] = {}
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
        from mmpipe.registry.pinclip_pyfunc import PinEmbedder, load_embedder

        if not isinstance(self._model, PinEmbedder):
            from mlflow.exceptions import MlflowException

            model = resolve_model_uri() if self._model is None else self._model
            try:
                self._model = load_embedder(model, self.text_model_dir)
            except (MlflowException, OSError) as err:
                raise SearchSetupError(f"cannot load the model {model}: {err}") from err
        return self._model

    def index(self, kind: str) -> PinIndex:
        if kind not in self._indexes:
            directory = self.index_dir / kind
            try:
                self._indexes[kind] = PinIndex.load(directory)
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
        ids, vectors = read_pin_embeddings(self.embeddings, kind, pin_ids=[pin_id])
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
