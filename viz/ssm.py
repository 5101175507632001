"""Pictures of the bridge's selective scan: the state's path, and per-patch Δ, gate and |h|.

Inputs are one example's hook tensors (take [0] of a batch). Tensors recorded in scan order
(hook_state, hook_delta, ...) need the direction's `scan_perm` (L,) to land on the right
patches; tensors in patch order (hook_gate, hook_out) need none. With
`bridge = ssm_bridge.core.addressing.SSMStack.of(model)`:

    fig = state_trajectory(cache[bridge.hook("hook_state", 0, 0)][0], grid_side=8)
    fig = delta_map(cache[bridge.hook("hook_delta", 0, 0)][0], scan_perm=bridge[0].perm(0, L),
                    image=scene.image)
"""

from __future__ import annotations

import numpy as np
from einops import rearrange
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .arrays import (
    as_image,
    as_scan_perm,
    check_grid,
    check_ndim,
    grid_values,
    scan_step_grid,
    to_numpy,
)
from .style import (
    PANEL,
    POSITION_CMAP,
    TICK_SIZE,
    add_colorbar,
    image_axes,
    new_figure,
    overlay_map,
    set_labels,
    set_title,
    show_image,
)


def state_pca(h) -> tuple[np.ndarray, np.ndarray]:
    """Project states (L, D, N) or (L, F) on their first two principal components.

    Deterministic (numpy SVD; each component's sign is fixed so its largest-|loading| entry
    is positive). Returns (proj (L, 2), explained variance ratio (2,)); a missing second
    component (F == 1 or L < 3) is zeros.
    """
    x = to_numpy(h, "h")
    check_ndim(x, (2, 3), "h", "(L, D, N) or (L, F)")
    if x.ndim == 3:
        x = rearrange(x, "l d n -> l (d n)")  # (L, F)
    x = x - x.mean(axis=0, keepdims=True)  # (L, F) centred
    _, s, vt = np.linalg.svd(x, full_matrices=False)  # vt (k, F)
    k = min(2, vt.shape[0])
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])  # (k,)
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]  # (k, F)
    proj = np.zeros((x.shape[0], 2))
    proj[:, :k] = x @ vt.T  # (L, k)
    total = float((s ** 2).sum())
    explained = np.zeros(2)
    explained[:k] = (s[:k] ** 2) / total if total > 0 else 0.0
    return proj, explained


def draw_scan_positions(ax: Axes, scan_perm: np.ndarray, grid_side: int, prefix: int,
                        norm: Normalize, image: np.ndarray | None = None,
                        alpha: float = 0.6, numbers: bool | None = None):
    """The patch grid coloured by the scan step that reads each patch (over `image` if given).

    Step numbers are written in the cells when `numbers` (default: grids up to 8 x 8).
    """
    steps = scan_step_grid(scan_perm, grid_side, prefix)  # (g, g)
    if image is None:
        image_axes(ax)
        cell = (1.0, 1.0)
        im = ax.imshow(steps, cmap=POSITION_CMAP, norm=norm, interpolation="nearest")
    else:
        show_image(ax, image)
        H, W = image.shape[:2]
        cell = (H / grid_side, W / grid_side)  # pixels per patch
        im = ax.imshow(steps, cmap=POSITION_CMAP, norm=norm, alpha=alpha,
                       extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    if grid_side <= 8 if numbers is None else numbers:
        for (r, c), t in np.ndenumerate(steps):
            ax.text((c + 0.5) * cell[1] - 0.5, (r + 0.5) * cell[0] - 0.5, f"{int(t)}",
                    ha="center", va="center", fontsize=TICK_SIZE - 1, color="white")
    return im


def state_trajectory(h, grid_side: int | None = None, prefix: int = 1, scan_perm=None,
                     image=None, title: str = "state along the scan") -> Figure:
    """The state h (L, D, N) or (L, F), in scan order, as a 2-D PCA path plus the patch grid.

    Left: the path of the state's two principal components, one point per scan step,
    coloured by step. Right: the patch grid (over `image` if given) in the same colours, so a
    colour on the left says which patch the scan had just read. `scan_perm` (L,): the token
    read at each step (default: patch order, cls first).
    """
    proj, explained = state_pca(h)
    L = proj.shape[0]
    g = check_grid(L, grid_side, prefix)
    perm = as_scan_perm(scan_perm, L)
    norm = Normalize(vmin=0, vmax=max(L - 1, 1))
    fig, axes = new_figure(ncols=2, size=(3.0, 2.8), grid=False)
    ax = axes[0, 0]
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.plot(proj[:, 0], proj[:, 1], color="#8c8c8c", linewidth=0.8, alpha=0.7, zorder=1)
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=np.arange(L), cmap=POSITION_CMAP, norm=norm,
                    s=16, edgecolors="none", zorder=2)
    for t in np.flatnonzero(perm < prefix):  # steps that read a cls token
        ax.annotate("cls", proj[t], fontsize=TICK_SIZE, xytext=(3, 3),
                    textcoords="offset points")
    ax.locator_params(nbins=4)
    set_labels(ax, f"PC1 ({explained[0]:.0%})", f"PC2 ({explained[1]:.0%})")
    set_title(ax, title)
    img = None if image is None else as_image(image)
    draw_scan_positions(axes[0, 1], perm, g, prefix, norm, img)
    set_title(axes[0, 1], "patch read at each step")
    add_colorbar(fig, sc, list(axes.flat), "scan step")
    return fig


def _grid_figure(grid: np.ndarray, image, title: str, label: str) -> Figure:
    """One panel: a (g, g) map, over `image` (bilinear) when given, with a colourbar."""
    fig, axes = new_figure(size=PANEL, grid=False)
    img = None if image is None else as_image(image)
    im = overlay_map(axes[0, 0], img, grid)
    set_title(axes[0, 0], title)
    add_colorbar(fig, im, axes[0, 0], label)
    return fig


def state_norm_map(h, grid_side: int | None = None, prefix: int = 1, scan_perm=None, *,
                   image=None, reduce: str = "mean", title: str = "state norm |h|") -> Figure:
    """|h_t| per patch: the state (L, D, N) normed over N, reduced over D ('mean' | 'max')."""
    x = to_numpy(h, "h")
    check_ndim(x, (3,), "h", "(L, D, N)")
    norms = np.linalg.norm(x, axis=-1)  # (L, D)
    grid = grid_values(norms, grid_side, prefix, scan_perm, reduce, "h")  # (g, g)
    return _grid_figure(grid, image, title, f"{reduce} |h|")


def delta_map(delta, grid_side: int | None = None, prefix: int = 1, scan_perm=None, *,
              image=None, reduce: str = "mean", title: str = "Δ (step size)") -> Figure:
    """Δ per patch from (L, D) (or (L,)), reduced over channels: large Δ = the scan resets to
    this patch's input, small Δ = it carries its state past it."""
    grid = grid_values(to_numpy(delta, "delta"), grid_side, prefix, scan_perm, reduce, "delta")
    return _grid_figure(grid, image, title, f"{reduce} Δ")


def gate_map(gate, grid_side: int | None = None, prefix: int = 1, scan_perm=None, *,
             image=None, reduce: str = "mean", title: str = "gate SiLU(z)") -> Figure:
    """The output gate per patch from (L, D) (or (L,)), reduced over channels (hook_gate is in
    patch order: leave scan_perm None)."""
    grid = grid_values(to_numpy(gate, "gate"), grid_side, prefix, scan_perm, reduce, "gate")
    return _grid_figure(grid, image, title, f"{reduce} gate")
