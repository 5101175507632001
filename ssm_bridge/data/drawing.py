"""Rasterising the scene world: shape outlines, colours, hand-drawn wobble, backgrounds.

Shapes are polygons in a unit box (largest side about 1, centred on their bounding-box
centre). `rasterise` draws one at `SUPERSAMPLE`x resolution with PIL and box-filters it
down, so edges are anti-aliased; nothing here loops over pixels in Python.

Coordinates are continuous pixels: pixel (row j, column i) covers [i, i+1) x [j, j+1),
so its centre is (i + 0.5, j + 0.5).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 4  # sub-pixels per pixel side when drawing; 4 gives smooth 64-px edges


def _regular(n: int, radius: float, start_deg: float = -90.0) -> np.ndarray:
    t = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)  # (n, 2)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    t = np.deg2rad(-90.0) + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)  # (2 * points, 2)


def _centre_box(v: np.ndarray) -> np.ndarray:
    """Shift vertices so that their bounding box is centred on the origin."""
    return v - (v.min(axis=0) + v.max(axis=0)) / 2


_a, _b = 0.5, 0.17  # cross: half arm length, half arm width
# Unit polygons (V, 2), y pointing down. Sizes chosen so the shapes look equally big.
SHAPE_POLYGONS: dict[str, np.ndarray] = {
    "circle": _regular(48, 0.5),
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.44,
    "triangle": _centre_box(_regular(3, 0.62)),  # 1.07 wide, 0.93 tall, tip up
    "star": _centre_box(_star(5, 0.57, 0.26)),  # fat arms stay visible at 13 px
    "diamond": np.array([[0, -0.55], [0.36, 0], [0, 0.55], [-0.36, 0]]),  # a tall rhombus,
    # so that a square turned by the allowed rotation never looks like one
    "cross": np.array([[-_b, -_a], [_b, -_a], [_b, -_b], [_a, -_b], [_a, _b], [_b, _b],
                       [_b, _a], [-_b, _a], [-_b, _b], [-_a, _b], [-_a, -_b], [-_b, -_b]]),
    "hexagon": _regular(6, 0.52, start_deg=0.0),
}
# Distance from the centre to the farthest vertex, per unit extent.
SHAPE_RADIUS = {k: float(np.linalg.norm(v, axis=1).max()) for k, v in SHAPE_POLYGONS.items()}

# Colour name -> (hue range in degrees, saturation range, value range) in HSV. The hue
# ranges are far enough apart (and backgrounds grey enough) that every jittered colour
# keeps its name against every background.
PALETTE: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-6.0, 4.0), (0.80, 0.95), (0.78, 0.96)),
    "orange": ((24.0, 34.0), (0.90, 1.00), (0.94, 1.00)),
    "yellow": ((50.0, 58.0), (0.85, 1.00), (0.92, 1.00)),
    "green": ((105.0, 140.0), (0.65, 0.95), (0.55, 0.82)),
    "blue": ((210.0, 230.0), (0.70, 0.95), (0.78, 1.00)),
    "purple": ((270.0, 288.0), (0.55, 0.80), (0.58, 0.82)),
}

BACKGROUNDS = ("light", "dark", "gradient", "paper")


def jittered_colour(rng: np.random.Generator, name: str, jitter: float) -> np.ndarray:
    """RGB (3,) float in [0, 255] of colour `name`, drawn from its HSV box shrunk by `jitter`."""
    out = []
    for lo, hi in PALETTE[name]:
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * jitter
        out.append(rng.uniform(mid - half, mid + half))
    h, s, v = out
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360, s, v)) * 255


def object_points(shape: str, centre: tuple[float, float], extent: float, rotation_deg: float,
                  aspect: tuple[float, float]) -> np.ndarray:
    """Polygon (V, 2) in pixels: the unit shape stretched by `aspect`, scaled to `extent`
    pixels, turned by `rotation_deg` and moved to `centre`."""
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    v = SHAPE_POLYGONS[shape] * np.asarray(aspect) * extent  # (V, 2)
    return v @ rot.T + np.asarray(centre)


def wobble(points: np.ndarray, centre: tuple[float, float], rng: np.random.Generator,
           amount: float, n: int = 40) -> np.ndarray:
    """A hand-drawn version of a polygon: resampled to about `n` points along its outline
    (corners kept) and pushed in and out by a smooth random radial wave of relative size
    `amount`, plus a little per-point jitter."""
    closed = np.vstack([points, points[:1]])  # (V + 1, 2)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    t = np.union1d(np.linspace(0, cum[-1], n, endpoint=False), cum[:-1])
    pts = np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], 1)
    rel = pts - np.asarray(centre)  # (n', 2)
    angle = np.arctan2(rel[:, 1], rel[:, 0])
    k = np.arange(2, 6)[:, None]  # harmonics 2..5: lumpy, never spiky
    wave = (rng.normal(size=(4, 1)) / k * np.sin(k * angle + rng.uniform(0, 2 * np.pi, (4, 1))))
    wave = wave.sum(0) / 0.7  # (n',): about unit spread
    scale = 1 + amount * (wave + 0.25 * rng.normal(size=wave.shape))
    return np.asarray(centre) + rel * scale[:, None]


def _corners(points: np.ndarray, min_turn_deg: float = 25.0) -> np.ndarray:
    """The vertices (k, 2) of a closed polygon where its outline turns sharply."""
    d_in = points - np.roll(points, 1, axis=0)  # (V, 2)
    d_out = np.roll(points, -1, axis=0) - points
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    turn = np.arctan2(cross, (d_in * d_out).sum(1))
    return points[np.abs(turn) > math.radians(min_turn_deg)]


def rasterise(points: np.ndarray, size: int, stroke: float = 0.0,
              blur: float = 0.0) -> tuple[np.ndarray, int, int]:
    """Coverage of a filled polygon (V, 2) in pixels, with an outline of `stroke` pixels
    (rounded at corners) and a Gaussian edge blur of `blur` px, on a size x size image.

    Returns (alpha, x0, y0): alpha (h, w) float32 in [0, 1] is the window of the image
    starting at column x0, row y0 outside which coverage is zero. Only that window is
    drawn, at SUPERSAMPLE x, then box-filtered down."""
    pad = math.ceil(stroke / 2 + 3 * blur + 2)
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), 0, 0
    ss = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(canvas)
    sub = (points - [x0, y0]) * ss - 0.5  # PIL puts sub-pixel k's centre at k, ours at k + .5
    flat = sub.ravel().tolist()
    draw.polygon(flat, fill=255)
    if stroke > 0:
        width = max(1, round(stroke * ss))
        draw.line(flat + flat[:2], fill=255, width=width)
        r = width / 2
        for x, y in _corners(sub).tolist():  # round the corners the wide line leaves notched
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    small = canvas.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, np.float32) / 255, int(x0), int(y0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 low-frequency noise of about unit spread (a bicubic-upsampled
    `cells` x `cells` grid of Gaussians)."""
    grid = Image.fromarray(rng.normal(size=(cells, cells)).astype(np.float32))  # mode F
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float32)


