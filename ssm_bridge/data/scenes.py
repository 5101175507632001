"""The scene world: procedural RGB scenes of coloured shapes with full ground truth.

    scene = make_scene("train", 7)          # deterministic: same split + index, same scene
    scene.image                             # (64, 64, 3) uint8
    scene.caption                           # "a small red circle left of a large blue square"
    scene.objects[0].mask                   # (64, 64) bool, visible pixels after occlusion
    scene.qa                                # [("what colour is the circle ?", "red", "colour"),
                                            #  ...]

Scenes look like coloured cut-outs drawn or photographed: sizes jitter within each size
class, shapes turn a little, edges are more or less soft, colours jitter within their
names, backgrounds are plain, graded or paper-like, some objects cast a faint shadow, and a
fraction are wobbly hand-drawn fills with a thick outline (like a shape drawn with a mouse).

The caption is a deterministic function of what is visible: objects left to right, with a
relation word between neighbours ("left of", "above", "below"; see captions.py). The
sampler rejects every layout that would make it debatable: neighbours too close
horizontally, vertical offsets between "level" and "above/below", occlusion above
`max_occlusion`, same-coloured objects touching (they would merge), objects near the border.

Splits are disjoint seed ranges. `comp_test` is compositional: the (shape, colour) pairs in
`SceneConfig.holdout` never appear in train/val/test scenes, and every comp_test scene
holds at least one of them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from . import captions
from .drawing import (
    BACKGROUNDS,
    PALETTE,
    SHAPE_POLYGONS,
    background,
    jittered_colour,
    object_points,
    rasterise,
    wobble,
)

SPLITS = ("train", "val", "test", "comp_test")
SPLIT_SIZE = 10_000_000  # seeds per split: split k uses seeds [k * SPLIT_SIZE, (k+1) * SPLIT_SIZE)
MAX_ATTEMPTS = 500  # layouts tried per scene before giving up (a few are usually enough)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Lengths given as fractions scale with img_size."""

    img_size: int = 64  # pixels per side
    min_objects: int = 1
    max_objects: int = 3  # 3 keeps captions <= 15 words and leaves room to avoid overlap
    # Hexagon is available but not a default: at 13 px its outline is within 1 px of a circle's.
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
    colours: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    # Largest side of an object, as a fraction of img_size. Small objects are 13-16 px at 64,
    # well over one 8-px patch, so their shape stays learnable; large ones are 1.4x or more.
    small_extent: tuple[float, float] = (0.19, 0.24)
    large_extent: tuple[float, float] = (0.32, 0.39)
    rotation: float = 15.0  # max |degrees|; much more and a square starts to read as a diamond
    aspect_jitter: float = 0.08  # width and height scale independently by 1 +- this
    edge_softness: float = 0.7  # max Gaussian blur radius (px) of object edges
    hand_drawn_prob: float = 0.3  # chance that an object is a wobbly fill with a thick outline
    wobble: float = 0.075  # spread of a hand-drawn outline's radial wave, fraction of size
    colour_jitter: float = 1.0  # 0 = each colour's central hue; 1 = its whole HSV box
    backgrounds: tuple[str, ...] = BACKGROUNDS
    noise: float = 4.0  # max std of the (uniform) pixel noise, in 0..255 units
    shadow_prob: float = 0.3  # chance that an object casts a faint 1-px drop shadow
    shading: float = 0.08  # max brightness change across an object (light from one side)
    max_occlusion: float = 0.15  # max fraction of an object hidden by those in front
    # Centres at least spacing * (sum of bounding radii) apart; objects of one colour keep
    # their bounding circles apart, so they never merge into one blob.
    spacing: float = 0.7
    min_dx: float = 0.16  # neighbours' centres at least this far apart horizontally
    level_max: float = 0.06  # |dy| up to this: "left of"; from above_min: "above"/"below";
    above_min: float = 0.20  # layouts with |dy| in between are rejected
    border: int = 2  # pixels of background kept between every object and the image edge
    # (shape, colour) pairs kept out of train/val/test and put into every comp_test scene.
    holdout: tuple[tuple[str, str], ...] = (
        ("star", "green"), ("circle", "purple"), ("square", "yellow"), ("triangle", "blue"),
    )
    qa_per_kind: int = 2  # questions per kind kept in Scene.qa (fewer if fewer are valid)

    def __post_init__(self) -> None:
        # Lists (say, from JSON) become tuples, so configs stay hashable and comparable.
        for name in ("shapes", "colours", "backgrounds", "small_extent", "large_extent"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "holdout", tuple(tuple(p) for p in self.holdout))
        _validate(self)

    @functools.cached_property
    def pairs(self) -> list[tuple[str, str]]:
        """(shape, colour) pairs of train/val/test scenes: all but the held-out ones."""
        held = set(self.holdout)
        return [(s, c) for s in self.shapes for c in self.colours if (s, c) not in held]


