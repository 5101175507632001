"""The app's model selector: the page lays itself out for the chosen checkpoint (tab
titles, scan controls, decoding ranges) and every handler works on the session's model.
The two shipped checkpoints are the two kinds: shapes-tiny attends, shapes-all-ssm has no
attention anywhere."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")
from apputil import ALL_SSM, DECODING, page_handlers

from ssm_bridge.app.support import (
    SCAN_TABS,
    TABS,
    scan_choices,
)
from ssm_bridge.app.ui import Handlers, Models, model_choices


@pytest.fixture(scope="module")
def handlers(one_thread) -> Handlers:
    return page_handlers()


def test_choices_put_the_starting_checkpoint_first(tmp_path):
    assert model_choices("shapes-tiny") == ["shapes-tiny", ALL_SSM]  # the shipped ones
    assert model_choices(ALL_SSM, ["shapes-tiny", ALL_SSM]) == [ALL_SSM, "shapes-tiny"]
    folder = str(tmp_path / "my-run")
    models = Models(None, "shapes-tiny", model_choices("shapes-tiny", [folder]), "cpu")
    assert models.labels() == [("shapes-tiny", "shapes-tiny"), ("my-run", folder)]


def test_each_session_captions_with_its_own_model(handlers):
    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    tiny = handlers.run(None, source, *DECODING)[0]
    ssm = handlers.run(ALL_SSM, source, *DECODING)[0]
    assert tiny.analysis.cross_attention is not None
    assert ssm.analysis.cross_attention is None and ssm.analysis.hidden_attention is not None
    assert handlers.models[ALL_SSM] is handlers.models[ALL_SSM]  # loaded once
    layers, directions = scan_choices(handlers.models[ALL_SSM].model)
    figs = handlers.render(ALL_SSM, ssm, 0, "cross", layers[0], directions[0], 0, "ig")
    assert figs[list(TABS).index("cross")] is not None  # the word -> image scan map


def test_switching_lays_the_page_out_for_the_model(handlers):
    out = handlers.switch_model(ALL_SSM)
    name, intro, view = out[:3]
    tabs = out[7 + len(TABS): 7 + 2 * len(TABS)]
    layer, direction, step, top_k, max_len, heads = out[-6:]
    assert heads.visible is False  # no cross-attention: no per-head view to choose
    assert name == ALL_SSM and view is None
    assert "Vision Mamba" in intro and "Mamba decoder" in intro
    titles = {t: tab.label for t, tab in zip(TABS, tabs)}
    assert titles["cross"] == SCAN_TABS["cross"] and titles["truth"] == TABS["truth"]
    config = handlers.models[ALL_SSM].model.config
    assert step.maximum == config.num_patches and max_len.value == config.max_seq_length
    assert top_k.maximum == config.vocab_size
    assert layer.choices and direction.choices
    back = handlers.switch_model("shapes-tiny")
    assert back[7 + len(TABS)].label == TABS["cross"]


def test_after_a_switch_the_current_image_is_captioned_again(handlers):
    import gradio as gr

    skipped = handlers.rerun(ALL_SSM, None, *DECODING)  # no image yet: nothing changes
    assert len(skipped) == 5 + len(TABS) and all(x == gr.skip() for x in skipped)
    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    assert handlers.rerun(ALL_SSM, source, *DECODING)[0].analysis.words


def test_unknown_and_broken_models_are_one_line(handlers, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of"):
        handlers.models["nope"]
    handlers.models.choices.append(str(tmp_path))  # an empty folder
    with pytest.raises(ValueError, match="cannot load model") as e:
        handlers.models[str(tmp_path)]
    assert "\n" not in str(e.value)


def test_a_failed_image_source_clears_the_last_caption_and_maps(handlers):
    """Wired to every source's failure: the source, preview, its line, then the analysis
    outputs (view, word, caption, info, every tab's figure, the ground truth)."""
    out = handlers.cleared()
    assert len(out) == 3 + 4 + len(TABS) + 1
    assert out[0] is None and out[3] is None and out[5] == [] and out[-1] == ""


def test_download_the_open_map_as_png_and_arrays(handlers, tmp_path, monkeypatch):
    """Issue 19, point 3: every map downloads as a PNG and its arrays; for the cross-
    attention tab the saved map is the word's map, for either model."""
    import numpy as np
    from PIL import Image

    from ssm_bridge.app import ui

    monkeypatch.setattr(ui, "fresh_folder", lambda kind: tmp_path / kind)
    (tmp_path / "maps").mkdir()
    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    view = handlers.run(None, source, *DECODING)[0]
    png, npz = handlers.download_map(None, view, 1, "cross", 0, None, 0, "ig", "mean")
    assert png.endswith("cross-word2.png") and Image.open(png).size[0] > 100
    np.testing.assert_array_equal(np.load(npz)["cross_attention"],
                                  view.analysis.cross_attention[1].numpy())
    heads = np.load(handlers.download_map(None, view, 1, "cross", 0, None, 0, "ig",
                                          "per head")[1])
    per_head = view.analysis.cross_attention_heads[1]  # (layers, heads, g, g)
    np.testing.assert_array_equal(heads["layer0_head1"], per_head[0, 1].numpy())
    assert len(heads.files) == per_head.shape[0] * per_head.shape[1]
    ssm = handlers.run(ALL_SSM, source, *DECODING)[0]
    layers, directions = scan_choices(handlers.models[ALL_SSM].model)
    _, npz = handlers.download_map(ALL_SSM, ssm, 0, "bridge", layers[0], directions[0], 0,
                                   "ig")
    saved = np.load(npz)
    assert "bridge_0" in saved.files[0] and len(saved.files) >= 2  # Δ and gate per layer
    with pytest.raises(ValueError, match="no map yet"):
        handlers.download_map(None, view, 1, "attribution", 0, None, 0, "ig")
    with pytest.raises(ValueError, match="caption an image first"):
        handlers.download_map(None, None, 0, "cross", 0, None, 0, "ig")


def test_the_attribution_tab_follows_the_selected_word(handlers):
    """Issue 19, point 5: the Attribution tab went blank after another word was picked;
    now the open tab computes the new word's map (gradio shows the wait as progress)."""
    from types import SimpleNamespace

    import gradio as gr

    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    view = handlers.run(None, source, *DECODING)[0]
    attr = list(TABS).index("attribution")
    for word in (1, 3):
        out = handlers.select_word(None, view, "attribution", 0, None, 0, "saliency", "mean",
                                   SimpleNamespace(index=word))
        assert out[0] == word and out[3 + attr] is not None
        assert word in view.analysis.attributions["saliency"]
    # a tab that is the same for every word keeps its figure: nothing is redrawn
    out = handlers.select_word(None, view, "bridge", 0, None, 0, "saliency", "mean",
                               SimpleNamespace(index=2))
    assert all(f == gr.skip() for f in out[3:3 + len(TABS)])
    assert out[-1].startswith("**ground truth:**")


def test_every_per_word_map_names_the_query_that_wrote_the_word(handlers):
    """Issue 19, point 2: a map of a word is the attention (or flow) of the decoder query
    that wrote it; each says so, for both kinds of model."""
    from ssm_bridge.app.support import WORD_TAB_KINDS, tab_figure

    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    for name in (None, ALL_SSM):
        an = handlers.models[name]
        view = handlers.run(name, source, *DECODING)[0]
        word = view.analysis.words[2]
        for tab in WORD_TAB_KINDS:
            fig = tab_figure(an, view, tab, 2)
            texts = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
            said = " ".join(" ".join(texts).split())
            assert f"the query that wrote '{word}'" in said, (name, tab, said)


# ---------------------------------------------------------------- the scan tabs per model
def scan_figure(handlers, name, view, tab, layer, direction, step=0):
    """The figure the State or Scrubber tab draws for a (layer, direction) of the menus."""
    return handlers.render(name, view, 0, tab, layer, direction, step, "ig")[
        list(TABS).index(tab)]


def grid_steps(fig) -> list[int]:
    """The scan step written in each patch of the State figure's grid, row-major."""
    return [int(t.get_text()) for t in fig.axes[1].texts]


def values(menu) -> list:
    """A dropdown's choices (gradio keeps them as (label, value) pairs)."""
    return [v for _, v in menu.choices]


def title(fig) -> str:
    return " ".join(fig.axes[0].get_title().split())  # long titles wrap


@pytest.fixture(scope="module")
def started_on_all_ssm(one_thread):
    """The app as `python app.py --checkpoint shapes-all-ssm` builds it (serve.main), the
    page caught where it would be served and the scan kernel's readying skipped."""
    from apputil import app, free_port

    from ssm_bridge.app import serve
    from ssm_bridge.core import scan

    built = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "prepare_extension", lambda: None)
        mp.setattr(serve, "launch", lambda demo, *a, **k: built.append(demo))
        assert app.main(["--checkpoint", ALL_SSM, "--port", str(free_port())]) == 0
    return built[0]


