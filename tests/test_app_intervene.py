"""The app's Intervene tab (issue 19): patches chosen by clicking the grid or by button,
an action carried out through `interventions.intervene` (the library's and the explorer's
code path), its result shown as both captions and the per-word change of log p."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("gradio")
from apputil import ALL_SSM, DECODING, page_handlers

from ssm_bridge.app.intervene import (
    CHANGED,
    DISPLAY,
    TINT,
    caption_change,
    clicked_patch,
    object_patches,
    patch_grid,
    word_changes,
)
from ssm_bridge.app.support import word_object
from ssm_bridge.app.ui import Handlers
from ssm_bridge.interp.interventions import Action, intervene


@pytest.fixture(scope="module")
def handlers(one_thread) -> Handlers:
    return page_handlers(fit_ood=False)


@pytest.fixture(scope="module")
def view(handlers):
    source = handlers.from_seed(None, handlers.test_lo + 3)[0]
    return handlers.run(None, source, *DECODING)[0]


def test_a_click_names_the_patch_under_it_and_the_grid_tints_only_chosen_patches():
    g, cell = 8, DISPLAY // 8
    for r, c in ((0, 0), (3, 5), (7, 7)):
        assert clicked_patch((c * cell + cell // 2, r * cell + cell // 2), g) == r * g + c
    assert clicked_patch((-5, 10_000), g) == (g - 1) * g  # clamped to the image
    pixels = np.zeros((64, 64, 3), np.uint8)
    grid = patch_grid(pixels, [9], g)  # row 1, column 1
    assert grid.shape == (DISPLAY, DISPLAY, 3)
    inside = grid[cell + 5: 2 * cell - 5, cell + 5: 2 * cell - 5]
    np.testing.assert_allclose(inside.reshape(-1, 3).mean(0), 0.55 * TINT, atol=1)
    assert grid[5 * cell + 5, 5 * cell + 5].max() == 0  # an unchosen patch is untouched


def test_clicks_toggle_patches_and_buttons_choose_all_none_or_the_words_object(handlers,
                                                                               view):
    g = view.analysis.grid_side
    at = SimpleNamespace(index=[DISPLAY // g * 2 + 3, 3])  # patch 2, a gr.SelectData
    chosen, grid = handlers.iv_click(None, view, [], at)
    assert chosen == [2] and grid.shape == (DISPLAY, DISPLAY, 3)
    assert handlers.iv_click(None, view, chosen, at)[0] == []  # clicked again: unchosen
    assert handlers.iv_choose(None, view, 0, "all")[0] == list(range(g * g))
    assert handlers.iv_choose(None, view, 0, "none")[0] == []
    words = view.analysis.words
    shape = next(i for i, w in enumerate(words) if w in ("cross", "square", "circle",
                                                         "triangle", "star", "diamond"))
    j = word_object(view.scene, words, shape)
    assert j is not None and handlers.iv_choose(None, view, shape, "object")[0] == \
        list(object_patches(view.scene.objects[j].mask, g))
    relation = words.index("above") if "above" in words else words.index("below")
    with pytest.raises(ValueError, match="names no object"):
        handlers.iv_choose(None, view, relation, "object")


def test_apply_shows_what_intervene_measures(handlers, view):
    an = handlers.models[None]
    layers = list(range(len(an.model.bridge.layers)))
    spans, md = handlers.iv_apply(None, view, list(range(64)), "zero state", layers, "all",
                                  "bridge", None)
    res = intervene(an.model, an.p.tokenizer, view.analysis.image,
                    Action("zero state", tuple(range(64)), tuple(layers)),
                    caption_ids=view.analysis.ids)
    assert md == caption_change(res) and spans == word_changes(res)
    assert res.caption_changed and "the caption **changed**" in md
    hurt = [w for w, label in spans if label == "hurt"]
    assert hurt == [r["word"] + " " for r in res.to_rows() if r["delta"] < -CHANGED]
    assert hurt, "zeroing every patch's state hurts some word of this caption"
    assert f"{res.total_delta:+.2f} nats" in md


def test_patching_from_a_scene_uses_that_scenes_state(handlers, view):
    an = handlers.models[None]
    seed = handlers.test_lo + 4
    _, md = handlers.iv_apply(None, view, list(range(64)), "patch from scene", [0, 1],
                              "all", "bridge", seed)
    other = handlers.run(None, handlers.from_seed(None, seed)[0], *DECODING)[0]
    res = intervene(an.model, an.p.tokenizer, view.analysis.image,
                    Action("patch from scene", tuple(range(64)), (0, 1),
                           source=other.analysis.image), caption_ids=view.analysis.ids)
    assert md == caption_change(res)


def test_bad_choices_get_one_line_messages(handlers, view):
    with pytest.raises(ValueError, match="choose at least one patch"):
        handlers.iv_apply(None, view, [], "reset state", [0], "all", "bridge", None)
    with pytest.raises(ValueError, match="tick at least one layer"):
        handlers.iv_apply(None, view, [3], "reset state", [], "all", "bridge", None)
    with pytest.raises(ValueError, match="source scene: type a scene seed"):
        handlers.iv_apply(None, view, [3], "patch from scene", [0], "all", "bridge", None)
    with pytest.raises(ValueError, match="caption an image first"):
        handlers.iv_apply(None, None, [3], "reset state", [0], "all", "bridge", None)
    with pytest.raises(ValueError, match="caption an image first"):
        handlers.iv_click(None, None, [], SimpleNamespace(index=[0, 0]))


def test_the_tab_lays_itself_out_for_each_model(handlers):
    kind, stack, _, source, layers, direction = handlers.iv_model(ALL_SSM)
    assert "zero cross-attention" not in [c[1] for c in kind.choices]  # none to close
    assert "zero state" in [c[1] for c in kind.choices]
    assert [c[0] for c in stack.choices] == ["bridge", "decoder", "vision"] and stack.visible
    _, _, layers, direction = handlers.iv_layout(ALL_SSM, "reset state", "vision")
    n = len(handlers.models[ALL_SSM].model.vision.layers)
    assert [c[1] for c in layers.choices] == list(range(n))
    assert direction.visible  # the Vim scans both ways: forward, backward or both
    text, source, layers, direction = handlers.iv_layout(ALL_SSM, "patch from scene",
                                                         "decoder")
    n = len(handlers.models[ALL_SSM].model.decoder.layers)
    assert [c[1] for c in layers.choices] == list(range(n)) and source.visible
    assert direction.visible is False  # the decoder scans one way: nothing to choose
    assert "another image" in text
    kind = handlers.iv_model("shapes-tiny")[0]
    assert "zero cross-attention" in [c[0] for c in kind.choices]


def test_closing_the_cross_attention_gates_on_the_attention_model(handlers, view):
    spans, md = handlers.iv_apply(None, view, [], "zero cross-attention", [], "all",
                                  "bridge", None)
    assert "log p of the caption above" in md and len(spans) == len(view.analysis.words) + 1