def _validate(c: SceneConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"SceneConfig: {msg}")

    need(isinstance(c.img_size, int) and c.img_size >= 16,
         f"img_size must be an integer >= 16, got {c.img_size!r}")
    need(1 <= c.min_objects <= c.max_objects <= len(captions.NUMBERS) - 1,
         f"need 1 <= min_objects <= max_objects <= {len(captions.NUMBERS) - 1}, got "
         f"{c.min_objects} and {c.max_objects}")
    for name, known in (("shapes", SHAPE_POLYGONS), ("colours", PALETTE),
                        ("backgrounds", BACKGROUNDS)):
        values = getattr(c, name)
        unknown = [v for v in values if v not in known]
        need(len(values) > 0 and not unknown and len(set(values)) == len(values),
             f"{name} must be distinct names from {list(known)}, got {list(values)}")
    for name in ("small_extent", "large_extent"):
        lo, hi = getattr(c, name)
        need(0 < lo <= hi < 0.8, f"{name} must be (lo, hi) with 0 < lo <= hi < 0.8, "
                                 f"got {getattr(c, name)}")
    need(c.small_extent[1] < c.large_extent[0],
         f"small_extent {c.small_extent} must end below large_extent {c.large_extent}, "
         "or 'small' and 'large' overlap")
    need(0 <= c.level_max < c.above_min < 0.5,
         f"need 0 <= level_max < above_min < 0.5, got {c.level_max} and {c.above_min}")
    for name in ("hand_drawn_prob", "shadow_prob", "max_occlusion", "colour_jitter"):
        need(0 <= getattr(c, name) <= 1, f"{name} must be in [0, 1], got {getattr(c, name)}")
    for name in ("rotation", "aspect_jitter", "edge_softness", "wobble", "noise", "shading",
                 "min_dx", "border", "qa_per_kind", "spacing"):
        need(getattr(c, name) >= 0, f"{name} must be >= 0, got {getattr(c, name)}")
    bad = [p for p in c.holdout if len(p) != 2 or p[0] not in c.shapes or p[1] not in c.colours]
    need(not bad, f"holdout pairs must be (shape, colour) with shape in {list(c.shapes)} and "
                  f"colour in {list(c.colours)}; bad: {bad}")
    need(len(c.pairs) > 0, "holdout leaves no (shape, colour) pair for train/val/test")


@dataclass
class SceneObject:
    """One object of a scene and its ground truth."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    centre: tuple[float, float]  # (x, y) in continuous pixels; pixel (j, i) spans [i, i+1)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, of the whole object
    mask: np.ndarray = field(repr=False)  # (H, W) bool: pixels where it is visible
    extent: float = 0.0  # largest side in pixels before rotation
    rotation: float = 0.0  # degrees
    hand_drawn: bool = False
    rgb: tuple[int, int, int] = (0, 0, 0)  # its colour before shading
    z: int = 0  # drawing order: higher is in front

    def describe(self) -> str:
        return captions.describe(self)


@dataclass
class Scene:
    """One scene: its pixels and everything true about them."""

    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    objects: list[SceneObject]  # left to right
    caption: str
    paraphrases: list[str]
    qa: list[tuple[str, str, str]]  # (question, answer, kind)
    seed: int
    background: str = ""


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """Seeds of scenes start .. start + n - 1 of `split` (disjoint ranges per split)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if n < 0 or start < 0 or start + n > SPLIT_SIZE:
        raise ValueError(f"scene indices must lie in [0, {SPLIT_SIZE}) per split, "
                         f"got start={start}, n={n}")
    base = SPLITS.index(split) * SPLIT_SIZE
    return list(range(base + start, base + start + n))


