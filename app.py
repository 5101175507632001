"""ssm-bridge's demo: caption an image, then look inside the model word by word.

    python app.py [--checkpoint shapes-tiny] [--host 127.0.0.1] [--port 7860] [--device cpu]
                  [--max-upload-mb 10] [--concurrency 2] [--share]

Fully offline: no analytics, no CDN (fonts and scripts come with the gradio package), no
share link unless --share. Only gradio's own upload cache is served (no allowed_paths).

API, for gradio_client (the same checks as the UI: a bad file raises AppError with the
app's message):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict(handle_file("scene.png"), api_name="/caption")    # -> 'a small red circle'
    # /caption(image: file, decoding: "greedy" | "sampling" = "greedy",
    #          temperature: float = 1.0, top_k: int = 0 (off), top_p: float = 1.0 (off),
    #          max_length: int = 32, seed: int = 0) -> str
"""

from __future__ import annotations

import argparse
import functools
import html
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr
import numpy as np

from ssm_bridge import load_pretrained
from ssm_bridge.app.support import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    MB,
    TABS,
    Analyser,
    Decoding,
    brush_colours,
    default_word,
    read_upload,
    scene_pixels,
    sketch_image,
    tab_figure,
    truth_markdown,
    word_spans,
)
from ssm_bridge.cli import Parser, float_in, int_at_least
from ssm_bridge.core.scan import prepare_extension
from ssm_bridge.data import split_seeds
from ssm_bridge.training.checkpoint import CheckpointError

INTRO = ("# ssm-bridge\nA ViT reads the image, a stack of selective state-space layers "
         "(the bridge) carries it to a transformer decoder. Caption an image, click a word, "
         "and open the tabs to see where that word came from.")
HARD_LIMIT_FACTOR = 4  # gradio itself refuses uploads over this many times --max-upload-mb
MAX_SESSIONS = 256  # sessions whose state (~1 MB each) the server keeps, least recent dropped
STATE_TTL_S = 3600  # an idle session's analysis is dropped after this many seconds


def guarded(fn):
    """Handler wrapper: a ValueError (bad upload, bad setting) becomes a gr.Error whose
    message the user sees (HTML-escaped: it may quote a file name)."""
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(html.escape(str(e)), print_exception=False) from None
    return inner


