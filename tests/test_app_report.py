"""The app's "Download report" button (ssm_bridge.app.report_download), driven through
`Handlers` without a server: the file is the one `ssm-bridge report` writes for the
session's image and model, byte for byte for a test scene."""

from __future__ import annotations

import hashlib
import os
import shlex
import time

import pytest

pytest.importorskip("gradio")
from apputil import app  # noqa: F401  (puts the repository root on sys.path)
from PIL import Image
from test_report import Page, external_refs

from ssm_bridge import load_pretrained
from ssm_bridge.app.report_download import ReportDownloads, report_input, scene_ref
from ssm_bridge.app.support import DEFAULT_MAX_PIXELS, Analyser
from ssm_bridge.app.ui import Handlers, Models, guarded, model_choices
from ssm_bridge.cli import main
from ssm_bridge.data import make_scene, split_seeds

MAPS = ["cross_attention", "delta"]  # two kinds keep each report near ten seconds
ALL_SSM = "shapes-all-ssm"
GREEDY = ("greedy", 1.0, 0, 1.0)


@pytest.fixture(scope="module")
def handlers(one_thread, tmp_path_factory) -> Handlers:
    first = Analyser(load_pretrained("shapes-tiny"))
    h = Handlers(Models(first, "shapes-tiny", model_choices("shapes-tiny"), "cpu"), 10.0, 4,
                 0, DEFAULT_MAX_PIXELS)
    h.reports = ReportDownloads(tmp_path_factory.mktemp("reports"), maps=MAPS)
    return h


def fields(html: str) -> dict[str, str]:
    page = Page(html)
    return {a["data-field"]: "".join(page.text(**{"data-field": a["data-field"]}))
            for a in page.find("td") if "data-field" in a}


def test_a_scene_downloads_the_file_the_cli_writes(handlers, tmp_path, monkeypatch):
    source = handlers.from_seed(None, handlers.example_seeds[3])[0]  # test scene 3
    path = handlers.report(None, source, 6.0)  # the slider's float
    assert os.path.basename(path) == "report-test-3-shapes-tiny.html"
    html = open(path, encoding="utf-8").read()
    command = fields(html)["command"]
    assert command == ("ssm-bridge report --scene test:3 --checkpoint shapes-tiny --out "
                       "report-test-3-shapes-tiny.html --maps cross_attention,delta "
                       "--max-length 6")
    monkeypatch.chdir(tmp_path)  # the command's --out is a bare file name
    assert main(shlex.split(command)[1:]) == 0
    assert (tmp_path / os.path.basename(path)).read_text(encoding="utf-8") == html
    page = Page(html)
    assert {c["data-kind"] for c in page.find("td", "cell")} == set(MAPS)
    assert page.find("table", "segment-summary")  # the scene's masks came along
    view = handlers.run(None, source, *GREEDY, 6, 0)[0]
    assert page.text(**{"class": "caption"})[0] == view.analysis.caption
    assert external_refs(html) == []


def test_no_image_is_the_apps_one_line_error(handlers):
    import gradio as gr

    with pytest.raises(gr.Error) as e:
        guarded(handlers.report)(None, None, 32)
    assert "No image yet" in e.value.message and "\n" not in e.value.message


def test_after_switching_the_report_is_of_the_sessions_model(handlers, monkeypatch):
    name = handlers.switch_model(ALL_SSM)[0]
    source = handlers.from_seed(name, handlers.example_seeds[3])[0]
    monkeypatch.setattr(handlers.reports, "maps", ["delta"])  # a kind both models have
    html = open(handlers.report(name, source, 6), encoding="utf-8").read()
    p = handlers.models[ALL_SSM].p
    weights = hashlib.sha256((p.path / "model.safetensors").read_bytes()).hexdigest()
    stamp = fields(html)
    assert stamp["checkpoint SHA-256"].split()[0] == weights
    assert stamp["checkpoint"].startswith(f"{ALL_SSM} (")
    assert "--checkpoint shapes-all-ssm --out report-test-3-shapes-all-ssm.html" \
        in stamp["command"]
    caption = handlers.run(name, source, *GREEDY, 6, 0)[0].analysis.caption
    assert Page(html).text(**{"class": "caption"})[0] == caption


def test_an_upload_is_reported_from_its_pixels_under_its_file_name(handlers, tmp_path,
                                                                    monkeypatch):
    png = tmp_path / "my scene.png"
    Image.fromarray(make_scene("test", 3, handlers.scene_config).image).save(png)
    source = handlers.from_upload(None, str(png))[0]
    monkeypatch.setattr(handlers.reports, "maps", ["delta"])
    path = handlers.report(None, source, 4)
    assert os.path.basename(path) == "report-my_scene-shapes-tiny.html"
    html = open(path, encoding="utf-8").read()
    page = Page(html)
    assert page.find("p", "note no-masks") and "<h1>ssm-bridge report: my scene.png" in html
    assert fields(html)["command"].startswith("ssm-bridge report 'my scene.png' --checkpoint")


def test_the_report_input_of_each_source(handlers):
    p = handlers.analyser.p
    test = split_seeds("test", 1)[0]
    assert scene_ref(test + 17) == "test:17" and scene_ref(5) == "train:5"
    assert scene_ref(split_seeds("comp_test", 1)[0]) is None  # drawn compositional there
    seed = handlers.from_seed(None, test + 17)[0]
    assert report_input(p, seed).args == ["--scene", "test:17"]
    comp = handlers.from_seed(None, split_seeds("comp_test", 1)[0] + 2)[0]
    inp = report_input(p, comp)
    assert inp.scene is None and inp.pixels is not None and "does not save" in inp.note
    drawing = {"pixels": seed["pixels"], "scene": None}
    assert report_input(p, drawing).args == ["drawing.png"]


def test_old_report_folders_are_removed(tmp_path):
    reports = ReportDownloads(tmp_path, max_age_s=60)
    old, new = tmp_path / "report-old", tmp_path / "report-new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "report.html").write_text("x")
    os.utime(old, (time.time() - 120,) * 2)
    made = reports._folder()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([made.name, "report-new"])
