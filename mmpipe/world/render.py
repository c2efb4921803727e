"""Drawing objects and backgrounds with Pillow: shared by pin images and video frames."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmpipe.world.attributes import COLOR_RGB, SIZE_SCALE, ObjectSpec


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of a shape inscribed in the unit circle, centred on the origin."""
    if shape == "circle":
        return [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 36, endpoint=False)]
    if shape == "square":
        s = 0.75
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if shape == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        return points
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(float(a) / 17, float(b) / 17) for a, b in zip(x, y)]
    if shape == "cross":
        a, b = 0.32, 0.9
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
                (-b, a), (-b, -a), (-a, -a)]
    raise ValueError(f"unknown shape {shape!r}")


def _place(points, cx: float, cy: float, radius: float, rotation_deg: float):
    theta = math.radians(rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points]


def _pattern_fill(pattern: str, rgb: tuple[int, int, int], side: int, period: int) -> Image.Image:
    """A side x side RGB texture of the object's colour carrying its pattern."""
    base = np.array(rgb, dtype=np.float32)
    # The pattern's second tone: darker for light colours, lighter for dark ones.
    second = base * 0.35 if base.mean() > 110 else np.minimum(base + 120, 255)
    yy, xx = np.mgrid[0:side, 0:side]
    if pattern == "solid":
        mask = np.zeros((side, side), dtype=bool)
    elif pattern == "striped":
        mask = ((xx + yy) // max(period // 2, 1)) % 2 == 0
    elif pattern == "dotted":
        mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 4) ** 2
    elif pattern == "checkered":
        mask = ((xx // max(period // 2, 1)) + (yy // max(period // 2, 1))) % 2 == 0
    elif pattern == "ringed":
        r = np.sqrt((xx - side / 2) ** 2 + (yy - side / 2) ** 2)
        mask = (r // max(period // 2, 1)) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    out = np.where(mask[..., None], second, base)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def draw_object(
    canvas: Image.Image,
    spec: ObjectSpec,
    center: tuple[float, float],
    rotation_deg: float = 0.0,
    scale_jitter: float = 1.0,
) -> None:
    """Draw ``spec`` onto ``canvas`` in place, centred at ``center`` (pixels)."""
    side = canvas.width
    radius = 0.5 * SIZE_SCALE[spec.size] * side * scale_jitter
    cx, cy = center
    polygon = _place(_unit_polygon(spec.shape), cx, cy, radius, rotation_deg)
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    period = max(4, int(radius / 2.2))
    texture = _pattern_fill(spec.pattern, COLOR_RGB[spec.color], side, period)
    canvas.paste(texture, (0, 0), mask)
    if spec.outline != "none":
        draw = ImageDraw.Draw(canvas)
        width = {"thin": max(1, side // 64), "thick": max(3, side // 20), "double": max(1, side // 64)}[
            spec.outline
        ]
        draw.polygon(polygon, outline=(15, 15, 15), width=width)
        if spec.outline == "double":
            inner = _place(_unit_polygon(spec.shape), cx, cy, radius * 0.7, rotation_deg)
            draw.polygon(inner, outline=(15, 15, 15), width=width)


def background(rng: np.random.Generator, side: int) -> Image.Image:
    """A muted, textured background: a random gradient, low-contrast blobs and noise."""
    c0 = rng.uniform(60, 190, size=3)
    c1 = np.clip(c0 + rng.uniform(-60, 60, size=3), 0, 255)
    direction = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    t = (xx * math.cos(direction) + yy * math.sin(direction) + 1.5) / 3.0
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.uniform(0, side, size=2)
        r = rng.uniform(side * 0.05, side * 0.25)
        tone = tuple(int(v) for v in np.clip(c0 + rng.uniform(-35, 35, size=3), 0, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    return pil.filter(ImageFilter.GaussianBlur(radius=side / 40))


def add_noise(img: Image.Image, rng: np.random.Generator, sigma: float = 6.0) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, sigma, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
