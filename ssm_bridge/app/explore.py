"""An ipywidgets explorer of one image, for JupyterLab: the app's analysis in a notebook.

    from ssm_bridge import explore
    ex = explore("shapes-tiny", 20_000_003)  # a checkpoint and an image (here the seed
                                             # of test scene 3)
    ex                                       # the widget: click words, pick a map, intervene
    ex.select_word("square"); ex.set_kind("state"); ex.figure   # the same from code

It shows the caption as clickable words (the selected word's numbers under them), a map
selector (the app's tabs for this model, support.tab_titles), the bridge layer and scan
direction (hidden when there is one choice), a scan-step slider (scrubber), the
cross-attention view, the attribution method, and an intervention control (an action of
interp.interventions.available_actions on chosen patches of the bridge's or a Mamba
decoder's scans, applied with `intervene`).
Every figure is support.tab_figure's and every number comes from the app's Analyser and
`intervene`, so the app, the notebooks and the tests see the same things.

Each control is a plain method too (select_word, set_kind, set_layer, set_direction,
set_step, set_view, attribute, use_word_object, apply_intervention); the widgets' events
call them, so tests drive either way. A bad argument to a method raises a one-line
ValueError; the same mistake made in the widgets shows that line in `message`.
ipywidgets (the `notebooks` extra) is imported when an explorer is built.
"""

from __future__ import annotations

import html
import io
import numbers
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..data import Scene
from ..interp.interventions import ACTIONS, Action, available_actions
from ..interp.maps import ATTRIBUTION_KINDS
from ..training.pretrained import Pretrained, load_pretrained, shipped_names
from .intervene import caption_change, object_patches, run_action, stack_choices
from .support import (
    CROSS_VIEWS,
    TABS,
    WORD_FREE_TABS,
    Analyser,
    Decoding,
    default_word,
    scan_choices,
    scene_pixels,
    tab_figure,
    tab_titles,
    truth_markdown,
    word_info,
    word_object,
)

SCAN_KINDS = ("state", "scrubber")  # the maps drawn for one bridge layer and direction
SELECTED_STYLE = "warning"  # the selected word's button colour (the app's amber)


def _widgets():
    """The ipywidgets module, or an ImportError saying how to install it."""
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the explorer needs ipywidgets: pip install ipywidgets "
                          "(or pip install 'ssm-bridge[notebooks]')") from None
    return ipywidgets


# ---------------------------------------------------------------- arguments
def as_analyser(model_or_checkpoint) -> Analyser:
    """A shipped name or checkpoint folder (loaded on the CPU), a Pretrained or an Analyser
    -> an Analyser. The OOD score is fitted only for an Analyser built by the caller."""
    if isinstance(model_or_checkpoint, Analyser):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, Pretrained):
        return Analyser(model_or_checkpoint, fit_ood=False)
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        return Analyser(load_pretrained(model_or_checkpoint), fit_ood=False)
    raise ValueError(f"explore takes a checkpoint name ({', '.join(shipped_names())}), a "
                     f"checkpoint folder, a Pretrained or an Analyser, got "
                     f"{type(model_or_checkpoint).__name__}: pass load_pretrained(...)'s result")


def as_image(analyser: Analyser, image) -> tuple[np.ndarray, Scene | None]:
    """A scene seed (int), a Scene, a PIL image, an (H, W, 3) uint8 array or an image path
    -> the model input (S, S, 3) uint8 and the Scene (None unless generated)."""
    if isinstance(image, (bool, np.bool_)):
        raise ValueError(f"image must be a scene seed, a Scene, an image or a path, got {image!r}")
    if isinstance(image, numbers.Integral):
        pixels, scene = scene_pixels(int(image), analyser.p.scene_config)
        return analyser.prepare(pixels), scene
    if isinstance(image, Scene):
        return analyser.prepare(image.image), image
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise ValueError(f"no image file at {str(image)!r}: give a path to an image, a PIL "
                         "image, an (H, W, 3) array, a Scene or a scene seed")
    return analyser.prepare(image), None  # UploadError (a ValueError) for anything else


def as_decoding(decoding, seed: int) -> Decoding:
    """None or a mode ("greedy", "sampling") with the sampling `seed`, or a Decoding."""
    if isinstance(decoding, Decoding):
        return decoding
    if decoding is None or isinstance(decoding, str):
        return Decoding(mode=decoding or "greedy", seed=seed)
    raise ValueError(f"decoding must be 'greedy', 'sampling' or a Decoding(...), got "
                     f"{type(decoding).__name__}")


