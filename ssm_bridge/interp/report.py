"""A self-contained HTML report of one image: every map of every caption word, scored.

    ssm-bridge report photo.png --out report.html                # a plain image file
    ssm-bridge report --scene test:17 --out report.html --maps ig,cross_attention
    html = build_report("shapes-tiny", scene="test:17", maps=["ig", "delta"])
    write_report("report.html", "shapes-tiny", image="photo.png")     # atomic

The model captions the image greedily (maps.analyse). The report holds, in one file that
opens offline (images as base64 PNG data URIs, inline CSS, nothing fetched):

    the grid      one row per caption word (with its log-prob), one column per map kind,
                  each cell the word's map over the image
    faithfulness  per word and kind the normalised MoRF / LeRF AUCs of the deletion curves
                  and ΔA^F = LeRF - MoRF (faithfulness.perturbation_curves; the dataset-mean
                  baseline by default, --baseline blur for the blurred image),
                  the word's curves, the random order's AUC as the floor; for a scene-world
                  image (--scene) also the segmentation scores of each word's map against
                  the mask of the object its phrase names (faithfulness.segmentation_scores;
                  a plain file has no masks, and the report says so)
    the bridge    Δ / gate / |h| per layer, the state's path along each scan direction and
                  the scrubber frame at the scan's largest Δ (the app's figures)
    the stamp     checkpoint weights SHA-256, input pixels SHA-256, seed, decoding, map
                  kinds, package versions, platform and CPU, and the command line

Identical arguments on the same machine give a byte-identical file (no clock in it).
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.addressing import ssm_stacks
from ..data import SPLITS, make_scene, open_image
from ..data.scenes import SPLIT_SIZE
from . import faithfulness as fa
from .faithfulness_study import BASELINES, baseline_inputs
from .interpret import _bundle, _check_maps, add_maps_arg, parsed_maps
from .localization import word_match
from .maps import CaptionAnalysis, analyse, word_maps

BASELINE_TEXT = {"mean": "the mean image of 256 training scenes", "blur": "the image blurred"}

__all__ = ["ReportData", "WordScores", "build_report", "collect", "main", "parse_scene_ref",
           "report_bytes", "write_report"]


@dataclass
class WordScores:
    """One (word, map kind): its deletion curves and segmentation scores ({}: no mask)."""

    curves: fa.Curves
    segments: dict[str, float]


@dataclass
class ReportData:
    """Everything the HTML shows; `report_html.render` turns it into the page.

    pixels (S, S, 3) uint8 the model input; grids {kind: (n_words, g, g)}; scores
    {(word, kind): WordScores}; objects per word: the scene object its phrase names
    (word_objects; None for none, all None without a scene); figures [(title, data URI)]
    of the bridge; notes: what the page should say is missing; stamp {field: text}."""

    analysis: CaptionAnalysis
    pixels: np.ndarray
    source: str
    scene: object | None
    maps: list[str]
    baseline: str
    grids: dict[str, torch.Tensor]
    scores: dict[tuple[int, str], WordScores]
    objects: list[int | None]
    stamp: dict[str, str]
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- inputs
def parse_scene_ref(ref: str) -> tuple[str, int]:
    """"test:17" -> ("test", 17); ValueError naming the expected form otherwise."""
    split, _, index = str(ref).partition(":")
    if split not in SPLITS or not index.isdigit() or int(index) >= SPLIT_SIZE:
        raise ValueError(f"scene reference must be SPLIT:INDEX with SPLIT one of "
                         f"{', '.join(SPLITS)} and 0 <= INDEX < {SPLIT_SIZE}, e.g. test:17; "
                         f"got {ref!r}")
    return split, int(index)


def load_input(transform, scene_config, image=None, scene=None, name=None):
    """(pixels (S, S, 3) uint8, Scene or None, source text) from exactly one of an image
    (a file path, a PIL image or an array) and a scene reference; `name` names an
    in-memory image (the app's upload by its file name) on the page."""
    if (image is None) == (scene is None):
        raise ValueError("give exactly one of image (a file) and scene ('split:index')")
    if scene is not None:
        split, index = parse_scene_ref(scene)
        s = make_scene(split, index, scene_config)
        return transform.to_array(s.image), s, f"scene {split}:{index}"
    if isinstance(image, (str, Path)):
        return transform.to_array(open_image(image)), None, str(image)
    return transform.to_array(image), None, name or f"an in-memory {type(image).__name__}"


def word_objects(scene, words: Sequence[str]) -> list[int | None]:
    """Per word, the index in scene.objects of the object its phrase names (right or
    wrong: localization.word_match); None for a relation word, an article (its map is
    not about the object), a phrase naming no object, or any word without a scene."""
    out = []
    for w in range(len(words) if scene is not None else 0):
        found = word_match(scene, words, w)
        out.append(None if found is None or found[1] == "article" else found[0].obj)
    return out or [None] * len(words)


# ---------------------------------------------------------------- the work
def score_words(model, a: CaptionAnalysis, maps: Sequence[str], masks: Sequence, baseline,
                seed: int, progress: bool = False):
    """({kind: (n_words, g, g)}, {(word, kind): WordScores}) for every word x kind: the
    maps first, then each word's curves of every kind in shared batched forwards
    (perturbation_curves_many); one tqdm step per kind, then per word."""
    grids, scores = {}, {}
    with tqdm(total=len(maps) + a.n_words, desc="report: maps, then words",
              disable=not progress) as bar:
        for kind in maps:
            grids[kind] = word_maps(a, kind, model).cpu()  # (n_words, g, g)
            bar.update()
        for w in range(a.n_words):
            many = fa.perturbation_curves_many(model, a.image, a.ids, a.word_index[w],
                                               [grids[k][w] for k in maps],
                                               baseline=baseline, seed=seed)
            for kind, curves in zip(maps, many):
                m = grids[kind][w]
                segments = {} if masks[w] is None else fa.segmentation_scores(m, masks[w])
                scores[w, kind] = WordScores(curves, segments)
            bar.update()
    return grids, scores


def bridge_figures(pretrained, a: CaptionAnalysis, pixels: np.ndarray) -> list:
    """[(title, data URI)]: the app's Δ / gate panels, |h| per bridge layer, and per
    bridge layer and scan direction the state's path and the scrubber frame at the step
    of largest Δ. None of the path figures for a bridge without a selective scan."""
    import viz

    from ..app.support import Analyser, View, selectivity_maps, tab_figure
    from .report_html import png_uri

    analyser, view = Analyser(pretrained, fit_ood=False), View(a, pixels)
    out = []
    if selectivity_maps(a):
        out.append(("Δ and gate per layer (mean over channels)",
                    png_uri(tab_figure(analyser, view, "bridge"))))
    if a.state_norm:
        norms = {f"bridge {i} |h|": m for i, m in a.state_norm.items()}
        out.append(("state norm |h| per bridge layer", png_uri(viz.layer_maps(norms, pixels))))
    stack = ssm_stacks(pretrained.model).get("bridge")
    for ref in stack or ():
        for k in range(len(ref)):
            s = analyser.scan(view, ref.index, k)
            out.append((f"bridge layer {ref.index}, {s.name} scan: state path",
                        png_uri(tab_figure(analyser, view, "state", layer=ref.index,
                                           direction=k))))
            step = int(np.argmax(s.delta))  # the step where the scan resets most
            out.append((f"bridge layer {ref.index}, {s.name} scan at its largest Δ",
                        png_uri(tab_figure(analyser, view, "scrubber", layer=ref.index,
                                           direction=k, step=step))))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp(pretrained, label: str, pixels: np.ndarray, seed: int, max_length: int,
          maps: Sequence[str], baseline: str, command: str) -> dict[str, str]:
    """What it takes to make the same report again, field by field."""
    import ssm_bridge

    from ..training.checkpoint import WEIGHTS_NAME
    from ..training.precision import cpu_model

    weights = Path(pretrained.path) / WEIGHTS_NAME
    capability = (torch.backends.cpu.get_cpu_capability()
                  if hasattr(torch.backends.cpu, "get_cpu_capability") else "unknown")
    return {
        "command": command,
        "checkpoint": f"{label} ({pretrained.path})",
        "checkpoint SHA-256": f"{_sha256(weights)} ({WEIGHTS_NAME})",
        "input pixels SHA-256": hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest()
        + f" ({'x'.join(map(str, pixels.shape))} uint8, the model input)",
        "seed": str(seed),
        "decoding": f"greedy (temperature 0), max_length {max_length} tokens (BOS included)",
        "map kinds": ", ".join(maps),
        "perturbation": f"baseline {baseline} ({BASELINE_TEXT[baseline]}), {fa.FRACTIONS} "
                        f"steps, curves read when the full baseline takes >= "
                        f"{fa.MIN_DROP:g} nat off log p",
        "ssm_bridge": ssm_bridge.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "CPU": cpu_model(),
        "CPU capability (torch)": str(capability),
        "torch threads": str(torch.get_num_threads()),
    }


def collect(pretrained, image=None, scene=None, maps=None, *, seed: int = 0,
            max_length: int | None = None, baseline: str = "mean", progress: bool = False,
            command: str | None = None, name: str | None = None) -> ReportData:
    """Caption the image, score every word x map kind and draw the bridge (module
    docstring). pretrained: a Pretrained bundle or a checkpoint name / folder; image: a
    file path, PIL image or array (name: what the page calls an in-memory one); scene:
    "split:index" (exactly one of the two); maps:
    kinds (None: every kind the model has); baseline: "mean" (the dataset mean: under
    "blur" most words keep their log p, and their curves cannot be read)."""
    from ..training.pretrained import Pretrained, load_pretrained

    p = load_pretrained(pretrained) if isinstance(pretrained, (str, Path)) else pretrained
    if not isinstance(p, Pretrained):
        raise ValueError(f"expected a Pretrained bundle or a checkpoint name, got "
                         f"{type(p).__name__}: the stamp needs the checkpoint's weights file")
    label = str(pretrained) if isinstance(pretrained, (str, Path)) else p.path.name
    model, tok, transform, cfg = _bundle(p)
    maps = _check_maps(maps, model)
    max_length = _check_length(max_length, model.config.max_seq_length)
    pixels, s, source = load_input(transform, cfg, image, scene, name)
    base = baseline_inputs([baseline], transform, cfg)[baseline]
    a = analyse(model, transform(pixels), tokenizer=tok, max_length=max_length)
    objects = word_objects(s, a.words)
    masks = [None if j is None else s.objects[j].mask for j in objects]  # (H, W) bool each
    grids, scores = score_words(model, a, maps, masks, base, seed, progress)
    command = command or (f"build_report({label!r}, {source!r}, maps={maps!r}, seed={seed}, "
                          f"max_length={max_length}, baseline={baseline!r})")
    data = ReportData(a, pixels, source, s, maps, baseline, grids, scores, objects,
                      stamp(p, label, pixels, seed, max_length, maps, baseline, command))
    data.figures = bridge_figures(p, a, pixels)
    if "bridge" not in ssm_stacks(model):
        data.notes.append(f"this model's bridge ({model.config.bridge_type}) has no selective "
                          "scan: no state path or scrubber figures")
    return data


def _check_length(max_length: int | None, limit: int) -> int:
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) \
            or not 2 <= max_length <= limit:
        raise ValueError(f"max_length must be an integer in 2..{limit} (the model's "
                         f"max_seq_length, BOS included), got {max_length!r}")
    return max_length


