"""The Gradio app: its helpers (ssm_bridge.app.support) and, through gradio_client, a
launched app on loopback: captions of generated scenes, every kind of bad upload, and
what the server refuses to serve."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from apputil import ROOT, app, free_port, launched  # noqa: E402

from ssm_bridge import load_pretrained  # noqa: E402
from ssm_bridge.app.support import (  # noqa: E402
    TABS,
    Analyser,
    Decoding,
    UploadError,
    brush_colours,
    default_word,
    localisation_rows,
    read_upload,
    sketch_image,
    tab_figure,
    truth_markdown,
    word_info,
    word_object,
    word_spans,
)
from ssm_bridge.data import make_scene  # noqa: E402

# gradio's queue bookkeeping trips pandas 3 deprecation warnings: not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]
UPLOAD_MB = 1.0  # the launched app's limit, small so oversize files are cheap to make


# ---------------------------------------------------------------- files
def bomb_png(path: Path, side: int) -> Path:
    """A real decompression bomb: a valid 1-bit PNG of side x side black pixels, a few KB
    on disk, side² pixels when decoded. Rows are compressed as they are made."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scenes():
    p = load_pretrained("shapes-tiny")
    return [make_scene("test", i, p.scene_config) for i in range(5)]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the error message must contain)."""
    d = tmp_path_factory.mktemp("bad")
    good = png_bytes(Image.fromarray(make_scene("test", 0).image))
    (d / "corrupt.png").write_bytes(good[: len(good) // 2])  # truncated mid-IDAT
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("a small red circle left of a large blue square\n")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)  # incompressible: ~1.5 MB
    (d / "big.png").write_bytes(png_bytes(Image.fromarray(noise)))
    return {
        "corrupt": (d / "corrupt.png", "truncated or corrupt"),
        "garbage": (d / "garbage.png", "corrupt"),
        "empty": (d / "empty.png", "is empty"),
        "text": (d / "notes.txt", "is not an image"),
        "oversize": (d / "big.png", "over the upload limit"),
        "bomb": (bomb_png(d / "bomb.png", 20_000), "decompression bomb"),
    }


# ---------------------------------------------------------------- helpers, no server
def test_read_upload_accepts_every_mode_and_size(tmp_path, scenes):
    """RGB, RGBA, greyscale, palette, 16-bit grey and a large JPEG all decode; the RGB and
    RGBA (opaque) ones give exactly the scene's pixels back."""
    an = Analyser(load_pretrained("shapes-tiny"))
    image = Image.fromarray(scenes[0].image)
    grey16 = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    files = {"rgb.png": image, "rgba.png": image.convert("RGBA"), "l.png": image.convert("L"),
             "p.png": image.convert("P"), "i16.png": grey16,
             "big.jpg": image.resize((1600, 900), Image.Resampling.NEAREST)}
    for name, img in files.items():
        img.save(tmp_path / name)
        pixels = an.prepare(read_upload(tmp_path / name))
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8, name
        if name in ("rgb.png", "rgba.png"):
            np.testing.assert_array_equal(pixels, scenes[0].image)
    assert grey16.mode.startswith("I;16")


def test_read_upload_rejects_bad_files_with_clear_messages(bad_files, tmp_path):
    for path, phrase in bad_files.values():
        with pytest.raises(UploadError, match=phrase):
            read_upload(path, max_bytes=UPLOAD_MB * 2**20)
    # a bomb under PIL's own limit (89 MP) is caught by the app's (40 MP) before decoding
    with pytest.raises(UploadError, match=r"8000 x 8000 pixels.*decompression bomb"):
        read_upload(bomb_png(tmp_path / "mid.png", 8000))
    with pytest.raises(UploadError, match="No image"):
        read_upload(None)
    eps = tmp_path / "x.eps"  # PIL would hand EPS to Ghostscript: not a format we open
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(UploadError, match="is not an image"):
        read_upload(eps)