def parse_patches(text: str, n_patches: int) -> tuple[int, ...]:
    """"9, 10, 17-19" -> (9, 10, 17, 18, 19): patch indices in 0..n_patches-1, sorted."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        lo, hi = (int(m[1]), int(m[2] or m[1])) if m else (-1, -1)
        if not m or lo > hi or hi >= n_patches:
            raise ValueError(f"patches are numbers 0..{n_patches - 1} separated by commas "
                             f"(ranges like 9-12 too), got {part!r}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def _markdown(output, text: str) -> None:
    """Replace an Output widget's content by `text` rendered as markdown (set directly, so
    it works without a running kernel, as in tests)."""
    output.outputs = ({"output_type": "display_data", "metadata": {},
                       "data": {"text/markdown": text, "text/plain": text}},) if text else ()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure")  # the dpi tab_figure chose, as in the app
    return buf.getvalue()


def _show(widget, visible: bool) -> None:
    widget.layout.display = None if visible else "none"


# ---------------------------------------------------------------- the explorer
class Explorer:
    """One analysed image and the widgets that explore it (see the module docstring).
    `widget` is the whole VBox; `figure` the map shown; `result` the last intervention."""

    def __init__(self, analyser: Analyser, view, decoding: Decoding) -> None:
        w = _widgets()
        self.analyser, self.view, self.decoding = analyser, view, decoding
        model = analyser.model
        self.titles = tab_titles(model)
        self.layers, self.directions = scan_choices(model)
        self.figure = None
        self.result = None
        self.word = default_word(view.analysis.words)
        self._build_map_controls(w, model.config)
        self._build_intervention(w, model)
        self.message = w.HTML()  # a mistake made in the widgets, in one line
        self.word_buttons = [self._word_button(w, i, word)
                             for i, word in enumerate(view.analysis.words)]
        self.caption_box = w.HBox(self.word_buttons, layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox([
            w.HTML("<b>caption</b> (click a word)"), self.caption_box, self.info,
            w.HBox([self.kind, self.layer, self.direction, self.view_mode]),
            w.HBox([self.step]), w.HBox([self.method, self.attribute_button]),
            self.image, self.notes, self.intervention_box, self.message, self.result_out])
        self._wire()
        self.select_word(self.word)

    # ---- building
    def _build_map_controls(self, w, config) -> None:
        self.info = w.Output()  # the selected word's numbers (support.word_info)
        self.kind = w.Dropdown(options=[(title, t) for t, title in self.titles.items()],
                               value="cross", description="map")
        self.layer = w.Dropdown(options=self.layers, description="layer")
        self.direction = w.Dropdown(options=self.directions, description="direction")
        self.view_mode = w.ToggleButtons(options=list(CROSS_VIEWS), value="mean",
                                         description="view")
        self.step = w.IntSlider(0, min=0, max=config.num_patches, description="scan step",
                                continuous_update=False)  # a redraw per released value
        self.method = w.Dropdown(options=list(ATTRIBUTION_KINDS), description="method")
        self.attribute_button = w.Button(description="compute attribution",
                                         layout=w.Layout(width="auto"))
        self.image = w.Image(format="png")
        self.notes = w.Output()  # ground truth, or why there is no figure

    def _build_intervention(self, w, model) -> None:
        actions = available_actions(model)
        stacks = stack_choices(model)  # where states live (the app's Intervene tab's list)
        self.stack = w.Dropdown(options=stacks, description="stack")
        self.action = w.Dropdown(options=actions, description="action")
        self.action_help = w.HTML()
        self.patches = w.Text(description="patches", placeholder="e.g. 9, 10, 17-19")
        self.object_button = w.Button(description="the word's object",
                                      layout=w.Layout(width="auto"))
        self.only_selected = w.Checkbox(False, description="only the layer and direction above",
                                        indent=False, layout=w.Layout(width="auto"))
        self.source_seed = w.IntText(0, description="source seed")
        self.apply_button = w.Button(description="apply", button_style="primary")
        self.result_out = w.Output()
        self.intervention_box = w.VBox([
            w.HTML("<b>intervene</b>"), w.HBox([self.action, self.action_help]), self.stack,
            w.HBox([self.patches, self.object_button]),
            w.HBox([self.only_selected, self.source_seed]), self.apply_button])
        _show(self.intervention_box, bool(actions))

    def _word_button(self, w, i: int, word: str):
        button = w.Button(description=word, layout=w.Layout(width="auto"))
        button.on_click(lambda _, i=i: self._guard(self.select_word, i))
        return button

    def _wire(self) -> None:
        """Widget events call the plain methods; a ValueError shows in `message`. A control
        redraws only the maps it changes (a Δ / gate figure takes a second to draw)."""
        uses = {self.kind: tuple(TABS), self.layer: SCAN_KINDS, self.direction: SCAN_KINDS,
                self.step: ("scrubber",), self.view_mode: ("cross",),
                self.method: ("attribution",)}
        for control, tabs in uses.items():
            control.observe(lambda _, tabs=tabs: self.kind.value in tabs
                            and self._guard(self.draw), names="value")
        for control in (self.action, self.stack):
            control.observe(lambda _: self._show_controls(), names="value")
        self.attribute_button.on_click(lambda _: self._guard(self.attribute))
        self.object_button.on_click(lambda _: self._guard(self.use_word_object))
        self.apply_button.on_click(lambda _: self._guard(self.apply_intervention))

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except ValueError as e:
            self.message.value = f"<span style='color:#b91c1c'>{html.escape(str(e))}</span>"
        else:
            self.message.value = ""

    # ---- display
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)  # not the widgets' repr: it holds the PNG bytes
        return bundle

    def __repr__(self) -> str:
        return (f"Explorer({Path(self.analyser.p.path).name}: {self.view.analysis.caption!r}, "
                f"word {self.word} {self.selected_word!r}, map {self.kind.value!r})")

    @property
    def selected_word(self) -> str:
        words = self.view.analysis.words
        return words[self.word] if words else ""

    # ---- the map controls
    def select_word(self, word: int | str) -> None:
        """Select a word by index or by text (its first occurrence); redraw."""
        words = self.view.analysis.words
        if isinstance(word, str):
            if word not in words:
                raise ValueError(f"{word!r} is not in the caption {' '.join(words)!r}")
            word = words.index(word)
        if not isinstance(word, numbers.Integral) or not 0 <= word < max(len(words), 1):
            raise ValueError(f"word must be an index in 0..{len(words) - 1} or a word of the "
                             f"caption, got {word!r}")
        self.word = int(word)
        for i, button in enumerate(self.word_buttons):
            button.button_style = SELECTED_STYLE if i == self.word else ""
        _markdown(self.info, word_info(self.view, self.word))
        if self.figure is None or self.kind.value not in WORD_FREE_TABS:
            self.draw()

    def set_kind(self, kind: str) -> None:
        """Show map `kind`: a key of support.TABS, or its title for this model."""
        by_title = {title: t for t, title in self.titles.items()}
        if kind not in TABS and kind not in by_title:
            raise ValueError(f"unknown map {kind!r}; choose one of {list(TABS)}")
        self.kind.value = by_title.get(kind, kind)  # the observer redraws

    def set_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise ValueError(f"layer must be one of the bridge's layers {self.layers}, "
                             f"got {layer!r}")
        self.layer.value = layer

    def set_direction(self, direction: str) -> None:
        if direction not in self.directions:
            raise ValueError(f"direction must be one of the bridge's scan directions "
                             f"{self.directions}, got {direction!r}")
        self.direction.value = direction

    def set_step(self, step: int) -> None:
        if not isinstance(step, numbers.Integral) or not 0 <= step <= self.step.max:
            raise ValueError(f"scan step must be a whole number in 0..{self.step.max}, "
                             f"got {step!r}")
        self.step.value = int(step)

    def set_view(self, view: str) -> None:
        """The cross-attention map's view: one of support.CROSS_VIEWS."""
        if view not in CROSS_VIEWS:
            raise ValueError(f"view must be one of {CROSS_VIEWS}, got {view!r}")
        self.view_mode.value = view

    def attribute(self, method: str | None = None) -> None:
        """Compute the selected word's attribution (`method`, default the menu's) and show
        it: a gradient pass, so it waits for a click."""
        if not self.view.analysis.n_words:
            raise ValueError("the caption has no words to attribute")
        if method is not None:
            if method not in ATTRIBUTION_KINDS:
                raise ValueError(f"method must be one of {ATTRIBUTION_KINDS}, got {method!r}")
            self.method.value = method
        self.analyser.attribution(self.view, self.word, self.method.value)
        if self.kind.value == "attribution":
            self.draw()
        else:
            self.kind.value = "attribution"  # the observer redraws

    def tab_args(self) -> dict:
        """tab_figure's keyword arguments for the controls' current values."""
        direction = (self.directions.index(self.direction.value)
                     if self.direction.value in self.directions else 0)
        return dict(tab=self.kind.value, word=self.word, layer=self.layer.value or 0,
                    direction=direction, step=self.step.value, method=self.method.value,
                    heads=self.view_mode.value)

    def draw(self) -> None:
        """Draw the selected map (support.tab_figure) and show only the controls it uses."""
        self._show_controls()
        args = self.tab_args()
        self.figure = tab_figure(self.analyser, self.view, **args)
        self.image.value = b"" if self.figure is None else _png(self.figure)
        _show(self.image, self.figure is not None)  # the note below says why there is none
        _markdown(self.notes, self._note(args["tab"]))

    def _note(self, tab: str) -> str:
        if tab == "truth":
            return truth_markdown(self.view, self.word)
        if self.figure is not None:
            return ""
        if not self.view.analysis.n_words:
            return "*The model wrote no words for this image.*"
        return (f"*No {self.method.value} attribution of '{self.selected_word}' yet: click "
                "'compute attribution'.*")

    def _show_controls(self) -> None:
        tab = self.kind.value
        _show(self.layer, tab in SCAN_KINDS and len(self.layers) > 1)
        _show(self.direction, tab in SCAN_KINDS and len(self.directions) > 1)
        _show(self.step, tab == "scrubber")
        _show(self.view_mode, tab == "cross" and self.analyser.model.config.cross_attn_layers > 0)
        _show(self.method, tab == "attribution")
        _show(self.attribute_button, tab == "attribution")
        kind = self.action.value
        self.action_help.value = html.escape(ACTIONS.get(kind, ""))
        on_patches = kind is not None and kind != "zero cross-attention"
        _show(self.patches, on_patches)
        _show(self.object_button, on_patches and self.view.scene is not None)
        several = len(self.layers) * len(self.directions) > 1  # else "only" changes nothing
        on_bridge = self.stack.value == "bridge"  # the layer and direction menus' stack
        _show(self.stack, on_patches and len(self.stack.options) > 1)
        _show(self.only_selected, on_patches and on_bridge and several)
        _show(self.source_seed, kind == "patch from scene")

    # ---- the intervention control
    def use_word_object(self) -> tuple[int, ...]:
        """Fill the patch box with the patches of the object the selected word names."""
        scene = self.view.scene
        j = None if scene is None else word_object(scene, self.view.analysis.words, self.word)
        if j is None:
            raise ValueError(f"'{self.selected_word}' names no object of a generated scene: "
                             "type the patches instead")
        patches = object_patches(scene.objects[j].mask, self.analyser.model.config.grid_size)
        self.patches.value = ", ".join(map(str, patches))
        return patches

    def current_action(self) -> Action:
        """The Action the intervention controls describe."""
        kind = self.action.value
        if kind is None:
            raise ValueError("this model offers no intervention")
        patches = () if kind == "zero cross-attention" else parse_patches(
            self.patches.value, self.analyser.model.config.num_patches)
        only = self.only_selected.value and self.stack.value == "bridge" and self.layers
        source = None
        if kind == "patch from scene":
            pixels, _ = scene_pixels(self.source_seed.value, self.analyser.p.scene_config)
            source = self.analyser.p.transform(self.analyser.prepare(pixels))  # (3, S, S)
        return Action(kind, patches, layers=(self.layer.value,) if only else None,
                      directions=(self.direction.value,) if only else None,
                      stack=self.stack.value or "bridge", source=source)

    def apply_intervention(self, action: Action | None = None):
        """Run `action` (default: the controls' one) with interventions.intervene; show
        both captions (greedy, whatever the explorer's decoding) and the per-word change of
        log p; returns the InterventionResult."""
        action = action or self.current_action()
        with torch.no_grad():
            self.result = run_action(self.analyser, self.view, action)  # the app's call
        _markdown(self.result_out, caption_change(self.result))
        return self.result


def explore(model_or_checkpoint, image, *, decoding=None, seed: int = 0) -> Explorer:
    """Caption `image` with a model and return an Explorer of it (display it in a notebook).

    model_or_checkpoint: a shipped name ("shapes-tiny", "shapes-all-ssm"), a checkpoint
    folder, a Pretrained or an Analyser. image: a scene seed (int), a Scene, a PIL image,
    an (H, W, 3) uint8 array or an image path. decoding: "greedy" (default), "sampling"
    (with the sampling `seed`) or a support.Decoding."""
    _widgets()  # before loading anything: say at once if ipywidgets is missing
    analyser = as_analyser(model_or_checkpoint)
    pixels, scene = as_image(analyser, image)
    decoding = as_decoding(decoding, seed)
    return Explorer(analyser, analyser.analyse(pixels, decoding, scene), decoding)
