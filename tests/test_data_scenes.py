"""The scene world: determinism, ground truth that matches the pixels and the words,
no ambiguous scenes, the compositional split, and the scene datasets."""

import itertools

import numpy as np
import pytest
import torch

from ssm_bridge.data import (
    NUMBERS,
    SPLITS,
    ImageTransform,
    SceneCaptions,
    SceneConfig,
    Tokenizer,
    collate,
    counterfactual_scene,
    make_scene,
    render_batch,
    scene_vocabulary,
    split_seeds,
)
from ssm_bridge.data.captions import parse_caption

CFG = SceneConfig()
S = CFG.img_size


@pytest.fixture(scope="module")
def scenes():
    """300 train scenes and 100 of each other split (about a second to draw)."""
    out = [make_scene("train", i) for i in range(300)]
    return out + [make_scene(split, i) for split in ("val", "test", "comp_test")
                  for i in range(100)]


# ---- an independent reading of the scene world's language (not captions.py) ----
def vertical(p, q):
    """'above' / 'below' / 'level' / 'unclear': p relative to q."""
    d = q.centre[1] - p.centre[1]
    if d >= CFG.above_min * S:
        return "above"
    if d <= -CFG.above_min * S:
        return "below"
    return "level" if abs(d) <= CFG.level_max * S else "unclear"


def relation(p, q):
    v = vertical(p, q)
    if v == "level":
        return "left of" if p.centre[0] < q.centre[0] else "right of"
    return None if v == "unclear" else v


def parse_object_list(text):
    """'a small red circle left of a large blue square' -> ([(size, colour, shape)], [rel])."""
    words, objs, rels = text.split(), [], []
    i = 0
    while i < len(words):
        assert words[i] == "a", text
        objs.append(tuple(words[i + 1:i + 4]))
        i += 4
        if i < len(words):
            j = words.index("a", i)
            rels.append(" ".join(words[i:j]))
            i = j
    return objs, rels


def matches(ref, objects):
    """Objects that the phrase `ref` ('small red object', 'circle') describes."""
    words = ref.split()
    out = []
    for o in objects:
        attrs = {o.size, o.colour, o.shape, "object"}
        if all(w in attrs for w in words):
            out.append(o)
    return out


def answer(question, objects):
    """The answer to a scene question, worked out from the ground truth alone."""
    q = question.removesuffix(" ?")
    for kind in ("colour", "shape", "size"):
        prefix = f"what {kind} is the "
        if q.startswith(prefix):
            (o,) = matches(q[len(prefix):], objects)
            return getattr(o, kind)
    if q == "how many objects are there":
        return NUMBERS[len(objects)]
    if q.startswith("how many "):
        w = q.split()[2]
        return NUMBERS[sum(w in (o.colour, o.size) for o in objects)]
    if q.startswith("what is "):
        rest = q[len("what is "):]
        rel, ref = rest.split(" the ", 1)
        (target,) = matches(ref, objects)
        hits = [p for p in objects if p is not target and relation(p, target) == rel]
        assert len(hits) == 1, question
        if rel in ("left of", "right of"):  # the only object on that side at all
            side = [p for p in objects if p is not target
                    and (p.centre[0] < target.centre[0]) == (rel == "left of")]
            assert side == hits, question
        return hits[0].describe()
    if q.startswith("is there "):
        article, colour, shape = q.split()[2:5]
        assert article == ("an" if colour == "orange" else "a"), question
        return "yes" if any((o.colour, o.shape) == (colour, shape) for o in objects) else "no"
    if q.startswith("is the "):
        body = q[len("is the "):]
        for rel in ("left of", "right of", "above", "below"):
            if f" {rel} the " in body:
                ref_p, ref_q = body.split(f" {rel} the ")
                (p,) = matches(ref_p, objects)
                (t,) = matches(ref_q, objects)
                truth = relation(p, t)
                assert truth is not None, question
                if truth != rel and rel in ("left of", "right of"):  # never half true
                    assert (p.centre[0] < t.centre[0]) != (rel == "left of"), question
                return "yes" if truth == rel else "no"
    raise AssertionError(f"unknown question form: {question}")


# ---- determinism and splits ----
def test_same_split_and_index_give_the_same_scene():
    a, b = make_scene("train", 17), make_scene("train", 17)
    assert np.array_equal(a.image, b.image)
    assert (a.caption, a.paraphrases, a.qa, a.seed) == (b.caption, b.paraphrases, b.qa, b.seed)
    for oa, ob in zip(a.objects, b.objects):
        assert np.array_equal(oa.mask, ob.mask) and oa.box == ob.box


