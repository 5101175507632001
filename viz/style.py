"""The shared look: one place for sizes, fonts, colours and the drawing helpers every plot uses.

    fig, axes = new_figure(ncols=2, size=PANEL, grid=False)
    im = overlay_map(axes[0, 0], image, grid_map)    # (H, W, 3) image, (g, g) map upsampled on top
    add_colorbar(fig, im, axes[0, 0], label="attention")
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

PALETTE = ["#3b6ea8", "#d0743c", "#5c9e5a", "#b04a5a", "#7a68a6", "#8c8c8c"]
# Plots with more lines than PALETTE has colours (one per map kind, say): colour and
# marker both change, so no two of ten lines look alike.
SERIES_COLOURS = [*PALETTE[:5], "#d4a72c", "#3fa7a3", "#9c5b2e", "#d46fa8", "#404040"]
SERIES_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h", "<", "*"]


def series_style(i: int) -> dict:
    """Line i's colour and marker (matplotlib keyword arguments)."""
    return {"color": SERIES_COLOURS[i % len(SERIES_COLOURS)],
            "marker": SERIES_MARKERS[i % len(SERIES_MARKERS)]}

SEQUENTIAL_CMAP = "inferno"  # magnitudes: attention, |attribution|, Δ, norms
DIVERGING_CMAP = "RdBu_r"  # signed values, centred on zero (red positive, blue negative)
POSITION_CMAP = "viridis"  # scan position: early steps dark, late steps yellow
OVERLAY_ALPHA = 0.7  # opacity of a heat map drawn over an image, where the map is strongest
MIN_ALPHA_SHARE = 0.2  # ... and the share of it kept where the map is weakest

TITLE_SIZE = 9
LABEL_SIZE = 8
TICK_SIZE = 7

PANEL = (2.6, 2.6)  # inches per image panel
PLOT = (4.0, 3.0)  # inches per line / bar plot


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = PLOT,
               grid: bool = True,
               width_ratios: list[float] | None = None) -> tuple[Figure, np.ndarray]:
    """A Figure (not registered with pyplot, so nothing leaks) and its (nrows, ncols) axes grid.

    `size` is per panel; `width_ratios` sets relative panel widths within the same total;
    `grid=False` leaves out the light grid lines (image panels).
    """
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, width_ratios=width_ratios)
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
        if grid:
            ax.grid(alpha=0.25, linewidth=0.6)
        ax.set_prop_cycle(color=PALETTE)
        ax.tick_params(labelsize=TICK_SIZE)
    return fig, axes


def drop_unused(fig: Figure, axes: np.ndarray, used: int) -> list[Axes]:
    """Remove the axes after the first `used` of a grid; returns the used ones, row-major."""
    flat = list(axes.flat)
    for ax in flat[used:]:
        fig.delaxes(ax)
    return flat[:used]


def set_title(ax: Axes, text: str | None) -> None:
    """A panel title wrapped to the panel's width: a long one ("cross-attention of the
    query that wrote 'diamond'") would otherwise be clipped at the figure's edge."""
    if text:
        ax.set_title(fit_text(text, ax), fontsize=TITLE_SIZE)


def fit_text(text: str, ax: Axes, size: float = TITLE_SIZE) -> str:
    """`text` broken into lines no wider than `ax` (an average glyph is ~0.55 em wide)."""
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    chars = max(12, int(width_in * 72 / (size * 0.55)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def set_labels(ax: Axes, xlabel: str | None = None, ylabel: str | None = None) -> None:
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)


def image_axes(ax: Axes) -> None:
    """An axes for a picture: no ticks, no spines, no grid."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (h, w) map to (H, W); each cell's value sits at its centre."""
    t = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))[None, None]  # (1, 1, h, w)
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # (1, 1, H, W)
    return out[0, 0].numpy()  # (H, W)


