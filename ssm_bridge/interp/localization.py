"""Does a word's map point at the object the word names? Scores against scene ground truth.

    hit = pointing_game(map_gg, mask_hw)        # bool
    e = energy_in_mask(map_gg, mask_hw)         # float in [0, 1]
    pairs = object_words(scene, analysis.words) # [(word i, object j)], or None (mismatch)

Maps are (h, w) grids (usually the g x g patch grid) and masks (H, W) bool pixel masks
(scene.objects[j].mask); a map is upsampled to the mask's size by nearest neighbour, so
each patch covers a block of pixels. Both metrics follow the saliency-evaluation
literature (Zhang et al. 2018, pointing game; Wang et al. 2020, energy-based pointing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.captions import OBJECT_ATTRIBUTES, PHRASE_ORDER, parse_caption

ROLES = OBJECT_ATTRIBUTES  # the word of an object phrase a map may point from

__all__ = ["PhraseMatch", "energy_in_mask", "match_phrases", "object_words", "parse_objects",
           "pointing_game", "random_map", "random_scores", "word_match"]


# ---------------------------------------------------------------- metrics
def _as_mask(mask) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (H, W) booleans (e.g. scene.objects[j].mask), got "
                         f"shape {tuple(mask.shape)}")
    return mask.bool()


def _as_map(saliency, mask: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(saliency).detach().float().cpu()
    if m.dim() != 2:
        raise ValueError(f"map must be a 2-D grid (h, w) such as a (g, g) patch map, got "
                         f"shape {tuple(m.shape)}")
    if mask.shape[0] < m.shape[0] or mask.shape[1] < m.shape[1]:
        raise ValueError(f"the mask {tuple(mask.shape)} is smaller than the map "
                         f"{tuple(m.shape)}; pass the pixel mask at image resolution")
    return m


def cell_index(map_shape: tuple[int, int], mask_shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) long: the map cell (row-major index) each pixel falls into, by nearest
    upsampling of the (h, w) grid to (H, W)."""
    h, w = map_shape
    cells = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)  # (1, 1, h, w)
    up = F.interpolate(cells, size=tuple(mask_shape), mode="nearest")  # (1, 1, H, W)
    return up[0, 0].long()  # (H, W)


def pointing_game(saliency, mask) -> bool:
    """True when the map's maximum falls on the object: the argmax cell (patch) of the
    (h, w) map, upsampled nearest to the mask's pixels, overlaps the ground-truth (H, W)
    mask in at least one pixel. Ties go to the first cell in row-major order; a flat map
    (no maximum: all values equal, or any NaN) never hits."""
    mask = _as_mask(mask)
    m = _as_map(saliency, mask)
    if torch.isnan(m).any() or m.max() == m.min():
        return False
    best = int(m.flatten().argmax())
    return bool(mask[cell_index(tuple(m.shape), tuple(mask.shape)) == best].any())


def energy_in_mask(saliency, mask) -> float:
    """Fraction of the map's positive mass inside the mask: the map clipped at 0,
    upsampled nearest to the (H, W) pixels, sum inside / sum everywhere (0 for a map with
    no positive mass). A uniform map scores the mask's area fraction."""
    mask = _as_mask(mask)
    m = _as_map(saliency, mask).clamp_min(0).nan_to_num(0.0)
    pixels = m.flatten()[cell_index(tuple(m.shape), tuple(mask.shape))]  # (H, W)
    total = float(pixels.sum())
    return float(pixels[mask].sum()) / total if total > 0 else 0.0


