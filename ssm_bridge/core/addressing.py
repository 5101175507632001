"""Addressing an SSM layer: the one place that names its hooks, orders its tokens and
checks its index.

    bridge = SSMStack.of(model, "bridge")                # EnhancedVLM's SSM bridge
    bridge.hook("hook_delta", layer=0, direction=1)      # 'bridge.layers.0.mixer.dirs.1.hook_delta'
    bridge.hook("hook_gate", layer=-1)                   # 'bridge.layers.1.mixer.hook_gate'
    bridge.glob("hook_state")                            # 'bridge.layers.*.mixer.dirs.*.hook_state'
    lm = SSMStack.of(mamba_lm)                           # a MambaLM's only stack, "lm"
    lm.hook("hook_delta", layer=0)                       # 'layers.0.mixer.hook_delta'
    ref = bridge[0]                                      # SSMLayerRef: one layer
    delta = ref.to_token_order(cache[ref.hook("hook_delta", 1)], 1)   # (B, L, D) token order

Glossary
    stack        the blocks of one SSM in a model, found by the module path of their list:
                 "bridge.layers" (EnhancedVLM's bridge), "layers" (MambaLM). `STACKS`
                 names them; `ssm_stacks(model)` finds those a model has.
    block        stack entry i, at "{path}.{i}"; its `hook_resid_post` is the residual
                 stream after it.
    mixer        the block's S6 at "{path}.{i}.mixer", of one of two kinds:
                   scan order:  an `ssm.SSMLayer` (the bridge): K scan directions at
                                `mixer.dirs.{k}`, their outputs summed, then one gate
                                (`mixer.hook_gate`, `mixer.hook_y`) shared by them;
                   token order: a `ssm.ScanDirection` itself (MambaLM's mixer): one
                                direction, named "causal", reading the tokens in order,
                                every hook directly under `mixer`.
    direction    k in 0..K-1, or its name (config.SCAN_DIRECTIONS: "row", "col",
                 "row_rev", "col_rev"; "causal" for a token-order mixer).
    layer        an index into the stack: an int in [-n, n), negative counting from the
                 end as in Python (`layer_index`, the one rule every tool applies).
    token order  the model's own sequence order: cls first (when there is one), then the
                 patches row-major (the bridge), or the text (a language model). The
                 Vision Mamba encoder ("vision") holds its class token mid-sequence:
                 `stack.output_order` / `stack.own_tokens` map the output order to it.
    scan order   the order one direction reads the tokens. Direction hooks (hook_conv,
                 hook_delta, hook_B, hook_C, hook_A_bar, hook_dBx, hook_state,
                 hook_ssm_out) are in it; hook_out, hook_y, hook_gate and the block's
                 hooks are in token order.
    perm         (L,) `direction_perm(name, L)`: scan step i reads token perm[i].
    inverse      (L,) `inverse_perm(perm)`: token t is read at scan step inverse[t].

Hook names are built from the model's modules, so a hook the layer lacks is an error
here, not a silent miss later. The scan-order helpers work on any dimension of a tensor
(`to_scan_order(x, perm, dim)`, `to_token_order(x, perm, dim)`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from ..config import SCAN_DIRECTIONS
from .hooks import HookPoint

TOKEN_ORDER = "causal"  # the one direction of a mixer that reads its tokens in order
_DIRS = "dirs"  # where a scan-order mixer (ssm.SSMLayer) keeps its directions
DIRECTION_NAMES = tuple(dict.fromkeys(n for names in SCAN_DIRECTIONS.values() for n in names))

# The SSM stacks models have: name -> (module path of the block list, what errors call
# it). A model has a stack when the path holds blocks whose `mixer` is an S6 (an SSMLayer
# or a ScanDirection). A new SSM stack (a Mamba decoder, a Vision Mamba encoder) is one
# more line here.
STACKS = {
    "vision": ("vision.layers", "the Vision Mamba encoder"),
    "bridge": ("bridge.layers", "the bridge"),
    "decoder": ("decoder.layers", "the Mamba decoder"),
    "lm": ("layers", "the language model"),
}


# ---------------------------------------------------------------- scan orders
def grid_layout(length: int) -> tuple[int, int]:
    """(prefix, side) of a sequence: `prefix` cls tokens then a side x side patch grid.

    A length of g*g + 1 is read as cls + grid, g*g as a bare grid. Other lengths
    have no grid (side 0): only orders that need none (raster, bidirectional) apply.
    """
    for prefix in (1, 0):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            return prefix, side
    return 0, 0


def direction_perm(name: str, length: int, device: torch.device | None = None,
                   prefix: int | None = None) -> torch.Tensor:
    """Token indices (L,) in the order direction `name` reads them (perm[i]: the token
    read at scan step i). A cls token, when present, is read first by every direction.
    prefix: how many leading tokens every direction reads first (None: as `grid_layout`
    reads the length; Vision Mamba passes 0, its class token sitting mid-sequence, so that
    "row_rev" reverses the whole sequence)."""
    if name == TOKEN_ORDER:
        return torch.arange(length, device=device)
    if name not in DIRECTION_NAMES:
        raise ValueError(f"unknown scan direction {name!r}; the directions are "
                         f"{DIRECTION_NAMES} and {TOKEN_ORDER!r} (token order)")
    if prefix is None:
        prefix, side = grid_layout(length)
    else:
        side = math.isqrt(length - prefix)
        side = side if side * side == length - prefix else 0
    if name in ("col", "col_rev") and side == 0:
        raise ValueError(
            f"scan order 'cross' needs a square patch grid (length g*g or g*g + 1 with cls), "
            f"got a sequence of length {length}; use ssm_scan_order='raster' or 'bidirectional'"
        )
    n = length - prefix
    patches = torch.arange(n, device=device)  # (n,)
    if name.startswith("col"):
        patches = rearrange(patches, "(r c) -> (c r)", r=side)  # column-major
    if name.endswith("_rev"):
        patches = patches.flip(0)
    return torch.cat([torch.arange(prefix, device=device), patches + prefix])  # (L,)


def inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    """(L,) token -> scan step: inverse[perm[i]] = i."""
    return torch.argsort(perm)


def to_scan_order(x: torch.Tensor, perm: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x with dimension `dim` (L tokens) taken from token order to perm's scan order."""
    return x.index_select(dim, perm.to(x.device))


