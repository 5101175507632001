"""Ablation study: bridge variants (and decoder / vision variants), one budget, seeds.

    python -m ssm_bridge.tools.ablate [--variants ssm,ssm_lti,seed_ssm,mlp,resampler,linear]
        [--seeds 0,1,2] [--steps N] [--out docs/ablation] [--runs runs/ablation]
        [--preset shapes-tiny] [--test_num 500] [--watch 500] [--workers 4] [--force | --report]
        [--scenes.min_objects=3 --scenes.max_objects=5 ...] [--lr=... --batch_size=...]
        [--model.<field>=...]

A variant is a name of VARIANTS: a bridge type alone (ViT -> that bridge -> transformer
decoder), or one with "+" that changes the other ends too: `mlp+mamba` (ViT -> MLP -> Mamba
decoder, Cobra-style), `ssm+mamba`, `vim+ssm+mamba` (all-SSM: Vision Mamba -> SSM bridge ->
Mamba decoder). Issue 17's comparison, at one longer budget for every row:

    python -m ssm_bridge.tools.ablate --variants ssm,mlp,mlp+mamba,ssm+mamba,vim+ssm+mamba \
        --steps N --out docs/ablation-all-ssm --runs runs/ablation-all-ssm

Its staged form trains each scene's caption alone for the first steps, then the mixed task
(--caption_steps, TrainConfig.caption_steps; docs/ablation.md, "Session 14"):

    python -m ssm_bridge.tools.ablate --variants ... --steps 6000 --caption_steps=3000 \
        --out docs/ablation-staged --runs runs/ablation-staged

Each (variant, seed) run trains the variant's model fields with the trainer
(ssm_bridge.training.trainer) under the same budget: the preset's TrainConfig (batch, lr,
schedule) with the study's defaults and the given overrides, on scenes where order and
memory matter. The study's defaults (STUDY_TRAIN, STUDY_MODEL, STUDY_SCENES): 2400 steps
of batch 32 on 30 000 scenes, the mixed caption + VQA task, the shapes-tiny model at
width 96, and 3-5 objects per 64 px scene drawn plainly (four shapes and colours, no
hand-drawn fills, rotation or noise) so that counting, relations and order over up to
five objects are what is hard; any of them can be overridden on the command line. The
published study (docs/ablation.md) ran as two halves side by side, one thread each:

    python -m ssm_bridge.tools.ablate --variants ssm,mlp,linear --threads=1 &
    python -m ssm_bridge.tools.ablate --variants ssm_lti,seed_ssm,resampler --threads=1
    python -m ssm_bridge.tools.ablate --threads=1   # reuses all 18 runs, writes the full table

Then it measures, per run:

    exact_match, colour, shape, size, relation, count, bleu4, cider, vqa, vqa_<kind>
                            training.evaluate.evaluate on --test_num scenes of --test_split
    params_bridge, params_total, media_tokens (L', the decoder's image prefix)
    train_samples_per_s     samples / seconds in optimizer steps (trainer.train_seconds),
                            leaving out the first log interval when there are two or more
    latency_ms              one forward pass, batch 1 (image + a caption), median of repeats
    bridge_latency_ms       the bridge alone on the ViT tokens, batch 1, median of repeats
    decode_ms_per_token     one decoding step, batch 1, at the longest caption the model
                            allows (median of its last 10 steps)

and, while it trains, every --watch steps the accuracy of its captions of 100 val scenes
(when it began to read colour: leaving the loss plateau is not enough, see escape_table).
It writes into --out: results.csv (one row per run), results.md (mean ± std over seeds,
the command, the machine, when each run left the plateau), study.json (the same facts for
code to read), ablation.png (viz.ablation.plot_ablation), curves.csv + curves.png (every
run's logged training loss; viz.ablation.plot_ablation_curves), watch.csv + watch.png (the
watched val captions; viz.ablation.plot_ablation_watch), and
runs/VARIANT-seedK.json (each finished run's budget, results, curves and machine, so a
clone continues the study). Run folders (checkpoint, metrics.jsonl, loss curve,
result.json) go under --runs; a run whose result.json or record matches the budget is
reused, so an interrupted study continues where it stopped (--force retrains). A study
that takes several sittings shows where it stands with --report: the outputs of the runs
recorded so far, results.md naming those still to train, nothing trained.

The training scenes are drawn once for the whole study (`prepare_data`, with
`ssm_bridge.training.train.build_data`) and shared by every run; `make_trainer` builds each
run's model and Trainer with `ssm_bridge.training.train.build` on that shared data.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import BRIDGE_TYPES, VLMConfig
from ..data import make_scene
from ..data.captions import SIZES
from ..model import EnhancedVLM
from ..training.checkpoint import atomic_write
from ..training.evaluate import evaluate
from ..training.train import Data, build, build_data
from ..training.train_config import (
    TRAIN_PRESETS,
    TrainConfig,
    build_train_config,
    parse_overrides,
    scene_config,
)
from ..training.trainer import Trainer, read_metrics

# The study's defaults, chosen so that every variant leaves the language-prior plateau
# within the budget on 2 CPU cores (docs/ablation.md, "Choosing the budget"): the full
# scene world (six shapes and colours, hand-drawn fills, noise, rotation) at 3-5 objects
# kept every bridge at chance colour accuracy for 2000 steps, which measures nothing.
STUDY_TRAIN: dict[str, Any] = dict(
    task="mixed",  # captions and questions, half each
    max_steps=2400, num_train=30_000,  # ~2.6 epochs of 32
    # Pinned to what the published study ran with, so that later changes to the shipped
    # checkpoint's preset (bf16, a weight average, late image-prefix dropout) leave the
    # study's budget, and its cached runs, as they were.
    precision="fp32", ema_decay=0.0, prefix_dropout_start=0, keep_checkpoints=2,
)
STUDY_MODEL: dict[str, Any] = dict(vision_embed_dim=96, text_embed_dim=96, ssm_hidden_dim=96,
                                   image_prefix_dropout=0.0)
STUDY_SCENES: dict[str, Any] = dict(
    min_objects=3, max_objects=5,  # counting and relations over up to five objects
    # Plain visuals, so that what separates the bridges is order, counting and memory
    # over the patch grid rather than recognising a wobbly shape: four shapes and colours,
    # one background, no rotation, hand-drawn fills, shadows or pixel noise.
    shapes=("circle", "square", "triangle", "star"), colours=("red", "green", "blue", "yellow"),
    holdout=(), backgrounds=("light",), rotation=0.0, hand_drawn_prob=0.0, shadow_prob=0.0,
    noise=0.0, colour_jitter=0.2,
    # Five objects need room at 64 px: small 10-13 px (over one 8 px patch), large
    # 17-21 px, neighbours closer than the defaults allow (those fail to lay out 5).
    small_extent=(0.16, 0.20), large_extent=(0.27, 0.33), min_dx=0.11, spacing=0.55,
)
# The study's variants: a name -> the model fields it sets. Each bridge type alone is a
# variant (ViT -> that bridge -> transformer decoder, the published 2400-step study); the
# names with "+" change the other ends too (issue 17): a Mamba decoder over [image tokens ;
# text] (Cobra-style with the MLP bridge), and the attention-free Vim -> SSM -> Mamba. A
# Mamba decoder reads the image as its prefix only (no cross-attention, as in Cobra and
# shapes-all-ssm), whatever the preset sets for the transformer decoder.
_MAMBA = {"decoder_type": "mamba", "cross_attn_layers": 0}
VARIANTS: dict[str, dict[str, object]] = {
    **{t: {"bridge_type": t} for t in BRIDGE_TYPES},
    "mlp+mamba": {"bridge_type": "mlp", **_MAMBA},
    "ssm+mamba": {"bridge_type": "ssm", **_MAMBA},
    "vim+ssm+mamba": {"vision_type": "vim", "bridge_type": "ssm", **_MAMBA},
}
DEFAULT_VARIANTS = list(BRIDGE_TYPES)  # what --variants runs when not given (the 2400-step study)
RUN_COLUMNS = ["variant", "seed", "steps", "batch_size", "lr", "params_bridge", "params_total",
               "media_tokens", "train_seconds", "train_samples_per_s", "latency_ms",
               "bridge_latency_ms", "decode_ms_per_token", "final_loss"]
METRIC_COLUMNS = ["exact_match", "colour", "shape", "size", "relation", "count", "vqa",
                  "bleu4", "cider"]
COLUMNS = RUN_COLUMNS + METRIC_COLUMNS  # then vqa_<kind> columns and test_num


@dataclass
class Study:
    """What to run: variants x seeds under one budget (`overrides` as parse_overrides)."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int | None = None  # None: the preset's max_steps
    preset: str = "shapes-tiny"
    out: str = "docs/ablation"
    runs: str = "runs/ablation"
    test_num: int = 500
    test_split: str = "test"
    latency_repeats: int = 20
    watch: int = 500  # caption WATCH_NUM val scenes every `watch` steps (0: never)
    workers: int = 0  # processes drawing the training scenes; 0 = one
    force: bool = False
    report: bool = False  # write the outputs from the runs already recorded; train none
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
        if not self.seeds:
            raise ValueError("give at least one seed, e.g. --seeds 0,1,2")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.watch < 0:
            raise ValueError(f"--watch must be >= 0 (0: no val captions while training), "
                             f"got {self.watch}")
        if self.test_num < 1 or self.latency_repeats < 1:
            raise ValueError("--test_num and --latency_repeats must be >= 1")
        if self.report and self.force:
            raise ValueError("--report trains nothing and --force retrains everything; "
                             "give one of them")


