"""A real browser on the app: Playwright driving Debian's chromium (never a downloaded
one). Open the page, upload a scene, get its caption, click a word, see the cross-attention
tab render an image; no request may leave the app. With SSM_BRIDGE_SCREENSHOTS=1 it also
tours the other tabs and writes the README screenshots to docs/img/."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

pytestmark = [pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]


@pytest.fixture(scope="module")
def browser():
    if not Path(shots.CHROMIUM).is_file():
        pytest.skip(f"no chromium at {shots.CHROMIUM} (apt-get install chromium; set "
                    "SSM_BRIDGE_CHROMIUM for another path); browsers are never downloaded")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=shots.CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_demo():
    demo, url = shots.start_app(n_examples=4)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def server(app_demo):
    return app_demo[1]


def test_upload_caption_select_word_and_see_attention(browser, server, tmp_path):
    png = tmp_path / "scene.png"
    truth = shots.scene_png(3, png)
    page, outside = shots.open_page(browser, server)
    seen = shots.caption_and_select(page, png, truth, word=3)
    assert seen["caption"] == truth
    assert f"word 4/{len(truth.split())}: {truth.split()[3]}" in seen["word_info"]
    assert "gated update / text stream" in seen["word_info"]
    assert f"next word (top 5)\tp\n{truth.split()[3]}\t" in seen["word_info"]
    assert seen["plot_width"] > 100  # a rendered figure, not a placeholder
    selected = page.locator("#caption .token.highlighted")
    assert selected.count() == 1 and selected.inner_text().strip() == truth.split()[3]
    if os.environ.get("SSM_BRIDGE_SCREENSHOTS"):
        written = shots.tour(page, ROOT / "docs" / "img")
        assert all(p.stat().st_size > 10_000 for p in written)
    assert outside == [], f"the page tried to reach {outside}"


def test_draw_on_the_sketchpad_and_caption_it(browser, server):
    page, outside = shots.open_page(browser, server)
    caption = shots.draw_and_caption(page, spacing=15)  # a few strokes: quick
    assert caption and all(w.isalpha() for w in caption.split())
    assert page.locator("#caption .token.highlighted").count() == 1
    assert outside == []


def test_the_model_selector_switches_to_the_attention_free_checkpoint(browser, server,
                                                                       tmp_path):
    """Both shipped checkpoints in one page, no restart: the all-SSM one captions the same
    image again and its word tab shows the decoder's scans; back on shapes-tiny the
    cross-attention tab returns."""
    from ssm_bridge.app.support import SCAN_TABS, TABS

    png = tmp_path / "scene.png"
    truth = shots.scene_png(3, png)
    page, outside = shots.open_page(browser, server)
    shots.caption_and_select(page, png, truth, word=3)
    n = len(truth.split())
    assert shots.choose_model(page, "shapes-all-ssm", "Vision Mamba encoder", n) == truth
    assert shots.open_tab(page, SCAN_TABS["cross"], "cross") > 100
    assert page.get_by_role("tab", name=TABS["cross"], exact=True).count() == 0
    assert shots.choose_model(page, "shapes-tiny", "A ViT reads", n) == truth
    assert shots.open_tab(page, TABS["cross"], "cross") > 100
    assert outside == []


def pick(page, menu: str, option: str) -> None:
    """Choose `option` in the dropdown whose elem_id is `menu`."""
    page.locator(f"#{menu} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_new_plot(page, tab: str, old_src: str) -> str:
    """Wait until tab `tab`'s plot shows another image than `old_src`; its src."""
    page.wait_for_function("([sel, s]) => { const i = document.querySelector(sel); "
                           "return i && i.complete && i.naturalWidth > 0 && i.src != s; }",
                           arg=[f"#plot-{tab} img", old_src], timeout=shots.TIMEOUT_MS)
    shots.wait_plot(page, tab)
    return page.locator(f"#plot-{tab} img").get_attribute("src")


def test_the_state_tab_of_the_all_ssm_checkpoint_shows_the_vim_encoders_scans(browser,
                                                                             server,
                                                                             tmp_path):
    """Issue 17: on shapes-all-ssm the State tab's layer menu names the Vim encoder's
    layers too; choosing one brings its two scan directions into the direction menu, and
    each choice redraws the figure (the Scrubber tab's menus follow)."""
    from ssm_bridge.app.support import TABS

    png = tmp_path / "scene.png"
    truth = shots.scene_png(3, png)
    page, outside = shots.open_page(browser, server)
    shots.caption_and_select(page, png, truth, word=3)
    shots.choose_model(page, "shapes-all-ssm", "Vision Mamba encoder", len(truth.split()))
    assert shots.open_tab(page, TABS["state"], "state") > 100  # bridge 0, its one direction
    assert page.locator("#layer-state input").input_value() == "bridge 0"
    assert not page.locator("#direction-state").is_visible()
    src = page.locator("#plot-state img").get_attribute("src")
    pick(page, "layer-state", "Vim 1")
    page.wait_for_selector("#direction-state input", state="visible",
                           timeout=shots.TIMEOUT_MS)
    src = wait_new_plot(page, "state", src)
    pick(page, "direction-state", "row_rev")
    wait_new_plot(page, "state", src)
    assert shots.open_tab(page, TABS["scrubber"], "scrubber") > 100  # its menus mount now
    assert page.locator("#layer-scrubber input").input_value() == "Vim 1"
    assert page.locator("#direction-scrubber input").input_value() == "row_rev"
    assert page.locator(".toast-body").count() == 0  # no error on the way
    assert outside == [], f"the page tried to reach {outside}"