def to_token_order(x: torch.Tensor, perm: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x with dimension `dim` (L scan steps) put back from perm's scan order in token order."""
    return x.index_select(dim, inverse_perm(perm.to(x.device)))


def scan_positions(perm: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """Token indices -> the scan steps (len(tokens),) at which perm's direction reads them."""
    idx = torch.as_tensor(list(tokens), dtype=torch.long, device=perm.device)
    return inverse_perm(perm)[idx]


def in_scan_order(name: str) -> bool:
    """True when hook `name` holds its tensor in a scan order other than token order: a
    direction hook of a scan-order mixer (they, and only they, hang under `mixer.dirs.{k}`:
    see SSMStack._paths), except hook_out, which each direction puts back in token order.
    Told from the name alone, so it needs no model."""
    return f".mixer.{_DIRS}." in name and not name.endswith(".hook_out")


# ---------------------------------------------------------------- layer indices
def layer_index(layer, n: int, where: str = "the stack") -> int:
    """The one layer-index rule: an int in [-n, n) (negative counts from the end, as in
    Python; bools and non-integers are refused) -> 0..n-1, else one ValueError naming
    the range and `where` the layers are."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not -n <= layer < n:
        allowed = f"an int in 0..{n - 1}, or -{n}..-1 counting from the end" if n else "none"
        raise ValueError(f"layer {layer!r} is out of range: {where} has {n} layers; "
                         f"give {allowed}")
    return int(layer) % n


# ---------------------------------------------------------------- stacks
class HookAddress(NamedTuple):
    """Where a hook name points: layer, direction k (None for layer-wide hooks), hook."""

    layer: int
    direction: int | None
    hook: str


def _has_hook(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), HookPoint)


def _scans(mixer) -> tuple[nn.Module, ...] | None:
    """The scan directions of an S6 mixer (a module with the S6 hook points, or a list of
    them at `dirs`), None for anything else (e.g. the seed bridge's dense SSM)."""
    dirs = getattr(mixer, _DIRS, None)
    if isinstance(dirs, nn.ModuleList) and len(dirs) and all(_has_hook(d, "hook_delta")
                                                             for d in dirs):
        return tuple(dirs)
    return (mixer,) if isinstance(mixer, nn.Module) and _has_hook(mixer, "hook_delta") else None


class SSMStack:
    """One SSM stack of a model (see the module glossary): its hook names, layer indices
    and, through `stack[layer]`, each layer's directions and scan orders."""

    def __init__(self, name: str, path: str, title: str, blocks: nn.ModuleList,
                 owner: nn.Module | None = None) -> None:
        self.name, self.path, self.title, self.blocks = name, path, title, blocks
        self.owner = owner  # the module holding the block list (model.vision for "vision")
        self.owner_path = path.rpartition(".")[0]  # its name: "vision"; "" for a MambaLM's
        self.token_order = not hasattr(blocks[0].mixer, _DIRS)  # the mixer is one direction

    @property
    def output_order(self) -> torch.Tensor | None:
        """(L,) where the model's output tokens sit in this stack's sequence: output token i
        is the stack's token output_order[i]. The Vision Mamba encoder holds its class token
        mid-sequence (`VisionMamba.output_order`, read from the module that holds the stack,
        so it follows the model's device); None for a stack in the output order."""
        return getattr(self.owner, "output_order", None)

    def own_tokens(self, tokens: Sequence[int]) -> list[int]:
        """Token indices in the model's output order (cls 0, patch p at 1 + p) -> the same
        tokens' indices in this stack's sequence (see `output_order`)."""
        order = self.output_order
        return list(tokens) if order is None else order[list(tokens)].tolist()

    @classmethod
    def of(cls, model: nn.Module, name: str | None = None, *,
           what: str = "this analysis") -> SSMStack:
        """The stack `name` of `model` (None: its only one), or a ValueError saying which
        stacks it has; for a VLM without an SSM bridge, `require_ssm_bridge`'s error."""
        stacks = ssm_stacks(model)
        if name is None and len(stacks) == 1:
            return next(iter(stacks.values()))
        if name in stacks:
            return stacks[name]
        if name in (None, "bridge") and hasattr(getattr(model, "config", None), "bridge_type"):
            # imported here: bridge_variants builds on ssm, which imports this module
            from .bridge_variants import require_ssm_bridge

            require_ssm_bridge(model, what)
        if name is not None and name not in STACKS:
            raise ValueError(f"unknown SSM stack {name!r}; stacks are named {list(STACKS)}")
        raise ValueError(f"{what} needs {'an SSM stack' if name is None else repr(name)}; "
                         f"this {type(model).__name__} has "
                         f"{list(stacks) if stacks else 'none'} (pass one of them as name)")

    def __len__(self) -> int:
        return len(self.blocks)

    def __repr__(self) -> str:
        return f"SSMStack({self.name!r}: {len(self)} layers at {self.path!r})"

    def index(self, layer) -> int:
        """`layer_index` for this stack: 0..n-1 from an int in [-n, n)."""
        return layer_index(layer, len(self), self.title)

    def indices(self, layers=None) -> list[int]:
        """Layer indices 0..n-1 from one layer, several (negative from the end), or None
        for every layer."""
        if layers is None:
            return list(range(len(self)))
        chosen = [layers] if isinstance(layers, numbers.Integral) else list(layers)
        return [self.index(layer) for layer in chosen]

    def __getitem__(self, layer) -> SSMLayerRef:
        i = self.index(layer)
        return SSMLayerRef(self, i, self.blocks[i])

    def __iter__(self) -> Iterator[SSMLayerRef]:
        return iter(self.select())

    def select(self, layers=None) -> list[SSMLayerRef]:
        """SSMLayerRefs of the chosen layers (None: all), in the order given."""
        return [self[i] for i in self.indices(layers)]

    def hook(self, name: str, layer, direction=None) -> str:
        """The full name of hook `name` of one layer (and direction, for direction hooks
        of a scan-order mixer: an index or a name)."""
        return self[layer].hook(name, direction)

    def glob(self, name: str, layer="*", direction="*") -> str:
        """A glob over hook `name` in every layer and direction ("*"), or in one layer /
        direction: 'bridge.layers.*.mixer.dirs.*.hook_delta'."""
        ref = self[0]
        i = layer if layer == "*" else self.index(layer)
        k = direction if direction == "*" else ref.direction(direction)
        return self._address(ref, name, str(i), str(k))

    def hook_names(self, hooks: Iterable[str], layers=None) -> list[str]:
        """Names of `hooks` in the chosen layers (None: all), layer by layer, each
        direction in turn (a layer-wide hook once per layer)."""
        names: list[str] = []
        for ref in self.select(layers):
            for k in range(len(ref.directions)):
                for h in hooks:
                    name = ref.hook(h, k if ref.per_direction(h) else None)
                    if name not in names:
                        names.append(name)
        return names

    def locate(self, name: str) -> HookAddress | None:
        """(layer, direction, hook) of a hook name of this stack, None for other names."""
        if not name.startswith(self.path + "."):
            return None
        index, _, rest = name[len(self.path) + 1:].partition(".")
        if not index.isdigit() or int(index) >= len(self) or not rest:
            return None
        ref, hook = self[int(index)], name.rpartition(".")[2]
        for k in (*range(len(ref.directions)), None):
            try:
                if ref.hook(hook, k) == name:
                    return HookAddress(ref.index, k, hook)
            except ValueError:
                continue
        return None

    def _paths(self, layer: str, direction: str | None) -> tuple[str, str, str | None]:
        """Module paths (block, mixer, scan direction) of a layer and direction given as
        text (an index or '*'); the direction's is None when a scan-order mixer gets none."""
        block = f"{self.path}.{layer}"
        mixer = f"{block}.mixer"
        if self.token_order:
            return block, mixer, mixer
        return block, mixer, None if direction is None else f"{mixer}.{_DIRS}.{direction}"

    def _address(self, ref: SSMLayerRef, name: str, layer: str, direction: str | None) -> str:
        """Hook `name` at layer and direction given as text (an index or '*')."""
        block, mixer, scan = self._paths(layer, direction)
        if ref.per_direction(name):
            if scan is None:
                raise ValueError(f"{name} is a hook of each scan direction: give direction= "
                                 f"one of {list(ref.direction_names)} or 0..{len(ref) - 1}")
            return f"{scan}.{name}"
        if _has_hook(ref.mixer, name):
            return f"{mixer}.{name}"
        if _has_hook(ref.block, name):
            return f"{block}.{name}"
        raise ValueError(f"{self.title}'s layers have no hook {name!r}; they have "
                         f"{ref.hook_suffixes()}")


@dataclass(frozen=True)
class SSMLayerRef:
    """One layer of an SSMStack: its modules, direction names, hook names and scan orders."""

    stack: SSMStack
    index: int
    block: nn.Module

    @property
    def mixer(self) -> nn.Module:
        return self.block.mixer

    @property
    def directions(self) -> tuple[nn.Module, ...]:
        """The scan direction modules (ScanDirection), K of them (one for token order)."""
        return _scans(self.mixer)

    @property
    def direction_names(self) -> tuple[str, ...]:
        return (TOKEN_ORDER,) if self.stack.token_order else tuple(self.mixer.direction_names)

    def __len__(self) -> int:
        return len(self.directions)

    def direction(self, direction) -> int:
        """Direction index k from k (negative from the end) or a name; a ValueError
        naming this layer's directions otherwise."""
        names = list(self.direction_names)
        if isinstance(direction, str) and direction in names:
            return names.index(direction)
        if isinstance(direction, numbers.Integral) and not isinstance(direction, bool) \
                and -len(names) <= direction < len(names):
            return int(direction) % len(names)
        raise ValueError(f"unknown scan direction {direction!r}: layer {self.index} of "
                         f"{self.stack.title} scans {names} (give names or indices "
                         f"0..{len(names) - 1})")

    @property
    def mixer_path(self) -> str:
        """Module path of the mixer ('bridge.layers.0.mixer')."""
        return self.stack._paths(str(self.index), None)[1]

    def direction_path(self, direction) -> str:
        """Module path of one scan direction, where its hooks hang
        ('bridge.layers.0.mixer.dirs.1'; a token-order mixer's own path)."""
        return self.stack._paths(str(self.index), str(self.direction(direction)))[2]

    def per_direction(self, name: str) -> bool:
        """True for the hooks each scan direction has (in its scan order but hook_out)."""
        return _has_hook(self.directions[0], name)

    def hook(self, name: str, direction=None) -> str:
        """Full name of hook `name` (direction: needed for direction hooks of a scan-order
        mixer; for a token-order mixer None, 0 or 'causal')."""
        per = self.per_direction(name)
        if direction is not None:
            k = self.direction(direction)
            if not per:
                raise ValueError(f"{name} is shared by the directions of a layer; give no "
                                 "direction")
        return self.stack._address(self, name, str(self.index),
                                   str(k) if direction is not None else None)

    def hook_suffixes(self) -> list[str]:
        """Every hook of this layer, by its last name part (hook_delta, hook_gate, ...)."""
        mods = (self.block, self.mixer, self.directions[0])
        return sorted({n for m in mods for n, c in m.named_children() if isinstance(c, HookPoint)})

    def perm(self, direction, length: int, device=None) -> torch.Tensor:
        """(L,) the token read at each scan step of `direction` (a name or index)."""
        return direction_perm(self.direction_names[self.direction(direction)], length, device,
                              getattr(self.mixer, "prefix_tokens", None))

    def to_token_order(self, x: torch.Tensor, direction, dim: int = 1) -> torch.Tensor:
        """x (dimension `dim` in `direction`'s scan order) in token order."""
        return to_token_order(x, self.perm(direction, x.shape[dim], x.device), dim)

    def to_scan_order(self, x: torch.Tensor, direction, dim: int = 1) -> torch.Tensor:
        """x (dimension `dim` in token order) in `direction`'s scan order."""
        return to_scan_order(x, self.perm(direction, x.shape[dim], x.device), dim)

    def scan_positions(self, direction, tokens: Sequence[int], length: int) -> torch.Tensor:
        """Token indices -> the scan steps at which `direction` reads them (len(tokens),)."""
        return scan_positions(self.perm(direction, length), tokens)


def ssm_stacks(model: nn.Module) -> dict[str, SSMStack]:
    """The SSM stacks `model` has, by name (see STACKS), in STACKS' order."""
    found = {}
    for name, (path, title) in STACKS.items():
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) and all(
                _scans(getattr(b, "mixer", None)) for b in blocks):
            stack = SSMStack(name, path, title, blocks)
            stack.owner = model.get_submodule(stack.owner_path)  # "" -> the model itself
            found[name] = stack
    return found


__all__ = [
    "DIRECTION_NAMES",
    "STACKS",
    "TOKEN_ORDER",
    "HookAddress",
    "SSMLayerRef",
    "SSMStack",
    "direction_perm",
    "grid_layout",
    "in_scan_order",
    "inverse_perm",
    "layer_index",
    "scan_positions",
    "ssm_stacks",
    "to_scan_order",
    "to_token_order",
]
