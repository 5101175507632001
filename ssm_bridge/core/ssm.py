"""The selective state-space layer (Mamba S6) that the bridge stacks.

Glossary: code name -> paper symbol (Gu & Dao, "Mamba", 2023)
    x        u      input of the scan, after in_proj, causal conv and SiLU   (B, L, D)
    z               gate branch; the layer outputs y * SiLU(z)               (B, L, D)
    D (dim)  D      channels of the scan = config.ssm_hidden_dim
    N        N      state size per channel = config.ssm_state_dim
    delta    Δ      step size per token and channel, softplus(dt_proj(.))    (B, L, D)
    A        A      diagonal state matrix, A = -exp(A_log) < 0               (D, N)
    B, C     B, C   input-dependent input / output projections               (B, L, N)
    A_bar    Ā      exp(Δ A), zero-order-hold discretisation                 (B, L, D, N)
    dBx      B̄x     Δ_t B_t x_t, the discretised input                       (B, L, D, N)
    h        h      state: h_t = Ā_t h_{t-1} + Δ_t B_t x_t                   (B, L, D, N)
    y        y      C_t · h_t + D ⊙ x_t                                      (B, L, D)
    self.D   D      skip weight per channel                                  (D,)

Call chain (as in mamba-minimal): SSMLayer.forward -> ScanDirection.forward ->
ScanDirection.ssm -> selective_scan (ssm_bridge/core/scan.py, with its readable
`selective_scan_ref` twin).

Scan orders over the patch grid (a cls token, when present, is read first in
every direction):
    raster         row-major                                         1 direction
    bidirectional  row-major, and row-major reversed (Vim)           2 directions
    cross          row-major, column-major and both reversed (VMamba) 4 directions
Each direction has its own conv, projections, A and D; outputs are put back in
patch order and summed. Each direction's own output stays reachable at
`dirs.<k>.hook_out`. The orders themselves (`direction_perm`), the conversions between
them and the hook names of a layer live in ssm_bridge/core/addressing.py.

Heavy hooks (A_bar, dBx, state: (B, L, D, N) each) are opt-in: when any is watched the
direction runs `ssm_explicit`, which materialises them and runs the recurrence
(`linear_recurrence`) on whatever the hooks return, so patching Ā or B̄x propagates
down the scan (Ā_t = 0 resets the state at t); patching h changes only the read-out
y_t = C_t · h_t + D x_t. Otherwise the fused kernel runs and nothing is materialised.

A direction can also carry a decoding state, its conv window (B, D, K-1) and h (B, D, N):
`forward(x, state=...)` runs a prompt from a fresh state, then one token per call, with the
same hooks (length-1 tensors). `SSMLayer.step` and the Mamba language model
(ssm_bridge/mamba/lm.py, whose mixer is a ScanDirection read in token order) decode so.

`explain_mode(model)` switches the bridge to MambaLRP-style gradients (same forward
values): Δ, Ā, B, C act as constants, SiLU uses the identity rule, the gate product
the half rule and LayerNorm a constant standard deviation, so gradient x input is a
relevance that is (approximately) conserved through the bridge.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable

from ..config import SCAN_DIRECTIONS as DIRECTIONS  # scan order -> its directions
from .addressing import (
    direction_perm,
    grid_layout,  # noqa: F401  (still importable from here, as in 0.1)
    to_scan_order,
    to_token_order,
)
from .hooks import HEAVY_SUFFIXES, HookPoint
from .layers import gate_product, silu
from .scan import linear_recurrence, load_extension, selective_scan, selective_scan_step


def _inv_softplus_dt(dim: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """(D,) softplus⁻¹ of step sizes drawn log-uniformly in [dt_min, dt_max]."""
    u = torch.rand(dim)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))  # (D,)
    return dt + torch.log(-torch.expm1(-dt))  # softplus(result) == dt


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal conv over time: x (B, L, D), weight (D, K), bias (D,) or None ->
    (B, L, D); past (B, K-1, D): the inputs before x (None: zeros).

    out_t = bias + Σ_k w_k x_{t-K+1+k}: K multiply-adds over contiguous (B, L, D) slices, in
    the layout the projections and the scan read (conv1d wants (B, D, L), and the transposes
    around it cost more than the convolution itself)."""
    L, K = x.shape[1], weight.shape[1]
    if past is None:
        past = x.new_zeros(x.shape[0], K - 1, x.shape[2])  # (B, K-1, D) zero padding
    xp = torch.cat([past, x], dim=1)  # (B, K-1+L, D)
    w = weight.to(x.dtype)
    out = xp[:, :L] * w[:, 0] if bias is None else torch.addcmul(
        bias.to(x.dtype), xp[:, :L], w[:, 0])  # (B, L, D)
    for k in range(1, K):
        out = out.addcmul_(xp[:, k:k + L], w[:, k])
    return out