def test_download_the_report_of_a_test_scene_and_open_it_offline(browser, app_demo,
                                                                 tmp_path, monkeypatch):
    """The "Download report" button on a test scene: the browser downloads one HTML file,
    which opens from disk with every figure drawn, the app's caption in it, and no request
    but file: and data: ones."""
    demo, url = app_demo
    monkeypatch.setattr(demo.reports, "maps", ["cross_attention", "delta"])  # quicker
    page, outside = shots.open_page(browser, url)
    page.get_by_role("tab", name="Scenes").click()
    page.get_by_role("button", name="load seed").click()  # the first test scene
    page.wait_for_function("() => document.querySelectorAll('#caption .token').length > 0",
                           timeout=shots.TIMEOUT_MS)
    page.wait_for_function(shots.IDLE, arg="#caption", timeout=shots.TIMEOUT_MS)
    caption = shots.caption_text(page)
    page.locator("#report-btn").click()
    link = page.locator("#report-file a[download]").first
    link.wait_for(timeout=3 * shots.TIMEOUT_MS)  # a report takes tens of seconds
    with page.expect_download(timeout=shots.TIMEOUT_MS) as caught:
        link.click()
    download = caught.value
    assert download.suggested_filename == "report-test-0-shapes-tiny.html"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert outside == [], f"the page tried to reach {outside}"

    report = browser.new_page(viewport=shots.VIEWPORT)
    requests: list[str] = []
    report.on("request", lambda r: requests.append(r.url))
    report.goto(saved.as_uri())
    report.wait_for_load_state("load")
    widths = report.evaluate("() => Array.from(document.images, i => i.complete ? "
                             "i.naturalWidth : 0)")
    assert len(widths) > 10 and min(widths) > 0, widths
    words = report.evaluate("() => Array.from(document.querySelectorAll('tr.word .w'), "
                            "e => e.innerText.trim())")
    assert " ".join(words) == caption
    assert report.inner_text(".caption").strip() == caption
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests


def test_a_photograph_gets_the_out_of_distribution_warning(browser, server):
    """Issue 19, point 8: a photo got a confident caption with nothing to say the model
    had never seen anything like it."""
    from test_ood import photo_files

    page, outside = shots.open_page(browser, server)
    page.locator("#upload input[type=file]").set_input_files(photo_files()[0])
    page.wait_for_function(
        "() => document.querySelector('#word-info').innerText.includes('unlike the scenes')",
        timeout=shots.TIMEOUT_MS)
    assert "out-of-distribution score" in page.inner_text("#word-info")
    assert outside == [], f"the page tried to reach {outside}"


def test_the_per_head_cross_attention_view_and_its_download(browser, server, tmp_path):
    """Issue 19, points 2 and 3: the cross-attention tab offers per-layer and per-head
    views, and the open map downloads as a PNG and its arrays."""
    png = tmp_path / "scene.png"
    truth = shots.scene_png(5, png)
    page, outside = shots.open_page(browser, server)
    shots.caption_and_select(page, png, truth, word=2)
    mean_width = shots.wait_plot(page, "cross")
    page.locator("#cross-view").get_by_label("per head").check()
    page.wait_for_function("w => { const i = document.querySelector('#plot-cross img'); "
                           "return i && i.complete && i.naturalWidth > 0 "
                           "&& i.naturalWidth != w; }", arg=mean_width,
                           timeout=shots.TIMEOUT_MS)
    assert shots.wait_plot(page, "cross") > mean_width  # a grid of panels, wider
    page.locator("#map-btn").click()  # issue 19, point 3: the open map downloads
    page.wait_for_function("() => document.querySelectorAll('#map-files a').length >= 2",
                           timeout=shots.TIMEOUT_MS)
    listed = "".join(page.inner_text("#map-files").split())  # names break across lines
    assert "cross-word3.png" in listed and "cross-word3.npz" in listed, listed
    assert outside == [], f"the page tried to reach {outside}"


