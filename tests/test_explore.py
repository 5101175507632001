"""The notebook explorer (ssm_bridge.app.explore), driven through its widgets (values set,
buttons clicked) and through its methods, against the app's analysis layer and
interventions.intervene called directly."""

import dataclasses
import html
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ssm_bridge
from ssm_bridge import EnhancedVLM, load_pretrained
from ssm_bridge.app.explore import (
    Explorer,
    as_image,
    explore,
    object_patches,
    parse_patches,
)
from ssm_bridge.app.intervene import caption_change
from ssm_bridge.app.support import (
    TABS,
    Analyser,
    Decoding,
    scene_pixels,
    tab_figure,
    tab_titles,
)
from ssm_bridge.data import make_scene
from ssm_bridge.interp.interventions import Action, intervene
from ssm_bridge.training.pretrained import Pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
SCENE = 3  # test scene 3: zeroing the state at its square's patches changes the caption


@pytest.fixture(scope="module")
def analysers(one_thread):
    """Each shipped model once, without the OOD fit (seconds), and one analysed view of
    test scene SCENE per model: the explorers below share them."""
    out = {}
    for name in ("shapes-tiny", "shapes-all-ssm"):
        an = Analyser(load_pretrained(name), fit_ood=False)
        scene = make_scene("test", SCENE, an.p.scene_config)
        out[name] = an, an.analyse(an.prepare(scene.image), Decoding(), scene)
    return out


def fresh(analysers, name="shapes-tiny") -> Explorer:
    an, view = analysers[name]
    return Explorer(an, view, Decoding())


def titles(fig) -> list[str]:
    """The figure's axes titles, line breaks (viz wraps long titles) as spaces."""
    return None if fig is None else [" ".join(ax.get_title().split()) for ax in fig.axes]


def expected(ex: Explorer, **changes) -> list[str]:
    """The axes titles of tab_figure's figure for the explorer's controls (and changes)."""
    return titles(tab_figure(ex.analyser, ex.view, **{**ex.tab_args(), **changes}))


def shown(widget) -> bool:
    return widget.layout.display != "none"


def markdown(output) -> str:
    return output.outputs[0]["data"]["text/markdown"] if output.outputs else ""


def test_clicking_a_word_selects_it_and_redraws(analysers):
    ex = fresh(analysers)
    words = ex.view.analysis.words
    assert ex.selected_word == "cross"  # default_word: the first shape noun
    i = words.index("green")
    ex.word_buttons[i].click()
    assert ex.word == i and ex.selected_word == "green"
    assert [b.button_style for b in ex.word_buttons].count("warning") == 1
    assert ex.word_buttons[i].button_style == "warning"
    assert "'green'" in titles(ex.figure)[0]
    assert titles(ex.figure) == expected(ex, word=i)
    assert "**green**" in markdown(ex.info)
    assert bytes(ex.image.value).startswith(b"\x89PNG")
    ex.select_word("square")  # the method, by text
    assert ex.word == words.index("square") and "'square'" in titles(ex.figure)[0]


@pytest.mark.parametrize("name", ["shapes-tiny", "shapes-all-ssm"])
def test_each_map_kind_draws_that_tab(analysers, name):
    ex = fresh(analysers, name)
    model_titles = tab_titles(ex.analyser.model)
    assert [label for label, _ in ex.kind.options] == list(model_titles.values())
    for tab in TABS:
        ex.kind.value = tab  # the widget
        assert titles(ex.figure) == expected(ex, tab=tab), tab
        assert (ex.figure is None) == (tab == "attribution")  # no attribution computed yet
    ex.set_kind(model_titles["cross"])  # the method, by this model's title
    assert ex.kind.value == "cross" and titles(ex.figure) == expected(ex, tab="cross")
    scan_words = name == "shapes-all-ssm"  # a Mamba decoder: the word tabs show its scans
    assert ("→ image through the scans" in titles(ex.figure)[0]) == scan_words
    assert shown(ex.view_mode) == (not scan_words)  # per-head views need cross-attention


def test_truth_and_attribution_notes(analysers):
    ex = fresh(analysers)
    ex.set_kind("truth")
    assert markdown(ex.notes).startswith("**ground truth:**")
    ex.set_kind("attribution")
    assert ex.figure is None and "click 'compute attribution'" in markdown(ex.notes)
    assert shown(ex.method) and shown(ex.attribute_button)
    ex.method.value = "gradcam"
    ex.attribute_button.click()
    assert ex.message.value == ""
    assert titles(ex.figure) == expected(ex) and "gradcam of 'cross'" in titles(ex.figure)
    assert markdown(ex.notes) == ""