def test_different_seeds_differ(scenes):
    images = {s.image.tobytes() for s in scenes}
    assert len(images) == len(scenes)
    assert len({s.caption for s in scenes[:300]}) > 250


def test_split_seeds_are_disjoint_and_checked():
    seeds = [set(split_seeds(s, 1000)) for s in SPLITS]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds))
    assert split_seeds("val", 3, start=5) == [s + 5 for s in split_seeds("val", 3)]
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("dev", 3)
    with pytest.raises(ValueError, match="indices"):
        make_scene("train", -1)


def test_varied_looks(scenes):
    assert {s.background for s in scenes} == set(CFG.backgrounds)
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(CFG.shapes)
    assert {o.colour for o in objs} == set(CFG.colours)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    hand = np.mean([o.hand_drawn for o in objs])
    assert 0.2 < hand < 0.4
    for size, (lo, hi) in (("small", CFG.small_extent), ("large", CFG.large_extent)):
        ext = [o.extent / S for o in objs if o.size == size]
        assert lo <= min(ext) and max(ext) <= hi and max(ext) - min(ext) > 0.6 * (hi - lo)


# ---- ground truth ----
def test_masks_boxes_and_pixels_agree(scenes):
    for s in scenes:
        assert s.image.shape == (S, S, 3) and s.image.dtype == np.uint8
        taken = np.zeros((S, S), bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert o.mask.shape == (S, S) and o.mask.dtype == bool and o.mask.any()
            assert not o.mask[:, :x0].any() and not o.mask[:, x1:].any()
            assert not o.mask[:y0].any() and not o.mask[y1:].any()
            assert not (taken & o.mask).any()  # visible masks never overlap
            taken |= o.mask
            # Away from the border nothing is drawn: objects never touch the edge.
            assert x0 >= CFG.border and y0 >= CFG.border
            assert x1 <= S - CFG.border and y1 <= S - CFG.border
            # The box is centred on the object's centre (up to the hand-drawn wobble).
            assert abs((x0 + x1) / 2 - o.centre[0]) <= 0.12 * o.extent + 1
            assert abs((y0 + y1) / 2 - o.centre[1]) <= 0.12 * o.extent + 1
            # Small objects stay wider than a patch and a half.
            assert max(x1 - x0, y1 - y0) >= 11
            # Inner visible pixels have the object's colour (up to shading, blur, noise).
            inner = o.mask.copy()
            inner[1:-1, 1:-1] &= (o.mask[:-2, 1:-1] & o.mask[2:, 1:-1]
                                  & o.mask[1:-1, :-2] & o.mask[1:-1, 2:])
            median = np.median(s.image[inner if inner.any() else o.mask], axis=0)
            assert np.abs(median - np.array(o.rgb)).max() < 25, (s.seed, o)


def test_occlusion_is_limited(scenes):
    for s in scenes:
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            area = o.mask.sum()
            # a shape fills a good part of its box unless much of it is hidden
            assert area >= 0.3 * (x1 - x0) * (y1 - y0), (s.seed, o.shape)


def test_same_colour_objects_never_touch(scenes):
    for s in scenes:
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                if a.colour == b.colour:
                    grown = a.mask.copy()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            grown |= np.roll(a.mask, (dy, dx), axis=(0, 1))
                    assert not (grown & b.mask).any(), s.seed


def test_caption_lists_objects_left_to_right_with_true_relations(scenes):
    for s in scenes:
        objs, rels = parse_object_list(s.caption)
        assert objs == [(o.size, o.colour, o.shape) for o in s.objects]
        xs = [o.centre[0] for o in s.objects]
        assert xs == sorted(xs)
        # visible pixels agree with the order of the centres
        mx = [np.nonzero(o.mask)[1].mean() for o in s.objects]
        assert mx == sorted(mx), s.seed
        for p, q, rel in zip(s.objects, s.objects[1:], rels):
            assert rel == relation(p, q), (s.seed, s.caption)


def test_captions_follow_the_one_grammar(scenes):
    """captions.parse_caption's rule: 'a' SIZE COLOUR SHAPE (RELATION phrase)*; the scene
    world never writes 'an' in a caption (sizes start with a consonant)."""
    for s in scenes:
        p = parse_caption(s.caption)
        assert p.grammatical and "an" not in s.caption.split(), s.caption
        assert p.objects == [(o.size, o.colour, o.shape) for o in s.objects]
    for bad in ("an small red circle", "a small red circle left of", "a red small circle",
                "the small red circle", "a small red circle above above a large blue star"):
        assert not parse_caption(bad).grammatical, bad


def test_no_ambiguous_scenes(scenes):
    for s in scenes:
        for p, q in zip(s.objects, s.objects[1:]):
            assert q.centre[0] - p.centre[0] >= CFG.min_dx * S
            assert vertical(p, q) != "unclear"


def test_paraphrases_describe_the_same_objects(scenes):
    for s in scenes:
        assert s.paraphrases and s.caption not in s.paraphrases
        attrs = [(o.size, o.colour, o.shape) for o in s.objects]
        back = s.objects[::-1]
        for p in s.paraphrases:
            if p.startswith("there is "):
                assert p == "there is " + s.caption
            elif p.startswith("there are "):
                listing = p.split(" , ", 1)[1].replace(" and ", " , ").split(" , ")
                assert listing == [o.describe() for o in s.objects]
            else:
                objs, rels = parse_object_list(p.replace("to the left of", "left of"))
                if objs == attrs and "to the left of" in p:
                    assert rels == [relation(a, b) for a, b in itertools.pairwise(s.objects)]
                else:  # right to left
                    assert objs[::-1] == attrs
                    assert rels == [relation(a, b) for a, b in itertools.pairwise(back)]


def test_qa_answers_are_correct_and_unique(scenes):
    kinds = set()
    for s in scenes:
        for q, a, kind in s.qa:
            assert q.endswith(" ?")
            assert answer(q, s.objects) == a, (s.seed, q, a)
            kinds.add(kind)
    assert kinds == {"colour", "shape", "size", "count", "relation", "yesno"}
    yesno = [a for s in scenes for _, a, k in s.qa if k == "yesno"]
    assert 0.35 < yesno.count("yes") / len(yesno) < 0.65


def test_compositional_split(scenes):
    held = set(CFG.holdout)
    for s in scenes:
        pairs = {(o.shape, o.colour) for o in s.objects}
        if s.seed >= split_seeds("comp_test", 1)[0]:
            assert pairs & held, s.seed
        else:
            assert not pairs & held, s.seed
            for q, _, _ in s.qa:  # not even asked about in training splits
                assert not any(f"{c} {sh}" in q for sh, c in held), q


def test_vocabulary_covers_every_word_and_is_small(scenes):
    vocab = set(scene_vocabulary())
    assert len(vocab) < 60
    used = set()
    for s in scenes:
        for text in [s.caption, *s.paraphrases, *(w for q, a, _ in s.qa for w in (q, a))]:
            used |= set(text.split())
    assert used <= vocab, used - vocab
    assert len(used) > 0.9 * len(vocab)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="shapes"):
        SceneConfig(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="holdout"):
        SceneConfig(shapes=("circle", "square"), holdout=(("star", "green"),))
    with pytest.raises(ValueError, match="small_extent"):
        SceneConfig(small_extent=(0.2, 0.4))
    with pytest.raises(ValueError, match="above_min"):
        SceneConfig(level_max=0.3, above_min=0.2)
    with pytest.raises(RuntimeError, match="crowded"):
        make_scene("train", 0, SceneConfig(min_objects=9, max_objects=9))


