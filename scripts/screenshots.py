"""Drive the app in a real browser (Debian's chromium through Playwright) and save the
screenshots the README shows.

    python scripts/screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]

The app runs in-process on a free loopback port; every request that leaves it is blocked
and recorded (the page must work offline). Never downloads a browser: it uses the
chromium binary given (default: $SSM_BRIDGE_CHROMIUM or /usr/bin/chromium).
tests/test_app_browser.py runs the same steps (`caption_and_select`) as a test and, with
SSM_BRIDGE_SCREENSHOTS=1, the whole tour (`tour`) that writes the screenshots.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SSM_BRIDGE_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1400, "height": 1000}
IDLE = ("sel => { const t = document.querySelector(sel + ' [data-testid=status-tracker]'); "
        "return !t || t.classList.contains('hide'); }")
IMG_READY = ("sel => { const i = document.querySelector(sel); "
             "return !!i && i.complete && i.naturalWidth > 0; }")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(**build_kwargs):
    """(demo, url) of the app launched in-process on a free loopback port."""
    sys.path.insert(0, str(ROOT))
    import app

    demo = app.build_app(**{"seed": 0, **build_kwargs})
    _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    return demo, url


def scene_png(index: int, path: Path) -> str:
    """Write test scene `index` as a PNG; returns its ground-truth caption."""
    from PIL import Image

    from ssm_bridge import load_pretrained
    from ssm_bridge.data import make_scene

    scene = make_scene("test", index, load_pretrained("shapes-tiny").scene_config)
    Image.fromarray(scene.image).save(path)
    return scene.caption


def open_page(browser, url: str, viewport: dict | None = None):
    """A page on `url` that blocks (and lists in the returned list) any other origin."""
    page = browser.new_page(viewport=viewport or VIEWPORT)
    outside: list[str] = []
    base = url.rstrip("/")

    def route(r):
        if r.request.url.startswith((base, "data:", "blob:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector("#upload", timeout=TIMEOUT_MS)
    return page, outside


def wait_plot(page, tab: str) -> int:
    """Wait until tab `tab`'s plot shows a loaded image and is no longer pending; its
    natural width in pixels."""
    sel = f"#plot-{tab} img"
    page.wait_for_function(IMG_READY, arg=sel, timeout=TIMEOUT_MS)
    page.wait_for_function(IDLE, arg=f"#plot-{tab}", timeout=TIMEOUT_MS)
    page.wait_for_timeout(400)  # the fade-in after a pending state
    return page.evaluate("sel => document.querySelector(sel).naturalWidth", sel)


def caption_text(page) -> str:
    return " ".join(t.strip() for t in page.locator("#caption .token").all_inner_texts())


def caption_and_select(page, png: Path, truth: str, word: int) -> dict:
    """Upload `png`, wait for its caption, click word `word`, wait for the cross-attention
    plot. Returns what the page showed."""
    page.locator("#upload input[type=file]").set_input_files(str(png))
    page.wait_for_function(
        "n => document.querySelectorAll('#caption .token').length >= n",
        arg=len(truth.split()), timeout=TIMEOUT_MS)
    caption = caption_text(page)
    page.locator("#caption .token").nth(word).click()
    page.wait_for_function("t => document.querySelector('#word-info').innerText.includes(t)",
                           arg=f"word {word + 1}/", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Cross-attention").click()
    width = wait_plot(page, "cross")
    return {"caption": caption, "word_info": page.inner_text("#word-info"), "plot_width": width}


def draw_and_caption(page, half: int = 45, spacing: int = 4) -> str:
    """Draw a square (the first brush colour, red) on the sketchpad as a zig-zag of lines
    `spacing` px apart (4: filled; wider is quicker, each move redraws the canvas), caption
    it."""
    page.get_by_role("tab", name="Draw").click()
    # the app picks the brush when the tab opens (ui.PICK_BRUSH): no click here
    page.wait_for_selector("#sketch button[aria-label='Brush'].highlight", timeout=TIMEOUT_MS)
    box = page.locator("#sketch canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - half, cy - half)
    page.mouse.down()
    for y in range(-half, half + 1, spacing):
        page.mouse.move(cx - half, cy + y)
        page.mouse.move(cx + half, cy + y, steps=2)
    page.mouse.up()
    page.get_by_role("button", name="caption the drawing").click()
    page.wait_for_function("() => document.querySelector('#source').innerText"
                           ".includes('your drawing')", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('#caption .token').length > 0 "
                           "&& document.querySelector('#word-info').innerText.includes('word')",
                           timeout=TIMEOUT_MS)
    return caption_text(page)


def choose_model(page, label: str, intro_words: str, n_words: int) -> str:
    """Pick `label` in the model selector; wait until the page is laid out for it (its
    intro holds `intro_words`) and the current image is captioned again (at least
    `n_words` words). Returns the new caption."""
    page.locator("#model input").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.wait_for_function("t => document.querySelector('#intro').innerText.includes(t)",
                           arg=intro_words, timeout=TIMEOUT_MS)
    page.wait_for_function(
        "n => document.querySelectorAll('#caption .token').length >= n",
        arg=n_words, timeout=TIMEOUT_MS)
    page.wait_for_function(IDLE, arg="#caption", timeout=TIMEOUT_MS)
    return caption_text(page)


def open_tab(page, title: str, tab: str) -> int:
    page.get_by_role("tab", name=title, exact=True).click()
    return wait_plot(page, tab)


def intervene_all(page, action: str | None = None) -> str:
    """On the Intervene tab: choose every patch, (pick `action`,) apply; the result text."""
    page.get_by_role("tab", name="Intervene").click()
    page.wait_for_function(IMG_READY, arg="#iv-grid img", timeout=TIMEOUT_MS)
    page.get_by_role("button", name="all patches").click()
    page.wait_for_function(IDLE, arg="#iv-grid", timeout=TIMEOUT_MS)
    if action is not None:
        page.locator("#iv-action input").click()
        page.get_by_role("option", name=action, exact=True).click()
    page.locator("#iv-apply").click()
    page.wait_for_function("() => document.querySelector('#iv-result').innerText"
                           ".includes('log p of the caption')", timeout=TIMEOUT_MS)
    return page.inner_text("#iv-result")


def tour(page, out_dir: Path | None) -> list[Path]:
    """After caption_and_select: the other tabs, a random scene with its ground truth, an
    attribution, the scrubber, an intervention and a drawing; screenshots into `out_dir`
    when given."""
    from ssm_bridge.app.support import TABS

    shots: list[Path] = []

    def shot(name: str) -> None:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            shots.append(out_dir / name)
            page.screenshot(path=str(shots[-1]), full_page=True)

    shot("app-cross-attention.png")
    open_tab(page, TABS["bridge"], "bridge")
    shot("app-bridge.png")
    page.get_by_role("tab", name="Scenes").click()
    page.locator("#random-scene").click()
    page.wait_for_function("() => document.querySelector('#source').innerText"
                           ".includes('generated scene')", timeout=TIMEOUT_MS)
    open_tab(page, TABS["truth"], "truth")
    page.wait_for_function("() => (document.querySelector('#truth') || {innerText: ''})"
                           ".innerText.includes('ground truth')", timeout=TIMEOUT_MS)
    shot("app-ground-truth.png")
    page.get_by_role("tab", name=TABS["attribution"]).click()  # computed on opening
    wait_plot(page, "attribution")
    shot("app-attribution.png")
    page.get_by_role("tab", name=TABS["scrubber"]).click()
    wait_plot(page, "scrubber")
    page.locator("#scan-step input[type=number]").fill("30")
    page.locator("#scan-step input[type=number]").press("Enter")
    page.wait_for_function("() => { const i = document.querySelector('#plot-scrubber img'); "
                           "return i && i.complete && i.naturalWidth > 0 && "
                           "document.querySelector('#scan-step input[type=range]').value == "
                           "'30'; }", timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)  # the frame for step 30 replaces step 0's
    shot("app-scrubber.png")
    intervene_all(page)
    shot("app-intervene.png")
    draw_and_caption(page)
    open_tab(page, TABS["cross"], "cross")
    shot("app-sketch.png")
    return shots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--chromium", default=CHROMIUM)
    args = ap.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"no chromium at {args.chromium}: install it (apt-get install chromium) or "
              "pass --chromium", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    demo, url = start_app()
    tmp = tempfile.TemporaryDirectory()
    png = Path(tmp.name) / "scene.png"
    try:
        truth = scene_png(3, png)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page, outside = open_page(browser, url)
            seen = caption_and_select(page, png, truth, word=3)
            print(f"caption {seen['caption']!r} (truth {truth!r})")
            for path in tour(page, args.out):
                print(f"wrote {path}")
            browser.close()
        if outside:
            print(f"blocked requests leaving the app: {outside}", file=sys.stderr)
    finally:
        tmp.cleanup()
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
