"""The faithfulness leaderboard: every map kind, per caption word, over N test scenes.

    rows = leaderboard("shapes-tiny", n=100)          # one row per (map kind, baseline)
    print(format_rows(rows))
    ssm-bridge faithfulness --num 100 --json f.json   # the same from the command line

For each scene the model captions the image; each object word of the chosen role (the
shape noun by default) that names the right object is scored with every map kind, and
with a seeded random map (the "random" row every map must beat):

    morf, lerf, insertion   normalised AUCs of the deletion / insertion curves
                            (faithfulness.perturbation_curves) under each baseline:
                            "blur" (the attributions' baseline) and "mean" (the mean
                            image of 256 training scenes)
    delta_af                lerf - morf
    pixel_accuracy, miou, mean_ap   segmentation scores against the object's mask

Each value is a mean over scenes of the scene's mean over its scored words, with the
standard deviation over scenes (`<key>_std`); n_words counts the scored words and n_read
those whose curves the baseline can read (the rest have no AUC: faithfulness.MIN_DROP).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import make_scene
from . import faithfulness as fa
from .interpret import _bundle, _check_maps, add_scene_map_args, captioned_scenes, parsed_maps
from .maps import word_maps

BASELINES = ("blur", "mean")
CURVE_KEYS = ("morf", "lerf", "insertion", "delta_af")
SHAPE_KEYS = ("curve_morf", "curve_lerf")  # the normalised curves themselves, for plots
SEGMENT_KEYS = ("pixel_accuracy", "miou", "mean_ap")


def dataset_mean(transform, scene_config, n: int = 256) -> torch.Tensor:
    """The mean model input (3, H, W) over the first n training scenes."""
    images = [transform(make_scene("train", i, scene_config).image) for i in range(n)]
    return torch.stack(images).mean(0)


def check_baselines(baselines) -> None:
    """ValueError unless `baselines` is a non-empty selection of BASELINES."""
    bad = [b for b in baselines if b not in BASELINES]
    if bad or not baselines:
        raise ValueError(f"baselines must be some of {BASELINES}, got {list(baselines)}")


def baseline_inputs(baselines, transform, scene_config) -> dict:
    """{name: what perturbation_curves takes as `baseline`} for names from BASELINES:
    "blur" as is, "mean" the dataset mean (computed only when asked for: 256 scenes)."""
    check_baselines(baselines)
    return {b: dataset_mean(transform, scene_config) if b == "mean" else b for b in baselines}


def collect(pretrained_or_model, n: int = 100, split: str = "test", maps=None, *,
            role: str = "shape", baselines=BASELINES, seed: int = 0, progress: bool = True,
            **bundle_kwargs) -> dict:
    """{(kind, baseline): {key: [values]}} and {kind: {segment key: [values]}} over the
    scored words of the first n scenes of `split` (see the module docstring)."""
    check_baselines(baselines)
    model, tok, transform, cfg = _bundle(pretrained_or_model, **bundle_kwargs)
    maps = [*_check_maps(maps, model), "random"]
    base = baseline_inputs(baselines, transform, cfg)
    curves: dict = {(k, b): {key: [] for key in CURVE_KEYS + SHAPE_KEYS}
                    for k in maps for b in baselines}
    segments: dict = {k: {key: [] for key in SEGMENT_KEYS} for k in maps}
    rng = torch.Generator().manual_seed(seed)
    skipped, word_scene = [0], []  # word_scene: the scene of each scored word, in order
    for scene, a, pairs in captioned_scenes(model, tok, transform, cfg, n, split, role,
                                            skipped, progress, "faithfulness"):
        words = [w for w, _ in pairs]
        word_scene += [scene.seed] * len(words)
        per_kind = {kind: (torch.rand(len(words), a.grid_side, a.grid_side, generator=rng)
                           if kind == "random" else word_maps(a, kind, model, words))
                    for kind in maps}
        for i, (w, j) in enumerate(pairs):
            _score_word(model, a, w, {k: m[i] for k, m in per_kind.items()},
                        scene.objects[j].mask, base, seed, curves, segments)
    return {"curves": curves, "segments": segments, "maps": maps, "baselines": list(baselines),
            "word_scene": word_scene, "images": n - skipped[0], "skipped": skipped[0], "n": n,
            "role": role}


def _score_word(model, a, w: int, maps: dict, mask, base: dict, seed: int, curves: dict,
                segments: dict) -> None:
    """Score word w's map of every kind: segmentation against the mask, then the deletion
    curves of all kinds under each baseline in one batched forward (MoRF and LeRF only:
    the leaderboard reads no random order, its random row is a random map)."""
    for kind, m in maps.items():
        for key, value in fa.segmentation_scores(m, mask).items():
            segments[kind][key].append(value)
    for b, baseline in base.items():
        many = fa.perturbation_curves_many(model, a.image, a.ids, a.word_index[w],
                                           list(maps.values()), baseline=baseline, seed=seed,
                                           orders=("morf", "lerf"))
        for kind, c in zip(maps, many):
            for key in ("morf", "lerf", "insertion"):
                curves[kind, b][key].append(c.auc[key])
            curves[kind, b]["delta_af"].append(c.delta_af)
            for order in ("morf", "lerf"):
                y = c.normalised(order)
                if y is not None:  # an unreadable word has no curve (MIN_DROP)
                    curves[kind, b][f"curve_{order}"].append(y.tolist())


def leaderboard(pretrained_or_model, n: int = 100, split: str = "test", maps=None,
                **kwargs) -> list[dict]:
    """One row per (map kind, baseline): mean and std over scenes of every score (module
    docstring), n_words, n_read, scenes (with a scored word), images (captions scored)
    and skipped (captions whose objects did not match)."""
    return study(pretrained_or_model, n, split, maps, **kwargs)["rows"]


def study(pretrained_or_model, n: int = 100, split: str = "test", maps=None,
          **kwargs) -> dict:
    """{"rows": leaderboard rows, "curves": {kind: {baseline: {"morf" | "lerf": mean
    normalised curve}}}, "fractions": [...], "images", "skipped", "n", "role"}."""
    s = collect(pretrained_or_model, n, split, maps, **kwargs)
    rows, mean_curves = [], {}
    for kind in s["maps"]:
        for b in s["baselines"]:
            row = {"map": kind, "baseline": b}
            scores = {**s["curves"][kind, b], **s["segments"][kind]}
            for key in (*CURVE_KEYS, *SEGMENT_KEYS):
                row[key], row[f"{key}_std"] = over_scenes(scores[key], s["word_scene"])
            row.update(n_words=len(s["word_scene"]), n_read=int(np.isfinite(
                np.asarray(scores["morf"], dtype=np.float64)).sum()),
                scenes=len(set(s["word_scene"])), images=s["images"], skipped=s["skipped"])
            rows.append(row)
            mean_curves.setdefault(kind, {})[b] = {
                o: np.mean(scores[f"curve_{o}"], 0).tolist() if scores[f"curve_{o}"] else []
                for o in ("morf", "lerf")}
    fractions = [k / fa.FRACTIONS for k in range(fa.FRACTIONS + 1)]
    return {"rows": rows, "curves": mean_curves, "fractions": fractions,
            **{k: s[k] for k in ("images", "skipped", "n", "role")}}


def over_scenes(values, word_scene) -> tuple[float, float]:
    """(mean, std) over scenes of each scene's mean over its words (NaN values left out:
    words the baseline cannot read). NaN, NaN when no scene has a value."""
    v = np.asarray(values, dtype=np.float64)
    scenes = np.asarray(word_scene)
    means = [v[scenes == sc][np.isfinite(v[scenes == sc])].mean() for sc in np.unique(scenes)
             if np.isfinite(v[scenes == sc]).any()]
    return (float(np.mean(means)), float(np.std(means))) if means else (float("nan"),) * 2


def format_rows(rows: list[dict]) -> str:
    """The leaderboard as aligned text: mean ± std per score."""
    keys = (*CURVE_KEYS, *SEGMENT_KEYS)
    w = max(len("map"), *(len(r["map"]) for r in rows)) + 2  # decoder_state_norm: 18
    head = f"{'map':<{w}}{'baseline':<9}" + "".join(f"{k:>17}" for k in keys)
    lines = [head]
    for r in rows:
        cells = "".join(f"{r[k]:>9.3f} ±{r[k + '_std']:<6.3f}" for k in keys)
        lines.append(f"{r['map']:<{w}}{r['baseline']:<9}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """ssm-bridge faithfulness: the leaderboard on a checkpoint, as text (and JSON, and the
    mean deletion curves as a plot)."""
    import json
    import sys

    from ..cli import Parser, load_or_exit, writable_file

    p = Parser(prog="ssm-bridge faithfulness", description=__doc__.split("\n")[0])
    add_scene_map_args(p)
    p.add_argument("--plot", type=writable_file,
                   help="write the mean normalised MoRF / LeRF curves per kind (PNG)")
    p.add_argument("--plot-baseline", choices=BASELINES, default="mean",
                   help="whose curves --plot draws")
    args = p.parse_args(argv)
    bundle = load_or_exit(p, args.checkpoint)
    maps = parsed_maps(p, args, bundle.model)
    s = study(bundle, args.num, args.split, maps, role=args.role, seed=args.seed,
              progress=not args.no_progress and sys.stderr.isatty())
    print(format_rows(s["rows"]))
    if args.json:
        args.json.write_text(json.dumps(s, indent=1))
    if args.plot:
        curves_plot(s, args.plot_baseline).savefig(args.plot, dpi=130, bbox_inches="tight")
    return 0


def curves_plot(s: dict, baseline: str = "mean"):
    """The study's mean normalised MoRF and LeRF curves per kind, side by side."""
    from viz.faithfulness import morf_lerf_panels

    morf = {k: [c[baseline]["morf"]] for k, c in s["curves"].items() if c[baseline]["morf"]}
    lerf = {k: [c[baseline]["lerf"]] for k, c in s["curves"].items() if c[baseline]["lerf"]}
    return morf_lerf_panels(morf, lerf, s["fractions"],
                            title=f"deletion curves, {baseline} baseline: mean over words")