def make_scene(split: str, index: int, config: SceneConfig | None = None) -> Scene:
    """Scene number `index` of `split`: the same arguments always give the same scene."""
    (seed,) = split_seeds(split, 1, start=index)
    return generate_scene(seed, config, compositional=split == "comp_test")


def generate_scene(seed: int, config: SceneConfig | None = None,
                   compositional: bool = False) -> Scene:
    """The scene of `seed`. compositional=True puts a held-out pair in it; False keeps
    every held-out pair out."""
    cfg = config or SceneConfig()
    drawn = _draw(seed, cfg, compositional)[-1]
    return _scene(seed, cfg, drawn, compositional)


def _draw(seed: int, cfg: SceneConfig, compositional: bool):
    """(specs, centres, rng state before drawing, (image, objects, background)) of `seed`."""
    if compositional and not cfg.holdout:
        raise ValueError("compositional scenes need SceneConfig.holdout pairs; none are set")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for attempt in range(MAX_ATTEMPTS):
        if attempt % 25 == 0:  # new attributes now and then, in case these cannot fit
            specs = [_sample_object(rng, cfg, compositional and i == 0) for i in range(n)]
        centres = _sample_layout(rng, specs, cfg)
        if centres is None:
            continue
        state = rng.bit_generator.state
        drawn = _render(rng, specs, centres, cfg)
        if drawn is not None:
            return specs, centres, state, drawn
    raise RuntimeError(f"no valid layout for seed {seed} after {MAX_ATTEMPTS} attempts; "
                       "the SceneConfig is too crowded: lower max_objects or the extents, "
                       "or raise img_size")


def _scene(seed: int, cfg: SceneConfig, drawn, compositional: bool) -> Scene:
    image, objects, bg = drawn
    qa_rng = np.random.default_rng([seed, 1])  # questions never shift the image stream
    pairs = cfg.pairs if not compositional else [
        (s, c) for s in cfg.shapes for c in cfg.colours]
    return Scene(image=image, objects=objects, caption=captions.caption(objects, cfg),
                 paraphrases=captions.paraphrases(objects, cfg),
                 qa=captions.questions(objects, cfg, qa_rng, pairs), seed=seed, background=bg)


COUNTERFACTUAL_ATTRIBUTES = ("colour", "shape", "size", "position")


def counterfactual_scene(seed: int, obj: int, attribute: str, value,
                         config: SceneConfig | None = None) -> Scene:
    """The scene of `seed` with one thing changed: object `obj` (left-to-right index, as
    in the caption) gets another colour, shape or size (a name), or its centre moves to
    `value` = (x, y) pixels ("position"). Everything else is drawn from the same random
    stream: background, noise, the other objects, the same pixels where nothing changed.
    A change that breaks the scene rules (occlusion, touching, border) is a ValueError."""
    cfg = config or SceneConfig()
    specs, centres, state, drawn = _draw(seed, cfg, False)
    clean = _scene(seed, cfg, drawn, False)
    order = np.argsort(centres[:, 0], kind="stable")  # caption index -> spec index
    if not 0 <= obj < len(specs):
        raise ValueError(f"object {obj} is out of range: scene {seed} has {len(specs)} objects")
    i = int(order[obj])
    if attribute in ("colour", "shape", "size") and specs[i][attribute] == value:
        raise ValueError(f"object {obj} is already {value}: choose a different {attribute}")
    specs = [dict(s) for s in specs]
    centres = centres.copy()
    _change(specs[i], centres, i, attribute, value, cfg, seed)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    drawn = _render(rng, specs, centres, cfg)
    broken = ValueError(f"changing object {obj}'s {attribute} to {value!r} breaks the scene "
                        "rules (occlusion, touching, or no clear relation to a neighbour); "
                        "try another value")
    if drawn is None:
        raise broken
    try:
        scene = _scene(seed, cfg, drawn, False)
    except ValueError:  # the caption grammar finds no clear relation
        raise broken from None
    moved = next(k for k, o in enumerate(scene.objects) if o.centre == tuple(centres[i]))
    _check_local(clean.objects[obj].box, scene.objects[moved].box, clean, scene, seed)
    return scene