def test_an_intervention_changes_the_caption(browser, server, tmp_path):
    """Issue 19, Interventions: a click on the grid chooses a patch (the grid redraws),
    "all patches" then "apply" zeroes the bridge state everywhere, and the page shows
    the old and the new caption and highlights the words that lost log p."""
    png = tmp_path / "scene.png"
    truth = shots.scene_png(3, png)
    page, outside = shots.open_page(browser, server)
    shots.caption_and_select(page, png, truth, word=3)
    page.get_by_role("tab", name="Intervene").click()
    page.wait_for_function(shots.IMG_READY, arg="#iv-grid img", timeout=shots.TIMEOUT_MS)
    before = page.locator("#iv-grid img").get_attribute("src")
    page.locator("#iv-grid img").click(position={"x": 40, "y": 40})
    page.wait_for_function("s => document.querySelector('#iv-grid img').src != s",
                           arg=before, timeout=shots.TIMEOUT_MS)
    text = shots.intervene_all(page)
    assert f"before: {truth}" in text and "the caption changed" in text
    after = text.split("after:")[1].split("\n")[0].strip()
    assert after and after != truth
    tokens = page.locator("#iv-words .token")
    assert tokens.count() == len(truth.split()) + 1  # and <eos>
    hurt = page.evaluate("() => Array.from(document.querySelectorAll("
                         "'#iv-words .token.highlighted'), e => e.textContent)")
    assert any("below" in t and "hurt" in t for t in hurt), hurt  # labelled, coloured
    assert outside == [], f"the page tried to reach {outside}"


def test_a_wrong_captions_ground_truth(browser, server):
    """Issue 19, point 1: a caption with a mistake still gets its ground truth: every
    object's mask, and the wrong word marked wrong."""
    from ssm_bridge import load_pretrained
    from ssm_bridge.data import make_scene, split_seeds

    index, word = 137, 9  # test scene 137: shapes-tiny says 'circle' for a square
    scene = make_scene("test", index, load_pretrained("shapes-tiny").scene_config)
    page, outside = shots.open_page(browser, server)
    page.get_by_role("tab", name="Scenes").click()
    page.locator("#scene-seed input").fill(str(split_seeds("test", 1)[0] + index))
    page.get_by_role("button", name="load seed").click()
    page.wait_for_function("() => document.querySelectorAll('#caption .token').length > 9",
                           timeout=shots.TIMEOUT_MS)
    caption = shots.caption_text(page)
    assert caption != scene.caption and caption.split()[word] == "circle"
    page.locator("#caption .token").nth(word).click()
    page.wait_for_function("t => document.querySelector('#word-info').innerText.includes(t)",
                           arg=f"word {word + 1}/", timeout=shots.TIMEOUT_MS)
    assert shots.open_tab(page, "Ground truth", "truth") > 100  # the masks are drawn
    text = page.inner_text("#truth")
    assert "(differs)" in text and "'circle' is the shape of object" in text
    assert "wrong (it is square)" in text
    assert outside == [], f"the page tried to reach {outside}"


def test_the_page_works_1024_px_wide(browser, server, tmp_path):
    """Issue 19, point 7: at 1024 px every tab is in view (none behind a menu), nothing
    scrolls sideways and a map fits its panel."""
    from ssm_bridge.app.support import TABS

    png = tmp_path / "scene.png"
    truth = shots.scene_png(3, png)
    page, outside = shots.open_page(browser, server, {"width": 1024, "height": 768})
    shots.caption_and_select(page, png, truth, word=3)
    for title in [*TABS.values(), "Intervene"]:
        tab = page.get_by_role("tab", name=title, exact=True)
        box = tab.bounding_box()
        assert tab.is_visible() and box and 0 <= box["x"] and box["x"] + box["width"] <= 1024
    assert not page.locator("#map-tabs .overflow-menu button").is_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1024
    img = page.locator("#plot-cross img").bounding_box()
    panel = page.locator("#plot-cross").bounding_box()
    assert img["width"] <= panel["width"] + 1 and img["width"] > 300
    assert outside == [], f"the page tried to reach {outside}"


def test_an_upload_over_the_limit_is_refused_at_the_limit_the_page_states(browser, server,
                                                                          tmp_path):
    """Issue 19, point 9: the upload box said 10 MB while gradio refused only files over
    40 MB, naming that figure. Now the one limit is the one stated, and the message
    names the user's own file."""
    page, outside = shots.open_page(browser, server)
    label = page.inner_text("#upload label")
    assert "up to 10 MB" in label, label
    big = tmp_path / "my holiday photo.png"
    big.write_bytes(bytes(10 * 2**20 + 1))
    page.locator("#upload input[type=file]").set_input_files(str(big))
    page.wait_for_selector(".toast-body", timeout=shots.TIMEOUT_MS)
    toast = page.inner_text(".toast-body")
    assert "10.0 Mb" in toast and "my holiday photo.png" in toast, toast
    assert outside == [], f"the page tried to reach {outside}"
