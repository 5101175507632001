"""Localisation table: do the per-word maps point at the objects the words name?

    python -m ssm_bridge.interp.interpret --checkpoint shapes-tiny --num 100 --split test \\
        [--maps cross_attention,ig,...] [--json PATH] [--csv PATH] [--plot PATH.png]
    ssm-bridge interpret ...                                    (the same)

For each of N scene-world images: caption it greedily (ssm_bridge.interp.maps.analyse), match
the generated object phrases to the ground-truth objects (localization.object_words; a
caption whose objects differ from the truth is skipped and counted), and score each map
kind of each object's word (the shape noun by default) against that object's pixel mask
with the pointing game and energy-in-mask (ssm_bridge.interp.localization). A seeded random map
per (word, object) pair, scored the same way, is the baseline.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from . import localization as loc
from .maps import MAP_KINDS, analyse, model_kinds, word_maps

COLUMNS = ("map", "pointing_game", "random_pointing_game", "pointing_ratio",
           "energy_in_mask", "random_energy", "energy_ratio", "n", "images", "skipped")


def _bundle(pretrained_or_model, tokenizer=None, transform=None, scene_config=None):
    """(model, tokenizer, transform, scene_config) from a Pretrained, a checkpoint name or
    folder, or a bare model (then the scene-world defaults at the model's image size)."""
    from ..data import ImageTransform, SceneConfig, Tokenizer
    from ..training.pretrained import Pretrained, load_pretrained

    p = pretrained_or_model
    if isinstance(p, (str, Path)):
        p = load_pretrained(p)
    if isinstance(p, Pretrained):
        return (p.model, tokenizer or p.tokenizer, transform or p.transform,
                scene_config or p.scene_config or SceneConfig(img_size=p.model.config.img_size))
    if not hasattr(p, "generate") or not hasattr(p, "config"):
        raise ValueError(f"expected a Pretrained bundle, a checkpoint name or an EnhancedVLM, "
                         f"got {type(p).__name__}")
    size = p.config.img_size
    scene_config = scene_config or SceneConfig(img_size=size)
    return (p, tokenizer or Tokenizer.for_scenes(scene_config),
            transform or ImageTransform(img_size=size), scene_config)


def _check_maps(maps, model=None) -> list[str]:
    """maps (a kind, kinds, or None: every kind `model` has) as a checked list; with a
    model, kinds its parts do not allow are refused too (maps.model_kinds)."""
    if maps is None:
        return list(model_kinds(model))
    maps = [maps] if isinstance(maps, str) else list(maps)
    bad = [m for m in maps if m not in MAP_KINDS]
    if bad or not maps:
        raise ValueError(f"unknown map kinds {bad}; choose from {', '.join(MAP_KINDS)}")
    missing = [m for m in maps if model is not None and m not in model_kinds(model)]
    if missing:
        raise ValueError(f"this model has no {missing} maps; it has "
                         f"{', '.join(model_kinds(model))}")
    return maps


def collect_scores(pretrained_or_model, n: int = 100, split: str = "test",
                   maps=None, progress: bool = True, *, role: str = "shape",
                   layer: int | None = None, **bundle_kwargs) -> dict:
    """Per-pair scores: {"hits": {kind: [bool]}, "energy": {kind: [float]}, "masks":
    [(H, W) bool], "grid": (g, g), "images": scored images, "skipped": mismatched ones}."""
    model, tok, transform, cfg = _bundle(pretrained_or_model, **bundle_kwargs)
    maps = _check_maps(maps, model)
    hits, energy = defaultdict(list), defaultdict(list)
    masks, grid, skipped = [], None, [0]
    for scene, a, pairs in captioned_scenes(model, tok, transform, cfg, n, split, role,
                                            skipped, progress, "localisation"):
        grid = (a.grid_side, a.grid_side)
        pair_masks = [scene.objects[j].mask for _, j in pairs]
        masks += pair_masks
        for kind in maps:
            for m, mask in zip(word_maps(a, kind, model, [w for w, _ in pairs], layer=layer),
                               pair_masks):
                hits[kind].append(loc.pointing_game(m, mask))
                energy[kind].append(loc.energy_in_mask(m, mask))
    return {"hits": hits, "energy": energy, "masks": masks, "grid": grid,
            "images": n - skipped[0], "skipped": skipped[0], "maps": maps}


def captioned_scenes(model, tok, transform, cfg, n: int, split: str, role: str,
                     skipped: list[int], progress: bool = True, what: str = "scenes"):
    """(scene, analysis, [(word index, object index)]) for the first n scenes of `split`
    whose caption's object phrases match the scene's; skipped[0] counts the others."""
    from ..data import make_scene

    for i in tqdm(range(n), desc=f"{what} ({split})", disable=not progress):
        scene = make_scene(split, i, cfg)
        a = analyse(model, transform(scene.image), tokenizer=tok)
        pairs = loc.object_words(scene, a.words, role)
        if pairs is None:
            skipped[0] += 1
            continue
        yield scene, a, pairs


def localisation_table(pretrained_or_model, n: int = 100, split: str = "test",
                       maps=None, seed: int = 0, progress: bool = True,
                       **kwargs) -> list[dict]:
    """One row per map kind over the first `n` scenes of `split`: pointing_game,
    energy_in_mask, the random baseline's random_pointing_game / random_energy (one random
    map per pair, generator seeded with `seed`), their ratios, n (scored word-object
    pairs), images (captions whose objects matched) and skipped (those that did not).
    kwargs: role ("shape" | "colour" | "size": which word of each object phrase), layer
    (bridge layer of delta / gate / state_norm; None: their mean), tokenizer, transform,
    scene_config (for a bare model)."""
    s = collect_scores(pretrained_or_model, n, split, maps, progress, **kwargs)
    rand = (loc.random_scores(s["masks"], s["grid"], seed) if s["masks"]
            else {"pointing_game": float("nan"), "energy_in_mask": float("nan")})
    return [_row(kind, s, rand) for kind in s["maps"]]


def _row(kind: str, s: dict, rand: dict) -> dict:
    pg, en = _mean(s["hits"][kind]), _mean(s["energy"][kind])
    rpg, ren = rand["pointing_game"], rand["energy_in_mask"]
    return {"map": kind, "pointing_game": pg, "random_pointing_game": rpg,
            "pointing_ratio": _ratio(pg, rpg), "energy_in_mask": en, "random_energy": ren,
            "energy_ratio": _ratio(en, ren), "n": len(s["hits"][kind]),
            "images": s["images"], "skipped": s["skipped"]}


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b else float("nan")


def format_table(rows: list[dict]) -> str:
    """The rows as aligned text, one line per map kind."""
    head = ["map", "pointing", "random", "ratio", "energy", "random", "ratio", "n"]
    keys = ["map", "pointing_game", "random_pointing_game", "pointing_ratio",
            "energy_in_mask", "random_energy", "energy_ratio", "n"]
    cells = [[r[k] if isinstance(r[k], (str, int)) else f"{r[k]:.3f}" for k in keys]
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *cells)]
    lines = ["  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)
                       for j, (c, w) in enumerate(zip(line, widths)))
             for line in [head, *cells]]
    extra = (f"\n{rows[0]['images']} images scored, {rows[0]['skipped']} skipped (caption "
             "objects differ from the truth)") if rows else ""
    return "\n".join(lines) + extra


