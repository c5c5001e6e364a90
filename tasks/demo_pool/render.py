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


def _light(rng) -> tuple[int, int, int]:
    return _jitter(BACKGROUNDS[rng.integers(len(BACKGROUNDS))].astype(int), rng, 10)


def _strong(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(20, 200, size=3))


def _draw_screenshot(draw, width, height, rng):
    """A web page: header bar, optional sidebar, text lines, a picture block and a button, laid out at random."""
    draw.rectangle([0, 0, width, height], fill=_jitter((250, 250, 250), rng, 6))
    bar = max(4, int(height * rng.uniform(0.08, 0.2)))
    draw.rectangle([0, 0, width, bar], fill=_strong(rng))
    side = rng.integers(3)  # none, left, right
    side_width = int(width * rng.uniform(0.15, 0.3)) if side else 0
    if side == 1:
        draw.rectangle([0, bar, side_width, height], fill=_light(rng))
    elif side == 2:
        draw.rectangle([width - side_width, bar, width, height], fill=_light(rng))
    left = (side_width if side == 1 else 0) + int(width * rng.uniform(0.03, 0.1))
    right = width - (side_width if side == 2 else 0) - int(width * rng.uniform(0.03, 0.1))
    if right - left > 12 and rng.random() < 0.7:  # a picture block
        px0 = int(rng.uniform(left, left + (right - left) * 0.5))
        py0 = int(rng.uniform(bar + 2, bar + (height - bar) * 0.5))
        draw.rectangle([px0, py0, px0 + int((right - left) * rng.uniform(0.2, 0.5)),
                        py0 + int((height - bar) * rng.uniform(0.15, 0.4))], fill=_strong(rng))
    y = bar + max(3, int(height * rng.uniform(0.04, 0.12)))
    step = max(4, int(height * rng.uniform(0.06, 0.12)))
    grey = int(rng.integers(90, 170))
    while y < height - 4:
        line_end = left + int((right - left) * rng.uniform(0.3, 1.0))
        draw.rectangle([left, y, line_end, y + max(1, height // 45)], fill=(grey, grey, grey))
        y += step
    bx = int(rng.uniform(left, max(left + 1, right - width // 5)))
    by = int(rng.uniform(bar + 2, max(bar + 3, height - height // 8)))
    draw.rectangle([bx, by, bx + width // 5, by + max(3, height // 12)], fill=_strong(rng))


def _draw_document(draw, width, height, rng):
    """A page of text: margins, a title, paragraphs of lines, sometimes a figure; the page may sit askew."""
    margin_x = int(width * rng.uniform(0.04, 0.15))
    margin_y = int(height * rng.uniform(0.03, 0.1))
    draw.rectangle([margin_x, margin_y, width - margin_x, height - margin_y], fill=_jitter((252, 251, 246), rng, 6))
    ink = _jitter((30, 30, 35), rng, 20)
    y = margin_y + 3
    title_end = margin_x + int((width - 2 * margin_x) * rng.uniform(0.3, 0.8))
    draw.rectangle([margin_x + 3, y, title_end, y + max(2, height // 30)], fill=ink)
    y += max(6, height // 12)
    step = max(3, int(height / rng.uniform(12, 26)))
    figure_at = rng.uniform(0.2, 0.8) if rng.random() < 0.35 else None
    while y < height - margin_y - 2:
        if figure_at is not None and y > height * figure_at:
            fh = int(height * rng.uniform(0.1, 0.25))
            draw.rectangle([margin_x + 6, y, width - margin_x - 6, min(height - margin_y - 2, y + fh)],
                           fill=_light(rng), outline=ink)
            y += fh + step
            figure_at = None
            continue
        if rng.random() < 0.15:  # paragraph break
            y += step
            continue
        end = width - margin_x - 3 - int((width - 2 * margin_x) * rng.uniform(0, 0.5) * (rng.random() < 0.3))
        draw.line([margin_x + 3, y, end, y], fill=ink, width=1)
        y += step


def _draw_barcode(draw, width, height, rng):
    """A barcode label somewhere on a light surface: position, size, bar widths and label at random."""
    draw.rectangle([0, 0, width, height], fill=_light(rng))
    label_w = int(width * rng.uniform(0.45, 0.9))
    label_h = int(height * rng.uniform(0.35, 0.8))
    x0 = int(rng.uniform(0, width - label_w))
    y0 = int(rng.uniform(0, height - label_h))
    draw.rectangle([x0, y0, x0 + label_w, y0 + label_h], fill=(255, 255, 255))
    top, bottom = y0 + int(label_h * 0.1), y0 + int(label_h * rng.uniform(0.6, 0.8))
    x = x0 + int(label_w * 0.08)
    widths = rng.integers(1, 5, size=400)
    gaps = rng.integers(1, 4, size=400)
    for bar_width, gap in zip(widths, gaps):
        if x + bar_width > x0 + label_w * 0.92:
            break
        draw.rectangle([x, top, x + bar_width - 1, bottom], fill=(0, 0, 0))
        x += bar_width + gap
    draw.rectangle([x0 + int(label_w * 0.1), bottom + 2, x0 + int(label_w * 0.9),
                    min(y0 + label_h - 1, bottom + 2 + max(2, label_h // 10))], fill=(70, 70, 70))


def _draw_chart(draw, width, height, rng):
    """A bar or line chart: axes, gridlines, random values, colours and number of series."""
    draw.rectangle([0, 0, width, height], fill=_jitter((252, 252, 252), rng, 8))
    left, bottom = int(width * rng.uniform(0.08, 0.18)), int(height * rng.uniform(0.8, 0.92))
    top, right = int(height * rng.uniform(0.05, 0.15)), int(width * rng.uniform(0.88, 0.97))
    for grid in range(1, int(rng.integers(2, 6))):
        gy = bottom - (bottom - top) * grid / 5
        draw.line([left, gy, right, gy], fill=(225, 225, 225), width=1)
    axis = _jitter((40, 40, 40), rng, 20)
    draw.line([left, top, left, bottom], fill=axis, width=2)
    draw.line([left, bottom, right, bottom], fill=axis, width=2)
    points = int(rng.integers(3, 9))
    values = rng.uniform(0.1, 1.0, size=points)
    slot = (right - left) / points
    colour = _strong(rng)
    if rng.random() < 0.65:
        for i, value in enumerate(values):
            x0 = left + i * slot + slot * 0.15
            draw.rectangle([x0, bottom - (bottom - top) * value, x0 + slot * 0.7, bottom - 1], fill=colour)
    else:
        xy = [(left + (i + 0.5) * slot, bottom - (bottom - top) * v) for i, v in enumerate(values)]
        draw.line(xy, fill=colour, width=max(2, width // 60))


_WEB_DRAWERS = {
    "website screenshot": _draw_screenshot,
    "text document": _draw_document,
    "barcode": _draw_barcode,
    "bar chart": _draw_chart,
}
