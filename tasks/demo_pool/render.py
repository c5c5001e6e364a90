"""Draw one demo image of a concept.

In:  a :class:`~tasks.demo_pool.concepts.Concept`, an image size (width, height) and a numpy
     random generator (the only source of randomness, so a seed fixes the pixels).
Out: a PIL RGB image: a light, textured background (plain, gradient, stripes, dots or noise)
     with the concept drawn on it: a coloured shape at a random position, scale and rotation
     (sometimes two or three of them), or a web-like picture (page screenshot, text page,
     barcode, bar chart). The background never decides the concept; shape and colour do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tasks.demo_pool.concepts import COLOUR_RGB, Concept

BACKGROUNDS = np.array(
    [(236, 236, 236), (246, 240, 226), (221, 226, 232), (229, 240, 229), (250, 250, 250),
     (214, 212, 202), (240, 228, 236), (226, 236, 244), (244, 244, 230), (232, 226, 216)],
    dtype=np.float32,
)
TEXTURES = ("plain", "gradient", "stripes", "dots", "noise")


def render_concept(concept: Concept, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    image = _background(width, height, rng)
    draw = ImageDraw.Draw(image)
    if concept.kind == "web":
        _WEB_DRAWERS[concept.name](draw, width, height, rng)
    else:
        colour = _jitter(COLOUR_RGB[concept.colour], rng, 18)
        count = 1 if rng.random() < 0.85 else int(rng.integers(2, 4))
        side = min(width, height)
        for _ in range(count):
            radius = side * (rng.uniform(0.26, 0.42) if count == 1 else rng.uniform(0.14, 0.22))
            cx = rng.uniform(radius, width - radius) if width > 2 * radius else width / 2
            cy = rng.uniform(radius, height - radius) if height > 2 * radius else height / 2
            _draw_shape(draw, concept.shape, cx, cy, radius, rng.uniform(0, 2 * np.pi), colour)
    return image


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    values = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in values)


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    base = BACKGROUNDS[rng.integers(len(BACKGROUNDS))] + rng.uniform(-6, 6, size=3)
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    pixels = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if texture == "gradient":
        other = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        t = (ys / max(height - 1, 1))[..., None] if rng.random() < 0.5 else (xs / max(width - 1, 1))[..., None]
        pixels = pixels * (1 - t) + other * t
    elif texture == "stripes":
        period = rng.uniform(6, 16)
        direction = rng.integers(3)
        coord = ys if direction == 0 else xs if direction == 1 else xs + ys
        pixels = pixels - 14.0 * ((coord // (period / 2)) % 2)[..., None]
    elif texture == "dots":
        period = int(rng.integers(6, 12))
        mask = ((ys % period) < 2) & ((xs % period) < 2)
        pixels = pixels - 22.0 * mask[..., None]
    elif texture == "noise":
        pixels = pixels + rng.normal(0, 7, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _unit_polygon(shape: str) -> np.ndarray:
    """Points of a shape of radius about 1 centred on the origin."""
    if shape in ("square", "triangle", "pentagon", "hexagon"):
        sides = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[shape]
        angles = np.linspace(0, 2 * np.pi, sides, endpoint=False) + np.pi / sides
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "diamond":
        return np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=float)
    if shape == "cross":
        a = 0.33
        return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                         (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=float)
    if shape == "arrow":
        return np.array([(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)])
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y], axis=1) / 17.0
    if shape == "crescent":
        t = np.linspace(-np.pi / 2, np.pi / 2, 24)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        inner = np.stack([0.3 * np.cos(t[::-1]), np.sin(t[::-1])], axis=1)
        return np.concatenate([outer, inner]) - np.array([0.3, 0.0])
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float,
                angle: float, colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        return
    if shape == "ring":
        width = max(2, int(radius * 0.35))
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=width)
        return
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _unit_polygon(shape) @ rotation.T * radius + np.array([cx, cy])
    draw.polygon([tuple(p) for p in points.tolist()], fill=colour)


def _draw_screenshot(draw, width, height, rng):
    draw.rectangle([0, 0, width, height], fill=(252, 252, 252))
    header = _jitter((60, 90, 160) if rng.random() < 0.5 else (40, 40, 48), rng, 40)
    bar = max(4, int(height * rng.uniform(0.1, 0.18)))
    draw.rectangle([0, 0, width, bar], fill=header)
    left = int(width * rng.uniform(0.05, 0.3))
    y = bar + max(3, height // 14)
    while y < height - 4:
        line_end = left + int((width - left - 4) * rng.uniform(0.4, 0.95))
        draw.rectangle([left, y, line_end, y + max(1, height // 40)], fill=(150, 150, 150))
        y += max(4, height // 11)
    if left > 8:
        draw.rectangle([2, bar + 3, left - 4, height - 3], fill=(232, 232, 236))
    bx = int(width * rng.uniform(0.5, 0.75))
    draw.rectangle([bx, bar + 2, min(width - 2, bx + width // 5), bar + 2 + max(3, height // 12)],
                   fill=_jitter((30, 140, 80), rng, 40))


def _draw_document(draw, width, height, rng):
    margin = max(3, int(min(width, height) * 0.08))
    draw.rectangle([margin, margin // 2, width - margin, height - margin // 2], fill=(253, 253, 250))
    y = margin + 2
    step = max(3, height // int(rng.integers(14, 22)))
    while y < height - margin:
        if rng.random() < 0.15:
            y += step
            continue
        end = width - margin - 2 - int(rng.uniform(0, 0.4) * width * (rng.random() < 0.3))
        draw.line([margin + 3, y, end, y], fill=(35, 35, 35), width=1)
        y += step


def _draw_barcode(draw, width, height, rng):
    draw.rectangle([0, 0, width, height], fill=(255, 255, 255))
    x = int(width * 0.1)
    top, bottom = int(height * 0.15), int(height * 0.75)
    while x < width * 0.9:
        bar = int(rng.integers(1, 4))
        draw.rectangle([x, top, x + bar - 1, bottom], fill=(0, 0, 0))
        x += bar + int(rng.integers(1, 4))
    draw.rectangle([int(width * 0.12), int(height * 0.8), int(width * 0.88), int(height * 0.86)], fill=(70, 70, 70))


def _draw_chart(draw, width, height, rng):
    left, bottom = int(width * 0.12), int(height * 0.88)
    draw.line([left, int(height * 0.08), left, bottom], fill=(40, 40, 40), width=2)
    draw.line([left, bottom, int(width * 0.95), bottom], fill=(40, 40, 40), width=2)
    bars = int(rng.integers(3, 7))
    slot = (width * 0.95 - left) / bars
    colour = _jitter((70, 110, 190), rng, 60)
    for i in range(bars):
        top = bottom - (bottom - height * 0.1) * rng.uniform(0.15, 1.0)
        x0 = left + i * slot + slot * 0.18
        draw.rectangle([x0, top, x0 + slot * 0.64, bottom - 1], fill=colour)


_WEB_DRAWERS = {
    "website screenshot": _draw_screenshot,
    "text document": _draw_document,
    "barcode": _draw_barcode,
    "bar chart": _draw_chart,
}