def write_outputs(rows: list[dict], json_path=None, csv_path=None, plot_path=None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    if plot_path:
        from viz.tables import localisation_bars

        localisation_bars(rows, metric="pointing_game").savefig(plot_path, dpi=150)


def add_scene_map_args(p, num: int = 100) -> None:
    """The options of the commands that caption test scenes and score maps per word."""
    from ..cli import int_at_least, writable_file
    from ..data import SPLITS

    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--num", type=int_at_least(1), default=num,
                   help="scenes to caption and score")
    p.add_argument("--split", default="test", choices=SPLITS)
    add_maps_arg(p)
    p.add_argument("--role", default="shape", choices=loc.ROLES,
                   help="which word of each object phrase is scored")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of the random maps and re-initialised weights")
    p.add_argument("--json", type=writable_file, help="write the rows as JSON")
    p.add_argument("--no-progress", action="store_true")


def add_maps_arg(p) -> None:
    """--maps, read by `parsed_maps` (which checks the kinds against the model)."""
    p.add_argument("--maps", default="",
                   help=f"comma-separated kinds from {','.join(MAP_KINDS)} (default: every "
                        "kind the checkpoint's model has)")


def parsed_maps(p, args, model) -> list[str]:
    """args.maps as a checked list of the kinds `model` has (none given: all of them), or
    the parser's one-line error."""
    maps = [m.strip() for m in args.maps.split(",") if m.strip()]
    try:
        return _check_maps(maps or None, model)
    except ValueError as e:
        p.error(f"argument --maps: {e}")


def main(argv: list[str] | None = None) -> int:
    from ..cli import Parser, load_or_exit, writable_file

    p = Parser(prog="ssm-bridge interpret", description=__doc__.split("\n")[0])
    add_scene_map_args(p)
    p.add_argument("--csv", type=writable_file, help="write the rows as CSV")
    p.add_argument("--plot", type=writable_file,
                   help="write a bar chart of the pointing game (PNG)")
    args = p.parse_args(argv)
    bundle = load_or_exit(p, args.checkpoint)
    maps = parsed_maps(p, args, bundle.model)
    rows = localisation_table(bundle, args.num, args.split, maps, args.seed,
                              not args.no_progress and sys.stderr.isatty(), role=args.role)
    print(format_table(rows))
    write_outputs(rows, args.json, args.csv, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
