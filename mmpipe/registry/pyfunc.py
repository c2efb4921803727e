"""What every system's MLflow pyfunc needs, whatever it embeds or predicts: images as
base64 in serving frames, pinned requirements, and the package source as ``code_paths``
so a logged model loads without mmpipe installed."""

from __future__ import annotations

import base64
import binascii
import shutil
from importlib.metadata import version
from os import PathLike
from pathlib import Path


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


def copy_package_source(into: Path) -> Path:
    """A clean copy of the mmpipe package (no bytecode) for ``code_paths``."""
    package = Path(__file__).resolve().parent.parent
    target = into / package.name
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target
