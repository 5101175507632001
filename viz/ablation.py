"""The bridge ablation at a glance, from the study's rows (results.csv, one per run)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .style import LABEL_SIZE, PALETTE, TICK_SIZE, TITLE_SIZE, new_figure

ACCURACIES = (("exact_match", "exact match"), ("vqa", "VQA"), ("colour", "colour"),
              ("shape", "shape"), ("size", "size"), ("relation", "relation"),
              ("count", "count"))
COSTS = (("train_samples_per_s", "training samples / s"),
         ("latency_ms", "inference latency (ms, batch 1)"),
         ("params_bridge", "bridge parameters"))


def _num(v) -> float:
    """A float from a row value (numbers, or strings as read back from CSV); nan if none."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _by_variant(rows: list[Mapping], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in rows:
        v = _num(r.get(key))
        out.setdefault(str(r["variant"]), [])
        if not math.isnan(v):
            out[str(r["variant"])].append(v)
    return out


def _mean_std(vals: list[float]) -> tuple[float, float]:
    if not vals:
        return math.nan, 0.0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def plot_ablation(rows: Iterable[Mapping]) -> Figure:
    """Accuracy per metric and variant (bars: mean over seeds, whiskers: sample std,
    dots: the seeds), then training speed, inference latency and bridge size per variant.

    rows: one mapping per (variant, seed) run with a "variant" key and any of the
    ACCURACIES / COSTS columns (missing ones are left out)."""
    rows = list(rows)
    if not rows or any("variant" not in r for r in rows):
        raise ValueError("plot_ablation needs rows with a 'variant' key (results.csv rows)")
    variants = list(dict.fromkeys(str(r["variant"]) for r in rows))
    fig, axes = new_figure(ncols=4, width_ratios=[3, 1, 1, 1], size=(3.2, 3.2))
    _accuracy_panel(axes[0, 0], rows, variants)
    for ax, (key, title) in zip(axes[0, 1:], COSTS):
        _cost_panel(ax, rows, variants, key, title)
    return fig


def _accuracy_panel(ax, rows: list[Mapping], variants: list[str]) -> None:
    metrics = [(k, label) for k, label in ACCURACIES if any(k in r for r in rows)]
    width = 0.8 / len(variants)
    x = np.arange(len(metrics))
    for i, v in enumerate(variants):
        colour = PALETTE[i % len(PALETTE)]
        offs = x - 0.4 + width * (i + 0.5)
        stats = [_mean_std(_by_variant(rows, k)[v]) for k, _ in metrics]
        ax.bar(offs, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats],
               color=colour, label=v, capsize=2, error_kw={"linewidth": 0.8})
        for o, (k, _) in zip(offs, metrics):
            seeds = _by_variant(rows, k)[v]
            ax.plot([o] * len(seeds), [100 * s for s in seeds], "o", color="black",
                    markersize=2, alpha=0.6)
    ax.set_xticks(x, [label for _, label in metrics], fontsize=LABEL_SIZE)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy %", fontsize=LABEL_SIZE)
    ax.set_title("accuracy per bridge (mean ± std over seeds)", fontsize=TITLE_SIZE)
    ax.legend(fontsize=LABEL_SIZE - 1, ncols=min(len(variants), 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.08), frameon=False)


def _cost_panel(ax, rows: list[Mapping], variants: list[str], key: str, title: str) -> None:
    vals = _by_variant(rows, key)
    stats = [_mean_std(vals[v]) for v in variants]
    y = np.arange(len(variants))
    ax.barh(y, [m for m, _ in stats], xerr=[s for _, s in stats],
            color=[PALETTE[i % len(PALETTE)] for i in range(len(variants))], capsize=2)
    for i, v in enumerate(variants):
        ax.plot(vals[v], [i] * len(vals[v]), "o", color="black", markersize=2, alpha=0.6)
    ax.set_yticks(y, variants, fontsize=LABEL_SIZE)
    ax.invert_yaxis()
    if key in ("latency_ms", "params_bridge") and all(m > 0 for m, _ in stats):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="both", labelsize=TICK_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)


