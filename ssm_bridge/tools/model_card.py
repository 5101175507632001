"""MODEL_CARD.md for a shipped checkpoint, written from the files beside it.

    python -m ssm_bridge.tools.model_card ssm_bridge/checkpoints/shapes-tiny \
        --command "python -m ssm_bridge.training.train --preset=shapes-tiny ..." \
        --machine "2-core ..."

Every figure in the card comes from `training_record.json` (the run's speed, from its
metrics.jsonl) and `metrics.json` (`ssm-bridge eval` on the test and compositional
splits), so the card cannot drift from what was measured: a test re-reads both and
checks the card quotes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.captions import CAPTION_ATTRIBUTES
from ..training.checkpoint import atomic_write


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def minutes(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.1f} min"


# Each shipped checkpoint: what it is (the card's first words) and the project's targets
# for it (the issue that asked for it).
CARDS = {
    "shapes-tiny": {
        "what": "A tiny vision-language model with a selective-SSM bridge",
        "targets": {"exact_match": 0.98, "attribute": 0.99, "minutes_to_95": 15.0},
    },
    "shapes-all-ssm": {
        "what": "A tiny attention-free vision-language model (Vision Mamba encoder, SSM bridge,"
                "\nMamba decoder)",
        "targets": {"exact_match": 0.97, "train_minutes": 45.0, "size_mb": 20.0},
    },
}
TARGETS = CARDS["shapes-tiny"]["targets"]


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(record: dict, test: dict, goals: dict = TARGETS,
            size_mb: float | None = None) -> list[str]:
    """The shipped-checkpoint targets `goals`, each marked met or not met."""
    lines = []
    if "exact_match" in goals:
        lines.append(f"- exact-match >= {pct(goals['exact_match'])}: {pct(test['exact_match'])}"
                     f", {_mark(test['exact_match'] >= goals['exact_match'])}")
    if "attribute" in goals:
        worst = min(CAPTION_ATTRIBUTES, key=lambda a: test.get(a, 1.0))
        lines.append(f"- every attribute >= {pct(goals['attribute'])}: lowest is {worst} at "
                     f"{pct(test[worst])}, {_mark(test[worst] >= goals['attribute'])}")
    if "minutes_to_95" in goals:
        m95 = record["minutes_to_95"]
        lines.append(f"- 95 % val exact-match within {goals['minutes_to_95']:.0f} min: "
                     f"{minutes(m95)}, {_mark(m95 is not None and m95 <= goals['minutes_to_95'])}")
    if "train_minutes" in goals:
        m = record["train_minutes"]
        lines.append(f"- trains within {goals['train_minutes']:.0f} min on the 2-core machine: "
                     f"{minutes(m)}, {_mark(m <= goals['train_minutes'])}")
    if "size_mb" in goals and size_mb is not None:
        lines.append(f"- at most {goals['size_mb']:.0f} MB: {size_mb:.1f} MB, "
                     f"{_mark(size_mb <= goals['size_mb'])}")
    return [*lines, "",
            "docs/training-notes.md records the runs behind this checkpoint and what to try next."]


def render(name: str, command: str, machine: str, record: dict, metrics: dict,
           config: dict, size_mb: float | None = None) -> str:
    """The card of checkpoint `name` (a CARDS key; others get shapes-tiny's description and
    targets); size_mb: the folder's size, for a size target."""
    card = CARDS.get(name, CARDS["shapes-tiny"])
    test, comp = metrics["test"], metrics.get("comp_test")
    rows = "\n".join(f"| {a} | {pct(test[a])} |" for a in CAPTION_ATTRIBUTES if a in test)
    params = metrics.get("parameters")
    lines = [
        f"# Model card: `{name}`",
        "",
        f"{card['what']}, trained on the scene world",
        "that `ssm_bridge.data` generates (64 px images of 1-3 coloured shapes). It exists so",
        "the demo and the notebooks have a model that really captions, offline.",
        "",
        "## Training",
        "",
        "```",
        command,
        "```",
        "",
        f"- Machine: {machine}",
        f"- Parameters: {params:,}" if params else "- Parameters: see config.json",
        f"- Steps: {record['steps']}, samples seen: {record['samples']:,}",
        f"- Wall time (optimizer steps, evaluation excluded): {minutes(record['train_minutes'])}",
        f"- Minutes to 95 % val exact-match (200 val scenes): {minutes(record['minutes_to_95'])}"
        f" (step {record['step_to_95']})",
        f"- Minutes to 98 % val exact-match: {minutes(record['minutes_to_98'])}",
        "",
        f"## Metrics on {test['num']:.0f} held-out test scenes (greedy)",
        "",
        f"Exact-match caption accuracy: **{pct(test['exact_match'])}**; "
        f"BLEU-4 {test['bleu4']:.3f}, CIDEr {test['cider']:.3f}.",
        "",
        "| attribute | accuracy |",
        "|---|---|",
        rows,
    ]
    if "vqa" in test:
        lines += ["", f"VQA accuracy: {pct(test['vqa'])} (trained on captions only: it is not "
                  "a question answerer)."]
    if comp:
        lines += ["", f"## Compositional split ({comp['num']:.0f} scenes)", "",
                  "Scenes whose shape-colour pairs were held out of training "
                  f"({', '.join(' '.join(reversed(p)) for p in config.get('holdout', []))}):",
                  f"exact-match {pct(comp['exact_match'])}, shape {pct(comp['shape'])}, "
                  f"colour {pct(comp['colour'])}, against {pct(test['exact_match'])} "
                  "exact-match on the test split: the gap is what the unseen pairs cost."]
    lines += ["", "## Targets", "", *targets(record, test, card["targets"], size_mb)]
    lines += ["", "## Files", "",
              "config.json + model.safetensors (weights, no pickle), tokenizer.json, "
              "preprocess.json, scenes.json (the scene world it was trained on), "
              "training_record.json, metrics.json.", ""]
    return "\n".join(lines)


