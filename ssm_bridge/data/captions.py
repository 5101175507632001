"""The scene world's language: relation words, captions, paraphrases, questions, vocabulary.

Everything here is a deterministic function of the objects' attributes and centres (plus,
for the choice among equally valid questions, a seeded generator).

Relations compare centres, with y pointing down. For objects p and q:
    "above" / "below"      p is higher / lower than q by >= above_min * img_size
    "left of" / "right of" p and q are level (|dy| <= level_max * img_size) and p is left/right
    anything in between is "unclear": such pairs are never described or asked about.
Horizontal order is always clear: centres of neighbours differ by >= min_dx * img_size.

The caption grammar (the one rule every reader of captions uses, see `parse_caption`):
    caption := phrase (RELATION phrase)*      phrase := "a" SIZE COLOUR SHAPE
The article is always "a", never "an": the first word after it is a size word and every
size word starts with a consonant ("an" only appears in questions, "is there an orange
star ?").
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .scenes import SceneConfig

SIZES = ("small", "large")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
# The attributes of one object, in the order the project reports them.
OBJECT_ATTRIBUTES = ("colour", "shape", "size")
# The order an object phrase names them, after its article: "a small red circle".
PHRASE_ORDER = ("size", "colour", "shape")
ARTICLE = "a"
# What caption scoring reports: each object attribute, the relation words, the object count.
CAPTION_ATTRIBUTES = (*OBJECT_ATTRIBUTES, "relation", "count")
QA_KINDS = (*OBJECT_ATTRIBUTES, "count", "relation", "yesno")
# Template words (besides attribute, number and relation words).
_FUNCTION_WORDS = ("a", "an", "the", "there", "is", "are", "object", "objects", "and", ",", "?",
                   "to", "what", "colour", "shape", "size", "how", "many", "yes", "no")

_OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
# Attribute combinations that can name an object ("the small red circle", "the red object").
_REFERRING = (("shape",), ("colour",), ("size",), ("colour", "shape"), ("size", "shape"),
              ("size", "colour"), ("size", "colour", "shape"))


class Thing(Protocol):
    """What the language needs of an object: its attributes and its centre (x, y)."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(o: Thing) -> str:
    """'a small red circle'."""
    return " ".join([ARTICLE, *(getattr(o, a) for a in PHRASE_ORDER)])


def vertical(p: Thing, q: Thing, cfg: SceneConfig) -> str:
    """Where p is vertically relative to q: 'above', 'below', 'level' or 'unclear'."""
    d = q.centre[1] - p.centre[1]  # > 0: p is higher (y points down)
    if d >= cfg.above_min * cfg.img_size:
        return "above"
    if d <= -cfg.above_min * cfg.img_size:
        return "below"
    if abs(d) <= cfg.level_max * cfg.img_size:
        return "level"
    return "unclear"


def relation(p: Thing, q: Thing, cfg: SceneConfig) -> str | None:
    """The relation word of p with respect to q (one of RELATIONS), or None if unclear."""
    v = vertical(p, q, cfg)
    if v == "level":
        return "left of" if p.centre[0] < q.centre[0] else "right of"
    return None if v == "unclear" else v


def caption(objects: list[Thing], cfg: SceneConfig) -> str:
    """The canonical caption. `objects` must be sorted left to right, and neighbours must
    have a clear relation (the scene sampler guarantees both)."""
    words = [describe(objects[0])]
    for p, q in itertools.pairwise(objects):
        rel = relation(p, q, cfg)
        if rel is None:
            raise ValueError(f"no clear relation between {describe(p)} and {describe(q)}; "
                             "the scene sampler should have rejected this layout")
        words += [rel, describe(q)]
    return " ".join(words)


def paraphrases(objects: list[Thing], cfg: SceneConfig) -> list[str]:
    """Other phrasings of the caption: a 'there is/are' listing, right to left, 'to the'."""
    canonical = caption(objects, cfg)
    n = len(objects)
    if n == 1:
        return [f"there is {canonical}"]
    items = [describe(o) for o in objects]
    listing = f"there are {NUMBERS[n]} objects , " + " , ".join(items[:-1]) + f" and {items[-1]}"
    backwards = caption(objects[::-1], cfg)
    out = [listing]
    if backwards != canonical:  # a palindromic scene reads the same both ways
        out.append(backwards)
    if "left of" in canonical:
        out.append(canonical.replace("left of", "to the left of"))
    return out