def plot_ablation_curves(curves: Iterable[Mapping], smooth: int = 5) -> Figure:
    """Training loss against step per variant: the mean over seeds (line) and the
    seeds' range (band), each run first smoothed by a running mean of `smooth` log points.

    curves: one mapping per logged point with "variant", "seed", "step" and "loss"
    (the study's curves.csv rows; numbers or numeric strings)."""
    curves = list(curves)
    need = ("variant", "seed", "step", "loss")
    if not curves or any(k not in c for c in curves for k in need):
        raise ValueError(f"plot_ablation_curves needs rows with keys {need} (curves.csv)")
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for c in curves:
        runs.setdefault(str(c["variant"]), {}).setdefault(str(c["seed"]), []).append(
            (_num(c["step"]), _num(c["loss"])))
    fig, axes = new_figure(ncols=1, size=(6.4, 3.6))
    ax = axes[0, 0]
    for i, (variant, seeds) in enumerate(runs.items()):
        steps, losses = _aligned(seeds.values(), smooth)
        colour = PALETTE[i % len(PALETTE)]
        ax.plot(steps, losses.mean(0), color=colour, label=variant, linewidth=1.2)
        if len(losses) > 1:
            ax.fill_between(steps, losses.min(0), losses.max(0), color=colour, alpha=0.2,
                            linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step", fontsize=LABEL_SIZE)
    ax.set_ylabel("training loss", fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.set_title("training loss per bridge (mean over seeds, band: seed range)",
                 fontsize=TITLE_SIZE)
    ax.legend(fontsize=LABEL_SIZE - 1, frameon=False)
    return fig


def _aligned(runs: Iterable[list[tuple[float, float]]], smooth: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Runs' (step, loss) points -> the steps all runs logged, (runs, steps) smoothed losses."""
    runs = [dict(r) for r in runs]
    steps = sorted(set.intersection(*(set(r) for r in runs)))
    losses = np.array([[r[s] for s in steps] for r in runs])  # (runs, steps)
    k = max(1, min(smooth, len(steps)))
    kernel = np.ones(k) / k
    smoothed = np.array([np.convolve(row, kernel, mode="valid") for row in losses])
    return np.array(steps[k - 1:]), smoothed


WATCHED = (("colour", "colour"), ("shape", "shape"), ("exact_match", "exact match"))


def plot_ablation_watch(watch: Iterable[Mapping], chance: Mapping[str, float] | None = None,
                        metrics: Iterable[tuple[str, str]] = WATCHED) -> Figure:
    """Val caption accuracy against step while each run trained: one panel per metric,
    one line per run (a variant's seeds share its colour), chance as a dashed line.

    watch: one mapping per watched point with "variant", "seed", "step" and the metric
    columns (the study's watch.csv rows; numbers or numeric strings). chance: metric ->
    the accuracy of guessing (e.g. {"colour": 0.25}), drawn where given."""
    watch = list(watch)
    need = ("variant", "seed", "step")
    if not watch or any(k not in w for w in watch for k in need):
        raise ValueError(f"plot_ablation_watch needs rows with keys {need} and metric columns "
                         f"(watch.csv)")
    metrics = [(k, label) for k, label in metrics if any(k in w for w in watch)]
    runs: dict[str, dict[str, list[Mapping]]] = {}
    for w in watch:
        runs.setdefault(str(w["variant"]), {}).setdefault(str(w["seed"]), []).append(w)
    fig, axes = new_figure(ncols=len(metrics), size=(3.4, 3.0))
    for ax, (key, label) in zip(axes[0], metrics):
        for i, (variant, seeds) in enumerate(runs.items()):
            for j, points in enumerate(seeds.values()):
                points = sorted(points, key=lambda p: _num(p["step"]))
                ax.plot([_num(p["step"]) for p in points],
                        [100 * _num(p.get(key)) for p in points],
                        color=PALETTE[i % len(PALETTE)], linewidth=1.0, marker="o",
                        markersize=2, label=variant if j == 0 else None)
        if chance and key in chance:
            ax.axhline(100 * chance[key], color="grey", linestyle="--", linewidth=0.8,
                       label="chance")
        ax.set_ylim(0, 105)
        ax.set_xlabel("optimizer step", fontsize=LABEL_SIZE)
        ax.set_ylabel(f"val {label} %", fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
        ax.set_title(f"{label} while training (one line per run)", fontsize=TITLE_SIZE)
    axes[0, 0].legend(fontsize=LABEL_SIZE - 1, frameon=False)
    return fig
