"""Pixels as every image model here sees them: uint8 frames and images to normalised floats."""

from __future__ import annotations

import torch

# The mean/std of transformers' ViTImageProcessor, so a pretrained ViT sees what it expects.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 normalised with IMAGE_MEAN/IMAGE_STD."""
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), torch.tensor(IMAGE_MEAN).view(3, 1, 1) / std
    return images.float().mul_(scale).sub_(shift)  # in place on the float copy: one pass less
