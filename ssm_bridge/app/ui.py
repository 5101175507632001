"""The Gradio app's page: one builder per part, one function for the event wiring.

    demo = build_app("shapes-tiny")   # a queued gr.Blocks; app.py's launch(demo) serves it

Left column: `source_panel` (upload, test scenes, sketchpad; the model input they give),
`decoding_panel` (greedy or sampling, the caption button) and `report_panel` (the
"Download report" button: report_download.py). Right column: `word_panel`
(the caption as clickable words, the selected word's numbers, the layer and direction)
and, in one tabs group, `map_tabs` (a figure per analysis of support.TABS). `api_inputs`
holds the hidden components behind the /caption API. Each builder lays out its part and
returns its components by name; `wire_events` connects them to the `Handlers`, which call
the analysis layer (support.py) and know nothing of the layout. A new tab is one builder
called inside the tabs group, plus the wiring of its own events.
"""

from __future__ import annotations

import functools
import html
import os
import threading
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr
import numpy as np

from ..data import split_seeds
from ..interp.interventions import available_actions
from ..training.checkpoint import CheckpointError
from ..training.pretrained import load_pretrained, shipped_names
from .batching import API_CONCURRENCY, batcher_of
from .downloads import fresh_folder, tab_arrays, write_map_files
from .intervene import (
    action_text,
    caption_change,
    clicked_patch,
    intervene_tab,
    make_action,
    object_patches,
    patch_grid,
    run_action,
    stack_choices,
    word_changes,
)
from .memory import release_free_memory
from .report_download import PROGRESS, ReportDownloads, report_panel
from .rest import complete_short_calls
from .support import (
    CROSS_VIEWS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    MB,
    TABS,
    WORD_FREE_TABS,
    Analyser,
    Decoding,
    brush_colours,
    default_word,
    layer_direction_choices,
    read_upload,
    scan_directions,
    scan_menus,
    scene_pixels,
    sketch_image,
    tab_figure,
    tab_titles,
    truth_markdown,
    word_info,
    word_object,
    word_spans,
)

PARTS = {  # how the intro names each part of the model
    "vit": "A ViT", "vim": "A Vision Mamba encoder",
    "ssm": "a stack of selective state-space layers (the bridge)",
    "transformer": "a transformer decoder", "mamba": "a Mamba decoder (no attention)",
}


def intro(config) -> str:
    """The page's first lines: which parts this checkpoint's model has."""
    bridge = PARTS.get(config.bridge_type, f"a {config.bridge_type} bridge")
    return (f"# ssm-bridge\n{PARTS[config.vision_type]} reads the image, {bridge} carries it "
            f"to {PARTS[config.decoder_type]}. Caption an image, click a word, and open the "
            "tabs to see where that word came from.")
STATE_TTL_S = 3600  # an idle session's analysis is dropped after this many seconds
ATTRIBUTION_METHODS = ["ig", "gradcam", "saliency"]


def toast_text(message: str) -> str:
    """A message that is plain text for API clients and safe as the HTML gradio's toast
    renders it: angle brackets (a hostile file name's tags) become the look-alike
    single guillemets, so there is no markup and no HTML entity to show either way."""
    return message.replace("<", "\u2039").replace(">", "\u203a")


def guarded(fn):
    """Handler wrapper: a ValueError (bad upload, bad setting) becomes a gr.Error whose
    message the user sees (toast_text: it may quote a file name). After every event the
    allocator's free pages go back to the OS (memory.py: without it a long-running server
    holds tens of MB it freed)."""
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(toast_text(str(e)), print_exception=False) from None
        finally:
            release_free_memory()
    return inner


