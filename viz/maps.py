"""Heat maps over an image or the patch grid: one map, a titled grid of maps, attributions.

    fig = overlay(scene.image, attn_grid, title="cross-attention")      # (H, W, 3), (g, g)
    fig = layer_maps({"layer 0 Δ": d0, "layer 0 gate": g0}, image=scene.image)
    fig = attribution_overlay(scene.image, grad_x_input, "gradient x input")   # (3, H, W)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from einops import reduce
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .arrays import as_image, as_map, check_ndim, to_numpy
from .style import (
    OVERLAY_ALPHA,
    PANEL,
    add_colorbar,
    drop_unused,
    new_figure,
    overlay_map,
    set_title,
    show_image,
    value_norm,
)


def overlay(image, grid_map, ax: Axes | None = None, title: str | None = None, *,
            alpha: float = OVERLAY_ALPHA, signed: bool | None = None,
            vmin: float | None = None, vmax: float | None = None, colorbar: bool = True,
            label: str | None = None) -> Figure:
    """A (g, g) map, bilinearly upsampled, over an (H, W, 3) image (uint8 or float).

    Draws into `ax` when given (returning its Figure), else into a new one-panel Figure.
    Signed maps get a diverging colour map centred on 0 (`signed=None` decides from the data).
    """
    img, m = as_image(image), as_map(grid_map)
    if ax is None:
        ax = new_figure(size=PANEL, grid=False)[1][0, 0]
    norm, cmap = value_norm(m, signed, vmin, vmax)
    im = overlay_map(ax, img, m, norm=norm, cmap=cmap, alpha=alpha)
    set_title(ax, title)
    if colorbar:
        add_colorbar(ax.figure, im, ax, label)
    return ax.figure


def map_panels(items: Sequence[tuple[str, object]], image=None, ncols: int = 4, *,
               shared_scale: bool = True, signed: bool | None = None,
               label: str | Sequence[str | None] | None = None,
               alpha: float = OVERLAY_ALPHA) -> tuple[Figure, list[Axes]]:
    """One panel per (title, (h, w) map), over `image` when given, in rows of `ncols`.

    `shared_scale=True`: one colour scale and one colourbar for all panels (values comparable);
    False: a scale and colourbar per panel. `label`: the colourbars' label, or one label per
    panel (a list). Returns the Figure and the used panels.
    """
    if not items:
        raise ValueError("need at least one (title, map) pair to draw, got none")
    maps = [as_map(m, f"map {t!r}") for t, m in items]
    img = None if image is None else as_image(image)
    ncols = max(1, min(ncols, len(maps)))
    nrows = -(-len(maps) // ncols)
    fig, axes = new_figure(ncols, nrows, size=PANEL, grid=False)
    panels = drop_unused(fig, axes, len(maps))
    labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(maps)
    if len(labels) != len(maps):
        raise ValueError(f"got {len(labels)} colourbar labels for {len(maps)} maps; give one "
                         "label, or one per map")
    shared = value_norm(np.concatenate([m.ravel() for m in maps]), signed)
    for ax, (title, _), m, lab in zip(panels, items, maps, labels):
        norm, cmap = shared if shared_scale else value_norm(m, signed)
        im = overlay_map(ax, img, m, norm=norm, cmap=cmap, alpha=alpha)
        set_title(ax, str(title))
        if not shared_scale:
            add_colorbar(fig, im, ax, lab)
    if shared_scale:
        add_colorbar(fig, im, panels, labels[0])
    return fig, panels


def layer_maps(maps: dict[str, object], image=None, ncols: int = 4, *,
               shared_scale: bool = False, label: str | None = None) -> Figure:
    """A grid of named (g, g) maps (e.g. {"layer 0 Δ": ..., "layer 0 gate": ...}).

    Each panel has its own colour scale and colourbar unless `shared_scale=True`
    (Δ and gate live on different scales). Over `image` when given.
    """
    if not isinstance(maps, dict):
        raise ValueError(f"maps must be a dict name -> (g, g) map, got {type(maps).__name__}")
    fig, _ = map_panels(list(maps.items()), image, ncols, shared_scale=shared_scale, label=label)
    return fig


def attribution_overlay(image, attr, method_name: str, *, signed: bool | None = None,
                        clip_percentile: float = 99.5, alpha: float = OVERLAY_ALPHA) -> Figure:
    """The image and an attribution over it, side by side, titled with `method_name`.

    attr is (H, W), (3, H, W) (summed over colour channels) or a coarse (g, g) map (upsampled).
    Signed attributions use a diverging colour map centred on 0; `signed=False` shows |attr|
    with a sequential one (`None`: signed when any value is negative). The scale is clipped at
    the `clip_percentile` of |attr| so a few extreme pixels do not wash out the rest.
    """
    img = as_image(image)
    a = to_numpy(attr, "attr")
    check_ndim(a, (2, 3), "attr", "(H, W), (3, H, W) or (g, g)")
    if a.ndim == 3:
        a = reduce(a, "c h w -> h w", "sum")  # (H, W)
    if signed is None:
        signed = bool(a.min() < 0)
    if not signed:
        a = np.abs(a)
    bound = float(np.percentile(np.abs(a), clip_percentile)) or None
    norm, cmap = value_norm(a, signed, vmin=None if signed else 0.0, vmax=bound)
    fig, axes = new_figure(ncols=2, size=PANEL, grid=False)
    show_image(axes[0, 0], img)
    set_title(axes[0, 0], "image")
    im = overlay_map(axes[0, 1], img, a, norm=norm, cmap=cmap, alpha=alpha)
    set_title(axes[0, 1], method_name)
    add_colorbar(fig, im, axes[0, 1], "relevance" if signed else "|relevance|")
    return fig