def test_decoding_settings_are_checked():
    assert Decoding().generate_kwargs(32) == {"max_length": 32, "temperature": 0.0}
    kw = Decoding("sampling", 0.7, 5, 0.9, 10, 3).generate_kwargs(32)
    assert kw == {"max_length": 10, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 3}
    off = Decoding("sampling", 1.0, 0, 1.0, 32, 0).generate_kwargs(32)
    assert off["top_k"] is None and off["top_p"] is None
    for bad, phrase in [(Decoding("beam"), "decoding must be"),
                        (Decoding(max_length=99), "max length"),
                        (Decoding("sampling", temperature=0), "temperature > 0"),
                        (Decoding("sampling", top_p=0), "top-p"),
                        (Decoding(max_length=float("nan")), "max length must be a finite"),
                        (Decoding("sampling", top_k=float("nan")), "top-k must be a finite"),
                        (Decoding("sampling", top_k=2.5), "top-k must be a whole number"),
                        (Decoding("sampling", seed=-1), "sampling seed must be a whole"),
                        (Decoding("sampling", seed=2**64), "sampling seed"),
                        (Decoding("sampling", temperature=None), "temperature must be")]:
        with pytest.raises(UploadError, match=phrase):
            bad.generate_kwargs(32)


def test_sketch_image_needs_a_drawing():
    blank = np.zeros((64, 64, 4), np.uint8)
    for value in (None, {"composite": None}, {"composite": blank}):
        with pytest.raises(UploadError, match="sketchpad is empty"):
            sketch_image(value)
    drawn = blank.copy()
    drawn[10:30, 10:30] = (200, 30, 30, 255)
    assert sketch_image({"composite": drawn}) is not None
    colours = brush_colours()
    assert len(colours) == 6 and all(c.startswith("#") and len(c) == 7 for c in colours)


def test_every_tab_draws_for_a_scene(scenes):
    """Each tab's figure renders; words map to the right objects; localisation rows."""
    an = Analyser(load_pretrained("shapes-tiny"))
    scene = scenes[0]
    view = an.analyse(scene.image, Decoding(), scene)
    words = view.analysis.words
    assert " ".join(words) == scene.caption
    w = default_word(words)
    assert words[w] in {o.shape for o in scene.objects}
    assert word_spans(words, w)[w] == (words[w] + " ", "selected")
    assert word_object(scene, words, w) == 0 and word_object(scene, words, 0) == 0
    assert tab_figure(an, view, "attribution", w, method="saliency") is None  # not yet asked
    torch.manual_seed(0)
    an.attribution(view, w, "saliency")
    for tab in TABS:
        fig = tab_figure(an, view, tab, w, step=5, method="saliency")
        assert fig is not None, tab
        fig.canvas.draw()  # renders without error
    rows = localisation_rows(view, w)
    assert [r["map"] for r in rows][-2:] == ["saliency", "random (mean of 100)"]
    assert localisation_rows(view, w)[-1] == rows[-1]  # cached baseline
    assert all(0 <= r["energy_in_mask"] <= 1 for r in rows)
    assert "exact match" in truth_markdown(view, w)
    with pytest.raises(ValueError, match="unknown tab"):
        tab_figure(an, view, "nope")


def test_maps_are_saved_about_a_panel_wide_with_units_on_the_selectivity_maps(scenes):
    """Issue 19, point 3: maps were 260 px thumbnails (gradio saves at the dpi a figure was
    created with, not at set_dpi's), titles were clipped, and Δ and gate had no unit."""
    import io

    from PIL import Image

    from ssm_bridge.app.support import PANEL_PX, SELECTIVITY_NOTE

    an = Analyser(load_pretrained("shapes-tiny"), fit_ood=False)
    view = an.analyse(scenes[0].image, Decoding(), scenes[0])
    for tab in ("cross", "bridge"):
        fig = tab_figure(an, view, tab, default_word(view.analysis.words))
        with io.BytesIO() as buf:
            fig.savefig(buf, format="png")  # what gradio's Plot does
            width = Image.open(buf).size[0]
        assert 0.8 * PANEL_PX <= width <= 1.3 * PANEL_PX, (tab, width)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    labels = {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()}  # the colourbars'
    assert labels == {"Δ (step size)", "gate SiLU(z)"}
    assert " ".join(fig.get_supxlabel().split()) == SELECTIVITY_NOTE
    for ax in fig.axes:  # every title inside the figure
        box = ax.title.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width + 1, ax.get_title()


