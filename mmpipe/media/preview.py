"""Small PNG previews (image grids, frame strips) for metadata and reports."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from mmpipe.media.images import open_rgb


def grid_png(images: list[np.ndarray | Image.Image], columns: int = 8, tile: int = 64) -> bytes:
    """Tile images (RGB arrays or PIL images) into one PNG, row-major."""
    if not images:
        raise ValueError("grid_png needs at least one image")
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    for i, image in enumerate(images):
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        canvas.paste(pil.convert("RGB").resize((tile, tile)), ((i % columns) * tile, (i // columns) * tile))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def image_files_grid_png(paths: list[Path], columns: int = 8, tile: int = 64) -> bytes:
    return grid_png([open_rgb(path) for path in paths], columns=columns, tile=tile)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline (renders in the Dagster UI's metadata view)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