def _big(pixels: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling so the 64 px model input displays crisply."""
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)  # (fH, fW, 3)


# ---------------------------------------------------------------- models
class Models:
    """The checkpoints the model selector offers (shipped names or folders): the first is
    loaded by build_app, each other one on first use, then kept. A session's choice lives
    in its own state, so one visitor switching leaves the others' model alone."""

    def __init__(self, first: Analyser, first_name: str, choices: list[str],
                 device: str) -> None:
        self.first, self.choices, self.device = first_name, choices, device
        self._loaded = {first_name: first}
        self._lock = threading.Lock()

    def __getitem__(self, name: str | None) -> Analyser:
        name = name or self.first
        if name not in self.choices:
            raise ValueError(f"unknown model {name!r}; choose one of {self.choices}")
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = Analyser(load_pretrained(name, device=self.device))
                except CheckpointError as e:
                    raise ValueError(f"cannot load model {name!r}: {' '.join(str(e).split())}"
                                     ) from None
            return self._loaded[name]

    def labels(self) -> list[tuple[str, str]]:
        """(label, value) per choice: a folder shows by its name."""
        return [(Path(c).name, c) for c in self.choices]


def scan_menu_settings(model) -> tuple[dict, dict]:
    """The State and Scrubber tabs' layer and direction dropdowns for `model`
    (support.scan_menus): a one-choice direction menu is hidden; with a Vim encoder the
    layers name their stack."""
    layers, directions = scan_menus(model)
    named = bool(layers) and isinstance(layers[0], str)
    return (dict(choices=layers, value=layers[0] if layers else None, visible=bool(layers),
                 label="layer (bridge or Vim encoder)" if named else "bridge layer"),
            dict(choices=directions, value=directions[0] if directions else None,
                 visible=len(directions) > 1, label="scan direction"))


def scan_updates(model) -> list:
    """The layer and direction dropdowns laid out for `model`: the State tab's pair, then
    the scrubber's."""
    pair = [gr.Dropdown(**settings) for settings in scan_menu_settings(model)]
    return [*pair, *pair]


def scan_args(model, layer, direction) -> tuple[int | str, int]:
    """The menus' (layer, direction name) as tab_figure takes them: the layer as chosen (a
    bridge index, or a label naming its stack) and the direction's index; ValueError for a
    direction the layer lacks."""
    layer = layer if isinstance(layer, str) else int(layer or 0)
    directions = scan_directions(model, layer)
    if direction is not None and direction not in directions:
        raise ValueError(f"scan direction {direction!r} is not one of this layer's "
                         f"{directions}; pick one in the direction menu")
    return layer, directions.index(direction) if direction is not None else 0


# ---------------------------------------------------------------- handlers
class Handlers:
    """What the page's events do. Each takes the session's model name first (the
    selector's state; None: the first model) and raises ValueError with a message for the
    user (`guarded` shows it). Their names are the API names gradio gives them.
    Annotations on handler parameters are read by gradio (gr.SelectData injects the
    event), so they must resolve in this module."""

    def __init__(self, models: Models, max_upload_mb: float, n_examples: int,
                 seed: int | None, max_pixels: int) -> None:
        self.models = models
        self.analyser = models[None]  # the first model: the page is laid out for it
        self.scene_config = self.analyser.p.scene_config
        self.max_upload_mb, self.max_pixels = max_upload_mb, max_pixels
        self.rng = np.random.default_rng(seed)  # the 'new random scene' button
        self.test_lo = split_seeds("test", 1)[0]
        self.example_seeds = [self.test_lo + i for i in range(n_examples)]
        self.reports = ReportDownloads()  # where "Download report" writes, and which maps

    # ---- image sources: each returns (source state, preview, description[, seed]). The
    # source keeps the pixels the model saw; another model re-prepares them for its input.
    def from_upload(self, name, path):
        img = read_upload(path, self.max_upload_mb * MB, self.max_pixels)
        pixels = self.models[name].prepare(img)
        file = os.path.basename(str(path))  # the report's command names it
        return ({"pixels": pixels, "scene": None, "name": file}, _big(pixels),
                f"upload `{html.escape(file)}`: {img.width} x {img.height}, mode {img.mode}")

    def from_seed(self, name, scene_seed):
        if scene_seed is None:
            raise ValueError("type a scene seed (an integer >= 0) first")
        pixels, scene = scene_pixels(int(scene_seed), self.models[name].p.scene_config)
        return ({"pixels": pixels, "scene": scene}, _big(pixels),
                f"generated scene, seed **{int(scene_seed)}**", int(scene_seed))

    def random_scene(self, name):
        return self.from_seed(name, int(self.rng.integers(self.test_lo,
                                                          self.test_lo + 10_000_000)))

    def from_gallery(self, name, evt: gr.SelectData):
        return self.from_seed(name, self.example_seeds[evt.index])

    def from_sketch(self, name, value):
        pixels = self.models[name].prepare(sketch_image(value))
        return {"pixels": pixels, "scene": None}, _big(pixels), "your drawing"

    # ---- analysis and figures
    def render(self, name, view, word, tab, layer, direction, step, method, heads="mean"):
        """Figures for every tab: the active one drawn, the others cleared (they redraw
        when opened), and the ground-truth text."""
        if view is None:
            return [None] * len(TABS) + [""]
        an = self.models[name]
        layer, k = scan_args(an.model, layer, direction)
        if tab == "attribution" and view.analysis.n_words:
            # computed for whichever word is selected (cached per word and method), so the
            # tab follows word clicks instead of going blank; gradio shows it as progress
            an.attribution(view, word, method)
        figs = [tab_figure(an, view, t, word, layer, k, step, method, heads or "mean")
                if t == tab else None for t in TABS]
        return [*figs, truth_markdown(view, word)]

    def run(self, name, source, mode, temperature, top_k, top_p, max_length, dseed):
        """Analyse the current image; plots are cleared and redrawn by the next step, which
        reads the tab open by then."""
        if source is None:
            raise ValueError("No image yet: upload one, pick a scene or draw one.")
        an = self.models[name]
        decoding = Decoding(mode, temperature, top_k, top_p, max_length, dseed)
        view = an.analyse(an.prepare(source["pixels"]), decoding, source["scene"])
        word = default_word(view.analysis.words)
        return [view, word, word_spans(view.analysis.words, word), word_info(view, word),
                *[None] * len(TABS), truth_markdown(view, word)]

    def select_word(self, name, view, tab, layer, direction, step, method, heads,
                    evt: gr.SelectData):
        if view is None:
            raise ValueError("caption an image first")
        word = int(evt.index if not isinstance(evt.index, (list, tuple)) else evt.index[0])
        word = min(max(word, 0), max(view.analysis.n_words - 1, 0))
        if tab in WORD_FREE_TABS:  # the same figure for every word: leave it
            figs = [*[gr.skip()] * len(TABS), truth_markdown(view, word)]
        else:
            figs = self.render(name, view, word, tab, layer, direction, step, method, heads)
        return [word, word_spans(view.analysis.words, word), word_info(view, word), *figs]

    def download_map(self, name, view, word, tab, layer, direction, step, method,
                     heads="mean"):
        """"Download this map": the open tab's figure (PNG) and its maps (.npz) for the
        selected word, in a fresh folder (downloads.py); the two paths."""
        if view is None:
            raise ValueError("caption an image first: there is no map to download yet")
        an = self.models[name]
        layer, k = scan_args(an.model, layer, direction)
        heads = heads or "mean"
        fig = tab_figure(an, view, tab, word, layer, k, step, method, heads)
        arrays = tab_arrays(an, view, tab, word, layer, k, method, heads)
        if fig is None or not arrays:
            raise ValueError(f"the {TABS[tab]} tab has no map yet: compute it first")
        stem = f"{tab}-word{int(word) + 1}" if view.analysis.n_words else tab
        return [str(p) for p in write_map_files(fig, arrays, fresh_folder("maps"), stem)]

    def switch_model(self, name):
        """The selector changed: load the model, lay the page out for it (intro, tab
        titles, scan controls, decoding ranges) and drop the old model's analysis."""
        model = self.models[name].model
        c = model.config
        titles = tab_titles(model)
        return [name, intro(c), None, 0, [], "", *[None] * len(TABS), "",
                *[gr.Tab(label=titles[t]) for t in TABS], *scan_updates(model),
                gr.Slider(maximum=c.num_patches, value=0),
                gr.Slider(maximum=c.vocab_size, value=0),
                gr.Slider(maximum=c.max_seq_length, value=c.max_seq_length),
                gr.Radio(value="mean", visible=c.cross_attn_layers > 0)]

    def layer_directions(self, name, layer, direction):
        """A layer chosen in the State or Scrubber tab: both direction menus offer its
        directions (a Vim layer scans both ways, the bridge maybe one way), keeping the
        chosen one where the layer has it."""
        directions = scan_directions(self.models[name].model, layer)
        value = direction if direction in directions else (directions or [None])[0]
        menu = gr.Dropdown(choices=directions, value=value, visible=len(directions) > 1)
        return menu, menu

    def cleared(self):
        """Outputs of a failed image source: no image, caption, maps or ground truth."""
        return [None, None, "*no image: the last one could not be used (see the message)*",
                None, 0, [], "", *[None] * len(TABS), ""]

    def rerun(self, name, source, *decoding):
        """After a model switch: caption the current image with the new model, if any."""
        if source is None:
            return [gr.skip()] * (5 + len(TABS))
        return self.run(name, source, *decoding)

    # ---- the Intervene tab (intervene.py): each returns the chosen patches and the grid
    def iv_reset(self, name, view):
        """A new image or caption: no patch chosen, the image on the grid, no result."""
        if view is None:
            return [[], None, [], ""]
        return [[], patch_grid(view.pixels, [], view.analysis.grid_side), [], ""]

    def iv_click(self, name, view, patches, evt: gr.SelectData):
        """A click on the grid chooses its patch, or unchooses it."""
        if view is None:
            raise ValueError("caption an image first, then click its patches")
        g = view.analysis.grid_side
        chosen = sorted(set(patches or []) ^ {clicked_patch(evt.index, g)})
        return chosen, patch_grid(view.pixels, chosen, g)

    def iv_choose(self, name, view, word, which):
        """The buttons: "all" patches, "none", or the selected word's "object"."""
        if view is None:
            raise ValueError("caption an image first, then choose patches")
        a, g = view.analysis, view.analysis.grid_side
        chosen = {"all": list(range(g * g)), "none": []}.get(which)
        if which == "object":
            j = None if view.scene is None or not a.n_words else \
                word_object(view.scene, a.words, word)
            if j is None:
                raise ValueError("the selected word names no object of a generated scene: "
                                 "select a colour, size or shape word of a test scene")
            chosen = list(object_patches(view.scene.objects[j].mask, g))
        return chosen, patch_grid(view.pixels, chosen, g)

    def iv_model(self, name):
        """After a model switch: its actions and stacks, then as iv_layout."""
        model = self.models[name].model
        acts, stacks = available_actions(model), stack_choices(model)
        kind, stack = (acts or [None])[0], (stacks or [None])[0]
        return [gr.Dropdown(choices=acts, value=kind),
                gr.Radio(choices=stacks, value=stack, visible=len(stacks) > 1),
                *self.iv_layout(name, kind, stack)]

    def iv_layout(self, name, kind=None, stack=None):
        """The controls for the session's model: the action's help, the source seed (for
        patching), the stack's layers and directions."""
        model = self.models[name].model
        stacks = stack_choices(model)
        stack = stack if stack in stacks else (stacks or [None])[0]
        layers, directions = layer_direction_choices(model, stack)
        return [action_text(kind), gr.Number(visible=kind == "patch from scene"),
                gr.CheckboxGroup(choices=layers, value=layers),
                gr.Dropdown(choices=["all", *directions], value="all",
                            visible=len(directions) > 1)]

    def iv_apply(self, name, view, patches, kind, layers, direction, stack, source_seed):
        """Carry out the action (interventions.intervene): the per-word change, the table."""
        if view is None or not view.analysis.n_words:
            raise ValueError("caption an image first: the action is measured on its caption")
        an = self.models[name]
        action = make_action(an, kind, patches or [], layers, direction, stack, source_seed)
        res = run_action(an, view, action)
        return word_changes(res), caption_change(res)

    def report(self, name, source, max_length, progress=PROGRESS):
        """"Download report": `ssm-bridge report` of the current image by the session's
        model, greedy up to the session's max length (report_download.py); its path."""
        if source is None:
            raise ValueError("No image yet: upload one, pick a scene or draw one.")
        return str(self.reports.write(self.models[name], name or self.models.first, source,
                                      max_length, progress))

    def caption_api(self, name, image, decoding="greedy", temperature=1.0, top_k=0,
                    top_p=1.0, max_length=None, seed=0) -> str:
        """/caption: an image file -> its caption (max_length None: the model's maximum)."""
        an = self.models[name]
        if max_length is None:
            max_length = an.max_seq_length
        pixels = an.prepare(read_upload(image, self.max_upload_mb * MB, self.max_pixels))
        # concurrent greedy requests share one generate() (batching.py), same captions
        return batcher_of(an).caption(pixels, Decoding(decoding, temperature, top_k, top_p,
                                                       max_length, seed))


# ---------------------------------------------------------------- builders of the parts
def session_state() -> dict:
    """Per-browser state: the image source, its analysis (View), the selected word and
    the open tab. The two large ones expire after STATE_TTL_S idle seconds."""
    return {"source": gr.State(None, time_to_live=STATE_TTL_S),
            "view": gr.State(None, time_to_live=STATE_TTL_S),
            "word": gr.State(0), "tab": gr.State("cross"),
            "model": gr.State(None)}  # the selector's choice; None: the first model


def model_panel(h: Handlers) -> dict:
    """The page's intro (which parts the model has) and the model selector, hidden when
    only one model is offered."""
    choices = h.models.labels()
    return {"intro_md": gr.Markdown(intro(h.analyser.model.config), elem_id="intro"),
            "model_dd": gr.Dropdown(choices, value=h.models.first, label="model",
                                    visible=len(choices) > 1, elem_id="model")}


def source_panel(h: Handlers) -> dict:
    """Where the image comes from (an upload, a test scene by gallery, seed or at random,
    a drawing), then the 64 x 64 model input it gives and a line describing it."""
    with gr.Tabs(overflow_behavior="wrap"):
        with gr.Tab("Upload"):
            upload = gr.File(label=f"image file (any size or mode, up to "
                             f"{h.max_upload_mb:g} MB)", type="filepath", elem_id="upload")
        with gr.Tab("Scenes", elem_id="scenes-tab"):
            gallery = gr.Gallery(
                [(_big(scene_pixels(s, h.scene_config)[0], 2), f"test #{i}")
                 for i, s in enumerate(h.example_seeds)],
                label="test scenes (click one)", columns=3, allow_preview=False,
                elem_id="gallery")
            with gr.Row():
                seed_box = gr.Number(h.example_seeds[0] if h.example_seeds else h.test_lo,
                                     label="scene seed", precision=0, minimum=0,
                                     elem_id="scene-seed")  # a real test scene
                load_btn = gr.Button("load seed")
            random_btn = gr.Button("new random scene", variant="secondary",
                                   elem_id="random-scene")
        with gr.Tab("Draw") as draw_tab:
            sketch = gr.Sketchpad(
                type="numpy", canvas_size=(256, 256), label="draw shapes", elem_id="sketch",
                brush=gr.Brush(colors=brush_colours(), color_mode="defaults", default_size=8))
            draw_btn = gr.Button("caption the drawing")
    preview = gr.Image(label="model input (64 x 64)", interactive=False, height=256,
                       elem_id="preview")
    source_md = gr.Markdown(elem_id="source")
    return {"upload": upload, "gallery": gallery, "seed_box": seed_box, "load_btn": load_btn,
            "random_btn": random_btn, "sketch": sketch, "draw_btn": draw_btn,
            "draw_tab": draw_tab,
            "preview": preview, "source_md": source_md}


# gradio's sketchpad opens with no tool chosen ("select the draw tool to start"), and has no
# setting for it: when the Draw tab opens, the browser picks the brush (a second click on
# it keeps it picked). Retried for 2 s, as the canvas mounts after the tab shows.
PICK_BRUSH = """() => { const pick = (n) => {
  const b = document.querySelector('#sketch button[aria-label="Brush"]');
  if (b) { b.click(); } else if (n > 0) { setTimeout(() => pick(n - 1), 100); } };
  pick(20); }"""


def decoding_panel(h: Handlers) -> dict:
    """The decoding settings (greedy, or sampling with temperature, top-k, top-p and a
    seed; the caption's maximum length) and the caption button, folded by default."""
    c = h.analyser.model.config
    with gr.Accordion("decoding", open=False):
        mode = gr.Radio(["greedy", "sampling"], value="greedy", label="decoding")
        temperature = gr.Slider(0.05, 2.0, 1.0, step=0.05, label="temperature")
        top_k = gr.Slider(0, c.vocab_size, 0, step=1, label="top-k (0 = off)")
        top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="top-p (1 = off)")
        max_len = gr.Slider(2, c.max_seq_length, c.max_seq_length, step=1,
                            label="max length (tokens)")
        dseed = gr.Number(0, precision=0, label="sampling seed")
        caption_btn = gr.Button("caption", variant="primary", elem_id="caption-btn")
    return {"mode": mode, "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "max_len": max_len, "dseed": dseed, "caption_btn": caption_btn}


def word_panel(h: Handlers) -> dict:
    """The caption as clickable words (the selected one highlighted) and the selected
    word's log-probability, top next words and gate numbers."""
    caption = gr.HighlightedText(label="caption (click a word)", elem_id="caption",
                                 color_map={"selected": "#f59e0b"}, show_inline_category=False)
    return {"caption": caption, "info": gr.Markdown(elem_id="word-info")}


def _scan_pair(h: Handlers, tab: str) -> tuple:
    """A layer and scan direction dropdown for the State or the Scrubber tab (the two
    tabs' pairs are kept in step by wire_events)."""
    layer, direction = scan_menu_settings(h.analyser.model)
    with gr.Row():
        return (gr.Dropdown(**layer, elem_id=f"layer-{tab}"),
                gr.Dropdown(**direction, elem_id=f"direction-{tab}"))


def _state_controls(h: Handlers) -> dict:
    layer, direction = _scan_pair(h, "state")
    return {"layer": layer, "direction": direction}


def _attribution_controls(h: Handlers) -> dict:
    # no "compute" button: the open tab computes the selected word's map (render)
    return {"method": gr.Dropdown(ATTRIBUTION_METHODS, value="ig", label="method")}


def _cross_controls(h: Handlers) -> dict:
    c = h.analyser.model.config
    return {"heads": gr.Radio(list(CROSS_VIEWS), value="mean", elem_id="cross-view",
                              label="view (the query that wrote the word)",
                              visible=c.cross_attn_layers > 0)}


def _truth_controls(h: Handlers) -> dict:
    return {"truth_md": gr.Markdown(elem_id="truth")}


def _scrubber_controls(h: Handlers) -> dict:
    layer, direction = _scan_pair(h, "scrubber")
    step = gr.Slider(0, h.analyser.model.config.num_patches, 0, step=1, label="scan step",
                     elem_id="scan-step")
    return {"scrub_layer": layer, "scrub_direction": direction, "step": step}


TAB_CONTROLS = {  # tab id -> builder of what the tab shows above its figure
    "cross": _cross_controls, "state": _state_controls, "attribution": _attribution_controls,
    "truth": _truth_controls, "scrubber": _scrubber_controls,
}


def map_tabs(h: Handlers) -> dict:
    """One tab per analysis of support.TABS (call it inside a gr.Tabs): its own controls
    (TAB_CONTROLS), then its figure for the selected word, layer and direction."""
    plots, items, controls = {}, {}, {}
    for t, title in tab_titles(h.analyser.model).items():
        with gr.Tab(title, id=t, elem_id=f"tab-{t}") as items[t]:
            if t in TAB_CONTROLS:
                controls.update(TAB_CONTROLS[t](h))
            plots[t] = gr.Plot(format="png", show_label=False, elem_id=f"plot-{t}")
    return {"plots": plots, "tab_items": items, **controls}


def map_download_panel() -> dict:
    """Under the tabs: the open map as a PNG and its arrays (.npz, one per panel)."""
    with gr.Row():
        button = gr.Button("download this map (PNG + arrays)", elem_id="map-btn", scale=1)
        files = gr.File(label="the open tab's figure and its maps (.npz: numpy.load)",
                        file_count="multiple", interactive=False, elem_id="map-files",
                        scale=2, height=110)
    return {"map_btn": button, "map_files": files}


def api_inputs() -> dict:
    """Hidden components behind the /caption API (the decoding controls are shared)."""
    return {"api_image": gr.File(visible=False, label="image"),
            "api_caption": gr.Textbox(visible=False, label="caption"),
            "api_btn": gr.Button(visible=False)}


def _join(*parts: dict) -> SimpleNamespace:
    """The parts' components in one namespace; a name two parts use is a bug."""
    names = [n for part in parts for n in part]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two parts of the page name a component alike: {twice}")
    return SimpleNamespace(**{n: c for part in parts for n, c in part.items()})


# ---------------------------------------------------------------- wiring and the page
def wire_events(h: Handlers, ui: SimpleNamespace) -> None:
    """Every image source captions and renders; the caption button re-captions; a word
    click, a tab, a layer, direction, step or attribution-method change redraw (the open
    Attribution tab computes its map); the Intervene tab acts (wire_intervene); the model
    selector lays the page out again and re-captions; the report
    button writes the report file; the hidden button serves /caption. Every handler reads
    the session's model first."""
    view_opts = [ui.layer, ui.direction, ui.step, ui.method, ui.heads]
    iv_layout = [ui.iv_kind_md, ui.iv_source, ui.iv_layer, ui.iv_direction]
    outs = [*ui.plots.values(), ui.truth_md]
    src_outs = [ui.source, ui.preview, ui.source_md]
    decoding = [ui.mode, ui.temperature, ui.top_k, ui.top_p, ui.max_len, ui.dseed]
    quiet = {"api_visibility": "undocumented"}
    run_outs = [ui.view, ui.word, ui.caption, ui.info, *outs]
    run_ev = dict(fn=guarded(h.run), inputs=[ui.model, ui.source, *decoding],
                  outputs=run_outs, api_name="analyse", **quiet)
    render_ev = dict(fn=guarded(h.render),
                     inputs=[ui.model, ui.view, ui.word, ui.tab, *view_opts],
                     outputs=outs, api_name="render", **quiet)
    iv_outs = [ui.iv_patches, ui.iv_grid, ui.iv_changes, ui.iv_result]
    iv_reset_ev = dict(fn=guarded(h.iv_reset), inputs=[ui.model, ui.view], outputs=iv_outs,
                       **quiet)  # a new caption: the Intervene tab starts afresh
    for trigger, fn, inputs, outputs in (
            (ui.upload.upload, h.from_upload, [ui.upload], src_outs),
            (ui.random_btn.click, h.random_scene, [], [*src_outs, ui.seed_box]),
            (ui.load_btn.click, h.from_seed, [ui.seed_box], [*src_outs, ui.seed_box]),
            (ui.gallery.select, h.from_gallery, [], [*src_outs, ui.seed_box]),
            (ui.draw_btn.click, h.from_sketch, [ui.sketch], src_outs)):
        loaded = trigger(guarded(fn), [ui.model, *inputs], outputs, **quiet)
        loaded.success(**run_ev).success(**render_ev).success(**iv_reset_ev)
        # a failed source (a bad upload, a bad seed) must not leave the last image's
        # caption and maps beside its error
        loaded.failure(h.cleared, None, [*src_outs, *run_outs], **quiet).then(**iv_reset_ev)
    ui.draw_tab.select(None, None, None, js=PICK_BRUSH, **quiet)
    ui.caption_btn.click(**run_ev).success(**render_ev).success(**iv_reset_ev)
    ui.caption.select(guarded(h.select_word), [ui.model, ui.view, ui.tab, *view_opts],
                      [ui.word, ui.caption, ui.info, *outs], **quiet)
    for t, item in ui.tab_items.items():
        item.select(guarded(lambda *a, t=t: [t, *h.render(a[0], a[1], a[2], t, *a[3:])]),
                    [ui.model, ui.view, ui.word, *view_opts], [ui.tab, *outs], **quiet)
    for control in (ui.direction, ui.step, ui.heads, ui.method):
        control.change(**render_ev, trigger_mode="always_last")
    # a layer brings its own directions (a Vim layer's differ from the bridge's), then the
    # redraw, so that no figure is asked of a direction the layer lacks
    ui.layer.change(guarded(h.layer_directions), [ui.model, ui.layer, ui.direction],
                    [ui.direction, ui.scrub_direction], trigger_mode="always_last", **quiet
                    ).success(**render_ev)
    # the State and the Scrubber tab each show a layer and direction menu; a choice in
    # one (a user's .input, not a copy) is copied to the other, and the State pair's
    # .change redraws
    for a, b in ((ui.layer, ui.scrub_layer), (ui.direction, ui.scrub_direction)):
        a.input(lambda v: v, a, b, **quiet)
        b.input(lambda v: v, b, a, **quiet)
    switched = ui.model_dd.change(
        guarded(h.switch_model), ui.model_dd,
        [ui.model, ui.intro_md, *run_outs, *ui.tab_items.values(), ui.layer, ui.direction,
         ui.scrub_layer, ui.scrub_direction, ui.step, ui.top_k, ui.max_len, ui.heads],
        **quiet)
    switched.success(guarded(h.iv_model), ui.model, [ui.iv_kind, ui.iv_stack, *iv_layout],
                     **quiet)
    switched.success(guarded(h.rerun), [ui.model, ui.source, *decoding], run_outs, **quiet
                     ).success(**render_ev).success(**iv_reset_ev)
    wire_intervene(h, ui, iv_layout)
    # one report at a time across sessions: each holds its model for a minute or more
    ui.report_btn.click(guarded(h.report), [ui.model, ui.source, ui.max_len], ui.report_file,
                        concurrency_limit=1, concurrency_id="report", **quiet)
    ui.map_btn.click(guarded(h.download_map), [ui.model, ui.view, ui.word, ui.tab, *view_opts],
                     ui.map_files, **quiet)
    # /caption has its own queue lane: its requests wait together for a batch, and a
    # burst of them does not hold up the page's events (nor they it)
    ui.api_btn.click(guarded(h.caption_api), [ui.model, ui.api_image, *decoding],
                     ui.api_caption, api_name="caption", concurrency_id="caption",
                     concurrency_limit=API_CONCURRENCY)


def wire_intervene(h: Handlers, ui: SimpleNamespace, layout: list) -> None:
    """The Intervene tab: a grid click or a button chooses patches, the action or stack
    lays out the controls, "apply" acts (a model call, so it queues with the others)."""
    quiet = {"api_visibility": "undocumented"}
    chosen = [ui.iv_patches, ui.iv_grid]
    ui.iv_grid.select(guarded(h.iv_click), [ui.model, ui.view, ui.iv_patches], chosen,
                      **quiet)
    for button, which in ((ui.iv_all_btn, "all"), (ui.iv_clear_btn, "none"),
                          (ui.iv_obj_btn, "object")):
        button.click(guarded(lambda n, v, w, which=which: h.iv_choose(n, v, w, which)),
                     [ui.model, ui.view, ui.word], chosen, **quiet)
    for control in (ui.iv_kind, ui.iv_stack):
        control.input(guarded(h.iv_layout), [ui.model, ui.iv_kind, ui.iv_stack], layout,
                      **quiet)
    ui.iv_apply_btn.click(guarded(h.iv_apply),
                          [ui.model, ui.view, ui.iv_patches, ui.iv_kind, ui.iv_layer,
                           ui.iv_direction, ui.iv_stack, ui.iv_source],
                          [ui.iv_changes, ui.iv_result], api_name="intervene", **quiet)


def model_choices(checkpoint: str, choices=None) -> list[str]:
    """What the selector offers: `choices` (default: every shipped checkpoint), with
    `checkpoint` first."""
    rest = shipped_names() if choices is None else list(choices)
    return [checkpoint, *[c for c in rest if c != checkpoint]]


def build_app(checkpoint: str = "shapes-tiny", device: str = "cpu",
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, concurrency: int = 2,
              n_examples: int = 9, seed: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, choices=None) -> gr.Blocks:
    """The app on `checkpoint`, queued with `concurrency` parallel events; `seed` seeds the
    'new random scene' button (None: fresh entropy); the model selector offers `choices`
    (names or folders; default: the shipped checkpoints), each loaded when first chosen.
    Raises CheckpointError for a bad `checkpoint` before anything is laid out."""
    models = Models(Analyser(load_pretrained(checkpoint, device=device)), checkpoint,
                    model_choices(checkpoint, choices), device)
    h = Handlers(models, max_upload_mb, n_examples, seed, max_pixels)
    with gr.Blocks(title="ssm-bridge", analytics_enabled=False) as demo:
        top = model_panel(h)
        state = session_state()
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                sources, decoding = source_panel(h), decoding_panel(h)
                reports = report_panel()
            with gr.Column(scale=2):
                words = word_panel(h)
                # wrap: at 1024 px the tabs take two rows rather than hiding in a menu
                with gr.Tabs(overflow_behavior="wrap", elem_id="map-tabs"):
                    maps = map_tabs(h)
                    acting = intervene_tab(h.analyser.model)
                map_files = map_download_panel()
        wire_events(h, _join(top, state, sources, decoding, reports, words, maps, acting,
                             map_files, api_inputs()))
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    complete_short_calls(demo)  # a raw REST /caption with only the image gets the defaults
    demo.analyser = h.analyser  # for tests and benchmarks
    demo.handlers = h  # tests call the page's events as gradio would
    demo.models = models
    demo.reports = h.reports  # tests choose a few map kinds
    return demo
