"""The hidden attention of the bridge's selective scans (Ali, Zimerman & Wolf, 2024,
"The Hidden Attention of Mamba Models").

Unrolling the recurrence h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t x_t (h_{-1} = 0) of one channel d
writes the scan output as a causal linear map of its input, like attention:

    y_t[d] = Σ_{s<=t} α[d, t, s] x_s[d] + D[d] x_t[d]

    α[d, t, s] = Σ_n C_t[n] · exp( Σ_{k=s+1..t} Δ_k[d] A[d, n] ) · Δ_s[d] B_s[n]   (s <= t)
    α[d, t, s] = 0                                                                 (s > t)

C_t plays the query, Δ_s B_s the key and the product of the Ā between them a decay that
only ever shrinks (A < 0, Δ > 0). Unlike softmax attention, α has one matrix per channel
d (D of them, "heads"), its rows do not sum to 1 and it may be negative.

Here x is the scan input of a direction (`hook_conv`: after in_proj, conv and SiLU) and
everything is in that direction's scan order, so α is lower-triangular there. The bridge
reads the patch grid in several orders (raster, bidirectional, cross); `from_cache`
maps each direction's α back to patch order,

    α_patch[b, d, perm[i], perm[j]] = α_scan[b, d, i, j]

and sums the directions, as the layer sums their outputs (each direction convolves its
own copy of the shared in_proj output, so the sum is a convention, as in the paper's
bidirectional Vim: per-direction matrices stay available). Channel averages: `alpha_abs`
= mean_d |α_patch| (strength of mixing, the paper's choice for maps) and `alpha_signed`
= mean_d α_patch (signs cancel across channels).

The exponent is a segment sum, computed for all (t, s) at once as a cumulative sum of
a masked copy of Δ A (the Mamba-2 `segsum` trick). This is the cumsum-then-difference
idea without the subtraction cs_t - cs_s, which loses precision when the running sum
grows large. Entries above the diagonal are set to -inf before the exp, giving exact
zeros and never exp(+large) = inf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import einsum, rearrange, repeat

from ..core.addressing import SSMLayerRef, SSMStack, grid_layout, to_token_order

SCAN_HOOKS = ("hook_conv", "hook_delta", "hook_B", "hook_C")
_MAX_ELEMENTS = 2**25  # largest (B, D, N, L, L) block hidden_attention builds at once


# ---------------------------------------------------------------- the maths
def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """x (..., L) -> (..., L, L) with out[..., t, s] = Σ_{k=s+1..t} x[..., k] for s <= t
    (0 on the diagonal) and -inf above it, so exp(out) is a causal decay matrix."""
    L = x.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L): s <= t
    xs = repeat(x, "... k -> ... k s", s=L).masked_fill(~causal.tril(-1), 0)  # keep k > s
    seg = xs.cumsum(dim=-2)  # (..., L, L): [t, s] = Σ_{s < k <= t} x_k
    return seg.masked_fill(~causal, -torch.inf)  # -inf before the exp: exact zeros, no inf


def hidden_attention(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     *, dtype: torch.dtype = torch.float32,
                     chunk_channels: int | None = None) -> torch.Tensor:
    """Hidden attention α (batch, D, L, L) of one selective scan (see module docstring).

    delta: (batch, L, D) Δ; A: (D, N), negative; B, C: (batch, L, N); all in scan order.
    Computed in `dtype` (float32 or float64), `chunk_channels` channels at a time (default:
    blocks of at most 2**25 elements of the (batch, D, N, L, L) decay tensor).
    """
    _check_scan_shapes(delta, A, B, C)
    delta, A, B, C = (t.detach().to(dtype) for t in (delta, A, B, C))
    batch, L, dim = delta.shape
    step = chunk_channels or max(1, _MAX_ELEMENTS // (batch * A.shape[1] * L * L))
    blocks = [_alpha_block(delta[..., i:i + step], A[i:i + step], B, C)
              for i in range(0, dim, step)]
    return torch.cat(blocks, dim=1)  # (batch, D, L, L)


def _alpha_block(delta, A, B, C):
    """hidden_attention for a block of channels: delta (b, L, d), A (d, N) -> (b, d, L, L)."""
    dA = einsum(delta, A, "b l d, d n -> b d n l")  # (b, d, N, L)
    decay = torch.exp(segment_sum(dA))  # (b, d, N, L, L): Π_{k=s+1..t} Ā_k, 0 above diagonal
    alpha = einsum(C, decay, B, "b t n, b d n t s, b s n -> b d t s")  # (b, d, L, L)
    return alpha * rearrange(delta, "b s d -> b d 1 s")  # times Δ_s


def hidden_attention_chunked(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  block: int = 8) -> torch.Tensor:
    """`hidden_attention` (batch, D, L, L) in float64, ~15x faster: the SSD chunked form
    (Mamba-2), for interactive use (the app, `ssm_bridge.interp.maps`).
    delta (batch, L, D), A (D, N), B, C (batch, L, N).

    With cs_t = Σ_{k<=t} Δ_k A (so the decay from s to t is exp(cs_t - cs_s)), blocks of
    `block` tokens on the diagonal use the difference directly; below them the decay
    factors through m = cs at the block's last key, exp(cs_t - m) · exp(m - cs_s), both
    factors <= 1 (cs only decreases), so each block is a matmul over N.
    """
    delta, A, B, C = (t.detach().double() for t in (delta, A, B, C))
    b, L, D = delta.shape
    cs = (delta[..., None] * A).cumsum(1)  # (b, L, D, N)
    alpha = delta.new_zeros(b, D, L, L)
    for s0 in range(0, L, block):
        s1 = min(s0 + block, L)
        alpha[:, :, s0:s1, s0:s1] = _diagonal_block(cs[:, s0:s1], B[:, s0:s1], C[:, s0:s1])
        if s1 < L:
            m = cs[:, s1 - 1, None]  # (b, 1, D, N)
            left = C[:, s1:, None, :] * torch.exp(cs[:, s1:] - m)  # (b, T, D, N)
            right = B[:, s0:s1, None, :] * torch.exp(m - cs[:, s0:s1])  # (b, Q, D, N)
            alpha[:, :, s1:, s0:s1] = einsum(left, right, "b t d n, b s d n -> b d t s")
    return alpha * rearrange(delta, "b s d -> b d 1 s")  # times Δ_s


def _diagonal_block(cs: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """cs (b, Q, D, N), B, C (b, Q, N) -> (b, D, Q, Q) causal α within one block."""
    q = cs.shape[1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cs.device).tril()  # (Q, Q) s <= t
    diff = cs[:, :, None] - cs[:, None, :]  # (b, Q, Q, D, N): [t, s] = cs_t - cs_s
    decay = torch.exp(diff.masked_fill(~causal[None, :, :, None, None], -torch.inf))
    cb = C[:, :, None, :] * B[:, None, :, :]  # (b, Q, Q, N)
    return einsum(decay, cb, "b t s d n, b t s n -> b d t s")


def hidden_attention_ref(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor) -> torch.Tensor:
    """The formula as loops, in float64: the readable (and slow, O(L³)) twin for tests."""
    _check_scan_shapes(delta, A, B, C)
    delta, A, B, C = (t.detach().double() for t in (delta, A, B, C))
    batch, L, dim = delta.shape
    alpha = delta.new_zeros(batch, dim, L, L)
    for t in range(L):
        for s in range(t + 1):
            exponent = delta[:, s + 1:t + 1].sum(1)[..., None] * A  # (batch, D, N)
            term = C[:, t, None, :] * torch.exp(exponent) * B[:, s, None, :]  # (batch, D, N)
            alpha[:, :, t, s] = term.sum(-1) * delta[:, s]
    return alpha


def rebuild_output(alpha: torch.Tensor, x: torch.Tensor,
                   Dskip: torch.Tensor | None = None) -> torch.Tensor:
    """The scan output from its hidden attention: y_t = Σ_s α[t, s] x_s + Dskip ⊙ x_t.

    alpha: (batch, D, L, L); x: (batch, L, D) the scan input (hook_conv), in the same
    token order as alpha; Dskip: (D,) or None. Returns (batch, L, D) in alpha's dtype.
    """
    if alpha.dim() != 4 or x.shape != (alpha.shape[0], alpha.shape[2], alpha.shape[1]):
        raise ValueError(f"alpha (batch, D, L, L) = {tuple(alpha.shape)} and x (batch, L, D) "
                         f"= {tuple(x.shape)} do not match; pass the scan input hook_conv "
                         "of the same direction and batch as alpha")
    x = x.to(alpha.dtype)
    y = einsum(alpha, x, "b d t s, b s d -> b t d")  # (batch, L, D)
    return y if Dskip is None else y + x * Dskip.to(alpha.dtype)


def direction_alpha(act: Mapping[str, torch.Tensor], direction,
                    dtype: torch.dtype = torch.float32, *, chunked: bool = False) -> torch.Tensor:
    """α (batch, D, L, L) of one scan direction (a `ScanDirection`, e.g. a bridge direction
    or a MambaLM mixer) from its captured hook_delta, hook_B, hook_C (keys as in SCAN_HOOKS).
    chunked=True: by `hidden_attention_chunked` (float64, from A as the scan computes it, in
    the parameter's dtype), then cast to `dtype`."""
    if chunked:
        A = -torch.exp(direction.A_log.detach())  # (D, N)
        return hidden_attention_chunked(act["hook_delta"], A, act["hook_B"],
                                        act["hook_C"]).to(dtype)
    A = -torch.exp(direction.A_log.detach().to(dtype))  # (D, N)
    return hidden_attention(act["hook_delta"], A, act["hook_B"], act["hook_C"], dtype=dtype)


def rebuild_error(act: Mapping[str, torch.Tensor], direction,
                  dtype: torch.dtype = torch.float64) -> float:
    """max |rebuild_output(α, hook_conv, D) - hook_ssm_out| / max |hook_ssm_out| of one scan
    direction from its captured hooks: how exactly α reproduces what the scan computed."""
    alpha = direction_alpha(act, direction, dtype)
    y = rebuild_output(alpha, act["hook_conv"], direction.D.detach())  # (B, L, D)
    target = act["hook_ssm_out"].to(dtype)
    scale = target.abs().max().clamp_min(torch.finfo(dtype).tiny)
    return ((y - target).abs().max() / scale).item()


def scan_activations(cache: Mapping[str, torch.Tensor], prefix: str,
                     hooks: Sequence[str] = SCAN_HOOKS) -> dict[str, torch.Tensor]:
    """{hook: cache[f"{prefix}.{hook}"]} for one scan direction's hook points; prefix: its
    module path (`SSMLayerRef.direction_path(k)`)."""
    return {h: cache[f"{prefix}.{h}"] for h in hooks}


def _check_scan_shapes(delta, A, B, C) -> None:
    if delta.dim() != 3 or A.dim() != 2:
        raise ValueError(f"delta must be (batch, L, D) and A (D, N), got {tuple(delta.shape)} "
                         f"and {tuple(A.shape)}")
    batch, L, dim = delta.shape
    N = A.shape[1]
    for name, t, shape in (("A", A, (dim, N)), ("B", B, (batch, L, N)), ("C", C, (batch, L, N))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} to match "
                             f"delta (batch, L, D) = {tuple(delta.shape)} and A (D, N)")


