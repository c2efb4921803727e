"""The attribute vocabulary of the generated world: what objects can be, and how it looks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "diamond", "hexagon", "heart", "cross"),
    "color": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white"),
    "pattern": ("solid", "striped", "dotted", "checkered", "ringed"),
    "size": ("tiny", "small", "medium", "large"),
    "outline": ("none", "thin", "thick", "double"),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (35, 80, 220),
    "purple": (130, 50, 190),
    "pink": (245, 120, 190),
    "white": (245, 245, 245),
}

# Object diameter as a fraction of the canvas side.
SIZE_SCALE: dict[str, float] = {"tiny": 0.2, "small": 0.3, "medium": 0.42, "large": 0.56}


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a value for every attribute."""

    shape: str
    color: str
    pattern: str
    size: str
    outline: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"{name}={value!r} is not one of {ATTRIBUTES[name]}")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}

    @classmethod
    def sample(cls, rng: np.random.Generator, fixed: dict[str, str] | None = None) -> "ObjectSpec":
        """A uniformly random object, with the attributes in ``fixed`` forced."""
        fixed = fixed or {}
        values = {
            name: fixed.get(name) or str(rng.choice(ATTRIBUTES[name])) for name in ATTRIBUTE_NAMES
        }
        return cls(**values)