# ---------------------------------------------------------------- outputs
def build_report(pretrained, image=None, scene=None, maps=None, **kwargs) -> str:
    """The report as one HTML string (arguments as `collect`)."""
    from .report_html import render

    return render(collect(pretrained, image, scene, maps, **kwargs))


def report_bytes(pretrained, image=None, scene=None, maps=None, **kwargs) -> bytes:
    """The report as UTF-8 bytes, e.g. for a download button (arguments as `collect`)."""
    return build_report(pretrained, image, scene, maps, **kwargs).encode("utf-8")


def write_report(out, pretrained, image=None, scene=None, maps=None, **kwargs) -> Path:
    """Build the report, then write it to `out` atomically: a temporary file in the same
    folder renamed over it, so a failed build or write leaves the old file as it was."""
    from ..training.checkpoint import atomic_write

    data = report_bytes(pretrained, image, scene, maps, **kwargs)
    out = Path(out)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


# ---------------------------------------------------------------- command line
def _scene_arg(text: str) -> str:
    import argparse

    try:
        parse_scene_ref(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _parser():
    from ..cli import Parser, int_at_least, writable_file

    p = Parser(prog="ssm-bridge report", description=__doc__.split("\n")[0])
    p.add_argument("image", nargs="?", metavar="IMAGE", help="an image file (or use --scene)")
    p.add_argument("--scene", type=_scene_arg, metavar="SPLIT:INDEX",
                   help="a scene-world image instead of a file, e.g. test:17 (its object "
                        "masks give segmentation scores)")
    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--out", type=writable_file, required=True, help="the HTML file to write")
    add_maps_arg(p)
    p.add_argument("--baseline", choices=BASELINES, default="mean",
                   help="what deleted patches become: the mean of 256 training scenes "
                        "(default), or the image blurred (a blurred object keeps its colour, "
                        "so most colour and size words leave their curves unread)")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of the perturbation orders' tie-breaking and random order")
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="caption tokens, BOS included (default: the model's maximum)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """ssm-bridge report: one image's report as a self-contained HTML file."""
    import shlex

    from ..cli import load_or_exit

    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    args = p.parse_args(argv)
    if (args.image is None) == (args.scene is None):
        p.error("give exactly one of IMAGE (a file) and --scene SPLIT:INDEX")
    if args.image is not None:
        try:
            open_image(args.image)  # a bad file is named before the model loads
        except (OSError, ValueError) as e:
            p.error(f"argument IMAGE: {e}; give a PNG or JPEG file, or --scene SPLIT:INDEX")
    bundle = load_or_exit(p, args.checkpoint)
    maps = parsed_maps(p, args, bundle.model)
    try:
        write_report(args.out, bundle, args.image, args.scene, maps, seed=args.seed,
                     max_length=args.max_length, baseline=args.baseline,
                     progress=not args.no_progress and sys.stderr.isatty(),
                     command=shlex.join(["ssm-bridge", "report", *argv]))
    except ValueError as e:
        p.error(" ".join(str(e).split()))
    except OSError as e:
        print(f"ssm-bridge report: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
