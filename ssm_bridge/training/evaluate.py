"""Evaluation on the scene world: exact match, per-attribute accuracy, BLEU-4, CIDEr, VQA.

    python -m ssm_bridge.training.evaluate --checkpoint shapes-tiny --split test --num 1000 \
        [--json out.json]

Per-attribute accuracy reads the predicted caption back into objects
("a <size> <colour> <shape>" joined by relation words) and compares them with the
ground truth position by position: colour, shape and size over every true object,
relation over every true neighbour pair, count over captions. BLEU-4 and CIDEr come
from pycocoevalcap's pure-Python scorers (no Java).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ..core.layers import eval_mode
from ..data import SceneConfig, make_scene
from ..data.captions import PHRASE_ORDER, parse_caption
from ..data.captions import ParsedCaption as ParsedCaption  # re-exported: the parse result


def caption_metrics(preds: list[str], scenes) -> dict[str, float]:
    """Exact match and per-attribute accuracies of predicted captions against scenes."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred, scene in zip(preds, scenes):
        hits["exact_match"].append(pred == scene.caption)
        p, t = parse_caption(pred), parse_caption(scene.caption)
        hits["count"].append(len(p.objects) == len(t.objects))
        for k, true_obj in enumerate(t.objects):
            pred_obj = p.objects[k] if k < len(p.objects) else ("", "", "")
            for a, name in enumerate(PHRASE_ORDER):
                hits[name].append(pred_obj[a] == true_obj[a])
        for k, rel in enumerate(t.relations):
            hits["relation"].append(k < len(p.relations) and p.relations[k] == rel)
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


def text_metrics(preds: list[str], refs: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D-style CIDEr (pycocoevalcap) of preds against refs."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [p if p.strip() else "<empty>"] for i, p in enumerate(preds)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def _images(scenes, transform, device) -> torch.Tensor:
    return torch.stack([transform(s.image) for s in scenes]).to(device)  # (B, 3, H, W)


@torch.no_grad()
def generate_captions(model, tokenizer, transform, scenes, batch_size: int = 64,
                      progress: bool = False) -> list[str]:
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(scenes), batch_size), disable=not progress, desc="captions"):
        chunk = scenes[i : i + batch_size]
        ids = model.generate(_images(chunk, transform, device),
                             max_length=model.config.max_seq_length, temperature=0)
        out += [tokenizer.decode(row.tolist()) for row in ids]
    return out


@torch.no_grad()
def vqa_accuracy(model, tokenizer, transform, scenes, batch_size: int = 64,
                 progress: bool = False) -> dict[str, float]:
    """Greedy answers to every question of every scene, prompted with [BOS] + question.
    Questions of equal token length are batched together."""
    device = next(model.parameters()).device
    items = [(s, q, a, kind) for s in scenes for q, a, kind in s.qa]
    by_len: dict[int, list] = defaultdict(list)
    for it in items:
        by_len[len(tokenizer.encode(it[1], eos=False))].append(it)
    hits: dict[str, list[bool]] = defaultdict(list)
    groups = [(n, g[i : i + batch_size]) for n, g in by_len.items()
              for i in range(0, len(g), batch_size)]
    for n, chunk in tqdm(groups, disable=not progress, desc="vqa"):
        prompt = torch.tensor([tokenizer.encode(q, eos=False) for _, q, _, _ in chunk])
        max_len = min(model.config.max_seq_length, n + 12)
        ids = model.generate(_images([c[0] for c in chunk], transform, device),
                             max_length=max_len, temperature=0, prompt=prompt.to(device))
        for (_, _, answer, kind), row in zip(chunk, ids):
            ok = tokenizer.decode(row[n:].tolist()) == answer
            hits["vqa"].append(ok)
            hits[f"vqa_{kind}"].append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


def evaluate(model, tokenizer, transform, split: str = "test", num: int = 1000,
             scene_config: SceneConfig | None = None, vqa: bool = True,
             batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """All metrics on scenes 0..num-1 of `split`."""
    scenes = [make_scene(split, i, scene_config) for i in range(num)]
    with eval_mode(model):
        preds = generate_captions(model, tokenizer, transform, scenes, batch_size, progress)
        metrics = caption_metrics(preds, scenes)
        metrics.update(text_metrics(preds, [[s.caption, *s.paraphrases] for s in scenes]))
        if vqa:
            metrics.update(vqa_accuracy(model, tokenizer, transform, scenes, batch_size,
                                        progress))
    metrics["num"] = num
    return metrics


def format_table(metrics: dict[str, float], title: str = "") -> str:
    lines = [title] if title else []
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        value = f"{v:.0f}" if k == "num" else (f"{100 * v:6.2f} %" if v <= 1 and k != "cider"
                                               else f"{v:8.3f}")
        lines.append(f"{k:<{width}}  {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..cli import Parser, int_at_least, load_or_exit, writable_file
    from ..data import SPLITS

    p = Parser(prog="ssm-bridge eval", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--num", type=int_at_least(1), default=1000)
    p.add_argument("--batch-size", type=int_at_least(1), default=100)
    p.add_argument("--no-vqa", action="store_true")
    p.add_argument("--json", type=writable_file, help="also write the metrics here (checked "
                   "before the evaluation runs)")
    args = p.parse_args(argv)
    bundle = load_or_exit(p, args.checkpoint)
    metrics = evaluate(bundle.model, bundle.tokenizer, bundle.transform, args.split, args.num,
                       bundle.scene_config, vqa=not args.no_vqa, batch_size=args.batch_size,
                       progress=sys.stderr.isatty())
    print(format_table(metrics, f"{args.checkpoint} on {args.num} {args.split} scenes"))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