def _check_local(box: tuple, new_box: tuple, clean: Scene, other: Scene, seed: int) -> None:
    """A pair differs only around the changed object (its box before and after, and a
    4-pixel margin for soft edges, outline and shadow). A hand-drawn outline of another
    shape takes a different number of random draws, which would redraw the rest of the
    scene: such a change is refused rather than returned as a pair that differs everywhere."""
    boxes = np.array([box, new_box])  # (2, 4): x0 y0 x1 y1
    (x0, y0), (x1, y1) = boxes[:, :2].min(0) - 4, boxes[:, 2:].max(0) + 4
    changed = (clean.image != other.image).any(-1)  # (H, W)
    changed[max(y0, 0):y1, max(x0, 0):x1] = False
    if changed.any():
        raise ValueError(f"in scene {seed} this change would redraw the rest of the scene (a "
                         "hand-drawn outline of another shape takes other random draws); "
                         "choose another object or scene")


def _change(spec: dict, centres: np.ndarray, i: int, attribute: str, value,
            cfg: SceneConfig, seed: int) -> None:
    if attribute == "colour":
        if value not in cfg.colours:
            raise ValueError(f"colour must be one of {cfg.colours}, got {value!r}")
        spec["colour"] = value  # its own jitter stream, so the scene's stream is untouched
        spec["rgb"] = jittered_colour(np.random.default_rng([seed, 2, i]), value,
                                      cfg.colour_jitter)
    elif attribute == "shape":
        if value not in cfg.shapes:
            raise ValueError(f"shape must be one of {cfg.shapes}, got {value!r}")
        spec["shape"] = value
    elif attribute == "size":
        if value not in captions.SIZES:
            raise ValueError(f"size must be one of {captions.SIZES}, got {value!r}")
        (lo0, hi0), (lo1, hi1) = (cfg.small_extent if s == "small" else cfg.large_extent
                                  for s in (spec["size"], value))
        t = (spec["extent"] / cfg.img_size - lo0) / (hi0 - lo0)  # same place in its range
        spec["size"], spec["extent"] = value, (lo1 + t * (hi1 - lo1)) * cfg.img_size
    elif attribute == "position":
        centres[i] = np.asarray(value, dtype=centres.dtype)
    else:
        raise ValueError(f"attribute must be one of {COUNTERFACTUAL_ATTRIBUTES}, "
                         f"got {attribute!r}")


def _sample_object(rng: np.random.Generator, cfg: SceneConfig, held_out: bool) -> dict:
    """Attributes and drawing parameters of one object (not its position)."""
    pairs = list(cfg.holdout) if held_out else cfg.pairs
    shape, colour = pairs[rng.integers(len(pairs))]
    size = captions.SIZES[rng.integers(2)]
    lo, hi = cfg.small_extent if size == "small" else cfg.large_extent
    extent = rng.uniform(lo, hi) * cfg.img_size
    aspect = tuple(1 + rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter, 2))
    hand = bool(rng.random() < cfg.hand_drawn_prob)
    stroke = rng.uniform(0.07, 0.13) * extent if hand else 0.0
    blur = rng.uniform(0, cfg.edge_softness)
    wob = cfg.wobble if hand else 0.0
    rotation = rng.uniform(-cfg.rotation, cfg.rotation)
    # Pixels from the centre the object may reach along x and y: keeps it off the border.
    pts = object_points(shape, (0.0, 0.0), extent, rotation, aspect)
    grow = (1 + 2.5 * wob, stroke / 2 + 2 * blur)  # wobble and stroke make it bigger
    reach = np.abs(pts).max(axis=0) * grow[0] + grow[1]  # (2,)
    radius = float(np.linalg.norm(pts, axis=1).max() * grow[0] + grow[1])
    return dict(shape=shape, colour=colour, size=size, extent=extent, aspect=aspect,
                rotation=rotation, hand=hand, stroke=stroke, blur=blur, wobble=wob, reach=reach,
                radius=radius,
                rgb=jittered_colour(rng, colour, cfg.colour_jitter))


