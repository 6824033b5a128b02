"""Drawing the embedded world's objects: shape classes, colours and backgrounds.

Each class is a silhouette drawn into a square mask; objects are the mask, rotated
(+-30 degrees), filled with a jittered named colour and composited on a background.
Everything takes a ``numpy.random.Generator`` so a seed fixes every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "heart", "crescent", "arrow", "diamond", "hexagon", "semicircle",
)  # fmt: skip

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "orange": (240, 140, 30),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}

MAX_ROTATION_DEG = 30.0
_MASK_SUPERSAMPLE = 2  # draw masks at 2x and downsample: cheap anti-aliasing


def _polygon(points: list[tuple[float, float]]) -> Callable[[ImageDraw.ImageDraw, float], None]:
    def draw(canvas: ImageDraw.ImageDraw, size: float) -> None:
        c = size / 2
        canvas.polygon([(c + x * c, c + y * c) for x, y in points], fill=255)

    return draw


def _regular(
    n: int, radius: float = 0.95, phase: float = -math.pi / 2
) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * k / n),
            radius * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5), _regular(5, 0.4, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _heart() -> list[tuple[float, float]]:
    points = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x / 17, -y / 17 + 0.1))
    return points


def _ellipse(inset: float) -> Callable[[ImageDraw.ImageDraw, float], None]:
    def draw(canvas: ImageDraw.ImageDraw, size: float) -> None:
        canvas.ellipse(
            [inset * size, inset * size, (1 - inset) * size, (1 - inset) * size], fill=255
        )

    return draw


def _ring(canvas: ImageDraw.ImageDraw, size: float) -> None:
    _ellipse(0.03)(canvas, size)
    canvas.ellipse([0.3 * size, 0.3 * size, 0.7 * size, 0.7 * size], fill=0)


def _crescent(canvas: ImageDraw.ImageDraw, size: float) -> None:
    _ellipse(0.03)(canvas, size)
    canvas.ellipse([0.3 * size, -0.05 * size, 1.1 * size, 0.85 * size], fill=0)


def _semicircle(canvas: ImageDraw.ImageDraw, size: float) -> None:
    canvas.pieslice([0.03 * size, 0.25 * size, 0.97 * size, 1.2 * size], 180, 360, fill=255)


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, float], None]] = {
    "circle": _ellipse(0.05),
    "square": _polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": _polygon([(0.0, -0.95), (0.95, 0.8), (-0.95, 0.8)]),
    "star": _polygon(_star()),
    "cross": _polygon(
        [
            (-0.3, -0.95),
            (0.3, -0.95),
            (0.3, -0.3),
            (0.95, -0.3),
            (0.95, 0.3),
            (0.3, 0.3),
            (0.3, 0.95),
            (-0.3, 0.95),
            (-0.3, 0.3),
            (-0.95, 0.3),
            (-0.95, -0.3),
            (-0.3, -0.3),
        ]
    ),
    "ring": _ring,
    "heart": _polygon(_heart()),
    "crescent": _crescent,
    "arrow": _polygon(
        [
            (-0.95, -0.25),
            (0.2, -0.25),
            (0.2, -0.7),
            (0.95, 0.0),
            (0.2, 0.7),
            (0.2, 0.25),
            (-0.95, 0.25),
        ]
    ),
    "diamond": _polygon([(0.0, -0.95), (0.55, 0.0), (0.0, 0.95), (-0.55, 0.0)]),
    "hexagon": _polygon(_regular(6, phase=0.0)),
    "semicircle": _semicircle,
}


def shape_mask(shape: str, size: int, rotation_deg: float) -> Image.Image:
    """An ``L`` mask (255 inside) of ``shape`` in a ``size`` square, rotated."""
    big = size * _MASK_SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _DRAWERS[shape](ImageDraw.Draw(mask), big)
    mask = mask.rotate(rotation_deg, resample=Image.Resampling.BILINEAR)
    return mask.resize((size, size), Image.Resampling.BILINEAR)


def jittered_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    base = np.array(COLOURS[name], dtype=np.int64)
    value = np.clip(base + rng.integers(-25, 26, size=3), 0, 255)
    return (int(value[0]), int(value[1]), int(value[2]))


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Low-saturation noise; half the time with stripes or a checkerboard on top."""
    grey = rng.integers(70, 190)
    tint = rng.integers(-20, 21, size=3)
    base = np.clip(grey + tint, 0, 255).astype(np.float32)
    pixels = base + rng.normal(0.0, 14.0, size=(height, width, 3)).astype(np.float32)
    pattern = rng.integers(0, 4)  # 0, 1: plain noise; 2: stripes; 3: checks
    if pattern >= 2:
        period = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:height, 0:width]
        if pattern == 2:
            angle = rng.uniform(0, math.pi)
            phase = (xx * math.cos(angle) + yy * math.sin(angle)) // period
        else:
            phase = xx // period + yy // period
        pixels += np.where((phase % 2)[..., None] == 0, 18.0, -18.0).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def paste_object(
    canvas: Image.Image,
    rng: np.random.Generator,
    shape: str,
    colour: str,
    size: int,
    left: int,
    top: int,
) -> np.ndarray:
    """Draw one object; returns its boolean mask in canvas coordinates (clipped)."""
    rotation = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    mask = shape_mask(shape, size, rotation)
    fill = Image.new("RGB", (size, size), jittered_colour(rng, colour))
    canvas.paste(fill, (left, top), mask)
    full = np.zeros((canvas.height, canvas.width), dtype=bool)
    m = np.asarray(mask) >= 128
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, canvas.width), min(top + size, canvas.height)
    if x1 > x0 and y1 > y0:
        full[y0:y1, x0:x1] = m[y0 - top : y1 - top, x0 - left : x1 - left]
    return full
