"""One frame of the scan scrubber: where the scan is, where its state has been, Δ and gate now.

    perm = direction_perm("row", L)                                  # (L,) token per scan step
    proj, _ = state_pca(h)                                           # (L, 2)
    fig = scan_scrubber_frame(scene.image, perm, step=20, grid_side=8, state_proj=proj,
                              delta=delta.mean(-1), gate=gate.mean(-1))

Every frame of one scan uses the same axis limits (from the whole scan), so frames can be
flipped through without the axes jumping.
"""

from __future__ import annotations

import numpy as np
from einops import rearrange
from matplotlib.axes import Axes
from matplotlib.colors import Normalize

from .arrays import (
    as_image,
    as_scan_perm,
    check_grid,
    check_ndim,
    patch_of_step,
    reduce_channels,
    to_numpy,
)
from .style import (
    PALETTE,
    POSITION_CMAP,
    new_figure,
    outline_patch,
    set_labels,
    set_title,
    show_image,
)


def _steps_array(x, name: str, length: int) -> np.ndarray | None:
    """(L,) per-step values from (L,) or (L, D) (channel mean), or None."""
    if x is None:
        return None
    v = reduce_channels(to_numpy(x, name), "mean", name)  # (L,)
    if v.shape[0] != length:
        raise ValueError(f"{name} must have shape (L,) = ({length},), got {tuple(v.shape)}")
    return v


def _draw_progress(ax: Axes, image: np.ndarray, perm: np.ndarray, step: int, g: int,
                   prefix: int) -> None:
    """The image with patches not yet read dimmed and the current patch outlined."""
    show_image(ax, image)
    read = np.zeros(g * g, dtype=bool)  # (g*g,) patch read by step?
    tokens = perm[: step + 1]
    read[tokens[tokens >= prefix] - prefix] = True
    shade = np.zeros((g * g, 4))  # (g*g, RGBA)
    shade[~read, 3] = 0.65
    H, W = image.shape[:2]
    shade = rearrange(shade, "(r c) k -> r c k", r=g)  # (g, g, RGBA)
    ax.imshow(shade, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    cell = patch_of_step(perm, step, g, prefix)
    if cell is not None:
        outline_patch(ax, *cell, g, image.shape)
    where = "cls token" if cell is None else f"patch ({cell[0]}, {cell[1]})"
    set_title(ax, f"step {step}/{len(perm) - 1}: {where}")


def _draw_path(ax: Axes, proj: np.ndarray, step: int) -> None:
    """The whole state path faint, the part up to `step` coloured by step, `step` marked."""
    L = proj.shape[0]
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.plot(proj[:, 0], proj[:, 1], color="#cccccc", linewidth=0.8, zorder=1)
    ax.plot(proj[: step + 1, 0], proj[: step + 1, 1], color="#8c8c8c", linewidth=1.0, zorder=2)
    ax.scatter(proj[: step + 1, 0], proj[: step + 1, 1], c=np.arange(step + 1), s=14,
               cmap=POSITION_CMAP, norm=Normalize(0, max(L - 1, 1)), edgecolors="none", zorder=3)
    ax.scatter(proj[step, 0], proj[step, 1], s=70, facecolors="none", edgecolors="black",
               linewidths=1.5, zorder=4)
    lo, hi = proj.min(axis=0), proj.max(axis=0)  # (2,) each: limits from the whole scan
    pad = np.maximum((hi - lo) * 0.08, 1e-6)  # (2,)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.locator_params(nbins=4)
    set_labels(ax, "PC1", "PC2")
    set_title(ax, "state path")


def _draw_bars(ax: Axes, series: dict[str, np.ndarray], step: int) -> None:
    """Each series' value at `step` as a bar, scaled by its largest |value| over the scan."""
    names = list(series)
    scale = [float(np.abs(v).max()) or 1.0 for v in series.values()]
    frac = [float(v[step]) / s for v, s in zip(series.values(), scale)]
    labels = [f"{n}\n{float(v[step]):.3g}" for n, v in series.items()]
    ax.barh(labels, frac, color=PALETTE[: len(names)], height=0.6)
    signed = any(float(v.min()) < 0 for v in series.values())
    ax.set_xlim(-1.05 if signed else 0.0, 1.05)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.invert_yaxis()
    set_labels(ax, "share of scan max")
    set_title(ax, "at this step")


def scan_scrubber_frame(image, scan_perm, step: int, grid_side: int | None = None,
                        prefix: int = 1, state_proj=None, delta=None, gate=None):
    """One scrubber frame at scan `step` of a scan reading token `scan_perm[t]` at step t.

    Panels: the image with unread patches dimmed and the current one outlined; when
    `state_proj` (L, 2) is given, the state's 2-D path up to `step`; when `delta` / `gate`
    (L,) (or (L, D), channel-averaged; both in scan order) are given, their values at `step`
    as bars scaled by each one's largest |value| over the scan.
    """
    img = as_image(image)
    raw = to_numpy(scan_perm, "scan_perm")
    check_ndim(raw, (1,), "scan_perm", "(L,)")
    perm = as_scan_perm(raw, raw.shape[0])
    L = len(perm)
    g = check_grid(L, grid_side, prefix)
    if not 0 <= int(step) < L:
        raise ValueError(f"step must be in 0..{L - 1} (a scan step), got {step}")
    step = int(step)
    proj = None if state_proj is None else to_numpy(state_proj, "state_proj")
    if proj is not None:
        check_ndim(proj, (2,), "state_proj", "(L, 2)")
        if proj.shape != (L, 2):
            raise ValueError(f"state_proj must have shape (L, 2) = ({L}, 2), "
                             f"got {tuple(proj.shape)}")
    series = {k: v for k, v in (("Δ", _steps_array(delta, "delta", L)),
                                ("gate", _steps_array(gate, "gate", L))) if v is not None}
    ratios = [1.0] + [1.0] * (proj is not None) + [0.6] * bool(series)
    fig, axes = new_figure(ncols=len(ratios), size=(2.8, 2.8), grid=False, width_ratios=ratios)
    panels = list(axes.flat)
    _draw_progress(panels.pop(0), img, perm, step, g, prefix)
    if proj is not None:
        _draw_path(panels.pop(0), proj, step)
    if series:
        _draw_bars(panels.pop(0), series, step)
    return fig
