"""Faithfulness at a glance: deletion curves per map kind, sanity-check cascades, and
causal-tracing heatmaps (records from ssm_bridge.interp.faithfulness / tracing in)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .arrays import to_numpy
from .style import (
    LABEL_SIZE,
    TICK_SIZE,
    add_colorbar,
    new_figure,
    series_style,
    set_labels,
    set_title,
    value_norm,
)


def deletion_curves(curves: Mapping[str, Sequence], fractions, *,
                    ylabel: str = "log p(word)",
                    title: str | None = "MoRF deletion: log p of the word") -> Figure:
    """Mean curve per map kind: {kind: [(S,) curves]} over fractions (S,)."""
    f = to_numpy(fractions, "fractions")
    fig, axes = new_figure()
    _draw_curves(axes[0, 0], curves, f, ylabel, title)
    axes[0, 0].legend(fontsize=TICK_SIZE, frameon=False, loc="center left",
                      bbox_to_anchor=(1, 0.5))
    return fig


def morf_lerf_panels(morf: Mapping[str, Sequence], lerf: Mapping[str, Sequence], fractions,
                     *, ylabel: str = "normalised log p of the word",
                     title: str | None = None) -> Figure:
    """Two panels, MoRF (left: lower is more faithful) and LeRF (right: higher is), with
    the mean curve per map kind in the same colour and marker on both."""
    f = to_numpy(fractions, "fractions")
    fig, axes = new_figure(ncols=2, size=(4.2, 3.4))
    _draw_curves(axes[0, 0], morf, f, ylabel, "MoRF: most relevant first (lower: faithful)")
    _draw_curves(axes[0, 1], lerf, f, None, "LeRF: least relevant first (higher: faithful)")
    axes[0, 1].legend(fontsize=TICK_SIZE, frameon=False, loc="center left",
                      bbox_to_anchor=(1, 0.5))
    if title:
        fig.suptitle(title, fontsize=LABEL_SIZE)
    return fig


def _draw_curves(ax, curves: Mapping[str, Sequence], f: np.ndarray, ylabel: str | None,
                 title: str | None) -> None:
    for i, (kind, rows) in enumerate(curves.items()):
        ax.plot(f, _mean_curve(rows, kind, f), label=kind, markersize=3,
                linestyle="--" if kind == "random" else "-", **series_style(i))
    set_labels(ax, "fraction of patches replaced", ylabel or "")
    set_title(ax, title)


def _mean_curve(rows: Sequence, kind: str, f: np.ndarray) -> np.ndarray:
    values = np.stack([to_numpy(r, kind) for r in rows])  # (n, S)
    if values.shape[1] != f.shape[0]:
        raise ValueError(f"{kind}: curves have {values.shape[1]} points, fractions "
                         f"{f.shape[0]}")
    return values.mean(0)


def cascade_plot(cascades: Mapping[str, Sequence[tuple[str, float]]], *,
                 shuffled: Mapping[str, float] | None = None,
                 title: str | None = "cascading randomisation") -> Figure:
    """Spearman ρ with the trained model's map after each re-initialised group, one line
    per map kind: {kind: [(group, ρ), ...]} (faithfulness.cascading_randomisation,
    sanity.cascade_curves). shuffled: {kind: ρ} of the model trained on shuffled captions
    (sanity.data_randomisation), drawn as one more point, apart, in the line's colour."""
    fig, axes = new_figure(size=(6.5, 3.6))
    ax = axes[0, 0]
    groups: list[str] = []
    for i, (kind, pairs) in enumerate(cascades.items()):
        groups = groups or [g for g, _ in pairs]
        line, = ax.plot(range(len(pairs)), [r for _, r in pairs], markersize=3.5,
                        label=kind, **series_style(i))
        if shuffled and kind in shuffled:
            ax.plot([len(pairs) + 0.5], [shuffled[kind]], marker=line.get_marker(), markersize=6,
                    linestyle="none", color=line.get_color())
    ax.axhline(0, color="#8c8c8c", linewidth=0.6)
    ticks, labels = list(range(len(groups))), list(groups)
    if shuffled:
        ticks.append(len(groups) + 0.5)
        labels.append("shuffled captions")
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=TICK_SIZE)
    ax.set_ylim(-1.05, 1.05)
    set_labels(ax, "re-initialised down to (from the logits)", "Spearman ρ")
    set_title(ax, title)
    ax.legend(fontsize=TICK_SIZE, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig


def trace_heatmap(effect: Mapping[str, np.ndarray], *, grid_side: int | None = None,
                  title: str | None = None) -> Figure:
    """Causal-tracing effects: rows are sites with one value per image token (cls then
    the g x g patches), shown as a site x token heatmap; single-valued sites (cross
    layers) are listed in the title."""
    rows = {k: to_numpy(v, k).ravel() for k, v in effect.items()}
    wide = {k: v for k, v in rows.items() if v.size > 1}
    if not wide:
        raise ValueError("no site with per-token effects to draw")
    lengths = {v.size for v in wide.values()}
    if len(lengths) != 1:
        raise ValueError(f"sites have different numbers of tokens {sorted(lengths)}")
    L = lengths.pop()
    g = grid_side or math.isqrt(L - 1)
    data = np.stack(list(wide.values()))  # (sites, L)
    fig, axes = new_figure(size=(max(5.0, L / 12), 0.35 * len(wide) + 1.4), grid=False)
    ax = axes[0, 0]
    norm, cmap = value_norm(data, signed=True)
    im = ax.imshow(data, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(wide)), list(wide), fontsize=TICK_SIZE)
    ticks = list(range(1, L, g))  # the first patch of each row (token 0, cls, is unlabelled)
    ax.set_xticks(ticks, [f"row {r}" for r in range(len(ticks))], fontsize=TICK_SIZE,
                  rotation=45, ha="right")
    ax.set_xlabel("image token: cls (first column), then the patches row by row",
                  fontsize=LABEL_SIZE)
    single = ", ".join(f"{k} {v[0]:.2f}" for k, v in rows.items() if v.size == 1)
    set_title(ax, (title or "indirect effect of restoring one token") +
              (f"\n({single})" if single else ""))
    add_colorbar(fig, im, ax, label="share of the clean-vs-counterfactual difference")
    return fig


def plausible_vs_faithful(rows: Sequence[Mapping], *, x: str = "mean_ap",
                          y: str = "delta_af", xlabel: str = "plausibility: mAP against "
                          "the object's mask", ylabel: str = "faithfulness: ΔA^F",
                          title: str | None = "plausible or faithful?") -> Figure:
    """One point per map kind (leaderboard rows: map, x, y and their _std), with ± std
    bars; the random row's values are drawn as dashed guide lines."""
    fig, axes = new_figure(size=(5.2, 4.0))
    ax = axes[0, 0]
    for i, r in enumerate(rows):
        if r["map"] == "random":
            ax.axvline(r[x], color="#8c8c8c", linestyle="--", linewidth=0.8)
            ax.axhline(r[y], color="#8c8c8c", linestyle="--", linewidth=0.8)
            continue
        style = series_style(i)
        ax.errorbar(r[x], r[y], xerr=r.get(f"{x}_std"), yerr=r.get(f"{y}_std"),
                    color=style["color"], marker=style["marker"], markersize=5,
                    elinewidth=0.6, alpha=0.9, label=r["map"])
        ax.annotate(r["map"], (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                    fontsize=TICK_SIZE)
    set_labels(ax, xlabel, ylabel)
    set_title(ax, title)
    ax.text(0.99, 0.01, "dashed: the random map", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=TICK_SIZE, color="#8c8c8c")
    return fig
