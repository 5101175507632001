"""Hook points and the TransformerLens-style API on top of them.

Every tensor worth studying passes through a `HookPoint`, an identity module named
by its module path (e.g. ``bridge.layers.0.mixer.dirs.0.hook_delta``). On top:

    logits, cache = run_with_cache(model, images, tokens, names_filter="bridge.*delta")
    with hooks(model, fwd_hooks=[("bridge.layers.0.mixer.hook_gate", fn)]):
        logits = model(images, tokens)     # fn(tensor, name) -> replacement or None

`EnhancedVLM` exposes both as methods. Hooks are always removed, even after an
exception; a name or glob that matches no hook point raises, and so does a hook that
never fired. Memory-heavy captures (the (B, L, D, N) tensors: Ā, B̄x and the state h)
are computed only when a hook watches them (`HookPoint.active`), and `names_filter`
leaves them out unless `heavy=True` or they are named explicitly.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

HEAVY_SUFFIXES = ("hook_A_bar", "hook_dBx", "hook_state")

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity on the forward pass; a named place to attach hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when a forward hook is attached (opt-in captures check this)."""
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every HookPoint of `model` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def is_heavy(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in HEAVY_SUFFIXES


def hook_names(model: nn.Module, heavy: bool = True) -> list[str]:
    """All hook names, in module order (heavy ones included unless heavy=False)."""
    return [n for n in hook_points(model) if heavy or not is_heavy(n)]


def resolve_names(model: nn.Module, names_filter=None, heavy: bool = False) -> list[str]:
    """Hook names selected by a filter: None (all), a name or glob, a list of them, or a
    predicate. Heavy hooks come only with heavy=True or when named without a wildcard.
    A name or glob that matches nothing raises ValueError listing similar names."""
    names = list(hook_points(model))
    if names_filter is None:
        return [n for n in names if heavy or not is_heavy(n)]
    if callable(names_filter):
        return [n for n in names if names_filter(n) and (heavy or not is_heavy(n))]
    patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    chosen: list[str] = []
    for pat in patterns:
        exact = pat in names
        hits = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)]
        hits = [n for n in hits if exact or heavy or not is_heavy(n)]
        if not hits:
            raise ValueError(f"no hook point matches {pat!r}; " + _suggest(pat, names))
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _suggest(pattern: str, names: list[str]) -> str:
    tail = pattern.rsplit(".", 1)[-1].strip("*")
    similar = [n for n in names if tail and tail in n][:5] or names[:5]
    return ("similar names: " + ", ".join(similar) +
            " (model.hook_names() lists them all; heavy hooks need heavy=True or their full name)")


@contextlib.contextmanager
def hooks(model: nn.Module, fwd_hooks: Iterable[tuple[str, HookFn]] = (), *,
          heavy: bool = True, check_fired: bool = True) -> Iterator[nn.Module]:
    """Attach `fn(tensor, name) -> tensor | None` at each (name or glob, fn) pair.

    A returned tensor replaces the activation (it must keep its shape). All hooks are
    removed on exit, exception or not; on a normal exit a hook that never fired raises
    RuntimeError (pass check_fired=False for runs that skip parts of the model).
    """
    points = hook_points(model)
    fired: dict[str, bool] = {}
    handles = []
    try:
        for pattern, fn in fwd_hooks:
            for name in resolve_names(model, pattern, heavy=heavy):
                fired.setdefault(name, False)
                handles.append(points[name].register_forward_hook(_wrap(fn, name, fired)))
        yield model
    finally:
        for h in handles:
            h.remove()
    missed = [n for n, ok in fired.items() if not ok]
    if check_fired and missed:
        raise RuntimeError(f"hooks never fired at {', '.join(missed)}: the forward pass did "
                           f"not reach them (e.g. encode_image alone skips the decoder)")


def _wrap(fn: HookFn, name: str, fired: dict[str, bool]):
    def hook(module, args, out):
        fired[name] = True
        new = fn(out, name)
        if new is None:
            return None
        if not isinstance(new, torch.Tensor) or new.shape != out.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"hook at {name} must return None or a tensor of shape "
                             f"{tuple(out.shape)}; got {got}")
        return new
    return hook


class ActivationCache(Mapping):
    """Captured activations by hook name (detached tensors, on the model's device)."""

    def __init__(self, store: dict[str, torch.Tensor]) -> None:
        self._store = store

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the cache; " +
                           _suggest(name, list(self._store))) from None

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def names(self) -> list[str]:
        return list(self._store)

    def filter(self, pattern: str) -> dict[str, torch.Tensor]:
        """The entries whose names match a glob, in capture order."""
        return {n: t for n, t in self._store.items() if fnmatch.fnmatchcase(n, pattern)}

    def to(self, device) -> ActivationCache:
        return ActivationCache({n: t.to(device) for n, t in self._store.items()})

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors: {', '.join(self.names[:4])}, ...)"


def capture(names: list[str]):
    """(fwd_hooks, store): hooks that save detached activations into `store`."""
    store: dict[str, torch.Tensor] = {}

    def save(t: torch.Tensor, name: str) -> None:
        store[name] = t.detach()

    return [(n, save) for n in names], store


def run_with_cache(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor | None = None,
                   names_filter=None, *, heavy: bool = False, grad: bool = False):
    """Run the model and capture activations: (logits, ActivationCache).

    With tokens=None only the image path runs (ViT and bridge; the output is the bridge's
    media (B, L, text_dim) instead of logits). Logits equal a plain forward exactly
    unless heavy captures are on (their explicit scan agrees to ~1e-6).
    """
    names = resolve_names(model, names_filter, heavy=heavy)
    if tokens is None:
        names = [n for n in names if n.startswith(("vision.", "bridge."))]
    fwd_hooks, store = capture(names)
    with torch.set_grad_enabled(grad), hooks(model, fwd_hooks):
        out = model.encode_image(images) if tokens is None else model(images, tokens)
    return out, ActivationCache(store)