# ---------------------------------------------------------------- configs and data
def run_config(study: Study, variant: str, seed: int) -> TrainConfig:
    """The TrainConfig of one run: preset + study defaults + overrides + variant and seed.
    Periodic evaluation is off (the study evaluates once, after training)."""
    o = study.overrides
    top = {**STUDY_TRAIN, **{k: v for k, v in o.items() if k not in ("model", "scenes")}}
    top.update(seed=seed, out_dir=str(Path(study.runs) / f"{variant}-seed{seed}"),
               eval_every=study.watch, eval_num=WATCH_NUM if study.watch else 0,
               save_every=0, progress=False)
    if study.steps is not None:
        top["max_steps"] = study.steps
    model = {**STUDY_MODEL, **o.get("model", {}), **VARIANTS[variant]}
    scenes = {**STUDY_SCENES, **o.get("scenes", {})}
    return build_train_config(study.preset, {**top, "model": model, "scenes": scenes})


@dataclass
class StudyData(Data):
    """A run's data (train.build_data), drawn once and shared by every run whose data
    settings give `key` (data_key)."""

    key: str = ""


def data_key(cfg: TrainConfig) -> str:
    """Everything the training data depends on (not the seed, not the bridge)."""
    return json.dumps([cfg.data, cfg.task, cfg.num_train, dataclasses.asdict(cfg.scenes),
                       cfg.model.img_size], sort_keys=True, default=str)