# ---------------------------------------------------------------- the bridge's layers
@dataclass
class LayerAttention:
    """Hidden attention of one bridge layer (all its scan directions).

    K directions, D channels, L = prefix + side² tokens (cls first when prefix = 1).
    alpha_scan:  (B, K, D, L, L) per direction, in that direction's scan order (causal).
    perms:       (K, L) perms[k, i] = patch-order index of the i-th token direction k reads.
    x_scan:      (B, K, L, D) each direction's scan input (hook_conv), scan order.
    D_skip:      (K, D) each direction's skip weight.
    alpha_patch: (B, D, L, L) patch order, summed over directions; row = query token
                 (output), column = key token (input).
    """

    layer: int
    direction_names: tuple[str, ...]
    perms: torch.Tensor
    alpha_scan: torch.Tensor
    x_scan: torch.Tensor
    D_skip: torch.Tensor
    alpha_patch: torch.Tensor
    prefix: int
    side: int

    def direction_patch(self, k: int) -> torch.Tensor:
        """Direction k's α in patch order: (B, D, L, L)."""
        return to_patch_order(self.alpha_scan[:, k], self.perms[k])

    @property
    def alpha_abs(self) -> torch.Tensor:
        """mean over channels of |α_patch|: (B, L, L), >= 0 (how strongly t reads s)."""
        return self.alpha_patch.abs().mean(1)

    @property
    def alpha_signed(self) -> torch.Tensor:
        """mean over channels of α_patch: (B, L, L), signed (channels may cancel)."""
        return self.alpha_patch.mean(1)

    def averaged(self, mode: str = "abs") -> torch.Tensor:
        """Channel average (B, L, L): mode "abs" (alpha_abs) or "signed" (alpha_signed)."""
        if mode not in ("abs", "signed"):
            raise ValueError(f"mode must be 'abs' or 'signed', got {mode!r}")
        return self.alpha_abs if mode == "abs" else self.alpha_signed


