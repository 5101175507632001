"""Words traced to pixels through selective scans: the attention-free path of a VLM whose
decoder is a Mamba LM (`decoder_type="mamba"`), through an SSM bridge and a Vision Mamba
encoder when it has them.

The Mamba decoder reads [image prefix (P tokens, cls first) ; text]. Each layer's hidden
attention (ssm_bridge.interp.implicit_attention; channel-averaged |α|, (P + T) x (P + T))
says how much each earlier token flows into the output at a position through that layer's
scan. Word i was written by the query at q_i = P + word_index[i] - 1, so

    hidden_attention[i, l] = |α_l|[q_i, :P]                       decoder layer l -> prefix
    hidden_rollout[i]      = R_dec[q_i, :P] @ R_bridge @ R_vision   -> the encoder's patches

where each R is a stack's attention rollout (`implicit_attention.rollout`: residual added,
rows normalised, layers multiplied): R_dec over the decoder's P + T tokens, R_bridge over the
bridge's L = P tokens in patch order, and R_vision over the Vim encoder's tokens in its output
order (cls first, as the ViT's). A stack that is not a scan counts as the identity: an MLP
bridge mixes no tokens, and a ViT's attention is not followed (the map then stops at the ViT's
output tokens, as the "implicit" kind does).

Decoder selectivity, per layer and per token of [prefix ; text] (`Selectivity`):
    delta       Δ_t, mean over channels: how far token t moves the state (large Δ: the state
                takes in x_t and forgets the past; small: the token is skipped)
    gate        SiLU(z_t), mean over channels: how much of the scan output reaches the stream
    state_norm  |h_t| (Frobenius over channels and state): the state after token t
                (the heavy hook_state)

One teacher-forced pass over the caption captures what every stack needs (`capture`), and
`verify` checks, as implicit_attention.verify does for the bridge, that α rebuilds every scan
of every stack on the path from those same captures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.addressing import SSMStack, ssm_stacks
from . import implicit_attention as ia

PATH_STACKS = ("decoder", "bridge", "vision")  # read from the word back to the pixels
SELECTIVITY = {"delta": "hook_delta", "gate": "hook_gate", "state_norm": "hook_state"}

__all__ = ["PATH_STACKS", "SELECTIVITY", "PathMaps", "Selectivity", "capture", "decoder_stack",
           "hook_names", "path_maps", "selectivity", "stack_rollout", "verify"]


def decoder_stack(model, what: str = "word -> image hidden attention") -> SSMStack:
    """The model's Mamba decoder stack, or one ValueError saying what it has instead."""
    if getattr(model.config, "decoder_type", None) != "mamba":
        raise ValueError(f"{what} follows a Mamba decoder's scans; this model's decoder is "
                         f"{model.config.decoder_type!r} (its words read the image through "
                         "cross-attention: use the 'cross_attention' or 'implicit' maps)")
    return SSMStack.of(model, "decoder", what=what)


def _path(model) -> dict[str, SSMStack]:
    """The SSM stacks on the word -> pixels path, decoder first."""
    decoder_stack(model)
    stacks = ssm_stacks(model)
    return {name: stacks[name] for name in PATH_STACKS if name in stacks}


# ---------------------------------------------------------------- capture
def hook_names(model, *, ssm_out: bool = False) -> list[str]:
    """Every hook `path_maps` reads (and, with ssm_out, `verify`): each path stack's scan
    hooks, and the decoder's gate and state for its selectivity."""
    scan = (*ia.SCAN_HOOKS, "hook_ssm_out") if ssm_out else ia.SCAN_HOOKS
    names = [n for stack in _path(model).values() for n in stack.hook_names(scan)]
    return names + decoder_stack(model).hook_names(["hook_gate", "hook_state"])


def capture(model, image: torch.Tensor, ids: torch.Tensor, *,
            ssm_out: bool = False) -> Mapping[str, torch.Tensor]:
    """One teacher-forced pass of image (1, 3, H, W) and caption ids (S,) (BOS first): the
    decoder reads [prefix ; ids[:-1]], whose position P + t wrote ids[t + 1]."""
    tokens = ids[None, :-1].to(image.device)  # (1, S - 1)
    return model.run_with_cache(image, tokens, names_filter=hook_names(model, ssm_out=ssm_out))[1]


# ---------------------------------------------------------------- maps
def _layer_alphas(cache, stack: SSMStack) -> list[torch.Tensor]:
    """Channel-averaged |α| per layer, token order (B, L, L), float64."""
    return [ia.stack_attention(cache, ref, dtype=torch.float64, chunked=True).alpha_abs
            for ref in stack]


