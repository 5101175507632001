"""Sanity checks for every map kind (Adebayo et al. 2018), per caption word, over N scenes.

    s = cascade("shapes-tiny", n=20)                       # model-parameter randomisation
    s["rho"]["ig"]                                         # [[ρ per word] per group]
    d = data_randomisation("shapes-tiny", "runs/shuffled", n=20)
    rows = summarise(s, d)                                 # one row per map kind
    ssm-bridge sanity --num 20 --shuffled runs/shuffled --plot cascade.png

Both compare each map of the trained model with the same kind of map from another model,
for the same image and the *same caption*: the trained model's greedy caption, read by
the other model teacher-forced (maps.analyse(ids=...)). The score is Spearman's rank
correlation ρ over the patch grid, per scored word (the object words of `role` in
captions whose objects match the scene, as in the leaderboard):

    cascade              groups of layers are re-initialised cumulatively from the logits
                         down (faithfulness.cascade_groups / cascade_steps); one ρ per
                         group and word. A map that explains the model loses its
                         correlation as the layers it reads are re-drawn.
    data randomisation   the model trained briefly on shuffled captions (train with
                         --shuffle_captions=true): it learned the captions' language but
                         never which caption goes with which image.
    flagged              |mean ρ| >= faithfulness.FLAG_RHO after the whole model is random
                         (faithfulness.flag_unfaithful): the map does not explain the model.

Word-independent kinds (the bridge's delta / gate / state_norm) read only the vision and
bridge layers, so they cannot move before the cascade reaches the bridge: that is the
test working, not failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import faithfulness as fa
from .interpret import _bundle, _check_maps, captioned_scenes
from .maps import analyse, word_maps


@dataclass
class Reference:
    """One scored caption of the trained model: its analysis, the scored word indices and
    the trained maps {kind: (words, g, g)}."""

    analysis: object
    words: list[int]
    maps: dict[str, torch.Tensor]


def references(model, tok, transform, cfg, n: int, split: str, maps: list[str], role: str,
               progress: bool) -> tuple[list[Reference], int]:
    """The trained model's maps for the scored words of the first n scenes; skipped count."""
    skipped = [0]
    refs = []
    for _, a, pairs in captioned_scenes(model, tok, transform, cfg, n, split, role, skipped,
                                        progress, "trained maps"):
        words = [w for w, _ in pairs]
        refs.append(Reference(a, words, {k: word_maps(a, k, model, words) for k in maps}))
    return refs, skipped[0]


def correlations(other, refs: list[Reference], maps: list[str], tok, bar=None
                 ) -> dict[str, list[float]]:
    """{kind: [ρ per scored word]} of `other`'s maps against the references, each on the
    reference's own caption (teacher-forced)."""
    out: dict[str, list[float]] = {k: [] for k in maps}
    for ref in refs:
        b = analyse(other, ref.analysis.image, tokenizer=tok, ids=ref.analysis.ids)
        for kind in maps:
            theirs = word_maps(b, kind, other, ref.words)
            out[kind] += [fa.spearman(x, y) for x, y in zip(ref.maps[kind], theirs)]
        if bar is not None:
            bar.update(1)
    return out


def cascade(pretrained_or_model, n: int = 20, split: str = "test", maps=None, *,
            role: str = "shape", seed: int = 0, progress: bool = True,
            **bundle_kwargs) -> dict:
    """{"groups": [name], "rho": {kind: [[ρ per word] per group]}, "maps", "images",
    "skipped", "n"}: the cascade over every map kind (module docstring)."""
    model, tok, transform, cfg = _bundle(pretrained_or_model, **bundle_kwargs)
    maps = _check_maps(maps, model)
    refs, skipped = references(model, tok, transform, cfg, n, split, maps, role, progress)
    groups = [name for name, _ in fa.cascade_groups(model)]
    rho: dict[str, list[list[float]]] = {k: [] for k in maps}
    with tqdm(total=len(groups) * len(refs), desc="cascade", disable=not progress) as bar:
        for _, work in fa.cascade_steps(model, seed):
            for kind, values in correlations(work, refs, maps, tok, bar).items():
                rho[kind].append(values)
    return {"groups": groups, "rho": rho, "maps": maps, "images": len(refs),
            "skipped": skipped, "n": n, "role": role}


def data_randomisation(pretrained_or_model, shuffled, n: int = 20, split: str = "test",
                       maps=None, *, role: str = "shape", progress: bool = True) -> dict:
    """{"rho": {kind: [ρ per word]}, ...}: the trained model's maps against those of
    `shuffled` (a model, a Pretrained, or a checkpoint name or folder), trained on
    shuffled captions (module docstring)."""
    model, tok, transform, cfg = _bundle(pretrained_or_model)
    other = _bundle(shuffled)[0]
    if other.config.vocab_size != model.config.vocab_size or \
            other.config.img_size != model.config.img_size:
        raise ValueError("the shuffled-caption model must share the trained model's "
                         "vocabulary and image size; train it with the same preset")
    maps = _check_maps(maps, model)
    _check_maps(maps, other)
    refs, skipped = references(model, tok, transform, cfg, n, split, maps, role, progress)
    with tqdm(total=len(refs), desc="shuffled-caption model", disable=not progress) as bar:
        rho = correlations(other, refs, maps, tok, bar)
    return {"rho": rho, "maps": maps, "images": len(refs), "skipped": skipped, "n": n,
            "role": role}


