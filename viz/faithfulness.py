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
                    dashed: Mapping[str, Sequence] | None = None,
                    ylabel: str = "log p(word)",
                    title: str | None = "MoRF deletion: log p of the word") -> Figure:
    """Mean curve per map kind: {kind: [(S,) curves]} over fractions (S,). dashed: a
    second set per kind (LeRF, say), drawn dashed in the kind's colour."""
    f = to_numpy(fractions, "fractions")
    fig, axes = new_figure(size=(6.5, 3.6)) if dashed else new_figure()
    ax = axes[0, 0]
    for i, (kind, rows) in enumerate(curves.items()):
        line, = ax.plot(f, _mean_curve(rows, kind, f), label=kind, markersize=3,
                        linestyle="--" if kind == "random" and not dashed else "-",
                        **series_style(i))
        if dashed and dashed.get(kind):
            ax.plot(f, _mean_curve(dashed[kind], kind, f), linestyle="--",
                    color=line.get_color())
    set_labels(ax, "fraction of patches replaced", ylabel)
    set_title(ax, title)
    ax.legend(fontsize=TICK_SIZE, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig


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
    ticks = [0, *range(1, L, g)]
    ax.set_xticks(ticks, ["cls", *[f"row {r}" for r in range(len(ticks) - 1)]],
                  fontsize=TICK_SIZE, rotation=45, ha="right")
    ax.set_xlabel("image token (cls, then patches row by row)", fontsize=LABEL_SIZE)
    single = ", ".join(f"{k} {v[0]:.2f}" for k, v in rows.items() if v.size == 1)
    set_title(ax, (title or "indirect effect of restoring one token") +
              (f"\n({single})" if single else ""))
    add_colorbar(fig, im, ax, label="share of the clean-vs-counterfactual difference")
    return fig