def stack_rollout(cache: Mapping[str, torch.Tensor], stack: SSMStack) -> torch.Tensor:
    """The rollout (B, L, L) of one stack's hidden attention, in the order of the stack's
    output tokens: for the Vim encoder its internal order, class token in the middle, is
    moved to the output's (cls first), out[i, j] = R[order[i], order[j]]."""
    R = ia.rollout(_layer_alphas(cache, stack))  # (B, L, L)
    if stack.output_order is not None:
        order = stack.output_order.to(R.device)  # (L,) output i <- internal order[i]
        R = R[:, order][:, :, order]  # (B, L, L) output order
    return R


@dataclass
class Selectivity:
    """The decoder's Δ, gate and |h| per layer and token of [prefix ; text]: each
    (layers, P + T) float, P = `prefix` image tokens first (see the module docstring)."""

    delta: torch.Tensor
    gate: torch.Tensor
    state_norm: torch.Tensor
    prefix: int

    def image_part(self, name: str) -> torch.Tensor:
        """(layers, P) the values at the image tokens (cls first)."""
        return getattr(self, name)[:, :self.prefix]

    def at(self, name: str, positions: Sequence[int]) -> torch.Tensor:
        """(layers, len(positions)) the values at decoder positions (P + text index)."""
        return getattr(self, name)[:, list(positions)]


def selectivity(cache: Mapping[str, torch.Tensor], stack: SSMStack, prefix: int) -> Selectivity:
    """Selectivity of the decoder from a `capture` cache (batch row 0)."""
    def per_token(hook: str) -> torch.Tensor:
        rows = []
        for ref in stack:
            t = cache[ref.hook(hook)][0].float()  # (P + T, D) or (P + T, D, N)
            rows.append(t.flatten(1).norm(dim=1) if hook == "hook_state" else t.mean(-1))
        return torch.stack(rows)  # (layers, P + T)

    return Selectivity(**{k: per_token(h) for k, h in SELECTIVITY.items()}, prefix=prefix)


@dataclass
class PathMaps:
    """Per word i (query q_i): hidden_attention (n, layers, P) each decoder layer's |α| from
    q_i onto the image prefix; hidden_rollout (n, P) that flow followed back to the image
    encoder's output tokens (cls first); selectivity of the decoder; queries (n,)."""

    hidden_attention: torch.Tensor
    hidden_rollout: torch.Tensor
    selectivity: Selectivity
    queries: list[int]


def path_maps(model, image: torch.Tensor, ids: torch.Tensor, words_at: Sequence[int],
              cache: Mapping[str, torch.Tensor] | None = None) -> PathMaps:
    """PathMaps for the words at positions `words_at` of ids (S,) (each > 0: BOS first),
    image (1, 3, H, W). `cache`: a `capture` of the same image and ids (else run here)."""
    stacks = _path(model)
    cache = capture(model, image, ids) if cache is None else cache
    P = model.config.num_image_tokens
    queries = [P + w - 1 for w in words_at]
    alphas = _layer_alphas(cache, stacks["decoder"])  # each (1, P + T, P + T)
    per_layer = torch.stack([a[0, queries, :P] for a in alphas], dim=1)  # (n, layers, P)
    flow = ia.rollout(alphas)[0, queries, :P]  # (n, P) decoder rollout onto the prefix
    for name in ("bridge", "vision"):
        if name in stacks:
            flow = flow @ stack_rollout(cache, stacks[name])[0]  # (n, P)
    return PathMaps(per_layer.float(), flow.float(),
                    selectivity(cache, stacks["decoder"], P), queries)


def verify(model, image: torch.Tensor, ids: torch.Tensor, rtol: float = 1e-4, *,
           strict: bool = False) -> dict[tuple[str, int, str], float]:
    """How exactly α rebuilds every scan on the path, from one teacher-forced pass:
    {(stack, layer, direction): max |α x + D x - y| / max |y|} (float64). With strict=True
    raises RuntimeError when an error exceeds rtol."""
    cache = capture(model, image, ids, ssm_out=True)
    errors = {(name, layer, d): err for name, stack in _path(model).items()
              for (layer, d), err in ia.rebuild_errors(cache, stack, rtol).items()}
    bad = {k: v for k, v in errors.items() if v > rtol}
    if strict and bad:
        raise RuntimeError(f"hidden attention does not rebuild the scans within rtol={rtol} "
                           f"for (stack, layer, direction): {bad}")
    return errors
