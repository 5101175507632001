"""Hook points and the TransformerLens-style API on top of them.

Every tensor worth studying passes through a `HookPoint`, an identity module named
by its module path (e.g. ``bridge.layers.0.mixer.dirs.0.hook_delta``). On top:

    logits, cache = run_with_cache(model, images, tokens, names_filter="bridge.*delta")
    with hooks(model, fwd_hooks=[("bridge.layers.0.mixer.hook_gate", fn)]):
        logits = model(images, tokens)     # fn(tensor, name) -> replacement or None

`EnhancedVLM` exposes both as methods. Hooks are always removed, even after an
exception; a name or glob that matches no hook point raises, and so does a hook that
never fired. Memory-heavy captures (the (B, L, D, N) tensors: Ā, B̄x and the state h)
are computed only when a hook watches them (`HookPoint.active`); `hooks` and
`run_with_cache` alike leave them out of globs and filters unless `heavy=True`, and a
heavy hook named in full is always attached.

Hooks belong to the thread that attached them: a hook added in one thread never fires
for a forward pass run by another, so concurrent `generate(return_traces=True)` or
`run_with_cache` calls on one model each see only their own activations. (The backward
pass of a gradient-checkpointed block re-runs its forward with the hooks that were
attached when the block first ran, whichever thread runs the backward.)
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

HEAVY_SUFFIXES = ("hook_A_bar", "hook_dBx", "hook_state")

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]
PointFn = Callable[[torch.Tensor], "torch.Tensor | None"]

# Hooks per thread: _local.hooks maps a HookPoint to the functions this thread attached
# to it. _attached counts them over all threads, so that a HookPoint with none attached
# anywhere costs one global read (benchmarks/run.py hook_overhead).
_local = threading.local()
_attached = 0
_count_lock = threading.Lock()


def _thread_hooks() -> dict[HookPoint, list[PointFn]]:
    hooks_ = getattr(_local, "hooks", None)
    if hooks_ is None:
        hooks_ = _local.hooks = {}
    return hooks_


class HookPoint(nn.Module):
    """Identity on the forward pass; a named place to attach hooks (per thread)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _attached:
            for fn in getattr(_local, "hooks", {}).get(self, ()):
                new = fn(x)
                if new is not None:
                    x = new
        return x

    @property
    def active(self) -> bool:
        """True when this thread attached a hook here, or a torch forward hook is
        registered (opt-in captures check this)."""
        return (bool(self._forward_hooks) or bool(self._forward_pre_hooks)
                or bool(_attached and getattr(_local, "hooks", {}).get(self)))


def watched(*modules: nn.Module) -> bool:
    """Whether a hook may act inside `modules` in this thread: one it attached to a
    HookPoint there, a torch forward (pre-)hook on any of their submodules, or a global one
    (fused fast paths, which skip the hook points, run only when this is False)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    mine = getattr(_local, "hooks", None) if _attached else None
    stack = list(modules)  # a walk of the submodules (module.modules() costs 3x more)
    while stack:
        m = stack.pop()
        if m._forward_hooks or m._forward_pre_hooks or (mine and m in mine):
            return True
        stack.extend(m._modules.values())
    return False


@contextlib.contextmanager
def attached(point: HookPoint, fn: PointFn) -> Iterator[None]:
    """Run `fn(x) -> replacement | None` at `point` in this thread's forward passes until
    exit (the building block of `hooks`)."""
    fns = _thread_hooks().setdefault(point, [])
    fns.append(fn)
    try:
        with _counted():
            yield
    finally:
        fns.remove(fn)
        if not fns:
            _thread_hooks().pop(point, None)


def checkpoint_contexts():
    """context_fn for torch.utils.checkpoint: the recomputation in backward (possibly on
    autograd's device thread) sees the hooks this thread had when the forward ran."""
    snapshot = {p: list(fns) for p, fns in _thread_hooks().items()}
    return contextlib.nullcontext(), _installed(snapshot)


@contextlib.contextmanager
def _installed(snapshot: dict[HookPoint, list[PointFn]]) -> Iterator[None]:
    before = getattr(_local, "hooks", None)
    _local.hooks = snapshot
    try:
        with _counted():
            yield
    finally:
        _local.hooks = before


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    """Keep _attached above zero while inside, so that HookPoints look for hooks."""
    global _attached
    with _count_lock:
        _attached += 1
    try:
        yield
    finally:
        with _count_lock:
            _attached -= 1


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
          heavy: bool = False, check_fired: bool = True) -> Iterator[nn.Module]:
    """Attach `fn(tensor, name) -> tensor | None` at each (name or glob, fn) pair, for
    forward passes of the calling thread only.

    A returned tensor replaces the activation (it must keep its shape). Globs skip the
    heavy (B, L, D, N) hook points unless heavy=True; one named in full is attached. All
    hooks are removed on exit, exception or not; on a normal exit a hook that never fired
    raises RuntimeError (pass check_fired=False for runs that skip parts of the model).
    """
    points = hook_points(model)
    fired: dict[str, bool] = {}
    with contextlib.ExitStack() as stack:
        for pattern, fn in fwd_hooks:
            for name in resolve_names(model, pattern, heavy=heavy):
                fired.setdefault(name, False)
                stack.enter_context(attached(points[name], _wrap(fn, name, fired)))
        yield model
    missed = [n for n, ok in fired.items() if not ok]
    if check_fired and missed:
        raise RuntimeError(f"hooks never fired at {', '.join(missed)}: the forward pass did "
                           f"not reach them (e.g. encode_image alone skips the decoder)")


def _wrap(fn: HookFn, name: str, fired: dict[str, bool]) -> PointFn:
    def hook(out):
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
