"""Procedural scenes: one coloured object on a patterned background, with exact labels.

Scenes are drawn at 4x resolution with PIL and box-filtered down, so edges are
anti-aliased like a real (tiny) photograph. Everything is driven by a
``numpy.random.Generator``, so a seed reproduces a dataset bit for bit.

Example:
    >>> import numpy as np
    >>> from robust_encoders.miniature.scenes import render_scene
    >>> img = render_scene("star", "red", "checker", np.random.default_rng(0))
    >>> img.shape, img.dtype
    ((32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .concepts import COLOURS, CONCEPTS, OBJECTS, STYLES

__all__ = ["IMAGE_SIZE", "SceneBatch", "render_scene", "sample_scenes", "object_polygon"]

IMAGE_SIZE = 32
_SS = 4  # supersampling factor


@dataclass
class SceneBatch:
    """A batch of scenes with ground-truth labels (class indices per kind)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    objects: np.ndarray  # (N,) int64 index into OBJECTS
    colours: np.ndarray  # (N,) int64 index into COLOURS
    styles: np.ndarray  # (N,) int64 index into STYLES

    def __len__(self) -> int:
        return len(self.images)

    def labels(self, i: int) -> tuple[str, str, str]:
        return OBJECTS[self.objects[i]], COLOURS[self.colours[i]], STYLES[self.styles[i]]


def object_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of an object outline (circle returns a 48-gon)."""
    if kind == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif kind == "square":
        s = 0.78
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(x, y + 0.15) for x, y in pts]
    elif kind == "star":
        pts = []
        for i in range(10):
            rad = 1.0 if i % 2 == 0 else 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif kind == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = [
            (
                (16 * math.sin(t) ** 3) / 17.0,
                -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17.0 + 0.1,
            )
            for t in ts
        ]
    elif kind == "cross":
        a, b = 0.32, 0.95
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    else:
        raise ValueError(f"Unknown object {kind!r}; expected one of {OBJECTS}.")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _background(style: str, rng: np.random.Generator, size: int) -> Image.Image:
    light = int(rng.integers(200, 236))
    dark = int(rng.integers(110, 150))
    img = Image.new("RGB", (size, size), (light,) * 3)
    if style == "plain":
        return img
    draw = ImageDraw.Draw(img)
    unit = size / IMAGE_SIZE
    if style == "stripes":
        period = rng.uniform(6.0, 8.0) * unit
        off = rng.uniform(0, period)
        orient = int(rng.integers(0, 3))  # horizontal, vertical, diagonal
        n = int(3 * size / period) + 4
        for k in range(-n, n):
            p = off + k * period
            w = period / 2
            if orient == 0:
                draw.rectangle([0, p, size, p + w], fill=(dark,) * 3)
            elif orient == 1:
                draw.rectangle([p, 0, p + w, size], fill=(dark,) * 3)
            else:
                draw.polygon([(p, 0), (p + w, 0), (p + w - size, size), (p - size, size)], fill=(dark,) * 3)
    elif style == "checker":
        cell = rng.uniform(5.0, 7.0) * unit
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        n = int(size / cell) + 3
        for i in range(-2, n):
            for j in range(-2, n):
                if (i + j) % 2 == 0:
                    x0, y0 = ox + i * cell - cell, oy + j * cell - cell
                    draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(dark,) * 3)
    elif style == "dots":
        step = rng.uniform(5.5, 7.0) * unit
        rad = rng.uniform(1.3, 1.8) * unit
        ox, oy = rng.uniform(0, step, size=2)
        n = int(size / step) + 2
        for i in range(-1, n):
            for j in range(-1, n):
                x, y = ox + i * step + (step / 2 if j % 2 else 0), oy + j * step
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(dark - 20,) * 3)
    else:
        raise ValueError(f"Unknown style {style!r}; expected one of {STYLES}.")
    return img


def render_scene(obj: str, colour: str, style: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one scene and return it as an (size, size, 3) uint8 array."""
    if colour not in COLOURS:
        raise ValueError(f"Unknown colour {colour!r}; expected one of {COLOURS}.")
    big = size * _SS
    img = _background(style, rng, big)
    r = rng.uniform(0.26, 0.36) * big
    margin = r * 0.9
    cx, cy = rng.uniform(margin, big - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi) if obj not in ("heart", "triangle") else rng.uniform(-0.5, 0.5)
    base = np.array(CONCEPTS[colour].rgb, dtype=np.float64)
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-14, 15, size=3), 0, 255))
    ImageDraw.Draw(img).polygon(object_polygon(obj, cx, cy, r, angle), fill=rgb)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def sample_scenes(n: int, seed: int | np.random.Generator = 0, size: int = IMAGE_SIZE) -> SceneBatch:
    """Draw ``n`` scenes with uniformly random object, colour and style."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    o = rng.integers(0, len(OBJECTS), n)
    c = rng.integers(0, len(COLOURS), n)
    s = rng.integers(0, len(STYLES), n)
    imgs = np.stack([render_scene(OBJECTS[o[i]], COLOURS[c[i]], STYLES[s[i]], rng, size) for i in range(n)])
    return SceneBatch(imgs, o.astype(np.int64), c.astype(np.int64), s.astype(np.int64))