def value_norm(values: np.ndarray, signed: bool | None = None, vmin: float | None = None,
               vmax: float | None = None) -> tuple[Normalize, str]:
    """(norm, cmap) for `values`: diverging around 0 when signed, sequential otherwise.

    `signed=None` decides from the data (any negative value means signed).
    """
    finite = values[np.isfinite(values)]
    if signed is None:
        signed = bool(finite.size and finite.min() < 0)
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        bound = bound if vmax is None else float(vmax)
        bound = bound if bound > 0 else 1.0
        return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), DIVERGING_CMAP
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    hi = max(hi, lo + 1e-12)  # a constant map still gets a valid colour scale
    return Normalize(vmin=lo, vmax=hi), SEQUENTIAL_CMAP


def show_image(ax: Axes, image: np.ndarray) -> AxesImage:
    """Draw an (H, W, 3) float image in [0, 1] as a picture panel."""
    image_axes(ax)
    return ax.imshow(image, interpolation="nearest")


def overlay_map(ax: Axes, image: np.ndarray | None, grid_map: np.ndarray, *,
                norm: Normalize | None = None, cmap: str | None = None,
                alpha: float = OVERLAY_ALPHA, weighted: bool = True) -> AxesImage:
    """Draw `grid_map` (h, w), bilinearly upsampled to the image's (H, W), over `image`.

    `image` is (H, W, 3) float in [0, 1], or None for the bare map at its own resolution
    (nearest, one square per cell). With `weighted`, each pixel's opacity grows with the
    map's strength there (value for sequential maps, |value| for signed ones) from
    MIN_ALPHA_SHARE * alpha up to `alpha`, so the image shows through where the map is weak.
    Returns the heat map's AxesImage (for a colourbar).
    """
    if norm is None or cmap is None:
        auto_norm, auto_cmap = value_norm(grid_map)
        norm, cmap = norm or auto_norm, cmap or auto_cmap
    if image is None:
        image_axes(ax)
        return ax.imshow(grid_map, cmap=cmap, norm=norm, interpolation="nearest")
    show_image(ax, image)
    heat = upsample(grid_map, image.shape[:2])  # (H, W)
    opacity = alpha * _strength(heat, norm) if weighted else alpha
    return ax.imshow(heat, cmap=cmap, norm=norm, alpha=opacity, interpolation="nearest")


def _strength(values: np.ndarray, norm: Normalize) -> np.ndarray:
    """Per-pixel opacity share in [MIN_ALPHA_SHARE, 1]: how far each value is from 'nothing'."""
    n = np.clip(np.ma.filled(norm(values), 0.0), 0.0, 1.0)
    strength = np.abs(2 * n - 1) if isinstance(norm, TwoSlopeNorm) else n
    return MIN_ALPHA_SHARE + (1 - MIN_ALPHA_SHARE) * strength


def add_colorbar(fig: Figure, mappable, ax: Axes | list[Axes], label: str | None = None):
    """A slim colourbar beside `ax` (one axes or a list sharing it), in the house font sizes."""
    cbar = fig.colorbar(mappable, ax=ax, shrink=0.85, fraction=0.05, pad=0.02)
    cbar.ax.tick_params(labelsize=TICK_SIZE)
    if label:
        cbar.set_label(label, fontsize=LABEL_SIZE)
    return cbar


def outline_patch(ax: Axes, row: int, col: int, grid_side: int,
                  image_shape: tuple[int, ...] | None = None, color: str = "#00e5ff",
                  linewidth: float = 2.0) -> None:
    """Outline patch (row, col) of a g x g grid drawn over an image of `image_shape` (H, W, ...),
    or over a bare (g, g) map when `image_shape` is None."""
    ph, pw = (1.0, 1.0) if image_shape is None else (image_shape[0] / grid_side,
                                                     image_shape[1] / grid_side)
    ax.add_patch(Rectangle((col * pw - 0.5, row * ph - 0.5), pw, ph, fill=False,
                           edgecolor=color, linewidth=linewidth))