def prepare_data(cfg: TrainConfig, workers: int = 0, progress: bool = True) -> StudyData:
    """Draw the training scenes of `cfg` once (`workers` processes draw them)."""
    if cfg.data != "scenes":
        raise ValueError(f"the ablation trains on the scene world (data=scenes), got "
                         f"data={cfg.data!r}")
    data = build_data(dataclasses.replace(cfg, draw_workers=workers, progress=progress))
    return StudyData(**vars(data), key=data_key(cfg))


def make_trainer(cfg: TrainConfig, data: StudyData) -> Trainer:
    """The model and Trainer of `cfg` on shared data: `train.build` without the drawing."""
    if data_key(cfg) != data.key:
        raise ValueError("this run's data settings differ from the prepared data's; "
                         "call prepare_data(cfg) for it")
    return build(cfg, data)


# ---------------------------------------------------------------- measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


@torch.no_grad()
def measure_latency(model: EnhancedVLM, data: StudyData, repeats: int) -> dict[str, float]:
    """Batch-1 forward (image + its caption) and bridge-only latency, in ms."""
    model.eval()
    device = next(model.parameters()).device
    scene = make_scene("test", 0, data.scene_config)
    images = data.transform(scene.image)[None].to(device)  # (1, 3, H, W)
    tokens = torch.tensor([data.tokenizer.encode(scene.caption)], device=device)  # (1, T)
    tokens = tokens[:, : model.config.max_seq_length]
    feats = model.vision(images)  # (1, 1 + P, vision_dim)
    return {"latency_ms": median_ms(lambda: model(images, tokens), repeats, device),
            "bridge_latency_ms": median_ms(lambda: model.bridge(feats), repeats, device),
            "decode_ms_per_token": decode_ms_per_token(model, images)}


DECODE_STEPS = 10  # the last decoding steps timed by decode_ms_per_token


@torch.no_grad()
def decode_ms_per_token(model: EnhancedVLM, images: torch.Tensor) -> float:
    """Median ms of one decoding step (batch 1) over the last DECODE_STEPS steps of a
    caption as long as the model allows (max_seq_length): a KV cache has grown to its
    largest there, a Mamba decoder's state has not grown at all. Time after a warm decode."""
    c, device = model.config, images.device
    media = model.encode_image(images)  # (1, P, dim)

    def decode() -> list[float]:
        cache = model.decoder.new_cache(1, c.max_seq_length, media.shape[1], device,
                                        media.dtype)
        token = torch.full((1, 1), c.bos_token_id, device=device)
        times = []
        for _ in range(c.max_seq_length - 1):  # BOS with the prefix, then a token per call
            _sync(device)
            t0 = time.perf_counter()
            token = model.decoder(media, token, cache)[:, -1:].argmax(-1)  # (1, 1)
            _sync(device)
            times.append(1000 * (time.perf_counter() - t0))
        return times

    decode()
    return statistics.median(decode()[-DECODE_STEPS:])