def test_layer_and_direction_change_the_state_map(analysers):
    ex = fresh(analysers)
    assert not shown(ex.layer) and not shown(ex.step)  # the cross tab uses neither
    ex.set_kind("state")
    assert shown(ex.layer) and not shown(ex.direction)  # 2 layers, 1 direction
    before = titles(ex.figure)
    ex.layer.value = 1
    assert titles(ex.figure) == expected(ex, layer=1) != before
    assert titles(ex.figure)[0] == "layer 1 state (row scan)"
    ex.word_buttons[0].click()  # the state is the image's: a word click keeps the figure
    assert titles(ex.figure) == expected(ex, layer=1)
    one_layer = fresh(analysers, "shapes-all-ssm")
    one_layer.set_kind("state")
    assert not shown(one_layer.layer)


def test_direction_menu_of_a_bidirectional_bridge(analysers):
    """The shipped bridges scan one way; an untrained bidirectional one has two."""
    an, view = analysers["shapes-tiny"]
    p = an.p
    torch.manual_seed(0)
    model = EnhancedVLM(dataclasses.replace(p.model.config, ssm_scan_order="bidirectional"))
    pretrained = Pretrained(model.eval(), p.tokenizer, p.transform, p.scene_config, p.path)
    ex = explore(pretrained, view.pixels, decoding=Decoding(max_length=4))
    ex.set_kind("state")
    assert shown(ex.direction) and len(ex.direction.options) == 2
    first = titles(ex.figure)[0]
    ex.direction.value = ex.direction.options[1]
    assert titles(ex.figure)[0] != first
    assert titles(ex.figure) == expected(ex, direction=1)
    assert f"({ex.direction.options[1]} scan)" in titles(ex.figure)[0]


def test_step_slider_moves_the_scrubber(analysers):
    ex = fresh(analysers)
    ex.set_kind("scrubber")
    assert shown(ex.step) and titles(ex.figure)[0] == "step 0/64: cls token"
    ex.step.value = 10
    assert titles(ex.figure) == expected(ex, step=10)
    assert titles(ex.figure)[0].startswith("step 10/64")
    ex.set_step(64)
    assert titles(ex.figure)[0].startswith("step 64/64")


def test_intervention_is_intervene_and_shows_the_changed_caption(analysers):
    ex = fresh(analysers)
    an = ex.analyser
    ex.select_word("square")
    ex.action.value = "zero state"
    ex.object_button.click()  # the patches of the object the selected word names
    scene = ex.view.scene
    patches = object_patches(scene.objects[1].mask, an.model.config.grid_size)
    assert parse_patches(ex.patches.value, 64) == patches and len(patches) > 0
    ex.apply_button.click()
    assert ex.message.value == ""
    direct = intervene(an.model, an.p.tokenizer, an.p.transform(ex.view.pixels),
                       Action("zero state", patches))
    r = ex.result
    assert (r.caption_before, r.caption_after) == (direct.caption_before, direct.caption_after)
    assert torch.equal(r.logprob_after, direct.logprob_after)
    assert r.caption_changed and r.caption_before == ex.view.analysis.caption
    text = markdown(ex.result_out)
    assert text == caption_change(r)  # the app's Intervene tab shows the same
    assert f"before: {r.caption_before}" in text and "the caption **changed**" in text
    assert text.count("|") == 5 * (2 + len(r.words))  # the header, the rule, a row per word
    # only the selected layer: the same Action with layers=(1,)
    ex.layer.value, ex.only_selected.value = 1, True
    assert ex.current_action() == Action("zero state", patches, layers=(1,),
                                         directions=("row",))


