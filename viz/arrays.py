"""Input handling shared by the plots: tensors to numpy, shape checks, tokens to the patch grid.

Sequences follow the model's layout: `prefix` cls tokens, then a g x g patch grid in raster
order, so a sequence has L = prefix + g*g tokens. A scan permutation `scan_perm` (L,) is what
`ssm_bridge.core.addressing.direction_perm` returns: scan step t reads token `scan_perm[t]`.
Values recorded IN SCAN ORDER (Δ, B, C, the state h) are put back on the grid with it, by
`grid_values`, the one place here that inverts a scan permutation (viz takes permutations
as arrays and never imports the model, so it cannot call the model's own conversion).
"""

from __future__ import annotations

import math

import einops
import numpy as np
import torch
from einops import rearrange


def to_numpy(x, name: str = "input") -> np.ndarray:
    """A float64 numpy array from a torch tensor (any device / dtype), numpy array or list."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") \
            from e


def check_ndim(x: np.ndarray, ndims: tuple[int, ...], name: str, expected: str) -> None:
    """ValueError naming the expected shape unless x.ndim is one of `ndims`."""
    if x.ndim not in ndims:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}; "
                         "take one example of a batch first (e.g. x[0])")


def as_map(grid_map, name: str = "grid_map") -> np.ndarray:
    """A 2-D map (h, w) as float64 numpy."""
    m = to_numpy(grid_map, name)
    check_ndim(m, (2,), name, "(g, g)")
    return m


def as_image(image, name: str = "image") -> np.ndarray:
    """An image as (H, W, 3) float in [0, 1].

    Takes (H, W, 3) or (H, W, 4) uint8 / float, (H, W) greyscale, or a channel-first (3, H, W)
    model input. Floats in [0, 1] are kept, in [0, 255] divided by 255, anything else (a
    normalised tensor) rescaled from its own min..max.
    """
    uint8 = getattr(image, "dtype", None) in (np.uint8, torch.uint8)
    img = to_numpy(image, name)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3, 4):
        img = rearrange(img, "c h w -> h w c")  # (H, W, C)
    if img.ndim == 2:
        img = img[..., None]  # (H, W, 1)
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must have shape (H, W, 3) (or (3, H, W) / (H, W)), "
                         f"got {tuple(np.shape(image))}")
    img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]  # (H, W, 3)
    lo, hi = float(img.min()), float(img.max())
    if uint8 or (lo >= 0 and 1 < hi <= 255):
        img = img / 255.0
    elif lo < 0 or hi > 1:
        img = (img - lo) / max(hi - lo, 1e-12)
    return np.clip(img, 0.0, 1.0)


def infer_grid_side(length: int, prefix: int) -> int:
    """g such that length == prefix + g*g, or a ValueError."""
    side = math.isqrt(max(length - prefix, 0))
    if side == 0 or side * side != length - prefix:
        raise ValueError(f"a sequence of length {length} with prefix={prefix} is not a square "
                         "patch grid; pass grid_side and prefix (L = prefix + grid_side**2)")
    return side


def check_grid(length: int, grid_side: int | None, prefix: int) -> int:
    """The grid side for a sequence of `length` tokens, checked against L = prefix + g*g."""
    if grid_side is None:
        return infer_grid_side(length, prefix)
    if prefix < 0 or grid_side < 1 or length != prefix + grid_side * grid_side:
        raise ValueError(f"sequence length {length} does not match prefix={prefix} + "
                         f"grid_side={grid_side}**2 = {prefix + grid_side * grid_side}")
    return grid_side


def as_scan_perm(scan_perm, length: int) -> np.ndarray:
    """scan_perm as an int array (L,), checked to be a permutation of 0..L-1 (None: identity)."""
    if scan_perm is None:
        return np.arange(length)
    perm = to_numpy(scan_perm, "scan_perm")
    check_ndim(perm, (1,), "scan_perm", "(L,)")
    perm = perm.astype(np.int64)
    if perm.shape[0] != length or not np.array_equal(np.sort(perm), np.arange(length)):
        raise ValueError(f"scan_perm must be a permutation of 0..{length - 1} (the token read at "
                         f"each scan step), got shape {tuple(perm.shape)}: {perm[:8].tolist()}...")
    return perm


def reduce_channels(values: np.ndarray, how: str, name: str = "values") -> np.ndarray:
    """(L,) from (L,) or (L, D) by mean / max over channels."""
    check_ndim(values, (1, 2), name, "(L,) or (L, D)")
    if values.ndim == 1:
        return values
    if how not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {how!r}")
    return einops.reduce(values, "l d -> l", how)  # (L,)


def grid_values(values, grid_side: int | None = None, prefix: int = 1, scan_perm=None,
                reduce: str = "mean", name: str = "values") -> np.ndarray:
    """Per-token values (L,) or (L, D) as a (g, g) patch-grid map.

    Channels are reduced by `reduce` ('mean' | 'max'); values in scan order are put back
    in patch order with `scan_perm`; the `prefix` (cls) tokens are dropped.
    """
    v = reduce_channels(to_numpy(values, name), reduce, name)  # (L,)
    g = check_grid(v.shape[0], grid_side, prefix)
    tokens = np.empty_like(v)
    tokens[as_scan_perm(scan_perm, v.shape[0])] = v  # (L,) in token order
    return rearrange(tokens[prefix:], "(r c) -> r c", r=g)  # (g, g)


def scan_step_grid(scan_perm, grid_side: int, prefix: int = 1) -> np.ndarray:
    """(g, g) map of the scan step at which each patch is read."""
    length = prefix + grid_side * grid_side
    steps = np.arange(length, dtype=np.float64)  # (L,) step index, in scan order
    return grid_values(steps, grid_side, prefix, scan_perm)  # (g, g)


def patch_of_step(scan_perm: np.ndarray, step: int, grid_side: int,
                  prefix: int) -> tuple[int, int] | None:
    """(row, col) of the patch read at scan `step`, or None when it reads a prefix token."""
    token = int(scan_perm[step])
    if token < prefix:
        return None
    return divmod(token - prefix, grid_side)