def random_map(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A baseline map: i.i.d. uniform [0, 1) values of `shape` drawn from `generator`."""
    return torch.rand(tuple(shape), generator=generator)


def random_scores(masks: Sequence, shape: tuple[int, int], seed: int = 0) -> dict[str, float]:
    """The random-map baseline over `masks`, scored like any map: one random_map per mask
    (one torch.Generator seeded with `seed`). Returns {"pointing_game", "energy_in_mask"}
    means (NaN for no masks)."""
    gen = torch.Generator().manual_seed(seed)
    hits, energy = [], []
    for mask in masks:
        m = random_map(shape, gen)
        hits.append(pointing_game(m, mask))
        energy.append(energy_in_mask(m, mask))
    return {"pointing_game": _mean(hits), "energy_in_mask": _mean(energy)}


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# ---------------------------------------------------------------- words -> objects
def parse_objects(words: Sequence[str]) -> list[dict] | None:
    """Parse a caption in the scene grammar, `a SIZE COLOUR SHAPE (RELATION a SIZE COLOUR
    SHAPE)*` (ssm_bridge.data.captions.parse_caption: the article is always "a"), into one
    dict per object phrase: size, colour, shape (the words) and their positions in `words`
    (size_at, colour_at, shape_at). None when the words do not follow the grammar."""
    parsed = parse_caption(list(words))
    if not parsed.grammatical:
        return None
    return [{**dict(zip(PHRASE_ORDER, obj)),
             **{f"{a}_at": start + 1 + k for k, a in enumerate(PHRASE_ORDER)}}
            for obj, start in zip(parsed.objects, parsed.starts)]


def _truth(scene_or_caption) -> list[tuple[str, str, str]]:
    """(size, colour, shape) of each object, in caption order (left to right)."""
    if isinstance(scene_or_caption, str):
        parsed = parse_objects(scene_or_caption.split())
        if parsed is None:
            raise ValueError(f"{scene_or_caption!r} is not a caption in the scene grammar "
                             "('a small red circle left of a large blue square')")
        return [(o["size"], o["colour"], o["shape"]) for o in parsed]
    objects = getattr(scene_or_caption, "objects", None)
    if objects is None:
        raise ValueError(f"expected a Scene (with .objects) or its canonical caption, got "
                         f"{type(scene_or_caption).__name__}")
    return [(o.size, o.colour, o.shape) for o in objects]


def object_words(scene_or_caption, words: Sequence[str], role: str = "shape"
                 ) -> list[tuple[int, int]] | None:
    """Which generated word names which ground-truth object: [(word index, object index)].

    words: the generated caption's words (CaptionAnalysis.words). Objects are those of a
    Scene (scene.objects, left to right = caption order) or of its canonical caption. The
    word of each object phrase is its `role` word ("shape": the noun; "colour", "size").
    Returns None (skip this caption) unless the generated caption parses in the scene
    grammar and its object phrases equal the ground truth's (same count; same size,
    colour and shape, in order). Relation words are not compared."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    truth = _truth(scene_or_caption)
    parsed = parse_objects(words)
    if parsed is None or len(parsed) != len(truth):
        return None
    for o, t in zip(parsed, truth):
        if (o["size"], o["colour"], o["shape"]) != t:
            return None
    return [(o[f"{role}_at"], j) for j, o in enumerate(parsed)]



# ---------------------------------------------------------------- any caption -> objects
@dataclass(frozen=True)
class PhraseMatch:
    """One object phrase of a generated caption and the scene object it names.

    phrase: (size, colour, shape) as generated ("" where the caption stopped short);
    start: index of its article in the words; obj: the object (index in scene.objects)
    or None when no object shares any attribute with it; agree: for size, colour, shape,
    whether the phrase's word equals that object's."""

    phrase: tuple[str, str, str]
    start: int
    obj: int | None
    agree: tuple[bool, bool, bool]

    @property
    def exact(self) -> bool:
        return self.obj is not None and all(self.agree)

    def role_at(self, word: int) -> str | None:
        """"article", "size", "colour" or "shape" for a word index inside this phrase."""
        k = word - self.start
        return ("article", *PHRASE_ORDER)[k] if 0 <= k <= len(PHRASE_ORDER) else None


def match_phrases(scene, words: Sequence[str]) -> list[PhraseMatch]:
    """Each object phrase of a generated caption, right or wrong, matched to the object
    it names: the pairs (phrase, object) are taken best first, by how many of size,
    colour and shape agree, ties going to the object at the phrase's own place in the
    left-to-right order; each object is named once. A phrase that agrees with no
    remaining object in any attribute names none (obj None)."""
    parsed = parse_caption(list(words))
    truth = _truth(scene)
    order = {a: k for k, a in enumerate(PHRASE_ORDER)}

    def agree(p, j) -> tuple[bool, ...]:
        t = dict(zip(("size", "colour", "shape"), truth[j]))
        return tuple(p[order[a]] == t[a] for a in PHRASE_ORDER)

    pairs = sorted(((sum(agree(p, j)), k == j, k, j) for k, p in enumerate(parsed.objects)
                    for j in range(len(truth))), reverse=True)
    named: dict[int, int] = {}
    for score, _, k, j in pairs:
        if score and k not in named and j not in named.values():
            named[k] = j
    return [PhraseMatch(tuple(p), start, named.get(k),
                        agree(p, named[k]) if k in named else (False,) * 3)
            for k, (p, start) in enumerate(zip(parsed.objects, parsed.starts))]


def word_match(scene, words: Sequence[str], word: int) -> tuple[PhraseMatch, str] | None:
    """(the phrase holding word `word`, the word's role in it), or None for a word outside
    every object phrase (a relation word)."""
    for m in match_phrases(scene, words):
        role = m.role_at(word)
        if role is not None:
            return m, role
    return None
