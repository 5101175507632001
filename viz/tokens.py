"""Pictures of a language model's scan, token by token (MambaLM, ssm_bridge.mamba.tools).

    stats = token_stats(model, ids)                                   # (B, layers, L) each
    fig = token_heatmap(stats["delta"][0], tokens=words)              # Δ per layer and token
    fig = implicit_attention_matrix(layers[0].alpha_abs[0], tokens=words, log=True)

`tokens` labels the token axis (strings, or ids); long sequences show every k-th label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .arrays import check_ndim, to_numpy
from .style import TICK_SIZE, add_colorbar, new_figure, set_labels, set_title, value_norm

MAX_LABELS = 48  # more token labels than this on one axis become unreadable: thin them


def label_tokens(ax: Axes, tokens: Sequence | None, length: int, axis: str = "x") -> None:
    """Tick labels from `tokens` (len == length) on the token axis ("x", "y" or "xy")."""
    if tokens is None:
        return
    labels = [str(t) for t in tokens]
    if len(labels) != length:
        raise ValueError(f"tokens has {len(labels)} labels for {length} positions; give one "
                         "per token")
    step = -(-length // MAX_LABELS)  # ceil: every step-th label
    ticks = np.arange(0, length, step)
    shown = [labels[i] for i in ticks]
    if "x" in axis:
        ax.set_xticks(ticks, shown, rotation=90, fontsize=TICK_SIZE)
    if "y" in axis:
        ax.set_yticks(ticks, shown, fontsize=TICK_SIZE)


def token_heatmap(values, tokens: Sequence | None = None, rows: Sequence[str] | None = None,
                  *, title: str = "Δ per token", label: str = "mean Δ over channels",
                  signed: bool | None = None) -> Figure:
    """A (R, L) heat map: one row per layer (or channel), one column per token. Meant for
    per-token Δ (token_stats(...)["delta"][0]: how strongly each layer writes each token
    into its state), the gate or the state norm alike. rows: R row labels (default
    "layer 0", ...); tokens: L column labels."""
    v = to_numpy(values, "values")
    check_ndim(v, (2,), "values", "(rows, L), e.g. (layers, tokens)")
    R, L = v.shape
    row_labels = [f"layer {i}" for i in range(R)] if rows is None else [str(r) for r in rows]
    if len(row_labels) != R:
        raise ValueError(f"rows has {len(row_labels)} labels for {R} rows")
    fig, axes = new_figure(size=(max(3.0, 0.18 * L + 1.2), max(1.6, 0.28 * R + 1.0)),
                           grid=False)
    ax = axes[0, 0]
    norm, cmap = value_norm(v, signed)
    im = ax.imshow(v, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(R), row_labels, fontsize=TICK_SIZE)
    label_tokens(ax, tokens, L)
    set_title(ax, title)
    set_labels(ax, "token" if tokens is None else None)
    add_colorbar(fig, im, ax, label)
    return fig