def _phrase(attrs: dict[str, str]) -> str:
    words = [attrs[a] for a in PHRASE_ORDER if a in attrs]
    return " ".join(words if "shape" in attrs else [*words, "object"])


class _Namer:
    """Phrases that pick out one object alone ('red circle', 'small object'), computed once
    per scene; `name` draws one at random among those not using the excluded attribute."""

    def __init__(self, objects: list[Thing], rng: np.random.Generator) -> None:
        self.rng = rng
        self.options: list[list[tuple[tuple[str, ...], str]]] = []
        for target in objects:
            opts = []
            for combo in _REFERRING:
                attrs = {a: getattr(target, a) for a in combo}
                if sum(all(getattr(o, a) == v for a, v in attrs.items()) for o in objects) == 1:
                    opts.append((combo, _phrase(attrs)))
            self.options.append(opts)

    def name(self, i: int, exclude: str | None = None) -> str | None:
        opts = [phrase for combo, phrase in self.options[i] if exclude not in combo]
        return opts[self.rng.integers(len(opts))] if opts else None


def referring(target: Thing, objects: list[Thing], rng: np.random.Generator,
              exclude: str | None = None) -> str | None:
    """A phrase that picks out `target` alone, not using attribute `exclude`; random among
    the valid ones, None if there is none."""
    i = next(k for k, o in enumerate(objects) if o is target)
    return _Namer(objects, rng).name(i, exclude)


def _attribute_questions(objects, namer) -> dict[str, list[tuple[str, str]]]:
    out = {kind: [] for kind in OBJECT_ATTRIBUTES}
    for i, o in enumerate(objects):
        for kind in OBJECT_ATTRIBUTES:
            ref = namer.name(i, exclude=kind)
            if ref is not None:
                out[kind].append((f"what {kind} is the {ref} ?", getattr(o, kind)))
    return out


def _count_questions(objects, cfg, rng) -> list[tuple[str, str]]:
    out = [("how many objects are there ?", NUMBERS[len(objects)])]
    colour = cfg.colours[rng.integers(len(cfg.colours))]
    size = SIZES[rng.integers(2)]
    for attr, value in (("colour", colour), ("size", size)):
        n = sum(getattr(o, attr) == value for o in objects)
        out.append((f"how many {value} objects are there ?", NUMBERS[n]))
    return out


def _relation_table(objects, cfg) -> list[list[str | None]]:
    """rel[i][j]: relation of object i to object j (None on the diagonal or if unclear)."""
    return [[relation(p, q, cfg) if p is not q else None for q in objects] for p in objects]


def _relation_questions(objects, rel, namer) -> list[tuple[str, str]]:
    """'what is <rel> the <q> ?' where exactly one object stands in <rel> to q.

    q must have a clear relation to every other object. For 'left of' / 'right of' the
    answer must also be the only object on that side at all, so that an object that is
    both higher and further left never makes 'what is left of' debatable."""
    out = []
    for j, q in enumerate(objects):
        others = [i for i in range(len(objects)) if i != j]
        if any(rel[i][j] is None for i in others):
            continue
        for word in RELATIONS:
            hits = [i for i in others if rel[i][j] == word]
            if len(hits) != 1:
                continue
            if word in ("left of", "right of"):
                left = word == "left of"
                if sum((objects[i].centre[0] < q.centre[0]) == left for i in others) != 1:
                    continue
            ref = namer.name(j)
            if ref is not None:
                out.append((f"what is {word} the {ref} ?", describe(objects[hits[0]])))
    return out


