"""The report's page: `render(ReportData)` -> one self-contained HTML string.

    from ssm_bridge.interp.report import collect
    html = render(collect("shapes-tiny", scene="test:3", maps=["ig"]))

Every image is a base64 PNG data URI and the style sheet sits in the page, so the file
opens offline and fetches nothing; every text that reaches the page goes through
html.escape. Rows and cells carry classes and data- attributes (word, kind, logp, morf,
...) so scripts and tests can read the numbers back without scraping prose.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

CELL_DPI = 40  # a map cell: PANEL (2.6 in) x 40 dpi = 104 px
FIGURE_DPI = 80
SEGMENT_KEYS = ("pixel_accuracy", "miou", "mean_ap")
SEGMENT_NAMES = {"pixel_accuracy": "pixel acc.", "miou": "mIoU", "mean_ap": "mAP"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 100em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; vertical-align: middle; }
th { background: #f2f2f2; } td.w, td.txt, th.txt { text-align: left; }
td.cell { padding: 1px; } td.cell img { display: block; width: 104px; }
img.input { width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 40em; }
.note { background: #fff6dc; border-left: 4px solid #e0b040; padding: 0.4em 0.8em; }
table.stamp td { text-align: left; font-family: ui-monospace, monospace; font-size: 0.85em; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(x: float, digits: int = 3) -> str:
    """A number for a cell; "n/a" for NaN (curves left unread, see faithfulness.MIN_DROP)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def png_uri(fig, dpi: int = FIGURE_DPI) -> str:
    """A matplotlib Figure as a data:image/png;base64 URI, the figure closed after."""
    if getattr(fig.canvas, "manager", None) is not None:  # made through pyplot: unregister
        import matplotlib.pyplot as plt

        plt.close(fig)
    FigureCanvasAgg(fig)  # draw with Agg whatever the session's backend: no display needed
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()  # viz builds figures outside pyplot: clearing is what frees them
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pixels_uri(pixels: np.ndarray) -> str:
    """An (H, W, 3) uint8 array as a PNG data URI (the input image, unscaled)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mean(values) -> float:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return float(v.mean()) if v.size else float("nan")


# ---------------------------------------------------------------- sections
def render(d) -> str:
    """The page of one ReportData (ssm_bridge.interp.report.collect)."""
    body = [_summary(d), _grid(d), _faithfulness(d), _segmentation(d), _bridge(d), _stamp(d)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>ssm-bridge report: {esc(d.source)}</title>\n<style>{STYLE}</style>\n"
            "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _summary(d) -> str:
    a = d.analysis
    lines = [f"<h1>ssm-bridge report: {esc(d.source)}</h1>",
             f"<p><img class=\"input\" alt=\"the input image\" src=\"{pixels_uri(d.pixels)}\">"
             "</p>",
             f"<p>caption (greedy): <b class=\"caption\">{esc(a.caption) or '(no words)'}"
             f"</b> &middot; checkpoint {esc(d.stamp['checkpoint'])}</p>"]
    if d.scene is not None:
        verdict = "exact match" if a.caption == d.scene.caption else "differs"
        objects = "; ".join(f"{j + 1}: {o.describe()}" for j, o in enumerate(d.scene.objects))
        lines.append(f"<p>ground truth: <b>{esc(d.scene.caption)}</b> ({verdict}) &middot; "
                     f"objects {esc(objects)}</p>")
    return "\n".join(lines)


def _grid(d) -> str:
    """Rows = caption words (with log p), columns = map kinds, cells = map over image."""
    import viz

    a = d.analysis
    head = "".join(f"<th class=\"kind\">{esc(k)}</th>" for k in d.maps)
    rows = [f"<tr><th>#</th><th class=\"txt\">word</th><th>log p</th>{head}</tr>"]
    for w, word in enumerate(a.words):
        cells = "".join(_cell(viz.overlay(d.pixels, d.grids[k][w], colorbar=False), k, word)
                        for k in d.maps)
        lp = float(a.logprobs[w])
        rows.append(f"<tr class=\"word\" data-word=\"{w}\"><td>{w + 1}</td>"
                    f"<td class=\"w\">{esc(word)}</td><td class=\"logp\" data-logp=\"{lp!r}\">"
                    f"{lp:.4g}</td>{cells}</tr>")
    return ("<h2>Where each word looked: caption words &times; map kinds</h2>\n"
            "<p>Each cell is the word's map on the ViT patch grid, upsampled over the model's "
            "input; every cell has its own colour scale (signed maps diverge around 0). The "
            "SSM kinds (delta, gate, state_norm and their vision_ / decoder_ forms) do not "
            "depend on the word: their column repeats one map, the mean over layers. log p: "
            "the word's log-probability where greedy decoding wrote it.</p>\n"
            f"<table class=\"grid\">\n{chr(10).join(rows)}\n</table>")


def _cell(fig, kind: str, word: str) -> str:
    return (f"<td class=\"cell\" data-kind=\"{esc(kind)}\"><img alt=\"{esc(kind)} map of "
            f"{esc(repr(word))}\" src=\"{png_uri(fig, CELL_DPI)}\"></td>")


def _faithfulness(d) -> str:
    import viz

    a = d.analysis
    if not a.n_words:
        return "<h2>Faithfulness</h2>\n<p class=\"note\">The model wrote no words.</p>"
    seg = d.scene is not None
    head = ("<tr><th>#</th><th class=\"txt\">word</th><th class=\"txt\">names</th>"
            "<th>random order</th><th class=\"txt\">map</th><th>MoRF</th><th>LeRF</th>"
            "<th>&Delta;A<sup>F</sup></th>"
            + "".join(f"<th>{SEGMENT_NAMES[k]}</th>" for k in SEGMENT_KEYS) * seg + "</tr>")
    rows, figures = [head], []
    for w, word in enumerate(a.words):
        rows += _word_rows(d, w, word, seg)
        curves = {k: [d.scores[w, k].curves.logprob["morf"]] for k in d.maps}
        first = d.scores[w, d.maps[0]].curves
        curves["random"] = [first.logprob["random"]]
        fig = viz.deletion_curves(curves, first.fractions,
                                  title=f"MoRF deletion of '{word}' (word {w + 1})")
        figures.append(f"<figure><img alt=\"deletion curves of {esc(repr(word))}\" "
                       f"src=\"{png_uri(fig)}\"></figure>")
    return (f"<h2>Faithfulness (deletion, {esc(d.baseline)} baseline)</h2>\n"
            "<p>Patches are replaced by the baseline in the order a map ranks them, 1/16 of "
            "them a step: most relevant first (MoRF: lower area is better) or least relevant "
            "first (LeRF: higher is better); &Delta;A<sup>F</sup> = LeRF &minus; MoRF (higher "
            "is more faithful). Areas are of log p normalised to 1 on the clean image and 0 "
            "on the full baseline; n/a where the full baseline takes less than 1 nat off "
            "log p (nothing to read). The random order is the floor every map must beat.</p>\n"
            + _kind_summary(d) + f"\n<table class=\"scores\">\n{chr(10).join(rows)}\n</table>\n"
            "<details><summary>deletion curves per word</summary>\n"
            + "\n".join(figures) + "\n</details>")


def _word_rows(d, w: int, word: str, seg: bool) -> list[str]:
    """One row per map kind of word w; the word's own cells span them."""
    j = d.objects[w]
    names = "" if j is None else f"object {j + 1} ({d.scene.objects[j].describe()})"
    rand = d.scores[w, d.maps[0]].curves.auc["random"]  # the same order for every kind
    out = []
    for i, k in enumerate(d.maps):
        s = d.scores[w, k]
        span = len(d.maps)
        lead = (f"<td rowspan=\"{span}\">{w + 1}</td><td class=\"w\" rowspan=\"{span}\">"
                f"{esc(word)}</td><td class=\"txt\" rowspan=\"{span}\">{esc(names)}</td>"
                f"<td rowspan=\"{span}\">{num(rand)}</td>") if i == 0 else ""
        auc = s.curves.auc
        cells = (f"<td class=\"morf\">{num(auc['morf'])}</td><td class=\"lerf\">"
                 f"{num(auc['lerf'])}</td><td class=\"daf\">{num(s.curves.delta_af)}</td>")
        if seg:
            cells += "".join(f"<td class=\"{key}\">{num(s.segments.get(key))}</td>"
                             if s.segments else "<td>&ndash;</td>" for key in SEGMENT_KEYS)
        out.append(f"<tr class=\"score\" data-word=\"{w}\" data-kind=\"{esc(k)}\" "
                   f"data-morf=\"{auc['morf']!r}\" data-lerf=\"{auc['lerf']!r}\">{lead}"
                   f"<td class=\"txt\">{esc(k)}</td>{cells}</tr>")
    return out