def _logged(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A run folder's metrics.jsonl, read once, by kind ("train", "eval", ...)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in read_metrics(run_dir / "metrics.jsonl"):
        by_kind.setdefault(r.get("kind", ""), []).append(r)
    return by_kind


def throughput(records: list[dict[str, Any]], trainer: Trainer) -> float:
    """Training samples per second, leaving out the first logged interval (warm-up: lazy
    initialisation, allocator growth) when there are two logged points or more."""
    if len(records) >= 2:
        a, b = records[0], records[-1]
        if b["train_seconds"] > a["train_seconds"]:
            return (b["samples"] - a["samples"]) / (b["train_seconds"] - a["train_seconds"])
    return trainer.samples_seen / max(trainer.train_seconds, 1e-9)


# Every Study.watch steps a run captions WATCH_NUM fixed val scenes (greedy, no gradient,
# outside the timed steps), so the record shows when it began to read colour, not only
# its loss. It changes nothing the run learns (tests/test_ablate.py checks the weights are
# bit-identical), so the watch is NEUTRAL: runs recorded without it keep their results.
WATCH_NUM = 100
NEUTRAL = ("progress", "draw_workers", "eval_every", "eval_num")  # no result depends on them


def budget(cfg: TrainConfig, study: Study) -> dict[str, Any]:
    """What a run's result depends on: its TrainConfig and the evaluation."""
    d = cfg.to_dict()
    for key in NEUTRAL:
        d.pop(key)
    return {"train": d, "test_split": study.test_split, "test_num": study.test_num}


def run_one(cfg: TrainConfig, data: StudyData, study: Study,
            variant: str | None = None) -> dict[str, Any]:
    """Train, evaluate and measure one (variant, seed); returns its results row (variant:
    its VARIANTS name; None: the bridge type)."""
    run_dir = Path(cfg.out_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # no half-finished run's records
    trainer = make_trainer(cfg, data)
    trainer.fit()
    logged = _logged(run_dir)
    records = logged.get("train", [])
    model = trainer.inference_model.eval()  # the weight average when ema_decay > 0
    media = model.encode_image(torch.zeros(1, model.config.in_channels, model.config.img_size,
                                           model.config.img_size, device=trainer.device))
    row: dict[str, Any] = {
        "variant": variant or cfg.model.bridge_type, "seed": cfg.seed, "steps": trainer.step,
        "batch_size": cfg.batch_size * cfg.grad_accum * trainer.world, "lr": cfg.lr,
        "params_bridge": sum(p.numel() for p in model.bridge.parameters()),
        "params_total": model.num_parameters(), "media_tokens": media.shape[1],
        "train_seconds": round(trainer.train_seconds, 3),
        "train_samples_per_s": throughput(records, trainer),
        **measure_latency(model, data, study.latency_repeats),
        "final_loss": records[-1]["loss"] if records else math.nan,
    }
    metrics = evaluate(model, data.tokenizer, data.transform, study.test_split, study.test_num,
                       data.scene_config, vqa=True, batch_size=100)
    row.update({k: v for k, v in metrics.items() if k != "num"})
    row["test_num"] = metrics["num"]
    row["machine"] = machine_info()  # samples/s and latencies are this machine's
    result = {"budget": budget(cfg, study), "row": row}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    # The study folder keeps the result too, with the loss curve and the machine, so that a
    # clone of the repository (another session, another machine) continues the study.
    record = record_path(cfg, study)
    curve = [{k: rec[k] for k in CURVE_KEYS} for rec in records]
    watch = [{k: v for k, v in rec.items() if k in WATCH_KEYS} for rec in logged.get("eval", [])]
    text = json.dumps({**result, "curve": curve, "watch": watch}, indent=1, default=str)
    atomic_write(record, lambda p: Path(p).write_text(text))  # whole or absent
    return row


CURVE_KEYS = ("step", "samples", "train_seconds", "loss")  # a logged training record's fields
WATCH_KEYS = ("step", *METRIC_COLUMNS)  # a watch (val evaluation) record's fields


def record_path(cfg: TrainConfig, study: Study) -> Path:
    """Where the study folder keeps a finished run's result: OUT/runs/VARIANT-seedK.json."""
    return Path(study.out) / "runs" / f"{Path(cfg.out_dir).name}.json"


def read_record(cfg: TrainConfig, study: Study) -> dict[str, Any] | None:
    """The saved result of this run (its run folder's result.json, else the study folder's
    record), or None."""
    for path in (Path(cfg.out_dir) / "result.json", record_path(cfg, study)):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def cached_row(cfg: TrainConfig, study: Study) -> dict[str, Any] | None:
    """The row of a finished run with this budget, or None. The saved budget is read with
    TrainConfig.from_dict, so a run saved before a field was added (at its default) or
    before the model and scenes were typed (docs/ablation's 18 runs) still matches."""
    saved = None if study.force else read_record(cfg, study)
    if saved is None:
        return None
    then = saved.get("budget", {})
    try:
        ran = TrainConfig.from_dict(then.get("train", {}))
    except ValueError:  # a field since removed or a value since refused: not this budget
        return None
    then = {**then, "train": budget(ran, study)["train"]}
    now = budget(cfg, study)
    same = json.dumps(then, sort_keys=True, default=str) == json.dumps(now, sort_keys=True,
                                                                       default=str)
    return saved["row"] if same else None


# ---------------------------------------------------------------- the study
def plan_runs(study: Study) -> list[tuple[str, int, TrainConfig]]:
    """(variant, seed, TrainConfig) of every run. Bad settings (a model or scene field,
    an infeasible value) raise ValueError here, not after hours of training."""
    return [(v, s, run_config(study, v, s)) for v in study.variants for s in study.seeds]


def run_study(study: Study, plan: list[tuple[str, int, TrainConfig]] | None = None
              ) -> list[dict[str, Any]]:
    """Every (variant, seed) run, in order; writes the outputs after each run (the runs
    already recorded only: report_study)."""
    from ..core.scan import load_extension

    plan = plan or plan_runs(study)
    load_extension()  # build / load the fused scan now, not inside the first run's timing
    data: StudyData | None = None
    rows: list[dict[str, Any]] = []
    bar = tqdm(plan, desc="ablation", unit="run", disable=not study.progress,
               dynamic_ncols=True)
    for variant, seed, cfg in bar:
        bar.set_postfix(variant=variant, seed=seed)
        row = cached_row(cfg, study)
        if row is None:
            if data is None or data.key != data_key(cfg):
                data = prepare_data(cfg, study.workers, study.progress)
            row = run_one(cfg, data, study, variant)
        rows.append(row)
        write_outputs(rows, study, plan[0][2])
    bar.close()
    return rows


def report_study(study: Study, plan: list[tuple[str, int, TrainConfig]]
                 ) -> list[dict[str, Any]]:
    """The rows of the planned runs already recorded with this budget, outputs written
    for them (results.md names the runs still to train), nothing trained: a study that
    takes several sittings shows where it stands. ValueError when none is recorded."""
    rows, missing = [], []
    for variant, seed, cfg in plan:
        row = cached_row(cfg, study)
        if row is None:
            missing.append(f"{variant} seed {seed}")
        else:
            rows.append(row)
    if not rows:
        raise ValueError(f"none of the {len(plan)} planned runs is recorded with this budget "
                         f"in {study.runs} or {study.out}/runs; run without --report to "
                         f"train them")
    write_outputs(rows, study, plan[0][2], missing)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """COLUMNS, then every vqa_<kind> seen, then test_num."""
    kinds = sorted({k for r in rows for k in r if k.startswith("vqa_")})
    return [*COLUMNS, *kinds, "test_num"]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns(rows), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def mean_std(values: list[Any]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value) of the numbers among
    `values` (numbers or numeric strings, as read back from CSV; others are skipped)."""
    vals = [f for f in map(_float, values) if not math.isnan(f)]
    if not vals:
        return math.nan, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def _fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "n/a"
    return f"{m * scale:.{digits}f}" + (f" ± {s * scale:.{digits}f}" if s is not None else "")


# (column, header, scale, digits) of the markdown summary
SUMMARY = [
    ("exact_match", "exact match %", 100, 1), ("vqa", "VQA %", 100, 1),
    ("colour", "colour %", 100, 1), ("shape", "shape %", 100, 1), ("size", "size %", 100, 1),
    ("relation", "relation %", 100, 1), ("count", "count %", 100, 1),
    ("final_loss", "final loss", 1, 3), ("params_bridge", "bridge params", 1, 0),
    ("params_total", "total params", 1, 0), ("train_samples_per_s", "train samples/s", 1, 1),
    ("latency_ms", "latency ms", 1, 2), ("bridge_latency_ms", "bridge ms", 1, 2),
    ("decode_ms_per_token", "decode ms/token", 1, 2),
]


def machine_info() -> str:
    """CPU model, capability and cores, GPU, Python and torch versions: where the numbers
    were measured."""
    from ..training.precision import cpu_description

    gpu = (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
    return (f"{cpu_description()}, {os.cpu_count()} logical cores{gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, {platform.system()} "
            f"{platform.release()}")


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant, mean ± sample std over its seeds of SUMMARY's
    columns, then a table of VQA accuracy by question kind (if any)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| variant | seeds | " + " | ".join(h for _, h, _, _ in SUMMARY) + " |",
             "|---|---|" + "---|" * len(SUMMARY)]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        cells = [_fmt([r.get(k, math.nan) for r in rs], sc, dg) for k, _, sc, dg in SUMMARY]
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {v} | {seeds} | " + " | ".join(cells) + " |")
    kinds = sorted({k for r in rows for k in r if k.startswith("vqa_")})
    if kinds:
        lines += ["", "VQA accuracy % by question kind:", "",
                  "| variant | " + " | ".join(k[4:] for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for v in variants:
            rs = [r for r in rows if r["variant"] == v]
            lines.append(f"| {v} | " + " | ".join(
                _fmt([r.get(k, math.nan) for r in rs], 100, 1) for k in kinds) + " |")
    return "\n".join(lines)


def _changed(config: Any, base: Any) -> dict[str, Any]:
    """The fields of dataclass `config` whose values differ from `base`'s, as JSON values."""
    ours, theirs = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (config, base))
    return {k: v for k, v in ours.items() if theirs[k] != v}


def _model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The run's model fields that differ from its preset's (the bridge type aside)."""
    preset = VLMConfig.from_preset(TRAIN_PRESETS[cfg.preset]["model"])
    return {k: v for k, v in _changed(cfg.model, preset).items() if k != "bridge_type"}


def budget_text(cfg: TrainConfig, study: Study) -> str:
    """One paragraph: what every run got (steps, batch, lr, task, data) and the evaluation."""
    return (f"Budget per run: preset `{cfg.preset}`, {cfg.max_steps} steps of batch "
            f"{cfg.batch_size * cfg.grad_accum}, lr {cfg.lr:g} (warmup {cfg.warmup_steps}, "
            f"cosine), task `{cfg.task}`{_staged(cfg)}, {cfg.num_train} training scenes with "
            f"{json.dumps(_changed(cfg.scenes, scene_config(cfg.model, {})))}, model overrides "
            f"{json.dumps(_model_overrides(cfg))}, "
            f"{cfg.threads or 'default'} torch thread(s) per run. Evaluation: "
            f"{study.test_num} `{study.test_split}` scenes, greedy decoding.")


def _staged(cfg: TrainConfig) -> str:
    return f" after {cfg.caption_steps} steps of captions only" if cfg.caption_steps else ""


def machines_line(rows: list[dict[str, Any]]) -> list[str]:
    """A line naming the machines the runs were measured on, where any run says (runs
    continued from the study folder's records may come from other sessions)."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("machine"):
            counts[r["machine"]] = counts.get(r["machine"], 0) + 1
    if not counts:
        return []
    return ["Runs measured on: " + "; ".join(f"{m} ({n} runs)" for m, n in counts.items())
            + "  "]


# A run has left the plateau where it models the captions' grammar without reading the
# image once its training loss, averaged over PLATEAU_WINDOW log points, is under
# PLATEAU_LOSS: about two thirds of the plateau's height at the study's task
# (docs/ablation.md, "When each run left the plateau").
PLATEAU_LOSS, PLATEAU_WINDOW = 0.6, 5


def escape_step(points: list[tuple[int, float]], threshold: float = PLATEAU_LOSS,
                window: int = PLATEAU_WINDOW) -> int | None:
    """The first logged step whose running mean loss (over `window` log points of
    (step, loss)) is under `threshold`, or None: the run never left the plateau."""
    points = sorted(points)
    for i in range(window - 1, len(points)):
        if statistics.fmean(loss for _, loss in points[i - window + 1:i + 1]) < threshold:
            return points[i][0]
    return None


def escape_steps(curves: list[dict[str, Any]]) -> dict[tuple[str, int], int | None]:
    """escape_step of every run in curve_rows' output, keyed by (variant, seed)."""
    runs: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for c in curves:
        key = (c["variant"], int(c["seed"]))
        runs.setdefault(key, []).append((int(c["step"]), float(c["loss"])))
    return {key: escape_step(points) for key, points in runs.items()}


# The loss rule is not enough: a Mamba decoder can leave the loss plateau reading where,
# how many, how big and which shape, yet name every object's colour at chance (the colour
# plateau, docs/training-notes.md). A run reads the image only if its test colour accuracy
# is also at least COLOUR_READ times chance.
COLOUR_READ = 2.0


def reads_colour(row: dict[str, Any], chance: float) -> bool:
    """Whether a results row's colour accuracy is at least COLOUR_READ x `chance`."""
    colour = _float(row.get("colour"))
    return not math.isnan(colour) and colour >= COLOUR_READ * chance


def colour_steps(watch: list[dict[str, Any]], chance: float
                 ) -> dict[tuple[str, int], int | None]:
    """Per (variant, seed) in watch_rows' output: the first watched step whose val colour
    accuracy is at least COLOUR_READ x `chance`, or None (never while it trained)."""
    runs: dict[tuple[str, int], int | None] = {}
    for w in sorted(watch, key=lambda w: int(w["step"])):
        key = (w["variant"], int(w["seed"]))
        if runs.get(key) is None:
            runs[key] = int(w["step"]) if reads_colour(w, chance) else None
    return runs


def _escape_cell(loss: int | None, read: bool | None, colour: int | None, watched: bool) -> str:
    """One run's cell: the loss escape step, then when (watched) or whether it read colour."""
    cell = "never" if loss is None else str(loss)
    if watched:
        return cell + (f", colour from {colour}" if colour is not None else ", colour never")
    return cell + (", colour at chance" if read is False else "")


def escape_table(curves: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None,
                 chance: float | None = None, watch: list[dict[str, Any]] | None = None
                 ) -> str:
    """Markdown: per variant, the step at which each seed left the loss plateau ("never").
    With the results `rows` and the colour `chance` (1 / number of colours), a run that
    left it but names colours at chance in the test is marked, a last column counts the
    runs that did both, and with `watch` (watch_rows) each cell says from which watched
    step the run's val captions read colour."""
    escapes = escape_steps(curves)
    read = {(r["variant"], int(r["seed"])): reads_colour(r, chance)
            for r in rows or []} if chance else {}
    when = colour_steps(watch or [], chance) if chance else {}
    seeds = sorted({s for _, s in escapes})
    last = " | runs that also read colour |" if read else " |"
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | runs that left it"
             + last, "|---|" + "---|" * (len(seeds) + 1 + bool(read))]
    for v in dict.fromkeys(v for v, _ in escapes):
        ran = {s: x for (w, s), x in escapes.items() if w == v}
        cells = ["" if s not in ran else _escape_cell(ran[s], read.get((v, s)),
                                                      when.get((v, s)), (v, s) in when)
                 for s in seeds]
        left = sum(x is not None for x in ran.values())
        line = f"| {v} | " + " | ".join(cells) + f" | {left} of {len(ran)} |"
        if read:
            both = sum(x is not None and read.get((v, s), False) for s, x in ran.items())
            line += f" {both} of {len(ran)} |"
        lines.append(line)
    return "\n".join(lines)


def escape_legend(study: Study, cfg: TrainConfig) -> str:
    """The sentence above escape_table: what its steps and colour marks mean."""
    text = (f"When each run left the plateau (the first logged step whose training loss, "
            f"averaged over {PLATEAU_WINDOW} log points, is under {PLATEAU_LOSS}; \"colour at "
            f"chance\": its test colour accuracy is under {COLOUR_READ:g}x chance, 1 in "
            f"{len(cfg.scenes.colours)}")
    if study.watch:
        text += (f"; \"colour from S\": the first step S, of every {study.watch}, at which "
                 f"its captions of {WATCH_NUM} val scenes reached that colour accuracy")
    return text + "):"


def results_markdown(rows: list[dict[str, Any]], study: Study, cfg: TrainConfig,
                     curves: list[dict[str, Any]] | None = None,
                     watch: list[dict[str, Any]] | None = None,
                     missing: list[str] | None = None) -> str:
    """The summary table (mean ± sample std over seeds), with command, machine, budget, and
    when each run left the plateau (from `curves`, curve_rows' output, when given);
    `missing` names planned runs not yet trained (a study under way)."""
    lines = [
        "# Bridge ablation", "",
        f"Command: `{study.command or 'python -m ssm_bridge.tools.ablate'}`  ",
        f"Machine: {machine_info()}  ",
        *machines_line(rows),
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
        budget_text(cfg, study), "",
        *([f"**Under way: {len(rows)} of {len(rows) + len(missing)} planned runs recorded.** "
           f"Still to train: {', '.join(missing)} (the command above trains them; this "
           f"report was written with --report).", ""] if missing else []),
        "Mean ± sample standard deviation over seeds (no ± with one seed).", "",
        summary_table(rows),
        *(["", escape_legend(study, cfg), "",
           escape_table(curves, rows, chance_of(cfg)["colour"], watch)] if curves else []),
        "", "![accuracy, speed and size per bridge](ablation.png)", "",
        "![training loss per bridge](curves.png)", "",
        *(["![val caption accuracy while training](watch.png)", ""] if watch else []),
    ]
    return "\n".join(lines)


def _run_records(name: str, runs: str | os.PathLike, out: str | os.PathLike | None,
                 kind: str) -> list[dict[str, Any]]:
    """One run's logged records of `kind` ("train": its loss curve, "eval": its watch),
    from its run folder's metrics.jsonl, else from its record in OUT/runs."""
    records = _logged(Path(runs) / name).get(kind, [])
    record = Path(out) / "runs" / f"{name}.json" if out is not None else None
    if not records and record is not None and record.is_file():
        records = json.loads(record.read_text()).get("curve" if kind == "train" else "watch", [])
    return records


def curve_rows(rows: list[dict[str, Any]], runs: str | os.PathLike,
               out: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The logged training loss of every run in `rows`: [{variant, seed, step, samples,
    train_seconds, loss}], read from each run folder's metrics.jsonl, else from the curve
    of its record in OUT/runs (missing ones skipped)."""
    return [{"variant": r["variant"], "seed": r["seed"], **{k: rec[k] for k in CURVE_KEYS}}
            for r in rows for rec in _run_records(f"{r['variant']}-seed{r['seed']}", runs,
                                                  out, "train")]


def watch_rows(rows: list[dict[str, Any]], runs: str | os.PathLike,
               out: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The val captions' accuracy while each run trained: [{variant, seed, step,
    exact_match, colour, ...}] (runs recorded without a watch are skipped)."""
    return [{"variant": r["variant"], "seed": r["seed"],
             **{k: rec[k] for k in WATCH_KEYS if k in rec}}
            for r in rows for rec in _run_records(f"{r['variant']}-seed{r['seed']}", runs,
                                                  out, "eval")]


def chance_of(cfg: TrainConfig) -> dict[str, float]:
    """The accuracy of guessing uniformly in the study's scenes: each object attribute, and
    the number of objects."""
    sc = cfg.scenes
    return {"colour": 1 / len(sc.colours), "shape": 1 / len(sc.shapes),
            "size": 1 / len(SIZES), "count": 1 / (sc.max_objects - sc.min_objects + 1)}


def write_outputs(rows: list[dict[str, Any]], study: Study, cfg: TrainConfig,
                  missing: list[str] | None = None) -> None:
    """results.csv, results.md, ablation.png, and curves.csv + curves.png (training loss
    per run), and watch.csv + watch.png (the watched val captions) in study.out."""
    from viz.ablation import plot_ablation, plot_ablation_curves, plot_ablation_watch

    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    curves = curve_rows(rows, study.runs, study.out)
    watch = watch_rows(rows, study.runs, study.out)
    (out / "results.md").write_text(results_markdown(rows, study, cfg, curves, watch, missing))
    meta = {"command": study.command, "machine": machine_info(), "budget": budget_text(cfg, study),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "train_config": budget(cfg, study)["train"]}
    (out / "study.json").write_text(json.dumps(meta, indent=2, default=str))
    fig = plot_ablation(rows)
    fig.savefig(out / "ablation.png", dpi=120, format="png")
    fig.clf()
    if curves:
        with open(out / "curves.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(curves[0]))
            w.writeheader()
            w.writerows(curves)
        if watch:
            with open(out / "watch.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in watch for k in r)))
                w.writeheader()
                w.writerows(watch)
            fig = plot_ablation_watch(watch, chance_of(cfg))
            fig.savefig(out / "watch.png", dpi=120, format="png")
            fig.clf()
        fig = plot_ablation_curves(curves)
        fig.savefig(out / "curves.png", dpi=120, format="png")
        fig.clf()


# ---------------------------------------------------------------- command line
def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str]) -> Study:
    p = argparse.ArgumentParser(prog="python -m ssm_bridge.tools.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run "
                   "(default: the preset's max_steps)")
    p.add_argument("--out", default="docs/ablation", help="results.csv, results.md, png")
    p.add_argument("--runs", default="runs/ablation", help="run folders (checkpoints)")
    p.add_argument("--preset", default="shapes-tiny")
    p.add_argument("--test_num", type=int, default=500, help="evaluation scenes per run")
    p.add_argument("--test_split", default="test", choices=["val", "test", "comp_test"])
    p.add_argument("--latency_repeats", type=int, default=20)
    p.add_argument("--workers", type=int, default=0, help="processes drawing the scenes")
    p.add_argument("--watch", type=int, default=500, help="caption val scenes every N "
                   "steps to see when a run reads colour (0: never)")
    p.add_argument("--force", action="store_true", help="retrain runs that have results")
    p.add_argument("--report", action="store_true", help="train nothing: write the outputs "
                   "from the runs already recorded, naming those still to train")
    p.add_argument("--no_progress", action="store_true")
    args, rest = p.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        p.error(str(e))
    try:
        return Study(variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                     seeds=args.seeds, steps=args.steps, preset=args.preset, out=args.out,
                     runs=args.runs, test_num=args.test_num, test_split=args.test_split,
                     latency_repeats=args.latency_repeats, workers=args.workers, watch=args.watch,
                     force=args.force, report=args.report, progress=not args.no_progress,
                     overrides=overrides,
                     # what trains the study: a --report of it shows the same command
                     command=shlex.join(["python", "-m", "ssm_bridge.tools.ablate",
                                         *(a for a in argv if a != "--report")]))
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    study = parse_args(argv)
    try:
        plan = plan_runs(study)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if study.report:
        try:
            rows = report_study(study, plan)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        rows = run_study(study, plan)
    print(f"{len(rows)} runs; results in {study.out}/results.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