def background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: a near-grey plain, gradient or paper background.

    Backgrounds stay almost colourless so that object colours keep their names."""
    tint = rng.uniform(-6, 6, 3)
    if kind == "light":
        return np.broadcast_to(rng.uniform(205, 250) + tint, (size, size, 3)).astype(np.float32)
    if kind == "dark":
        return np.broadcast_to(rng.uniform(15, 60) + tint, (size, size, 3)).astype(np.float32)
    if kind == "gradient":
        lo, hi = (205, 250) if rng.random() < 0.6 else (15, 70)
        a, b = rng.uniform(lo, hi, 2)
        t = math.radians(rng.uniform(0, 360))
        ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        mix = ramp[None, :] * math.cos(t) + ramp[:, None] * math.sin(t) + 0.5  # (size, size)
        grey = a + (b - a) * mix
        return (grey[..., None] + tint).astype(np.float32)
    if kind == "paper":
        base = rng.uniform(218, 246) + np.array([4.0, 2.0, -5.0]) + tint / 2
        blotch = _smooth_noise(rng, size, 4) * rng.uniform(3, 8)
        grain = rng.normal(0, rng.uniform(1.5, 4), (size, size)).astype(np.float32)
        return (base + (blotch + grain)[..., None]).astype(np.float32)
    raise ValueError(f"unknown background kind {kind!r}; choose one of {BACKGROUNDS}")