def test_other_sizes_and_options():
    cfg = SceneConfig(img_size=96, shapes=("circle", "square", "hexagon"), holdout=(),
                      min_objects=2, max_objects=4, hand_drawn_prob=1.0, noise=0.0)
    s = make_scene("train", 3, cfg)
    assert s.image.shape == (96, 96, 3) and 2 <= len(s.objects) <= 4
    assert all(o.hand_drawn for o in s.objects)
    assert set(scene_vocabulary(cfg)) >= {"hexagon", "four"}


# ---- datasets ----
def test_scene_captions_items():
    tok = Tokenizer.for_scenes()
    ds = SceneCaptions("val", 8, tokenizer=tok, progress=False)
    image, tokens, targets = ds[0]
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    scene = ds.scene(0)
    assert tokens[0] == tok.bos_id and targets[-1] == tok.eos_id
    assert torch.equal(tokens[1:], targets[:-1])
    assert tok.decode(tokens) == scene.caption
    lazy = SceneCaptions("val", 8, tokenizer=tok, prerender=False)
    parallel = SceneCaptions("val", 8, tokenizer=tok, progress=False, workers=2)
    for i in range(8):
        for a, b, c in zip(ds[i], lazy[i], parallel[i]):
            assert torch.equal(a, b) and torch.equal(a, c)
    mixed = [SceneCaptions("val", 8, tokenizer=tok, task="mixed", progress=False, **kw)
             for kw in ({}, {"prerender": False}, {"workers": 2})]
    for i in range(8):  # the caption stage (TrainConfig.caption_steps) on every path
        assert all(m.caption_example(i) == ds.example(i) for m in mixed)
        for m in mixed:  # the caption task's item, whatever the dataset's task
            assert all(torch.equal(a, b) for a, b in zip(m.caption_item(i), ds[i]))
    later = SceneCaptions("val", 4, tokenizer=tok, seed_offset=4, progress=False)
    assert torch.equal(later[0][0], ds[4][0]) and later.example(0) == ds.example(4)