def _kind_summary(d) -> str:
    """Per map kind, means over the words whose curves can be read."""
    rows = ["<tr><th class=\"txt\">map</th><th>MoRF</th><th>LeRF</th><th>&Delta;A<sup>F</sup>"
            "</th><th>words read</th></tr>"]
    n = d.analysis.n_words
    for k in d.maps:
        s = [d.scores[w, k].curves for w in range(n)]
        read = sum(math.isfinite(c.delta_af) for c in s)
        rows.append(f"<tr class=\"kind-mean\" data-kind=\"{esc(k)}\"><td class=\"txt\">"
                    f"{esc(k)}</td><td>{num(_mean(c.auc['morf'] for c in s))}</td><td>"
                    f"{num(_mean(c.auc['lerf'] for c in s))}</td><td>"
                    f"{num(_mean(c.delta_af for c in s))}</td><td>{read} / {n}</td></tr>")
    rand = [d.scores[w, d.maps[0]].curves.auc["random"] for w in range(n)]
    rows.append(f"<tr><td class=\"txt\">random order</td><td>{num(_mean(rand))}</td>"
                "<td></td><td></td><td></td></tr>")
    return ("<h3>Mean over the words</h3>\n<table class=\"kind-summary\">\n"
            + "\n".join(rows) + "\n</table>")