class _ConvSiLU(torch.autograd.Function):
    """SiLU(causal_conv(x)) as one pass of the C++ kernel (csrc, conv_silu); gradients
    from the PyTorch formulation, recomputed in backward as a checkpoint would (the conv is
    cheap next to the projections), with explain mode's SiLU rule when it is on."""

    @staticmethod
    def forward(ctx, x, weight, bias, explain):
        ctx.save_for_backward(x, weight, bias)
        ctx.explain = explain
        return load_extension().conv_silu(x, weight, bias)  # (B, L, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        leaves = [None if t is None else t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = silu(causal_conv(*leaves), ctx.explain)
        given = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, given, grad))
        return *(None if t is None else next(grads) for t in leaves), None


class ScanDirection(nn.Module):
    """One scan direction: causal conv, Δ/B/C projections and the selective scan.

    Hooks see tensors in this direction's scan order, except `hook_out`, which is
    put back in patch order.
    """

    explain = False  # MambaLRP rules (see `explain_mode`)
    HEAVY_HOOKS = HEAVY_SUFFIXES  # the per-step (B, L, D, N) tensors, off unless asked for

    def __init__(self, dim: int, state_dim: int, *, conv_kernel: int = 4,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 backend: str = "auto", selective: bool = True, conv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.state_dim = dim, state_dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.backend = backend
        self.selective = selective
        self.conv1d = nn.Conv1d(dim, dim, conv_kernel, groups=dim, padding=conv_kernel - 1,
                                bias=conv_bias)
        # S4D-real init: A_n = -(n + 1) gives each channel timescales from 1 to 1/N.
        A = torch.arange(1, state_dim + 1, dtype=torch.float32).repeat(dim, 1)  # (D, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(dim))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        if selective:
            self.x_proj = nn.Linear(dim, self.dt_rank + 2 * state_dim, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, dim, bias=True)
            self._init_dt(dt_min, dt_max)
        else:  # S4D-style LTI: Δ (D,), B and C (N,) are parameters, not functions of x
            self.dt_bias = nn.Parameter(_inv_softplus_dt(dim, dt_min, dt_max))
            self.B = nn.Parameter(torch.ones(state_dim))  # S4D's B init
            self.C = nn.Parameter(torch.randn(state_dim) * state_dim**-0.5)
            for p in (self.dt_bias, self.B, self.C):
                p._no_weight_decay = True
        for name in ["conv", "delta", "B", "C", "A_bar", "dBx", "state", "ssm_out", "out"]:
            setattr(self, f"hook_{name}", HookPoint())

    def _init_dt(self, dt_min: float, dt_max: float) -> None:
        """Δ starts log-uniform in [dt_min, dt_max]: the bias is softplus⁻¹ of such a Δ,
        and the small weights (std dt_rank^-0.5, as in Mamba) let the input move it."""
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_inv_softplus_dt(self.dim, dt_min, dt_max))

    def forward(self, x: torch.Tensor, perm: torch.Tensor | None = None,
                state: dict | None = None) -> torch.Tensor:
        """x: (B, L, D) in patch order; perm: (L,) this direction's reading order (None: x's
        own order, as in a language model). state: the recurrent state {"conv": (B, D, K-1),
        "ssm": (B, D, N)} to continue from (see `SSMLayer.allocate_state`), updated in place:
        from a fresh state a whole prompt, after it one token at a time (perm must be None)."""
        xs = x if perm is None else to_scan_order(x, perm)  # (B, L, D) in scan order
        xs = self.hook_conv(self.conv_silu(xs, state))  # (B, L, D)
        if state is None:
            y = self.ssm(xs)  # (B, L, D)
        else:
            y, state["ssm"] = self.ssm(xs, state["ssm"], return_last=True)
        y = self.hook_ssm_out(y)
        return self.hook_out(y if perm is None else to_token_order(y, perm))  # (B, L, D)

    def conv_silu(self, xs: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """SiLU(causal_conv(xs)): (B, L, D) -> (B, L, D). Without a carried window it is one
        C++ pass where that kernel may run (float32 CPU, backend "auto" or "cpp"), in every
        grad mode alike (so values never depend on it), with the PyTorch gradients."""
        w, bias = self.conv1d.weight[:, 0], self.conv1d.bias  # (D, K), (D,)
        if (state is None and self.backend in ("auto", "cpp") and xs.device.type == "cpu"
                and xs.stride(-1) == 1 and xs.dtype == w.dtype == torch.float32
                and load_extension() is not None):
            return _ConvSiLU.apply(xs, w, bias, self.explain)
        return silu(self.causal_conv(xs, state), self.explain)

    def causal_conv(self, xs: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """Depthwise causal conv over time: (B, L, D) -> (B, L, D). With a state its
        window {"conv": (B, D, K-1)}, the K-1 inputs before xs, replaces the zero padding
        and is moved on by L tokens."""
        past = None
        if state is not None:
            past = rearrange(state["conv"].to(xs.dtype), "b d k -> b k d")  # (B, K-1, D)
            window = torch.cat([past, xs], dim=1)[:, xs.shape[1]:]  # (B, K-1, D)
            state["conv"] = rearrange(window, "b k d -> b d k")
        return causal_conv(xs, self.conv1d.weight[:, 0], self.conv1d.bias, past)

    def ssm(self, x: torch.Tensor, h0: torch.Tensor | None = None, *,
            return_last: bool = False):
        """x: (B, L, D) -> y: (B, L, D); Δ, B, C computed from x (the selection).

        h0: the state before x (B, D, N), None for zeros; a non-zero h0 continues one token
        at a time (decoding). With return_last=True returns (y, state after x (B, D, N))."""
        delta, B, C = self.dt_bc(x)
        A = -torch.exp(self.A_log.float())  # (D, N)
        if self.explain:
            delta, A, B, C = delta.detach(), A.detach(), B.detach(), C.detach()
        if any(getattr(self, name).active for name in self.HEAVY_HOOKS):
            return self.ssm_explicit(x, delta, A, B, C, h0, return_last=return_last)
        if x.shape[1] == 1 and h0 is not None:  # one decoding step
            y, h = selective_scan_step(h0, x[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], self.D)
            return (y[:, None], h) if return_last else y[:, None]  # (B, 1, D)
        if h0 is not None and bool(h0.any()):
            raise ValueError("a carried SSM state continues one token at a time; run the "
                             "whole prompt from a fresh state, then step")
        return selective_scan(x, delta, A, B, C, self.D, return_last=return_last,
                              backend=self.backend)  # y (B, L, D) [, h_last (B, D, N)]

    def ssm_explicit(self, x, delta, A, B, C, h0=None, *, return_last=False):
        """The scan with Ā, B̄x and h materialised and hookable (float32). Same maths as
        `selective_scan`: outputs agree to float rounding (~1e-6), not bit for bit.
        h0, return_last: as in `ssm` (the returned last state is the one the recurrence
        computed: a hook on h changes the read-out y only, never what is carried on)."""
        d = delta.float()[..., None]  # (B, L, D, 1)
        A_bar = self.hook_A_bar(torch.exp(d * A))  # (B, L, D, N)
        dBx = self.hook_dBx(d * B.float()[:, :, None, :] * x.float()[..., None])  # (B, L, D, N)
        h = linear_recurrence(A_bar, dBx, h0)  # (B, L, D, N)
        y = torch.einsum("bldn,bln->bld", self.hook_state(h), C.float()) + x.float() * self.D
        y = y.to(x.dtype)  # (B, L, D)
        return (y, h[:, -1].clone()) if return_last else y  # a copy frees the trajectory

    def dt_bc(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The selection mechanism: (Δ (B, L, D), B (B, L, N), C (B, L, N)) from x.
        Non-selective (LTI): the parameters broadcast over (B, L); x gives only the shape."""
        if not self.selective:
            b, L = x.shape[:2]
            delta = F.softplus(self.dt_bias).expand(b, L, self.dim)  # (B, L, D)
            B = self.B.expand(b, L, self.state_dim)  # (B, L, N)
            C = self.C.expand(b, L, self.state_dim)  # (B, L, N)
            return self.hook_delta(delta), self.hook_B(B), self.hook_C(C)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_dim, self.state_dim], dim=-1)
        delta = self.hook_delta(F.softplus(self.dt_proj(dt)))  # (B, L, D)
        return delta, self.hook_B(B), self.hook_C(C)

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token of the raster direction. x_t: (B, D); state updated in place. The
        hooks fire as in `forward` on a length-1 sequence."""
        return self.forward(x_t[:, None], state=state)[:, 0]  # (B, D)


class SSMLayer(nn.Module):
    """Mamba block: in_proj -> (x, z); per direction conv + selective scan on x;
    y * SiLU(z); out_proj. Keeps the original package's `SSMLayer(hidden_dim, state_dim)`.
    x: (B, L, hidden_dim) -> (B, L, hidden_dim).
    """

    def __init__(self, hidden_dim: int, state_dim: int, *, conv_kernel: int = 4,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 scan_order: str = "raster", backend: str = "auto",
                 selective: bool = True, expand: int = 1,
                 prefix_tokens: int | None = None) -> None:
        super().__init__()
        if scan_order not in DIRECTIONS:
            raise ValueError(f"scan_order must be one of {list(DIRECTIONS)}, got {scan_order!r}")
        self.scan_order = scan_order
        self.direction_names = DIRECTIONS[scan_order]
        self.prefix_tokens = prefix_tokens  # direction_perm's `prefix`
        inner = expand * hidden_dim  # the scans' channels (Mamba's expand; 1 in the bridge)
        self.in_proj = nn.Linear(hidden_dim, 2 * inner, bias=False)
        self.dirs = nn.ModuleList(
            ScanDirection(inner, state_dim, conv_kernel=conv_kernel, dt_rank=dt_rank,
                          dt_min=dt_min, dt_max=dt_max, backend=backend, selective=selective)
            for _ in self.direction_names
        )
        self.out_proj = nn.Linear(inner, hidden_dim, bias=False)
        self.hook_y = HookPoint()  # (B, L, D) sum over directions
        self.hook_gate = HookPoint()  # (B, L, D) SiLU(z)

    explain = False  # MambaLRP rules (see `explain_mode`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D) each
        y = sum(
            d(xs, direction_perm(name, L, x.device, self.prefix_tokens))
            for name, d in zip(self.direction_names, self.dirs)
        )  # (B, L, D)
        y = self.hook_y(y)
        gate = self.hook_gate(silu(z, self.explain))  # (B, L, D)
        return self.out_proj(gate_product(y, gate, self.explain))

    def allocate_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Zero recurrent state for `step`: conv window and SSM state of the raster scan."""
        d = self.dirs[0]
        K = d.conv1d.kernel_size[0]
        return {
            "conv": torch.zeros(batch, d.dim, K - 1, device=device, dtype=dtype),  # (B, D, K-1)
            "ssm": torch.zeros(batch, d.dim, d.state_dim, device=device, dtype=torch.float32),
        }

    def step(self, x_t: torch.Tensor, state: dict) -> torch.Tensor:
        """Recurrent mode, one token: x_t (B, hidden_dim) -> (B, hidden_dim).

        Equal to `forward` run on the whole sequence (raster order only: a reversed
        or column-major scan needs the whole image before its first output)."""
        if self.scan_order != "raster":
            raise ValueError(
                f"step() runs the raster scan token by token; this layer scans "
                f"{self.scan_order!r}, whose reversed directions need the whole sequence"
            )
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, D) each
        y = self.dirs[0].step(xs, state)  # (B, D)
        return self.out_proj(y * F.silu(z))


@contextlib.contextmanager
def explain_mode(model: nn.Module):
    """Inside, every bridge module of `model` uses the MambaLRP gradient rules (see the
    module docstring); forward values are unchanged. Always restored on exit."""
    mods = [m for m in model.modules() if hasattr(type(m), "explain")]
    saved = [m.explain for m in mods]
    try:
        for m in mods:
            m.explain = True
        yield model
    finally:
        for m, old in zip(mods, saved):
            m.explain = old