def _sample_layout(rng: np.random.Generator, specs: list[dict], cfg: SceneConfig,
                   tries: int = 256) -> np.ndarray | None:
    """Centres (n, 2) whose left-to-right neighbours are >= min_dx apart and are clearly
    level or clearly above/below each other, and far enough apart (`spacing`), or None.

    Draws the neighbours' relations, then `tries` candidate positions at once, and keeps
    the first valid one."""
    S, n = cfg.img_size, len(specs)
    reach = np.array([s["reach"] for s in specs]) + cfg.border + 0.5  # (n, 2): x and y
    lo, hi = reach, S - reach  # (n, 2) each: where each centre may go
    if np.any(lo >= hi):
        return None
    if n == 1:
        return rng.uniform(lo, hi)  # (1, 2)
    xs = rng.uniform(lo[:, 0], hi[:, 0], (tries, n))
    order = np.argsort(xs, axis=1)  # (tries, n): object index, left to right
    ok = np.all(np.diff(np.take_along_axis(xs, order, 1), axis=1) >= cfg.min_dx * S, axis=1)
    ys = np.zeros((tries, n))
    rows = np.arange(tries)
    first = order[:, 0]
    ys[rows, first] = rng.uniform(lo[first, 1], hi[first, 1])
    level, above = cfg.level_max * S, cfg.above_min * S
    kinds = rng.integers(3, size=n - 1)  # per neighbour pair: 0 level, 1 above, 2 below;
    for k in range(1, n):  # the same for all tries, so that every relation is equally common
        a, b = order[:, k - 1], order[:, k]
        kind = kinds[k - 1]
        ya = ys[rows, a]
        if kind == 0:
            low, high = ya - level, ya + level
        elif kind == 1:  # b lower than a (y points down)
            low, high = ya + above, hi[b, 1]
        else:
            low, high = lo[b, 1], ya - above
        low, high = np.maximum(low, lo[b, 1]), np.minimum(high, hi[b, 1])
        ok &= low <= high
        ys[rows, b] = low + rng.random(tries) * (high - low)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = specs[i], specs[j]
            gap = a["radius"] + b["radius"]
            gap = gap + 1.0 if a["colour"] == b["colour"] else cfg.spacing * gap
            ok &= np.hypot(xs[:, i] - xs[:, j], ys[:, i] - ys[:, j]) >= gap
    if not ok.any():
        return None
    r = int(np.argmax(ok))
    return np.stack([xs[r], ys[r]], axis=1)  # (n, 2)


def _render(rng: np.random.Generator, specs: list[dict], centres: np.ndarray,
            cfg: SceneConfig):
    """Draw the objects (random z-order) on a background; return (image, objects sorted
    left to right, background kind), or None if occlusion or touching breaks the rules.

    Coverage is computed and checked first; colours are only painted for valid scenes."""
    S = cfg.img_size
    z_order = [int(i) for i in rng.permutation(len(specs))]
    cover = {}  # object index -> (alpha window, x0, y0)
    full = {}  # object index -> (S, S) bool: its pixels, ignoring occlusion
    for i in z_order:
        s, centre = specs[i], tuple(centres[i])
        pts = object_points(s["shape"], centre, s["extent"], s["rotation"], s["aspect"])
        if s["hand"]:
            pts = wobble(pts, centre, rng, s["wobble"])
        a, x0, y0 = rasterise(pts, S, stroke=s["stroke"], blur=s["blur"])
        cover[i] = (a, x0, y0)
        full[i] = np.zeros((S, S), bool)
        full[i][y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a >= 0.5
    masks = _visible_masks(z_order, full, cfg.max_occlusion)
    if masks is None or _same_colour_touch(specs, cover, S):
        return None

    bg_kind = cfg.backgrounds[rng.integers(len(cfg.backgrounds))]
    img = background(rng, S, bg_kind)
    for i in z_order:
        _paint(img, *cover[i], specs[i], tuple(centres[i]), rng, cfg)
    if cfg.noise > 0:
        std = rng.uniform(0, cfg.noise)  # uniform noise: 5x cheaper to draw than Gaussian
        img += (rng.random((S, S, 3), dtype=np.float32) - 0.5) * (std * math.sqrt(12))
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)

    objects = []
    for i in range(len(specs)):
        s = specs[i]
        ys, xs = np.nonzero(full[i])
        objects.append(SceneObject(
            shape=s["shape"], colour=s["colour"], size=s["size"],
            centre=(float(centres[i, 0]), float(centres[i, 1])),
            box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
            mask=masks[i], extent=float(s["extent"]), rotation=float(s["rotation"]),
            hand_drawn=s["hand"], rgb=tuple(round(v) for v in s["rgb"].tolist()),
            z=z_order.index(i)))
    objects.sort(key=lambda o: o.centre[0])
    return image, objects, bg_kind