def _big(pixels: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling so the 64 px model input displays crisply."""
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)  # (fH, fW, 3)


def build_app(checkpoint: str = "shapes-tiny", device: str = "cpu",
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, concurrency: int = 2,
              n_examples: int = 9, seed: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The app on `checkpoint`, queued with `concurrency` parallel events; `seed` seeds the
    'new random scene' button (None: fresh entropy)."""
    analyser = Analyser(load_pretrained(checkpoint, device=device))
    cfg, model_cfg = analyser.p.scene_config, analyser.model.config
    limit = max_upload_mb * MB
    rng = np.random.default_rng(seed)
    test_lo = split_seeds("test", 1)[0]
    example_seeds = [test_lo + i for i in range(n_examples)]
    grid = model_cfg.img_size // model_cfg.patch_size
    n_layers = len(analyser.model.bridge.layers)
    directions = list(analyser.model.bridge.layers[0].mixer.direction_names)
    plot_tabs = list(TABS)

    # ---- inputs: each returns (source state, preview, description)
    def from_upload(path):
        img = read_upload(path, limit, max_pixels)
        pixels = analyser.prepare(img)
        name = html.escape(os.path.basename(str(path)))
        return ({"pixels": pixels, "scene": None}, _big(pixels),
                f"upload `{name}`: {img.width} x {img.height}, mode {img.mode}")

    def from_seed(scene_seed):
        if scene_seed is None:
            raise ValueError("type a scene seed (an integer >= 0) first")
        pixels, scene = scene_pixels(int(scene_seed), cfg)
        return ({"pixels": pixels, "scene": scene}, _big(pixels),
                f"generated scene, seed **{int(scene_seed)}**", int(scene_seed))

    def random_scene():
        return from_seed(int(rng.integers(test_lo, test_lo + 10_000_000)))

    def from_gallery(evt: gr.SelectData):
        return from_seed(example_seeds[evt.index])

    def from_sketch(value):
        pixels = analyser.prepare(sketch_image(value))
        return {"pixels": pixels, "scene": None}, _big(pixels), "your drawing"

    # ---- analysis and rendering
    def render(view, word, tab, layer, direction, step, method):
        """Figures for every tab: the active one drawn, the others cleared (they redraw
        when opened)."""
        if view is None:
            return [None] * len(plot_tabs) + [""]
        layer, k = int(layer), directions.index(direction)
        figs = [tab_figure(analyser, view, t, word, layer, k, step, method) if t == tab
                else None for t in plot_tabs]
        return [*figs, truth_markdown(view, word)]

    def word_info(view, word):
        a = view.analysis
        if not a.n_words:
            return "*The model wrote no words for this image.*"
        gates = ", ".join(f"{k} {v:.2f}" for k, v in a.gates.items())
        updates = ", ".join(f"cross {i} {float(u):.2f}"
                            for i, u in enumerate(a.gated_update[word]))
        return (f"word {word + 1}/{a.n_words}: **{html.escape(a.words[word])}**, log p = "
                f"{float(a.logprobs[word]):.3f} · cross-attention gates tanh(g): {gates} · "
                f"gated update / text stream: {updates or 'none'}")

    def run(source, mode, temperature, top_k, top_p, max_length, dseed):
        """Analyse the current image; plots are cleared and redrawn by the next step, which
        reads the tab open by then."""
        if source is None:
            raise ValueError("No image yet: upload one, pick a scene or draw one.")
        decoding = Decoding(mode, temperature, top_k, top_p, max_length, dseed)
        view = analyser.analyse(source["pixels"], decoding, source["scene"])
        a = view.analysis
        word = default_word(a.words)
        return [view, word, word_spans(a.words, word), word_info(view, word),
                *[None] * len(plot_tabs), truth_markdown(view, word)]

    def select_word(view, tab, layer, direction, step, method, evt: gr.SelectData):
        if view is None:
            raise ValueError("caption an image first")
        word = int(evt.index if not isinstance(evt.index, (list, tuple)) else evt.index[0])
        word = min(max(word, 0), max(view.analysis.n_words - 1, 0))
        return [word, word_spans(view.analysis.words, word), word_info(view, word),
                *render(view, word, tab, layer, direction, step, method)]

    def attribute(view, word, method, layer, direction, step):
        if view is None or not view.analysis.n_words:
            raise ValueError("caption an image first")
        analyser.attribution(view, word, method)
        return render(view, word, "attribution", layer, direction, step, method)

    def caption_api(image, decoding="greedy", temperature=1.0, top_k=0, top_p=1.0,
                    max_length=model_cfg.max_seq_length, seed=0) -> str:
        pixels = analyser.prepare(read_upload(image, limit, max_pixels))
        return analyser.caption(pixels, Decoding(decoding, temperature, top_k, top_p,
                                                 max_length, seed))

    with gr.Blocks(title="ssm-bridge", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        source, view_st = gr.State(None, time_to_live=STATE_TTL_S), \
            gr.State(None, time_to_live=STATE_TTL_S)
        word_st, tab_st = gr.State(0), gr.State("cross")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                with gr.Tabs():
                    with gr.Tab("Upload"):
                        upload = gr.File(label=f"image file (any size or mode, up to "
                                         f"{max_upload_mb:g} MB)", type="filepath",
                                         elem_id="upload")
                    with gr.Tab("Scenes", elem_id="scenes-tab"):
                        gallery = gr.Gallery(
                            [(_big(scene_pixels(s, cfg)[0], 2), f"test #{i}")
                             for i, s in enumerate(example_seeds)],
                            label="test scenes (click one)", columns=3, allow_preview=False,
                            elem_id="gallery")
                        with gr.Row():
                            seed_box = gr.Number(label="scene seed", precision=0,
                                                 minimum=0, elem_id="scene-seed")
                            load_btn = gr.Button("load seed")
                        random_btn = gr.Button("new random scene", variant="secondary",
                                               elem_id="random-scene")
                    with gr.Tab("Draw"):
                        sketch = gr.Sketchpad(
                            type="numpy", canvas_size=(256, 256), label="draw shapes",
                            elem_id="sketch",
                            brush=gr.Brush(colors=brush_colours(), color_mode="defaults",
                                           default_size=8))
                        draw_btn = gr.Button("caption the drawing")
                preview = gr.Image(label="model input (64 x 64)", interactive=False,
                                   height=256, elem_id="preview")
                source_md = gr.Markdown(elem_id="source")
                with gr.Accordion("decoding", open=False):
                    mode = gr.Radio(["greedy", "sampling"], value="greedy", label="decoding")
                    temperature = gr.Slider(0.05, 2.0, 1.0, step=0.05, label="temperature")
                    top_k = gr.Slider(0, model_cfg.vocab_size, 0, step=1, label="top-k (0 = off)")
                    top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="top-p (1 = off)")
                    max_len = gr.Slider(2, model_cfg.max_seq_length, model_cfg.max_seq_length,
                                        step=1, label="max length (tokens)")
                    dseed = gr.Number(0, precision=0, label="sampling seed")
                    caption_btn = gr.Button("caption", variant="primary", elem_id="caption-btn")
            with gr.Column(scale=2):
                caption = gr.HighlightedText(label="caption (click a word)", elem_id="caption",
                                             color_map={"selected": "#f59e0b"},
                                             show_inline_category=False)
                info = gr.Markdown(elem_id="word-info")
                with gr.Row():
                    layer = gr.Dropdown(list(range(n_layers)), value=0,
                                        label="bridge layer (state, scrubber)")
                    direction = gr.Dropdown(directions, value=directions[0],
                                            label="scan direction (state, scrubber)")
                plots, tab_items = {}, {}
                with gr.Tabs():
                    for t, title in TABS.items():
                        with gr.Tab(title, id=t, elem_id=f"tab-{t}") as tab_items[t]:
                            if t == "attribution":
                                with gr.Row():
                                    method = gr.Dropdown(["ig", "gradcam", "saliency"],
                                                         value="ig", label="method")
                                    attr_btn = gr.Button("compute attribution",
                                                         elem_id="attr-btn")
                            if t == "truth":
                                truth_md = gr.Markdown(elem_id="truth")
                            if t == "scrubber":
                                step = gr.Slider(0, grid * grid, 0, step=1, label="scan step",
                                                 elem_id="scan-step")
                            plots[t] = gr.Plot(format="png", show_label=False,
                                               elem_id=f"plot-{t}")
        api_image = gr.File(visible=False, label="image")
        api_caption = gr.Textbox(visible=False, label="caption")
        api_btn = gr.Button(visible=False)

        view_opts = [layer, direction, step, method]
        outs = [*plots.values(), truth_md]
        src_outs = [source, preview, source_md]
        ui = {"api_visibility": "undocumented"}
        run_ev = dict(fn=guarded(run), inputs=[source, mode, temperature, top_k, top_p,
                                               max_len, dseed],
                      outputs=[view_st, word_st, caption, info, *outs], api_name="analyse",
                      **ui)
        render_ev = dict(fn=guarded(render), inputs=[view_st, word_st, tab_st, *view_opts],
                         outputs=outs, api_name="render", **ui)
        for trigger, fn, inputs, outputs in (
                (upload.upload, from_upload, upload, src_outs),
                (random_btn.click, random_scene, None, [*src_outs, seed_box]),
                (load_btn.click, from_seed, seed_box, [*src_outs, seed_box]),
                (gallery.select, from_gallery, None, [*src_outs, seed_box]),
                (draw_btn.click, from_sketch, sketch, src_outs)):
            trigger(guarded(fn), inputs, outputs, **ui).success(**run_ev).success(**render_ev)
        caption_btn.click(**run_ev).success(**render_ev)
        caption.select(guarded(select_word), [view_st, tab_st, *view_opts],
                       [word_st, caption, info, *outs], **ui)
        for t, item in tab_items.items():
            item.select(guarded(lambda *a, t=t: [t, *render(a[0], a[1], t, *a[2:])]),
                        [view_st, word_st, *view_opts], [tab_st, *outs], **ui)
        for control in (layer, direction, step):
            control.change(**render_ev, trigger_mode="always_last")
        attr_btn.click(guarded(attribute), [view_st, word_st, method, layer, direction, step],
                       outs, **ui)
        api_btn.click(guarded(caption_api), [api_image, mode, temperature, top_k, top_p,
                                             max_len, dseed], api_caption, api_name="caption")
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    demo.analyser = analyser  # for tests and benchmarks
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860,
           share: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **kwargs):
    """Start the server: local only unless `share`, uploads over HARD_LIMIT_FACTOR x the
    app's limit refused by gradio before they reach the app. Returns launch()'s result."""
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True,
                       max_file_size=int(max_upload_mb * HARD_LIMIT_FACTOR * MB),
                       ssr_mode=False, pwa=False, mcp_server=False, footer_links=["api"],
                       state_session_capacity=MAX_SESSIONS, run_history=False, **kwargs)


