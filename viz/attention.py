"""Attention pictures: cross-attention per generated word, and the SSM's implicit attention.

    fig = word_attention_grid(scene.image, [("red", m0), ("circle", m1)])   # (g, g) maps
    fig = implicit_attention_matrix(alpha, log=True)                         # (L, L)
    fig = implicit_attention_grid(alpha, grid_side=8, queries=[10, 40], image=scene.image)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .arrays import (
    as_image,
    as_scan_perm,
    check_grid,
    check_ndim,
    grid_values,
    patch_of_step,
    to_numpy,
)
from .maps import map_panels
from .style import (
    SEQUENTIAL_CMAP,
    add_colorbar,
    new_figure,
    outline_patch,
    set_labels,
    set_title,
    value_norm,
)
from .tokens import label_tokens


def word_attention_grid(image, maps: Sequence[tuple[str, object]], ncols: int = 4, *,
                        shared_scale: bool = True) -> Figure:
    """One panel per generated word: its cross-attention (g, g) map over the image.

    `maps` is a list of (word, (g, g) map); with `shared_scale` (default) all words share one
    colour scale, so a panel's brightness says how much that word attends there.
    """
    fig, _ = map_panels(list(maps), image, ncols, shared_scale=shared_scale, signed=False,
                        label="attention")
    return fig


def _as_square(alpha, name: str = "alpha") -> np.ndarray:
    a = to_numpy(alpha, name)
    check_ndim(a, (2,), name, "(L, L)")
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must have shape (L, L), got {tuple(a.shape)}")
    return a


def implicit_attention_matrix(alpha, title: str = "implicit attention", *, log: bool = False,
                              floor: float = 1e-6, tokens: Sequence | None = None) -> Figure:
    """The (L, L) implicit attention matrix of a scan: row t = query step, column s = source.

    `log=True` shows |alpha| on a log colour scale (entries below `floor` times the largest
    are masked), which shows how fast the influence of older steps decays. `tokens` (L
    labels, e.g. a language model's words) labels both axes.
    """
    a = _as_square(alpha)
    fig, axes = new_figure(size=(3.6, 3.2), grid=False)
    ax = axes[0, 0]
    if log:
        mag = np.abs(a)
        top = float(mag.max()) if mag.max() > 0 else 1.0
        shown = np.ma.masked_less_equal(mag, top * floor)
        im = ax.imshow(shown, cmap=SEQUENTIAL_CMAP, norm=LogNorm(vmin=top * floor, vmax=top),
                       interpolation="nearest")
    else:
        norm, cmap = value_norm(a)
        im = ax.imshow(a, cmap=cmap, norm=norm, interpolation="nearest")
    set_title(ax, title)
    set_labels(ax, "source step s", "query step t")
    label_tokens(ax, tokens, a.shape[0], "xy")
    add_colorbar(fig, im, ax, "|α| (log)" if log else "α")
    return fig


def implicit_attention_grid(alpha, grid_side: int | None = None, queries: Sequence[int] = (0,),
                            image=None, *, prefix: int = 1, scan_perm=None, ncols: int = 4,
                            shared_scale: bool = False) -> Figure:
    """Selected rows of an (L, L) implicit attention matrix, each projected onto the patch grid.

    `queries` index rows (scan steps); with `scan_perm` (L,) the matrix is in scan order and
    columns are put back in patch order. The query's own patch is outlined. Each panel has
    its own colour scale unless `shared_scale=True` (rows differ a lot in magnitude).
    """
    a = _as_square(alpha)
    g = check_grid(a.shape[0], grid_side, prefix)
    perm = as_scan_perm(scan_perm, a.shape[0])
    queries = [int(q) for q in queries]
    bad = [q for q in queries if not 0 <= q < a.shape[0]]
    if not queries or bad:
        raise ValueError(f"queries must be a non-empty list of rows in 0..{a.shape[0] - 1}, "
                         f"got {queries}")
    items = [(f"query step {q}", grid_values(a[q], g, prefix, perm)) for q in queries]
    img = None if image is None else as_image(image)
    fig, panels = map_panels(items, img, ncols, shared_scale=shared_scale, label="α")
    shape = None if img is None else img.shape
    for ax, q in zip(panels, queries):
        cell = patch_of_step(perm, q, g, prefix)
        if cell is not None:
            outline_patch(ax, *cell, g, shape)
    return fig