def test_cross_attention_per_layer_and_per_head(scenes):
    """Issue 19, point 2: beside the mean, one panel per cross layer and per (layer, head),
    each titled as the query that wrote the word; the mean of the heads is the layer map."""
    an = Analyser(load_pretrained("shapes-tiny"), fit_ood=False)
    view = an.analyse(scenes[0].image, Decoding(), scenes[0])
    a, c = view.analysis, an.model.config
    w = default_word(a.words)
    assert a.cross_attention_heads.shape == (a.n_words, c.cross_attn_layers, c.cross_attn_heads,
                                             a.grid_side, a.grid_side)
    torch.testing.assert_close(a.cross_attention_heads.mean(2), a.cross_attention_layers)
    titles = {}
    for heads in ("mean", "per layer", "per head"):
        fig = tab_figure(an, view, "cross", w, heads=heads)
        # titles are wrapped to their panel: compare them as one line
        titles[heads] = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()]
        fig.canvas.draw()
    assert "query that wrote" in titles["mean"][0]
    assert len(titles["per layer"]) == c.cross_attn_layers
    assert len(titles["per head"]) == c.cross_attn_layers * c.cross_attn_heads
    last = f"layer {c.cross_attn_layers - 1} head {c.cross_attn_heads - 1}"
    assert titles["per head"][-1] == last
    with pytest.raises(ValueError, match="cross-attention view must be one of"):
        tab_figure(an, view, "cross", w, heads="per token")


def test_the_selected_word_shows_the_models_top_next_words(scenes):
    """A greedy caption's word is its query's most probable next word; the table lists the
    top 5 with their probabilities, and the cross layers as a labelled table."""
    an = Analyser(load_pretrained("shapes-tiny"))
    view = an.analyse(scenes[1].image, Decoding(), scenes[1])
    a = view.analysis
    assert len(view.alternatives) == a.n_words
    for w, top in zip(a.words, view.alternatives):
        assert len(top) == 5 and top[0][0] == w
        probs = [p for _, p in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert abs(view.alternatives[2][0][1] - float(a.logprobs[2].exp())) < 1e-4
    info = word_info(view, 2)
    assert "| next word (top 5) | p |" in info and f"| {a.words[2]} | " in info
    assert "| 0 | " in info and "gated update / text stream |" in info


def test_ground_truth_of_a_wrong_caption_is_drawn_and_scored(scenes):
    """The cases worth studying: the tab used to go blank when the caption had a mistake."""
    import dataclasses

    an = Analyser(load_pretrained("shapes-tiny"))
    scene = scenes[0]
    view = an.analyse(scene.image, Decoding(), scene)
    words = list(view.analysis.words)
    colour_at = 2
    truth_colour = words[colour_at]
    words[colour_at] = next(c for c in ("red", "blue") if c != truth_colour)
    bad = dataclasses.replace(view, analysis=dataclasses.replace(
        view.analysis, words=words, caption=" ".join(words)))
    text = truth_markdown(bad, colour_at)
    assert "differs" in text and f"**wrong** (it is {truth_colour})" in text
    assert "| ✓ | ✗ | ✓ |" in text and "choose a size" not in text
    assert "pointing game" in text  # scored against the object the phrase names
    relation = next(i for i, w in enumerate(words) if w in ("left", "right", "above", "below"))
    assert "relation word" in truth_markdown(bad, relation)
    fig = tab_figure(an, bad, "truth", colour_at)
    assert fig is not None and fig.axes[0].get_title().startswith("objects: 1 ")


def test_handler_errors_are_plain_text_without_markup():
    """API clients read the message as text (no HTML entities: it used to say '&lt;img'),
    and the toast that renders it as HTML finds no tag in a hostile file name."""
    def handler(name):
        raise UploadError(f"{name} is empty (0 bytes) & unreadable: upload an image file.")

    with pytest.raises(gr.Error) as info:
        app.guarded(handler)("<img src=x onerror=alert(1)>.png")
    message = info.value.message
    assert "<" not in message and ">" not in message and "&lt;" not in message
    assert message.startswith("\u2039img src=x onerror=alert(1)\u203a.png is empty (0 bytes) &")


def test_every_event_returns_the_allocators_free_pages(monkeypatch):
    """The served app's RSS grew 40-100 MB over 200 requests with flat in-use memory:
    freed analyses stayed mapped in the worker threads' malloc arenas. Each event, failed
    or not, now ends with release_free_memory."""
    from ssm_bridge.app import ui

    calls = []
    monkeypatch.setattr(ui, "release_free_memory", lambda: calls.append(1) or True)
    assert ui.guarded(lambda x: x + 1)(1) == 2 and len(calls) == 1
    with pytest.raises(gr.Error):
        ui.guarded(lambda: (_ for _ in ()).throw(ValueError("bad")))()
    assert len(calls) == 2


def test_release_free_memory_hands_freed_holes_back_to_the_os():
    from ssm_bridge.app.memory import release_free_memory

    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") / 2**20

    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB inside the heap
    del blocks[::2]  # 64 MB of holes between live blocks: the heap's top cannot shrink
    before = rss_mb()
    release_free_memory()
    assert before - rss_mb() > 32, "the freed holes stayed resident"
    assert len(blocks) == 1000


def test_page_parts_may_not_name_a_component_alike():
    """A new part (tab) reusing a component name would rewire another part's events."""
    from ssm_bridge.app.ui import _join

    assert vars(_join({"a": 1}, {"b": 2})) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match=r"\['a'\]"):
        _join({"a": 1, "b": 2}, {"a": 3})