def test_the_app_started_on_all_ssm_lays_out_and_shows_the_vim_state(started_on_all_ssm):
    """Issue 17: `python app.py --checkpoint shapes-all-ssm` lays the page out for a model
    without attention (no cross-attention tab; its scans instead) and its State and
    Scrubber tabs show the Vim encoder's scans too, each step labelled with the patch it
    reads although the class token sits mid-sequence inside the encoder."""
    import gradio as gr

    demo = started_on_all_ssm
    h, model = demo.handlers, demo.analyser.model
    assert demo.models.first == ALL_SSM and model.config.vision_type == "vim"
    blocks = list(demo.blocks.values())
    tabs = {b.elem_id: b.label for b in blocks if isinstance(b, gr.Tab)}
    assert TABS["cross"] not in tabs.values()
    assert {t: tabs[f"tab-{t}"] for t in SCAN_TABS} == SCAN_TABS
    assert all(tabs[f"tab-{t}"] == TABS[t] for t in ("bridge", "state", "scrubber"))
    menus = {b.elem_id: b for b in blocks if isinstance(b, gr.Dropdown)}
    for tab in ("state", "scrubber"):
        assert values(menus[f"layer-{tab}"]) == ["bridge 0", "Vim 0", "Vim 1", "Vim 2"]
        assert menus[f"layer-{tab}"].value == "bridge 0"
        assert values(menus[f"direction-{tab}"]) == ["row"]
    source = h.from_seed(None, h.example_seeds[0])[0]
    view = h.run(None, source, *DECODING)[0]
    assert view.analysis.words and view.analysis.cross_attention is None
    # a Vim layer scans both ways: the direction menus offer both
    menu, scrub_menu = h.layer_directions(None, "Vim 1", "row")
    assert values(menu) == values(scrub_menu) == ["row", "row_rev"] and menu.visible
    m, P = model.vision.cls_position, model.config.num_patches  # cls inside: m = P // 2
    fig = scan_figure(h, None, view, "state", "Vim 1", "row_rev")
    assert title(fig) == "Vim layer 1 state (row_rev scan)"
    # the backward scan reads [patches 0 .. m-1, cls, patches m .. P-1] reversed
    assert grid_steps(fig) == [P - p - (p >= m) for p in range(P)]
    cls = [t for t in fig.axes[0].texts if t.get_text() == "cls"]
    assert len(cls) == 1 and list(cls[0].xy) == list(view.scans["vision", 1, 1].proj[m])
    assert grid_steps(scan_figure(h, None, view, "state", "Vim 0", "row")) == [
        p + (p >= m) for p in range(P)]
    assert title(scan_figure(h, None, view, "scrubber", "Vim 0", "row", m)) == \
        f"step {m}/{P}: cls token"
    assert title(scan_figure(h, None, view, "scrubber", "Vim 0", "row", 0)) == \
        f"step 0/{P}: patch (0, 0)"
    assert title(scan_figure(h, None, view, "scrubber", "bridge 0", "row", m)) == \
        f"step {m}/{P}: patch {divmod(m - 1, model.config.grid_size)}"
    with pytest.raises(ValueError, match=r"'row_rev' is not one of this layer's \['row'\]"):
        scan_figure(h, None, view, "state", "bridge 0", "row_rev")