def test_vqa_items_learn_only_the_answer():
    tok = Tokenizer.for_scenes()
    ds = SceneCaptions("train", 40, tokenizer=tok, task="vqa", progress=False)
    kinds = set()
    for i in range(len(ds)):
        _, tokens, targets = ds[i]
        ex = ds.example(i)
        kinds.add(ex.kind)
        q = tok.encode(ex.prompt, eos=False)
        assert tokens[: len(q)].tolist() == q  # [BOS] + question, ending in "?"
        assert tok.decode([tokens[len(q) - 1]]) == "?"
        assert (targets[: len(q) - 1] == -100).all()
        learned = targets[len(q) - 1:]
        assert tok.decode(learned) == ex.answer and learned[-1] == tok.eos_id
    assert len(kinds) >= 5
    mixed = SceneCaptions("train", 40, tokenizer=tok, task="mixed", progress=False)
    n_cap = sum(mixed.example(i).kind == "caption" for i in range(40))
    assert 8 <= n_cap <= 32


def test_collate_pads_tokens_and_ignores_padding():
    ds = SceneCaptions("train", 6, task="vqa", progress=False)
    items = [ds[i] for i in range(6)]
    images, tokens, targets = ds.collate(items)
    T = max(len(t) for _, t, _ in items)
    assert images.shape == (6, 3, S, S) and tokens.shape == targets.shape == (6, T)
    for i, (_, t, _) in enumerate(items):
        assert (tokens[i, len(t):] == 0).all() and (targets[i, len(t):] == -100).all()
        assert torch.equal(tokens[i, : len(t)], t)
    assert torch.equal(collate(items)[1], tokens)


def test_render_batch_and_dataset_errors():
    images, scenes = render_batch("test", [0, 5, 9])
    assert images.shape == (3, 3, S, S)
    assert [s.seed for s in scenes] == [split_seeds("test", 10)[i] for i in (0, 5, 9)]
    tf = ImageTransform(S)
    assert np.array_equal(tf.inverse(images[1]), scenes[1].image)
    small, _ = render_batch("test", [0], transform=ImageTransform(32))
    assert small.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="task"):
        SceneCaptions("train", 4, task="chat")
    with pytest.raises(ValueError, match="split"):
        SceneCaptions("dev", 4)


# ---------------------------------------------------------------- counterfactual pairs
def _test_seed(index):
    (seed,) = split_seeds("test", 1, start=index)
    return seed


@pytest.mark.parametrize("attribute,value,word", [("colour", "green", "green"),
                                                  ("shape", "star", "star"),
                                                  ("size", "large", "large")])
def test_counterfactual_changes_one_word_and_only_that_objects_pixels(attribute, value, word):
    clean = make_scene("test", 1)  # "a small red diamond below a large red circle ..."
    other = counterfactual_scene(_test_seed(1), 0, attribute, value)
    a, b = clean.caption.split(), other.caption.split()
    assert len(a) == len(b) and [i for i in range(len(a)) if a[i] != b[i]] == [b.index(word)]
    changed = (clean.image != other.image).any(-1)  # (H, W)
    boxes = np.array([clean.objects[0].box, other.objects[0].box])  # (2, 4): x0 y0 x1 y1
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    outside = changed.copy()
    outside[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = False  # the object, its shadow
    assert changed.any() and not outside.any()


def test_counterfactual_position_and_errors():
    seed = _test_seed(2)  # "a large blue diamond"
    moved = counterfactual_scene(seed, 0, "position", (24.0, 30.0))
    assert moved.caption == make_scene("test", 2).caption
    assert moved.objects[0].centre == (24.0, 30.0)
    with pytest.raises(ValueError, match="already large"):
        counterfactual_scene(seed, 0, "size", "large")
    with pytest.raises(ValueError, match="colour must be one of"):
        counterfactual_scene(seed, 0, "colour", "pink")
    with pytest.raises(ValueError, match="out of range"):
        counterfactual_scene(seed, 3, "colour", "red")
    with pytest.raises(ValueError, match="attribute must be one of"):
        counterfactual_scene(seed, 0, "texture", "dotted")
    with pytest.raises(ValueError, match="breaks the scene rules"):
        counterfactual_scene(_test_seed(1), 0, "position", (10.0, 30.0))
