"""Reading a still image as every model and preview here sees it: upright, RGB.

A phone stores a photo taken in portrait as landscape pixels plus an EXIF ``Orientation``
tag telling viewers to turn it; read without the tag, the photo trains and displays on its
side. Grey, palette and CMYK JPEGs (print workflows write CMYK) become RGB the same way.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path``, turned as its EXIF orientation says, in RGB (fully loaded:
    the file is closed on return)."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)  # a copy when it turns, else the image itself
        return upright.convert("RGB")  # convert copies, so nothing refers to the closed file