def device_arg(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N or mps, and present on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"must be cpu, cuda, cuda:N or mps, got {text!r}") from None
    present = {"cpu": lambda: True,
               "cuda": lambda: torch.cuda.is_available()
               and (dev.index or 0) < torch.cuda.device_count(),
               "mps": lambda: torch.backends.mps.is_available()}
    if dev.type not in present:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    if not present[dev.type]():
        raise argparse.ArgumentTypeError(f"{text} is not available on this machine; use cpu")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = Parser(prog="app.py", description="ssm-bridge captioning demo (Gradio)")
    ap.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    ap.add_argument("--port", type=int_at_least(1), default=7860, help="1 to 65535")
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda[:N] or mps")
    ap.add_argument("--max-upload-mb", type=float_in(0, lo_open=True),
                    default=DEFAULT_MAX_UPLOAD_MB)
    ap.add_argument("--concurrency", type=int_at_least(1), default=2,
                    help="events run in parallel")
    ap.add_argument("--seed", type=int_at_least(0), default=None,
                    help="seed of the random-scene button")
    ap.add_argument("--share", action="store_true", help="public gradio.live link (online)")
    args = ap.parse_args(argv)
    if args.port > 65535:
        ap.error(f"argument --port: must be an integer in [1, 65535], got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        demo = build_app(args.checkpoint, args.device, args.max_upload_mb, args.concurrency,
                         seed=args.seed)
    except CheckpointError as e:  # one line, not a traceback
        print(f"app.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    prepare_extension()  # before the server says it is running: no 1-minute first caption
    launch(demo, args.host, args.port, args.share, args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
