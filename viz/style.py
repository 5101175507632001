"""The shared look: one place for sizes, fonts and colours."""

from __future__ import annotations

from matplotlib.figure import Figure

PALETTE = ["#3b6ea8", "#d0743c", "#5c9e5a", "#b04a5a", "#7a68a6", "#8c8c8c"]


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.0, 3.0)):
    """A Figure (not registered with pyplot, so nothing leaks) and its axes grid."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.25, linewidth=0.6)
        ax.set_prop_cycle(color=PALETTE)
    return fig, axes