def test_intervention_on_the_all_ssm_model(analysers):
    ex = fresh(analysers, "shapes-all-ssm")
    an = ex.analyser
    assert "zero cross-attention" not in ex.action.options  # no cross-attention to close
    ex.action.value = "patch from scene"
    assert shown(ex.source_seed) and not shown(ex.only_selected)  # one bridge layer
    ex.patches.value = "0-63"
    ex.source_seed.value = 7
    result = ex.apply_intervention()
    source = an.p.transform(an.prepare(scene_pixels(7, an.p.scene_config)[0]))
    direct = intervene(an.model, an.p.tokenizer, an.p.transform(ex.view.pixels),
                       Action("patch from scene", tuple(range(64)), source=source))
    assert result.caption_after == direct.caption_after
    assert torch.equal(result.logprob_after, direct.logprob_after)
    # the Mamba decoder's state at the same patches (its image tokens)
    assert shown(ex.stack) and list(ex.stack.options) == ["bridge", "decoder", "vision"]
    ex.action.value, ex.stack.value = "zero state", "decoder"
    ex.apply_button.click()
    direct = intervene(an.model, an.p.tokenizer, an.p.transform(ex.view.pixels),
                       Action("zero state", tuple(range(64)), stack="decoder"))
    assert ex.message.value == "" and ex.result.caption_after == direct.caption_after
    assert torch.equal(ex.result.logprob_after, direct.logprob_after)


def test_zero_cross_attention_needs_no_patches(analysers):
    ex = fresh(analysers)
    assert not shown(ex.stack)  # a transformer decoder: the bridge is the only SSM stack
    ex.action.value = "zero cross-attention"
    assert not shown(ex.patches) and not shown(ex.object_button)
    ex.apply_button.click()
    assert ex.message.value == "" and ex.result is not None
    assert "tanh(attn gate) = 0" in ex.action_help.value


def test_bad_inputs_give_one_line_errors(analysers, tmp_path):
    an = analysers["shapes-tiny"][0]
    bad_calls = {
        "a checkpoint name": lambda: explore(an.model, 0),
        "scene seed": lambda: explore(an, True),
        "no image file": lambda: explore(an, tmp_path / "missing.png"),
        ">= 0": lambda: explore(an, -1),
        "decoding must be": lambda: explore(an, 0, decoding=3),
    }
    ex = fresh(analysers)
    bad_calls.update({
        "word must be an index": lambda: ex.select_word(99),
        "'zebra' is not in the caption": lambda: ex.select_word("zebra"),
        "unknown map": lambda: ex.set_kind("nope"),
        "layer must be one of": lambda: ex.set_layer(5),
        "direction must be one of": lambda: ex.set_direction("col"),
        "scan step must be": lambda: ex.set_step(65),
        "view must be one of": lambda: ex.set_view("per patch"),
        "method must be one of": lambda: ex.attribute("shap"),
        "names no object": lambda: (ex.select_word("above"), ex.use_word_object()),
    })
    for needle, call in bad_calls.items():
        with pytest.raises(ValueError) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value), needle
    ex.action.value = "zero state"
    for text, needle in (("99", "got '99'"), ("", "at least one patch"), ("3-1", "'3-1'")):
        ex.patches.value = text
        ex.apply_button.click()  # the widget route shows the same line, once
        assert needle in html.unescape(ex.message.value), text
    ex.patches.value = "1"
    ex.apply_button.click()
    assert ex.message.value == ""


def test_images_by_path_array_and_pil(analysers, tmp_path):
    an, view = analysers["shapes-tiny"]
    path = tmp_path / "scene.png"
    Image.fromarray(view.pixels).save(path)
    ex = explore(an, path)
    assert np.array_equal(ex.view.pixels, view.pixels) and ex.view.scene is None
    assert ex.view.analysis.caption == view.analysis.caption
    ex.set_kind("truth")
    assert ex.figure is None and "generated scenes only" in markdown(ex.notes)
    assert not shown(ex.object_button)  # no scene, no objects to pick
    for image in (view.pixels, Image.open(path)):
        assert np.array_equal(as_image(an, image)[0], view.pixels)


def test_display_and_export(analysers, monkeypatch):
    ex = fresh(analysers)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == repr(ex) and len(repr(ex)) < 200  # not the PNG bytes
    assert ssm_bridge.explore is explore and "explore" in ssm_bridge.__all__
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install ipywidgets"):
        explore("shapes-tiny", 0)


def test_patch_helpers():
    assert parse_patches(" 9, 10,17-19,9 ", 64) == (9, 10, 17, 18, 19)
    assert parse_patches("", 64) == ()
    mask = np.zeros((64, 64), bool)
    mask[8:24, 0:12] = True  # rows 1-2 of 8 px patches; column 1 covered by half
    assert object_patches(mask, 8) == (8, 9, 16, 17)
    odd = np.zeros((100, 100), bool)
    odd[:50, :50] = True  # any image size: the top-left quarter of the patches
    assert object_patches(odd, 8) == tuple(r * 8 + c for r in range(4) for c in range(4))