def to_patch_order(alpha_scan: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """(..., L, L) in scan order -> patch order: out[..., perm[i], perm[j]] = in[..., i, j]."""
    return to_token_order(to_token_order(alpha_scan, perm, -2), perm, -1)  # (..., L, L)


def _bridge(model) -> SSMStack:
    return SSMStack.of(model, "bridge", what="implicit attention")


def bridge_hook_names(model, layers: Iterable[int] | None = None, *,
                      ssm_out: bool = False) -> list[str]:
    """Hook names `from_cache` needs (for run_with_cache's names_filter): per layer and
    direction hook_conv, hook_delta, hook_B, hook_C (and hook_ssm_out with ssm_out=True)."""
    hooks = (*SCAN_HOOKS, "hook_ssm_out") if ssm_out else SCAN_HOOKS
    return _bridge(model).hook_names(hooks, None if layers is None else list(layers))


def from_cache(cache: Mapping[str, torch.Tensor], model, layer: int, *,
               dtype: torch.dtype = torch.float32, chunked: bool = False) -> LayerAttention:
    """LayerAttention of bridge layer `layer` from an activation cache (any mapping of hook
    name -> tensor holding `bridge_hook_names(model, [layer])`, e.g. an ActivationCache).

    chunked=True computes α with `hidden_attention_chunked` (float64, ~15x faster, for
    interactive maps: ssm_bridge.interp.maps, the app) from A as the scan computes it, in the
    parameter's dtype; the result is then cast to `dtype`."""
    ref = _bridge(model)[layer]
    names = bridge_hook_names(model, [ref.index])
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(f"the cache lacks {missing[:2]}{' ...' if len(missing) > 2 else ''}; "
                         f"capture with names_filter=bridge_hook_names(model, [{ref.index}]) "
                         "or use layer_attention(model, images, layer)")
    return stack_attention(cache, ref, dtype=dtype, chunked=chunked)


def stack_attention(cache: Mapping[str, torch.Tensor], ref: SSMLayerRef, *,
                    dtype: torch.dtype = torch.float32, chunked: bool = False) -> LayerAttention:
    """LayerAttention of one layer of any SSM stack (`SSMStack.of(model)[layer]`) from a
    cache holding its directions' SCAN_HOOKS. A token-order stack (a language model) reads
    no patch grid: prefix = side = 0."""
    alphas, xs, perms = [], [], []
    for k, d in enumerate(ref.directions):
        act = scan_activations(cache, ref.direction_path(k))
        alphas.append(direction_alpha(act, d, dtype, chunked=chunked))  # (B, D, L, L)
        xs.append(act["hook_conv"].detach().to(dtype))
        perms.append(ref.perm(k, xs[-1].shape[1], xs[-1].device))
    alpha_scan = torch.stack(alphas, 1)  # (B, K, D, L, L)
    perms_t = torch.stack(perms)  # (K, L)
    alpha_patch = sum(to_patch_order(alpha_scan[:, k], perms_t[k]) for k in range(len(perms)))
    prefix, side = (0, 0) if ref.stack.token_order else grid_layout(alpha_scan.shape[-1])
    return LayerAttention(ref.index, ref.direction_names, perms_t, alpha_scan,
                          torch.stack(xs, 1),  # (B, K, L, D)
                          torch.stack([d.D.detach().to(dtype) for d in ref.directions]),  # (K, D)
                          alpha_patch, prefix, side)


def capture_bridge(model, images: torch.Tensor, layers: Iterable[int] | None = None, *,
                   ssm_out: bool = False) -> Mapping[str, torch.Tensor]:
    """Run model.encode_image(images) once (no tokens needed) and return {hook name:
    detached tensor} for `bridge_hook_names(model, layers, ssm_out=ssm_out)`."""
    _bridge(model)
    from ..core.checks import check_images

    check_images(images, model.config)
    names = bridge_hook_names(model, layers, ssm_out=ssm_out)
    return model.run_with_cache(images, None, names_filter=names)[1]


def layer_attention(model, images: torch.Tensor, layer: int = -1, *,
                    dtype: torch.dtype = torch.float32) -> LayerAttention:
    """Hidden attention of bridge layer `layer` (negative counts from the end) for images
    (B, C, H, W): one forward through the vision encoder and bridge."""
    layer = _bridge(model).index(layer)
    return from_cache(capture_bridge(model, images, [layer]), model, layer, dtype=dtype)


def bridge_attention(model, images: torch.Tensor, *,
                     dtype: torch.dtype = torch.float32) -> list[LayerAttention]:
    """LayerAttention of every bridge layer, first to last, from one forward pass."""
    cache = capture_bridge(model, images)
    return [from_cache(cache, model, i, dtype=dtype) for i in range(len(_bridge(model)))]


def verify(model, images: torch.Tensor, rtol: float = 1e-4, *, dtype: torch.dtype = torch.float64,
           strict: bool = False) -> dict[tuple[int, str], float]:
    """Check that α rebuilds every scan: {(layer, direction name): error}, where error =
    max |rebuild_output(α, hook_conv, D) - hook_ssm_out| / max |hook_ssm_out|.

    With strict=True raises RuntimeError when an error exceeds rtol.
    """
    cache = capture_bridge(model, images, ssm_out=True)
    return rebuild_errors(cache, _bridge(model), rtol, dtype=dtype, strict=strict)


def rebuild_errors(cache: Mapping[str, torch.Tensor], stack: SSMStack, rtol: float = 1e-4, *,
                   dtype: torch.dtype = torch.float64,
                   strict: bool = False) -> dict[tuple[int, str], float]:
    """`rebuild_error` of every layer and direction of an SSM stack from a cache holding
    their SCAN_HOOKS and hook_ssm_out: {(layer, direction name): error}. With strict=True
    raises RuntimeError when an error exceeds rtol."""
    errors = {}
    for ref in stack:
        for k, (name, d) in enumerate(zip(ref.direction_names, ref.directions)):
            act = scan_activations(cache, ref.direction_path(k), (*SCAN_HOOKS, "hook_ssm_out"))
            errors[(ref.index, name)] = rebuild_error(act, d, dtype)
    bad = {key: err for key, err in errors.items() if err > rtol}
    if strict and bad:
        raise RuntimeError(f"hidden attention does not rebuild the scan output within "
                           f"rtol={rtol} for (layer, direction): {bad}")
    return errors


# ---------------------------------------------------------------- maps and rollout
def patch_attention_maps(alpha_avg: torch.Tensor) -> torch.Tensor:
    """For every query patch p, how much each key patch contributes to it:
    (..., L, L) channel-averaged α in patch order -> (..., P, g, g) with P = g².
    The cls token (row and column 0 when present) is left out; read alpha_avg[..., 0]."""
    prefix, side = _grid(alpha_avg)
    patches = alpha_avg[..., prefix:, prefix:]  # (..., P, P)
    return rearrange(patches, "... q (r c) -> ... q r c", r=side)  # (..., P, g, g)


def to_patch_grid(alpha_avg: torch.Tensor, query: int | str | None = None) -> torch.Tensor:
    """How much each patch contributes to a query: (..., L, L) -> (..., g, g).

    query: a patch index in [0, P) (row-major on the grid, cls not counted); "cls" for the
    cls token's row; "last" for the last patch (in a raster scan the only one that has
    read every patch); None for the mean over all patch queries. The cls column is left out.
    """
    prefix, side = _grid(alpha_avg)
    n = side * side
    if query is None:
        row = alpha_avg[..., prefix:, :].mean(-2)  # (..., L) mean over patch queries
    elif query == "cls":
        if prefix == 0:
            raise ValueError("query='cls' but this sequence has no cls token; pass a patch "
                             "index, 'last' or None")
        row = alpha_avg[..., 0, :]  # (..., L)
    elif query == "last":
        row = alpha_avg[..., -1, :]  # (..., L)
    elif isinstance(query, int) and not isinstance(query, bool) and 0 <= query < n:
        row = alpha_avg[..., prefix + query, :]  # (..., L)
    else:
        raise ValueError(f"query must be a patch index in [0, {n}), 'cls', 'last' or None, "
                         f"got {query!r}")
    return rearrange(row[..., prefix:], "... (r c) -> ... r c", r=side)  # (..., g, g)


def rollout(per_layer_alpha: Sequence[torch.Tensor], residual: bool = True, *,
            pre_normalise: bool = False) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through the bridge: (B, L, L).

    per_layer_alpha: channel-averaged α in patch order per layer, first layer first, each
    (B, L, L) (e.g. [la.alpha_abs for la in bridge_attention(model, images)]).
    Each layer becomes Â_l = normalise_rows(|α_l| + I) (without the I when residual=False;
    with pre_normalise=True the rows of |α_l| are normalised first, giving Abnar &
    Zuidema's 0.5 A + 0.5 I); the result is Â_L @ ... @ Â_1, whose rows sum to 1.
    Row t says how much each input token of the bridge flows into output token t.
    """
    if len(per_layer_alpha) == 0:
        raise ValueError("rollout needs at least one layer's alpha (B, L, L); got none")
    result = None
    for alpha in per_layer_alpha:
        if alpha.dim() != 3 or alpha.shape[-1] != alpha.shape[-2]:
            raise ValueError(f"each layer's alpha must be (B, L, L) channel-averaged (use "
                             f"LayerAttention.alpha_abs), got {tuple(alpha.shape)}")
        a = alpha.abs()
        if pre_normalise:
            a = _normalise_rows(a)
        if residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = _normalise_rows(a)  # (B, L, L)
        result = a if result is None else a @ result
    return result


def _normalise_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


# ---------------------------------------------------------------- helpers
def _grid(alpha_avg: torch.Tensor) -> tuple[int, int]:
    if alpha_avg.dim() < 2 or alpha_avg.shape[-1] != alpha_avg.shape[-2]:
        raise ValueError(f"expected a channel-averaged alpha (..., L, L), got "
                         f"{tuple(alpha_avg.shape)}; use LayerAttention.alpha_abs")
    prefix, side = grid_layout(alpha_avg.shape[-1])
    if side == 0:
        raise ValueError(f"length {alpha_avg.shape[-1]} is not a square patch grid (g*g, or "
                         "g*g + 1 with cls); these maps need the bridge's image tokens")
    return prefix, side