def test_parse_args():
    args = app.parse_args([])
    assert (args.checkpoint, args.host, args.port, args.device, args.share) == (
        "shapes-tiny", "127.0.0.1", 7860, "cpu", False)
    with pytest.raises(SystemExit):
        app.parse_args(["--max-upload-mb", "0"])


@pytest.mark.parametrize("argv, words", [
    (["--max-upload-mb", "0"], ["--max-upload-mb", "> 0"]),
    (["--concurrency", "0"], ["--concurrency", ">= 1"]),
    (["--port", "70000"], ["--port", "[1, 65535]"]),
    (["--port", "0"], ["--port", ">= 1"]),
    (["--device", "tpu"], ["--device", "cpu, cuda, cuda:N or mps"]),
    (["--device", "cuda:99"], ["--device", "not available"]),
    (["--checkpoint", "/nonexistent"], ["no checkpoint '/nonexistent'", "shipped"]),
])
def test_bad_arguments_and_checkpoints_are_one_line(argv, words, capsys, tmp_path):
    try:
        code = app.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err


def test_a_run_folder_without_weights_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ROOT / "ssm_bridge" / "checkpoints" / "shapes-tiny", ckpt)
    (ckpt / "model.safetensors").unlink()  # the save was killed
    assert app.main(["--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.safetensors not found" in err


# ---------------------------------------------------------------- the launched app
@pytest.fixture(scope="module")
def server():
    with launched(max_upload_mb=UPLOAD_MB, seed=0, n_examples=2) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def test_captions_of_generated_scenes_equal_ground_truth(client, scenes, tmp_path):
    """The shipped checkpoint gets ~94-98 % of test scenes exactly right: >= 4 of 5."""
    exact = 0
    for i, scene in enumerate(scenes):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(scene.image).save(path)
        got = client.predict(gradio_client.handle_file(str(path)), api_name="/caption")
        exact += got == scene.caption
    assert exact >= 4


def test_decoding_controls_reach_the_model(client, scenes, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scenes[1].image).save(path)
    f = gradio_client.handle_file(str(path))
    short = client.predict(f, "greedy", 1.0, 0, 1.0, 3, 0, api_name="/caption")
    assert short.split() == scenes[1].caption.split()[:2]  # BOS + 2 words
    hot = dict(decoding="sampling", temperature=2.0, top_k=0, top_p=1.0, max_length=32)
    a = client.predict(f, **hot, seed=7, api_name="/caption")
    assert a == client.predict(f, **hot, seed=7, api_name="/caption")  # seeded
    with pytest.raises(gradio_client.exceptions.AppError, match="less than minimum value"):
        client.predict(f, "sampling", 0.0, 0, 1.0, 32, 0, api_name="/caption")  # the slider
    with pytest.raises(gradio_client.exceptions.AppError, match="list of choices"):
        client.predict(f, "beam", 1.0, 0, 1.0, 32, 0, api_name="/caption")


def test_bad_uploads_get_the_message_and_the_server_stays_up(client, bad_files, scenes,
                                                             tmp_path):
    for name, (path, phrase) in bad_files.items():
        if name == "oversize":
            continue  # below: refused before the app
        with pytest.raises(gradio_client.exceptions.AppError, match=phrase):
            client.predict(gradio_client.handle_file(str(path)), api_name="/caption")
    # Over the limit: gradio's upload route refuses it at the app's own limit (it used to
    # allow 4x as much, so the browser named a limit four times the one the page states)
    with pytest.raises(Exception, match=f"size of {int(UPLOAD_MB * 2**20)} bytes"):
        client.predict(gradio_client.handle_file(str(bad_files["oversize"][0])),
                       api_name="/caption")
    good = tmp_path / "good.png"
    Image.fromarray(scenes[2].image).save(good)
    assert client.predict(gradio_client.handle_file(str(good)), api_name="/caption") == \
        scenes[2].caption


def test_nothing_outside_the_app_is_served(server):
    """Files outside gradio's upload cache are refused (or answered with the page, never
    their content)."""
    targets = {"/etc/passwd": b"root:", str(ROOT / "app.py"): b"ssm_bridge.app.serve",
               str(ROOT / "pyproject.toml"): b"[tool.ruff]"}
    for target, marker in targets.items():
        for route in ("gradio_api/file=", "file=", "gradio_api/file=.."):
            try:
                with urllib.request.urlopen(server + route + target) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                assert e.code in (403, 404), (route, target, e.code)
                continue
            assert marker not in body, (route, target)


def test_main_readies_the_scan_kernel_before_serving(monkeypatch):
    """The kernel is built or loaded before the server says it is running, so the first
    caption after a fresh start does not wait for a compile."""
    from ssm_bridge.app import serve, ui
    from ssm_bridge.core import scan

    calls = []
    monkeypatch.setattr(scan, "prepare_extension", lambda: calls.append("kernel"))
    monkeypatch.setattr(ui, "build_app", lambda *a, **k: calls.append("build"))
    monkeypatch.setattr(serve, "launch", lambda *a, **k: calls.append("launch"))
    assert app.main(["--port", str(free_port())]) == 0
    assert calls == ["build", "kernel", "launch"]  # a bad checkpoint fails before the build


def one_line_exit(argv, capsys) -> str:
    """app.main(argv) must stop with status 2 and one line on stderr; that line."""
    with pytest.raises(SystemExit) as e:
        app.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_port_in_use_is_one_line_naming_the_flag(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = one_line_exit(["--port", str(port)], capsys)
    assert f"--port: port {port} on 127.0.0.1 is already in use" in err
    assert "GRADIO_SERVER_PORT" not in err


@pytest.mark.parametrize("host, words", [
    ("999.1.1.1", "is not an IP address or a known host name"),
    ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never local
])
def test_a_bad_host_is_one_line_naming_the_flag(host, words, capsys):
    err = one_line_exit(["--host", host, "--port", str(free_port())], capsys)
    assert "--host" in err and words in err


def test_help_and_bad_flags_answer_before_torch_and_gradio_load():
    """`python app.py --help` took 9 s when torch and gradio loaded first."""
    code = (f"import sys, app; app.parse_args(['--port', '{free_port()}']); "
            "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
    helped = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--checkpoint" in helped.stdout
    bad = subprocess.run([sys.executable, "-c", "import sys, app; "
                          "app.parse_args(['--port', '0'])"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--port" in bad.stderr and "Traceback" not in bad.stderr
