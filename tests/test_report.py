"""`ssm-bridge report`: one image's self-contained HTML report (ssm_bridge.interp.report).

The numbers are read back from the page (classes and data- attributes) and checked against
independent computations: a teacher-forced forward for each word's log p, hashlib for the
checkpoint's SHA-256, faithfulness.segmentation_scores for the masks."""

import base64
import hashlib
import io
import os
import re
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from ssm_bridge.cli import main
from ssm_bridge.data import make_scene
from ssm_bridge.interp import faithfulness as fa
from ssm_bridge.interp import report
from ssm_bridge.interp.report_html import render
from ssm_bridge.training.pretrained import load_pretrained

MAPS = ["cross_attention", "delta", "gradcam"]  # an attention, a bridge, an attribution kind
SCENE = "test:3"
MAX_LENGTH = 6  # BOS + 5 words: an object phrase and a relation word, quickly


class Page(HTMLParser):
    """Every start tag as (tag, attrs), and the text inside each element with a class."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.open: list[tuple[str, dict]] = []
        self.texts: list[tuple[dict, str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "br"):
            self.open.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if self.open and self.open[-1][0] == tag:
            self.open.pop()

    def handle_data(self, data):
        if self.open and data.strip():
            self.texts.append((self.open[-1][1], data.strip()))

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls)]

    def text(self, **attrs) -> list[str]:
        return [s for a, s in self.texts if all(a.get(k) == v for k, v in attrs.items())]


URL_ATTRS = ("src", "href", "srcset", "action", "formaction", "poster", "data", "background",
             "xlink:href")


class Refs(HTMLParser):
    """Every URL a browser could fetch for the page: the URL-valued attributes, each
    url(...) in a style attribute or <style> element, and the tags that load by
    themselves (script, link, iframe, object, embed, base, meta refresh)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loaders: list[str] = []
        self.in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "link", "iframe", "object", "embed", "base") or (
                tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh"):
            self.loaders.append(tag)
        for key, value in attrs.items():
            if key == "srcset":  # "a.png 2x, b.png 1x"; a data: URI may hold commas
                self.urls += [value] if value.startswith("data:") else \
                    [part.split()[0] for part in value.split(",") if part.strip()]
            elif key in URL_ATTRS and value is not None:
                self.urls.append(value)
        self._style(attrs.get("style") or "")
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self._style(data)

    def _style(self, css: str) -> None:
        self.urls += [u.strip("'\" ") for u in re.findall(r"url\(([^)]*)\)", css, re.I)]
        self.loaders += ["@import"] * css.lower().count("@import")


def external_refs(html: str) -> list[str]:
    """What the page would fetch from outside itself (empty: it opens offline)."""
    refs = Refs(html)
    return refs.loaders + [u for u in refs.urls if not u.startswith("data:")]


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    """One thread: the tiny model decodes fastest so on a loaded 2-core machine."""


@pytest.fixture(scope="module")
def bundle():
    return load_pretrained("shapes-tiny")


@pytest.fixture(scope="module")
def scene_report(bundle):
    data = report.collect(bundle, scene=SCENE, maps=MAPS, max_length=MAX_LENGTH,
                          command="ssm-bridge report --scene test:3 (test)")
    return data, render(data)


def test_one_row_per_word_and_one_cell_per_map_kind(scene_report):
    data, html = scene_report
    page = Page(html)
    words = data.analysis.words
    assert len(words) >= 5
    rows = page.find("tr", "word")
    assert [r["data-word"] for r in rows] == [str(i) for i in range(len(words))]
    assert page.text(**{"class": "w"})[: len(words)] == words
    cells = page.find("td", "cell")
    assert [c["data-kind"] for c in cells] == MAPS * len(words)
    assert html.count("<img") == 1 + len(words) * len(MAPS) + len(words) + len(data.figures)
    assert len(data.figures) >= 3  # Δ / gate, |h|, a state path per bridge layer and scan


def test_each_words_logprob_matches_teacher_forcing(scene_report, bundle):
    _, html = scene_report
    page = Page(html)
    words = page.text(**{"class": "w"})[: len(page.find("tr", "word"))]
    shown = torch.tensor([float(c["data-logp"]) for c in page.find("td", "logp")])
    printed = torch.tensor([float(t) for t in page.text(**{"class": "logp"})])
    scene = make_scene("test", 3, bundle.scene_config)
    image = bundle.transform(scene.image)[None]  # (1, 3, H, W)
    ids = torch.tensor([bundle.tokenizer.encode(" ".join(words), eos=False)])  # (1, 1 + n)
    with torch.no_grad():
        logp = bundle.model(image, ids[:, :-1]).float().log_softmax(-1)[0]  # (n, V)
    expected = logp.gather(1, ids[0, 1:, None])[:, 0]  # (n,) log p of each word
    assert torch.allclose(shown, expected, atol=1e-3)
    assert torch.allclose(printed, expected, atol=1e-3)


def test_nothing_outside_the_file(scene_report):
    _, html = scene_report
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for src in sources:
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
    # the page without its images: base64 may spell anything, e.g. "//www"
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", html).lower()
    for banned in ("http:", "https:", "<script", "<link", "@import", "url(", "//",
                   "<iframe", "<object", "<embed", "href="):
        assert banned not in text, banned


def test_the_parsed_page_references_nothing_outside(scene_report):
    """The same, read as a browser would (html.parser): every URL-valued attribute and
    every url( in a style is a data: URI, and nothing loads a script or a stylesheet."""
    _, html = scene_report
    refs = Refs(html)
    assert len(refs.urls) == html.count("<img") and refs.loaders == []
    assert external_refs(html) == []
    leaky = ('<p style="background: url(https://x.org/a.png)">'
             '<a href="https://example.org">x</a><img srcset="a.png 2x, data:x 1x">'
             '<style>@import "s.css"; b { background: url( //cdn/x.png ) }</style>')
    assert external_refs(leaky) == ["@import", "https://x.org/a.png", "https://example.org",
                                    "a.png", "//cdn/x.png"]  # the checker itself catches them


def test_stamp_holds_hash_seed_versions_and_command(scene_report, bundle):
    data, html = scene_report
    page = Page(html)
    field = {a["data-field"]: "".join(page.text(**{"data-field": a["data-field"]}))
             for a in page.find("td") if "data-field" in a}
    weights = (bundle.path / "model.safetensors").read_bytes()
    assert field["checkpoint SHA-256"].split()[0] == hashlib.sha256(weights).hexdigest()
    assert field["seed"] == "0"
    assert field["torch"] == torch.__version__
    assert field["command"] == "ssm-bridge report --scene test:3 (test)"
    assert "greedy" in field["decoding"] and f"max_length {MAX_LENGTH}" in field["decoding"]
    for key in ("ssm_bridge", "numpy", "python", "platform", "CPU", "CPU capability (torch)"):
        assert field[key].strip(), key
    pixels = hashlib.sha256(data.pixels.tobytes()).hexdigest()
    assert field["input pixels SHA-256"].split()[0] == pixels


def test_scene_report_scores_each_object_word_against_its_mask(scene_report):
    data, html = scene_report
    page = Page(html)
    scene, words = data.scene, data.analysis.words
    assert "no-masks" not in html and page.find("table", "segment-summary")
    named = [w for w, j in enumerate(data.objects) if j is not None]
    assert named and all(words[w] not in ("a", "above", "below", "left", "right")
                         for w in named)
    miou = {(r["data-word"], r["data-kind"]): r for r in page.find("tr", "score")}
    assert len(miou) == len(words) * len(MAPS)
    cells = page.text(**{"class": "miou"})
    assert len(cells) == len(named) * len(MAPS)
    expected = [fa.segmentation_scores(data.grids[k][w], scene.objects[data.objects[w]].mask)
                for w in named for k in MAPS]
    assert [float(c) for c in cells] == pytest.approx([e["miou"] for e in expected], abs=1e-3)


def test_plain_file_says_there_are_no_masks(bundle, scene_report, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(make_scene("test", 3, bundle.scene_config).image).save(path)
    html = report.build_report(bundle, image=str(path), maps=["delta"], max_length=4)
    page = Page(html)
    assert page.find("p", "note no-masks") and "segment-summary" not in html
    assert "no-masks" not in scene_report[1]
    caption = page.text(**{"class": "caption"})[0]
    assert scene_report[0].analysis.caption.startswith(caption)  # the same pixels


def test_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "X.html"
    argv = ["report", "--scene", "test:3", "--out", str(out), "--maps", "ig,cross_attention",
            "--max-length", "5", "--no-progress"]
    assert main(argv) == 0
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert [c["data-kind"] for c in page.find("td", "cell")][:2] == ["ig", "cross_attention"]
    assert "ssm-bridge report --scene test:3 --out" in html
    assert "Traceback" not in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["X.html"]


@pytest.mark.parametrize("case, says", [
    ("missing", "not found"),
    ("both", "exactly one of IMAGE"),
    ("neither", "exactly one of IMAGE"),
    ("bad-scene", "SPLIT:INDEX"),
    ("unknown-map", "unknown map kinds ['glow']"),
    ("no-folder", "does not exist"),
    ("folder-out", "is a folder"),
    ("not-an-image", "not an image file"),
])
def test_bad_input_is_one_line_and_status_2(case, says, tmp_path, capsys):
    out = str(tmp_path / "r.html")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    argv = {"missing": [str(tmp_path / "nope.png"), "--out", out],
            "both": [str(text), "--scene", "test:1", "--out", out],
            "neither": ["--out", out],
            "bad-scene": ["--scene", "test:x", "--out", out],
            "unknown-map": ["--scene", "test:1", "--maps", "glow", "--out", out],
            "no-folder": ["--scene", "test:1", "--out", str(tmp_path / "no" / "r.html")],
            "folder-out": ["--scene", "test:1", "--out", str(tmp_path)],
            "not-an-image": [str(text), "--out", out]}[case]
    with pytest.raises(SystemExit) as exit_:
        main(["report", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert "Traceback" not in err and not os.path.exists(out)


def test_a_failed_build_leaves_the_old_report(bundle, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old report")

    def boom(*args, **kwargs):
        raise RuntimeError("failed midway")

    monkeypatch.setattr(report.fa, "perturbation_curves_many", boom)
    with pytest.raises(RuntimeError, match="midway"):
        report.write_report(out, bundle, scene=SCENE, maps=["delta"], max_length=3)
    assert out.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_a_failed_write_leaves_the_old_report_and_no_temp_file(bundle, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old report")
    monkeypatch.setattr(report, "report_bytes", lambda *a, **k: b"<html>new</html>")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # after the temp file is written
    with pytest.raises(OSError, match="No space"):
        report.write_report(out, bundle, scene=SCENE)
    assert out.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_same_seed_same_report(scene_report, bundle):
    data, html = scene_report
    again = report.collect(bundle, scene=SCENE, maps=MAPS, max_length=MAX_LENGTH,
                           command=data.stamp["command"])
    def numbers(d):  # repr: NaN (an unread curve) equals itself
        return repr({key: (s.curves.auc, s.segments) for key, s in d.scores.items()})

    assert numbers(again) == numbers(data)
    assert render(again) == html  # byte for byte: no clock, deterministic figures


def test_scene_references_are_checked():
    assert report.parse_scene_ref("comp_test:0") == ("comp_test", 0)
    for bad in ("test", "test:", "test:-1", "tests:3", "test:3.5", ":3"):
        with pytest.raises(ValueError, match="SPLIT:INDEX"):
            report.parse_scene_ref(bad)