def _visible_masks(z_order: list[int], full: dict[int, np.ndarray],
                   max_occlusion: float) -> dict[int, np.ndarray] | None:
    """Visible pixels of each object (its own minus those of objects in front), or None
    if any object is empty or more than `max_occlusion` of it is hidden."""
    masks = {}
    front = np.zeros_like(full[z_order[0]])
    for i in reversed(z_order):  # front to back
        masks[i] = full[i] & ~front
        area = full[i].sum()
        if area == 0 or masks[i].sum() < (1 - max_occlusion) * area:
            return None
        front |= full[i]
    return masks


def _paint(img: np.ndarray, a: np.ndarray, x0: int, y0: int, s: dict,
           centre: tuple[float, float], rng: np.random.Generator, cfg: SceneConfig) -> None:
    """Composite one object (coverage window `a` at x0, y0) onto img (S, S, 3) in place:
    an optional faint drop shadow, then its colour lit by a gentle linear gradient."""
    h, w = a.shape
    win = img[y0:y0 + h, x0:x0 + w]  # (h, w, 3) view
    if rng.random() < cfg.shadow_prob:
        shadow = np.zeros_like(a)
        shadow[1:, 1:] = a[:-1, :-1]  # one pixel down and right
        win *= 1 - 0.3 * shadow[..., None]
    t = math.radians(rng.uniform(0, 360))  # light direction
    g = rng.uniform(-cfg.shading, cfg.shading) / s["extent"]
    xs = np.arange(x0, x0 + w, dtype=np.float32) + 0.5 - centre[0]
    ys = np.arange(y0, y0 + h, dtype=np.float32) + 0.5 - centre[1]
    light = 1 + g * (xs[None, :] * math.cos(t) + ys[:, None] * math.sin(t))  # (h, w)
    layer = s["rgb"].astype(np.float32) * light[..., None]  # (h, w, 3)
    win += (layer - win) * a[..., None]


def _same_colour_touch(specs: list[dict], cover: dict, size: int) -> bool:
    """True if two objects of one colour touch or nearly touch (they would read as one)."""
    for i in cover:
        for j in cover:
            if i < j and specs[i]["colour"] == specs[j]["colour"]:
                (a, ax, ay), (b, bx, by) = cover[i], cover[j]
                # Windows extend 2+ px past the drawn pixels: disjoint windows cannot touch.
                if ax + a.shape[1] <= bx or bx + b.shape[1] <= ax:
                    continue
                if ay + a.shape[0] <= by or by + b.shape[0] <= ay:
                    continue
                pa = np.zeros((size + 2, size + 2), bool)  # 1-px frame for the dilation
                pa[ay + 1:ay + 1 + a.shape[0], ax + 1:ax + 1 + a.shape[1]] = a > 0.05
                grown = pa.copy()  # dilate by one pixel (8-neighbourhood)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        grown[1:-1, 1:-1] |= pa[1 + dy:size + 1 + dy, 1 + dx:size + 1 + dx]
                pb = np.zeros_like(pa)
                pb[by + 1:by + 1 + b.shape[0], bx + 1:bx + 1 + b.shape[1]] = b > 0.05
                if (grown & pb).any():
                    return True
    return False


def scene_vocabulary(config: SceneConfig | None = None) -> list[str]:
    """Every word captions, paraphrases, questions and answers can use, sorted."""
    return captions.vocabulary(config or SceneConfig())