def _segmentation(d) -> str:
    if d.scene is None:
        return ("<h2>Segmentation</h2>\n<p class=\"note no-masks\">No object masks: the input "
                "is a plain image file, so there is no ground truth to score the maps "
                "against. Run with --scene SPLIT:INDEX (a scene-world image) for pixel "
                "accuracy, mIoU and mAP against each named object's mask.</p>")
    scored = [w for w, j in enumerate(d.objects) if j is not None]
    rows = ["<tr><th class=\"txt\">map</th>" + "".join(
        f"<th>{SEGMENT_NAMES[k]}</th>" for k in SEGMENT_KEYS) + "<th>words</th></tr>"]
    for k in d.maps:
        means = [num(_mean(d.scores[w, k].segments[key] for w in scored))
                 for key in SEGMENT_KEYS]
        rows.append(f"<tr class=\"segment-mean\" data-kind=\"{esc(k)}\"><td class=\"txt\">"
                    f"{esc(k)}</td>" + "".join(f"<td>{m}</td>" for m in means)
                    + f"<td>{len(scored)}</td></tr>")
    return ("<h2>Segmentation against the scene's object masks</h2>\n<p>Each size, colour "
            "and shape word is scored against the mask of the object its phrase names "
            "(right or wrong); articles and relation words name no object. The map is "
            "upsampled to the mask and binarised at its mean (pixel accuracy, mIoU over "
            "object and background); mAP ranks the object's pixels by the map. Per word: the "
            "table above.</p>\n<table class=\"segment-summary\">\n" + "\n".join(rows)
            + "\n</table>")


def _bridge(d) -> str:
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>\n" for n in d.notes)
    figures = "\n".join(f"<figure><img alt=\"{esc(t)}\" src=\"{uri}\"><figcaption>{esc(t)}"
                        "</figcaption></figure>" for t, uri in d.figures)
    return ("<h2>The bridge: &Delta;, gate and state</h2>\n<p>Word-independent: how the "
            "selective scans treat each patch of this image (&Delta; large: the scan resets "
            "to the patch; small: it carries its state past), and the state's path along "
            "each scan direction, coloured by step.</p>\n" + notes + figures)


def _stamp(d) -> str:
    rows = "\n".join(f"<tr><th class=\"txt\">{esc(k)}</th><td data-field=\"{esc(k)}\">"
                     f"{esc(v)}</td></tr>" for k, v in d.stamp.items())
    return ("<h2>Reproducibility stamp</h2>\n<p>The same command on the same checkpoint and "
            "versions gives the same file.</p>\n"
            f"<table class=\"stamp\" id=\"stamp\">\n{rows}\n</table>")