def markdown_tables(s: dict, localisation: list[dict] | None = None) -> str:
    """The study as one markdown table per metric group, rows the map kinds, cells mean ±
    std over scenes: deletion under each baseline, then segmentation (with the
    pointing game and energy-in-mask of interpret.localisation_table rows, when given)."""
    rows = s["rows"]
    out = []
    for b in dict.fromkeys(r["baseline"] for r in rows):
        out.append(_table(f"Deletion and insertion, {b} baseline (normalised AUC)",
                          [r for r in rows if r["baseline"] == b],
                          {"MoRF ↓": "morf", "LeRF ↑": "lerf", "insertion ↑": "insertion",
                           "ΔA^F ↑": "delta_af"}))
    first = [r for r in rows if r["baseline"] == rows[0]["baseline"]]  # maps, not curves
    loc = {r["map"]: r for r in localisation or []}
    columns = {"pixel accuracy ↑": "pixel_accuracy", "mIoU ↑": "miou", "mAP ↑": "mean_ap"}
    if loc:  # the localisation table's random baseline is a column of every row
        anyrow = next(iter(loc.values()))
        loc["random"] = {"pointing_game": anyrow["random_pointing_game"],
                         "energy_in_mask": anyrow["random_energy"]}
        first = [{**r, **{k: loc.get(r["map"], {}).get(k, float("nan"))
                          for k in ("pointing_game", "energy_in_mask")}} for r in first]
        columns.update({"pointing game ↑": "pointing_game", "energy in mask ↑": "energy_in_mask"})
    out.append(_table("Segmentation against the named object's mask", first, columns))
    return "\n\n".join(out)


def _table(title: str, rows: list[dict], columns: dict[str, str]) -> str:
    def cell(r, key):
        v, sd = r.get(key, float("nan")), r.get(f"{key}_std")
        return f"{v:.3f}" if sd is None or not np.isfinite(sd) else f"{v:.3f} ± {sd:.3f}"

    r0 = rows[0]
    read = f", {r0['n_read']} with readable curves" if "morf" in columns.values() else ""
    head = (f"**{title}** ({r0['n_words']} words{read} in {r0['scenes']} scenes; mean ± "
            "std over scenes)\n\n")
    lines = ["| map | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {r['map']} | " + " | ".join(cell(r, k) for k in columns.values()) + " |"
              for r in rows]
    return head + "\n".join(lines)
