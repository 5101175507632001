"""The kit's SSM tools on a `MambaLM`: hidden attention, per-token Δ / gate / state norm,
state resets and patching at chosen tokens, per-layer linear probes.

    layers = token_attention(model, ids)              # LayerAttention per layer, token x token
    errors = verify(model, ids)                       # {layer: rebuild error}, ~1e-7
    stats = token_stats(model, ids)                   # {"delta", "gate", "state_norm"}: (B, n, L)
    with model.hooks(reset_state(model, tokens=[5])):     # forget everything before token 5
        logits = model(ids)
    hooks = patch_state(model, source_ids, tokens=[7])   # the state at token 7 from another text
    rows = probe_layers(model, train_ids, y_train, test_ids, y_test)

Each mixer is one scan in token order, so the maths is the bridge's
(ssm_bridge.interp: implicit_attention, interventions, probes) on the model's SSM stack
"lm" (`SSMStack.of(model)`: layer i's scan at `layers.{i}.mixer`): its α (B, D, L, L) is
causal in token order, row t = the token being computed (query), column s = the token
read (key); y_t = Σ_s α[t, s] x_s + D x_t exactly. Layers are ints, negative counting
from the end (`ssm_bridge.core.addressing.layer_index`).

Tokens are positions 0..L-1 in the sequence given to forward, or to generate (prompt, then
the generated tokens continue the count): intervention hooks read `model.token_offset`, so
they act in a forward and in decoding steps alike, each at the tokens inside the call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..core.addressing import SSMStack
from ..core.hooks import HookFn
from ..interp.implicit_attention import SCAN_HOOKS, LayerAttention, rebuild_errors, stack_attention
from ..interp.interventions import _overwrite
from ..interp.probes import majority_baseline, train_probe

FwdHooks = list[tuple[str, HookFn]]


# ---------------------------------------------------------------- addressing
def _lm(model) -> SSMStack:
    return SSMStack.of(model, "lm", what="the MambaLM tools")


def layer_indices(model, layers=None) -> list[int]:
    """Layer indices (negative count from the end); None: every layer."""
    return _lm(model).indices(layers)


def _tokens(tokens) -> list[int]:
    items = [tokens] if isinstance(tokens, (int, np.integer)) else list(tokens)
    bad = [t for t in items if isinstance(t, bool) or not isinstance(t, (int, np.integer))
           or t < 0]
    if not items or bad:
        raise ValueError(f"tokens must be positions >= 0 in the sequence (ints), got {tokens!r}")
    return sorted({int(t) for t in items})


# ---------------------------------------------------------------- hidden attention
def attention_hook_names(model, layers=None, *, ssm_out: bool = False) -> list[str]:
    """The hooks hidden attention needs per layer: hook_conv, hook_delta, hook_B, hook_C
    (and hook_ssm_out with ssm_out=True, to check the rebuild)."""
    hooks = (*SCAN_HOOKS, "hook_ssm_out") if ssm_out else SCAN_HOOKS
    return _lm(model).hook_names(hooks, layers)


def from_cache(cache: Mapping[str, torch.Tensor], model, layer: int, *,
               dtype: torch.dtype = torch.float32) -> LayerAttention:
    """LayerAttention of one layer from a cache holding `attention_hook_names(model, [layer])`.

    One scan direction ("causal") in token order: alpha_scan (B, 1, D, L, L) and alpha_patch
    (B, D, L, L) are the same matrices; alpha_abs / alpha_signed average the D channels."""
    ref = _lm(model)[layer]
    missing = [n for n in attention_hook_names(model, [ref.index]) if n not in cache]
    if missing:
        raise ValueError(f"the cache lacks {missing[0]}; capture with names_filter="
                         f"attention_hook_names(model, [{ref.index}]) or use token_attention")
    return stack_attention(cache, ref, dtype=dtype)


def token_attention(model, input_ids: torch.Tensor, layers=None, *,
                    dtype: torch.dtype = torch.float32) -> list[LayerAttention]:
    """Hidden attention of the chosen layers (None: all) from one forward of input_ids."""
    chosen = layer_indices(model, layers)
    _, cache = model.run_with_cache(input_ids, attention_hook_names(model, chosen))
    return [from_cache(cache, model, i, dtype=dtype) for i in chosen]


def verify(model, input_ids: torch.Tensor, rtol: float = 1e-4, *,
           dtype: torch.dtype = torch.float64, strict: bool = False) -> dict[int, float]:
    """{layer: max |Σ_s α[t, s] x_s + D x_t - y_t| / max |y|}: how exactly each layer's α
    rebuilds its scan output (hook_ssm_out). strict=True raises when one exceeds rtol."""
    _, cache = model.run_with_cache(input_ids, attention_hook_names(model, ssm_out=True))
    errors = rebuild_errors(cache, _lm(model), rtol, dtype=dtype, strict=strict)
    return {layer: e for (layer, _), e in errors.items()}  # one direction per layer


# ---------------------------------------------------------------- per-token readings
STATS = {"delta": "hook_delta", "gate": "hook_gate", "state_norm": "hook_state"}


@torch.no_grad()
def token_stats(model, input_ids: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
    """Per token and layer, from one forward: "delta" mean Δ over the D channels (how much
    the token is written into the state), "gate" mean SiLU(z) (how much of the scan output
    passes), "state_norm" ||h_t|| over (D, N). Each (B, len(layers), L), float32. The state
    hook is heavy (the explicit scan runs, ~1e-6 from the fused one); norms are taken as it
    runs, so no (B, L, D, N) tensor is kept."""
    chosen = layer_indices(model, layers)
    out: dict[str, dict[int, torch.Tensor]] = {k: {} for k in STATS}

    def reader(stat: str, layer: int) -> HookFn:
        def fn(t: torch.Tensor, name: str) -> None:
            flat = t.float().flatten(2)  # (B, L, D) or (B, L, D*N)
            out[stat][layer] = flat.norm(dim=-1) if stat == "state_norm" else flat.mean(-1)
        return fn

    lm = _lm(model)
    fwd = [(lm.hook(hook, i), reader(stat, i)) for stat, hook in STATS.items() for i in chosen]
    with model.hooks(fwd):
        model(input_ids)
    return {stat: torch.stack([v[i] for i in chosen], 1) for stat, v in out.items()}


# ---------------------------------------------------------------- interventions
def _at_tokens(model, tokens: list[int], value) -> HookFn:
    """A hook setting t[:, token] = value at the `tokens` that fall inside the current call
    (tokens model.token_offset .. + L - 1); value: a number, or value(inside) giving
    (1 | B, n_inside, ...) for the boolean mask `inside` over `tokens`."""
    tok = torch.tensor(tokens)

    def fn(t: torch.Tensor, name: str) -> torch.Tensor | None:
        lo = model.token_offset
        inside = (tok >= lo) & (tok < lo + t.shape[1])
        if not inside.any():
            return None
        v = value(inside) if callable(value) else value
        return _overwrite(tok[inside] - lo, v)(t, name)
    return fn


def _state_hooks(model, tokens, layers, dbx) -> FwdHooks:
    """Ā = 0 at the tokens (and B̄x = dbx(layer ref, tokens) there unless dbx is None) in
    each layer."""
    tokens = _tokens(tokens)
    hooks: FwdHooks = []
    for ref in _lm(model).select(layers):
        hooks.append((ref.hook("hook_A_bar"), _at_tokens(model, tokens, 0.0)))
        if dbx is not None:
            hooks.append((ref.hook("hook_dBx"), _at_tokens(model, tokens, dbx(ref, tokens))))
    return hooks


def reset_state(model, tokens, layers=None) -> FwdHooks:
    """Forget the past at `tokens`: Ā_t = 0, so h_t = B̄x_t (the token's own input) and the
    scan goes on from there. (The conv window still reads the K-1 tokens before t.)"""
    return _state_hooks(model, tokens, layers, dbx=None)


def zero_state(model, tokens, layers=None) -> FwdHooks:
    """State 0 at `tokens`: Ā_t = 0 and B̄x_t = 0, so h_t = 0 and the scan restarts from 0."""
    return _state_hooks(model, tokens, layers, dbx=lambda ref, tokens: 0.0)


def state_names(model, layers=None) -> list[str]:
    """The heavy hook_state names (B, L, D, N) of the chosen layers."""
    return _lm(model).hook_names(["hook_state"], layers)


def source_states(model, input_ids: torch.Tensor, layers=None) -> Mapping[str, torch.Tensor]:
    """The states h of the chosen layers for `input_ids` (a source for `patch_state`)."""
    return model.run_with_cache(input_ids, state_names(model, layers))[1]


def patch_state(model, source, tokens, layers=None) -> FwdHooks:
    """Activation patching of the state: at `tokens` each chosen layer's scan is set to the
    source's state h (Ā_t = 0, B̄x_t = h_source_t) and runs on from it. source: ids
    (1 | B, L) run here, or a cache with their hook_state (e.g. `source_states`)."""
    if isinstance(source, torch.Tensor):
        source = source_states(model, source, layers)
    if not isinstance(source, Mapping):
        raise ValueError(f"source must be token ids (B, L) or a cache of hook_state tensors, "
                         f"got {type(source).__name__}")
    for name in state_names(model, layers):
        if name not in source:
            raise ValueError(f"the source cache lacks {name}; build it with "
                             "source_states(model, ids)")
        if max(_tokens(tokens)) >= source[name].shape[1]:
            raise ValueError(f"token {max(_tokens(tokens))} is past the source's "
                             f"{source[name].shape[1]} tokens")

    def dbx(ref, toks: list[int]):
        h = source[ref.hook("hook_state")]  # (Bs, Ls, D, N)
        return lambda inside: h[:, torch.tensor(toks)[inside]]  # (Bs, n_inside, D, N)

    return _state_hooks(model, tokens, layers, dbx)


# ---------------------------------------------------------------- probes
def feature_hooks(model) -> dict[str, str]:
    """Probe layer name -> hook: "embed" (the embeddings), "layer_{i}" (residual stream after
    block i), "final" (after norm_f)."""
    names = {"embed": "hook_embed"}
    names.update({f"layer_{ref.index}": ref.hook("hook_resid_post") for ref in _lm(model)})
    names["final"] = "hook_resid_final"
    return names


@torch.no_grad()
def layer_features(model, input_ids: torch.Tensor, positions: Sequence[int] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Probe layer name -> features (B * n, H) float32 at `positions` (None: every token),
    sequence-major, from one forward."""
    hooks = feature_hooks(model)
    _, cache = model.run_with_cache(input_ids, list(hooks.values()))
    pos = slice(None) if positions is None else torch.as_tensor(list(positions))
    return {n: cache[h][:, pos].float().flatten(0, 1).cpu() for n, h in hooks.items()}


def probe_layers(model, train_ids: torch.Tensor, train_labels, test_ids: torch.Tensor,
                 test_labels, *, positions: Sequence[int] | None = None, seed: int = 0,
                 epochs: int = 300, weight_decay: float = 1e-5) -> list[dict]:
    """A linear probe (ssm_bridge.interp.probes.train_probe) per layer of `feature_hooks`: labels
    (B, n) per sequence and position (n = len(positions), or L). One row per layer: layer,
    accuracy, majority_baseline, n_test."""
    ytr, yte = (np.asarray(y, dtype=object).reshape(-1) for y in (train_labels, test_labels))
    Ftr = layer_features(model, train_ids, positions)
    Fte = layer_features(model, test_ids, positions)
    first = next(iter(Ftr.values()))
    if len(ytr) != first.shape[0] or len(yte) != next(iter(Fte.values())).shape[0]:
        raise ValueError(f"labels must be one per sequence and position: train {len(ytr)} "
                         f"for {first.shape[0]} features, test {len(yte)}")
    rows = []
    for name in Ftr:
        probe = train_probe(Ftr[name], ytr, seed=seed, epochs=epochs, weight_decay=weight_decay)
        rows.append({"layer": name, "accuracy": probe.accuracy(Fte[name], yte),
                     "majority_baseline": majority_baseline(ytr, yte), "n_test": len(yte)})
    return rows


__all__ = [
    "attention_hook_names",
    "feature_hooks",
    "from_cache",
    "layer_features",
    "layer_indices",
    "patch_state",
    "probe_layers",
    "reset_state",
    "source_states",
    "state_names",
    "token_attention",
    "token_stats",
    "verify",
    "zero_state",
]