def _yesno_questions(objects, rel, namer, rng, pairs) -> tuple[list, list]:
    """(yes questions, no questions). 'is there a <colour> <shape> ?' and 'is the <p> <rel>
    the <q> ?'. A 'no' never uses a relation that is half true (a higher-and-left object is
    never asked to be 'left of')."""
    yes, no = [], []
    present = {(o.shape, o.colour) for o in objects}
    for shape, colour in sorted(present):
        yes.append((f"is there {_article(colour)} {colour} {shape} ?", "yes"))
    absent = [p for p in pairs if p not in present]
    for i in rng.permutation(len(absent))[:2]:
        shape, colour = absent[i]
        no.append((f"is there {_article(colour)} {colour} {shape} ?", "no"))
    for i, p in enumerate(objects):
        for j, q in enumerate(objects):
            word = rel[i][j]
            if word is None:
                continue
            ref_p, ref_q = namer.name(i), namer.name(j)
            if ref_p is None or ref_q is None:
                continue
            side = "left of" if p.centre[0] < q.centre[0] else "right of"
            false = {_OPPOSITE[word], _OPPOSITE[side]} - {word}
            if word in ("left of", "right of"):
                false |= {"above", "below"}
            yes.append((f"is the {ref_p} {word} the {ref_q} ?", "yes"))
            no += [(f"is the {ref_p} {f} the {ref_q} ?", "no") for f in sorted(false)]
    return yes, no


def _pick(rng, items: list, k: int) -> list:
    return [items[i] for i in sorted(rng.permutation(len(items))[:k])]


def questions(objects: list[Thing], cfg: SceneConfig, rng: np.random.Generator,
              pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Up to cfg.qa_per_kind (question, answer, kind) triples per kind in QA_KINDS, each
    with a unique answer in this scene. `pairs`: the (shape, colour) pairs this split may
    name in a question about something absent."""
    k = cfg.qa_per_kind
    namer = _Namer(objects, rng)
    rel = _relation_table(objects, cfg)
    yes, no = _yesno_questions(objects, rel, namer, rng, pairs)
    per_kind = {**_attribute_questions(objects, namer),
                "count": _count_questions(objects, cfg, rng),
                "relation": _relation_questions(objects, rel, namer),
                "yesno": _pick(rng, yes, (k + 1) // 2) + _pick(rng, no, k // 2)}
    out = []
    for kind in QA_KINDS:
        chosen = per_kind[kind] if kind == "yesno" else _pick(rng, per_kind[kind], k)
        out += [(q, a, kind) for q, a in chosen]
    return out


def vocabulary(cfg: SceneConfig) -> list[str]:
    """Every word the generator can write for scenes of `cfg`, sorted."""
    words = set(_FUNCTION_WORDS) | set(SIZES) | set(cfg.colours) | set(cfg.shapes)
    words |= set(NUMBERS[: cfg.max_objects + 1])
    for rel in RELATIONS:
        words |= set(rel.split())
    return sorted(words)


# ---------------------------------------------------------------- reading captions back
@dataclass
class ParsedCaption:
    """A caption read back into the grammar: objects (size, colour, shape) and relation
    words in order; starts[k]: the index of object k's article in the words; grammatical:
    whether the words follow the grammar exactly (see the module docstring)."""

    objects: list[tuple[str, str, str]]  # (size, colour, shape)
    relations: list[str]
    starts: list[int] = field(default_factory=list)
    grammatical: bool = False


def _relation_at(words: list[str], i: int) -> str | None:
    return next((r for r in RELATIONS if words[i:i + len(r.split())] == r.split()), None)


def parse_caption(text: str | Sequence[str]) -> ParsedCaption:
    """'a small red circle left of a large blue square' (a string or its words) -> objects
    and relations, tolerant of garbage: an "a" starts an object phrase of the next three
    words (padded with "" at the end), relation words are collected, anything else is
    skipped. `grammatical` says whether nothing was skipped, padded or out of place and
    every phrase's first word is a size word."""
    words = text.split() if isinstance(text, str) else list(text)
    out = ParsedCaption([], [])
    ok, want_object, i = True, True, 0
    while i < len(words):
        if words[i] == ARTICLE:
            obj = tuple(words[i + 1:i + 4])
            ok &= want_object and len(obj) == 3 and obj[0] in SIZES
            out.objects.append(obj + ("",) * (3 - len(obj)))  # (size, colour, shape)
            out.starts.append(i)
            want_object, i = False, i + 4
            continue
        rel = _relation_at(words, i)
        ok &= rel is not None and not want_object
        if rel is None:
            i += 1
            continue
        out.relations.append(rel)
        want_object, i = True, i + len(rel.split())
    out.grammatical = ok and not want_object
    return out