def test_the_state_and_scrubber_tabs_of_shapes_tiny_show_its_bridge_as_before(handlers):
    """A model without a Vim encoder keeps its menus: the bridge's layers by index, its one
    direction hidden; the figures are the bridge's (the class token read first)."""
    from ssm_bridge.app.ui import scan_menu_settings

    model = handlers.models["shapes-tiny"].model
    layer, direction = scan_menu_settings(model)
    assert layer == {"choices": [0, 1], "value": 0, "visible": True, "label": "bridge layer"}
    assert direction == {"choices": ["row"], "value": "row", "visible": False,
                         "label": "scan direction"}
    menus = handlers.switch_model("shapes-tiny")[-6:-4]  # the scrubber's pair
    assert [values(menus[0]), values(menus[1])] == [[0, 1], ["row"]]
    menu, _ = handlers.layer_directions("shapes-tiny", 1, "row")
    assert values(menu) == ["row"] and menu.value == "row" and not menu.visible
    source = handlers.from_seed(None, handlers.example_seeds[0])[0]
    view = handlers.run("shapes-tiny", source, *DECODING)[0]
    fig = scan_figure(handlers, "shapes-tiny", view, "state", 1, "row")
    assert title(fig) == "layer 1 state (row scan)"
    assert grid_steps(fig) == list(range(1, model.config.num_patches + 1))
    assert title(scan_figure(handlers, "shapes-tiny", view, "scrubber", 0, "row")) == \
        f"step 0/{model.config.num_patches}: cls token"
    with pytest.raises(ValueError, match=r"unknown layer 'Vim 0'; choose one of \['bridge 0'"):
        scan_figure(handlers, "shapes-tiny", view, "state", "Vim 0", "row")