def folder_mb(directory: str | Path) -> float:
    """Size of a checkpoint folder's files in MB (2**20 bytes), its card excluded."""
    files = [f for f in Path(directory).iterdir() if f.is_file() and f.name != "MODEL_CARD.md"]
    return sum(f.stat().st_size for f in files) / 2**20


def write_model_card(directory: str | Path, command: str, machine: str) -> Path:
    d = Path(directory)
    record = json.loads((d / "training_record.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())
    scenes = json.loads((d / "scenes.json").read_text()) if (d / "scenes.json").is_file() else {}
    text = render(d.name, command, machine, record, metrics, scenes, folder_mb(d))
    atomic_write(d / "MODEL_CARD.md", lambda p: Path(p).write_text(text))
    return d / "MODEL_CARD.md"


def measure(directory: str | Path, num_test: int = 1000, num_comp: int = 500) -> Path:
    """Evaluate a checkpoint on the test and compositional splits into metrics.json."""
    from ..training.evaluate import evaluate
    from ..training.pretrained import load_pretrained

    p = load_pretrained(directory)
    out = {"parameters": p.model.num_parameters()}
    for split, num in (("test", num_test), ("comp_test", num_comp)):
        out[split] = evaluate(p.model, p.tokenizer, p.transform, split, num, p.scene_config,
                              progress=sys.stderr.isatty())
    d = Path(directory)
    atomic_write(d / "metrics.json", lambda f: Path(f).write_text(json.dumps(out, indent=2)))
    return d / "metrics.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssm_bridge.tools.model_card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--machine", required=True, help="where it ran, e.g. '2-core Xeon'")
    ap.add_argument("--measure", action="store_true", help="(re)write metrics.json first")
    args = ap.parse_args(argv)
    if args.measure:
        measure(args.directory)
    print(write_model_card(args.directory, args.command, args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