def _stats(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]  # a constant map has no ranks: its ρ is NaN, counted apart
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def summarise(cascade_result: dict | None = None, data_result: dict | None = None
              ) -> list[dict]:
    """One row per map kind: rho_<group> (mean over words) for every cascade group,
    rho_full / rho_full_std (the whole model random), flagged, and rho_shuffled /
    rho_shuffled_std (the shuffled-caption model) when given."""
    results = [r for r in (cascade_result, data_result) if r is not None]
    if not results:
        raise ValueError("give a cascade result, a data-randomisation result, or both")
    rows = []
    for kind in results[0]["maps"]:
        row: dict = {"map": kind}
        if cascade_result is not None:
            per_group = cascade_result["rho"][kind]
            for name, values in zip(cascade_result["groups"], per_group):
                row[f"rho_{name}"] = _stats(values)[0]
            row["rho_full"], row["rho_full_std"] = _stats(per_group[-1])
            row["flagged"] = fa.flag_unfaithful([("all", row["rho_full"])])
        if data_result is not None and kind in data_result["rho"]:
            row["rho_shuffled"], row["rho_shuffled_std"] = _stats(data_result["rho"][kind])
        rows.append(row)
    return rows


def cascade_curves(cascade_result: dict) -> dict[str, list[tuple[str, float]]]:
    """{kind: [(group, mean ρ)]}: the input of viz.faithfulness.cascade_plot."""
    return {kind: [(g, _stats(v)[0]) for g, v in zip(cascade_result["groups"], per_group)]
            for kind, per_group in cascade_result["rho"].items()}


def format_rows(rows: list[dict]) -> str:
    """The summary as aligned text: ρ after the full cascade, the flag, ρ shuffled."""
    w = max(len("map"), *(len(r["map"]) for r in rows)) + 2
    lines = [f"{'map':<{w}}{'rho_full':>18}{'flagged':>9}{'rho_shuffled':>18}"]
    for r in rows:
        full = (f"{r['rho_full']:>9.3f} ±{r['rho_full_std']:<6.3f}" if "rho_full" in r
                else f"{'-':>17}")
        shuf = (f"{r['rho_shuffled']:>9.3f} ±{r['rho_shuffled_std']:<6.3f}"
                if "rho_shuffled" in r else f"{'-':>17}")
        flag = "yes" if r.get("flagged") else "no" if "flagged" in r else "-"
        lines.append(f"{r['map']:<{w}}{full} {flag:>8} {shuf}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """ssm-bridge sanity: the cascade (and the shuffled-caption model) on a checkpoint."""
    import json
    import sys

    from ..cli import Parser, load_or_exit, writable_file
    from .interpret import add_scene_map_args, parsed_maps

    p = Parser(prog="ssm-bridge sanity", description=__doc__.split("\n")[0])
    add_scene_map_args(p, num=20)
    p.add_argument("--shuffled", help="checkpoint (name or folder) of the model trained on "
                                      "shuffled captions (--shuffle_captions=true)")
    p.add_argument("--no-cascade", action="store_true", help="only the shuffled-caption check")
    p.add_argument("--plot", type=writable_file, help="write the cascade plot (PNG)")
    args = p.parse_args(argv)
    if args.no_cascade and not args.shuffled:
        p.error("--no-cascade leaves nothing to run; give --shuffled DIR too")
    bundle = load_or_exit(p, args.checkpoint)
    shuffled = load_or_exit(p, args.shuffled) if args.shuffled else None
    maps = parsed_maps(p, args, bundle.model)
    progress = not args.no_progress and sys.stderr.isatty()
    kw = dict(role=args.role, progress=progress)
    c = None if args.no_cascade else cascade(bundle, args.num, args.split, maps,
                                             seed=args.seed, **kw)
    try:
        d = shuffled and data_randomisation(bundle, shuffled, args.num, args.split, maps, **kw)
    except ValueError as e:
        p.error(f"argument --shuffled: {e}")
    rows = summarise(c, d or None)
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cascade": c, "shuffled": d or None},
                                        indent=1))
    if args.plot and c is not None:
        from viz.faithfulness import cascade_plot

        shuffled_rho = {r["map"]: r["rho_shuffled"] for r in rows if "rho_shuffled" in r}
        cascade_plot(cascade_curves(c), shuffled=shuffled_rho or None).savefig(
            args.plot, dpi=130, bbox_inches="tight")
    return 0
