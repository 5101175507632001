"""One decoding step of a Mamba block, fused: what MambaLM does per token when nothing watches.

A token at batch 1 costs reading every weight once from memory (the weight-streaming bound
of benchmarks/bench_mamba.py). Through the modules it also costs ~40 small PyTorch ops per
layer, and MKL's matrix-vector product reads the weights at about half the bandwidth here.
The C++ kernel `block_step` (csrc/selective_scan.cpp) does a block's whole step in one
call, with its matrix-vector products spread over the threads; `block_step_ref` is its
readable PyTorch twin (same arguments, same maths; the tests hold them equal).

    x = x + out_proj(y * SiLU(z))          (xs, z) = in_proj(RMSNorm(x))
    xc = SiLU(conv1d([window, xs]))        window: the K-1 inputs before (conv state)
    Δ, B, C = softplus(dt_proj(dt)), ...   (dt, B, C) = x_proj(xc)
    h = exp(Δ A) h + Δ B xc,  y = C · h + D xc

MambaLM takes this path only when it cannot change what anyone sees: no gradient, float32
CPU tensors, the C++ kernel built (scan_backend "auto" or "cpp"), a batch of at most
MAX_BATCH (beyond it a step is a matrix product, MKL's job), and no hook (the kit's, or a
torch one) anywhere in the block; otherwise the block's modules run, hooks and all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import hooks as hk
from ..core.scan import load_extension, selective_scan_step

MAX_BATCH = 16  # rows of a fused decoding step; past it the weights are read from cache


def block_weights(block: nn.Module) -> tuple:
    """The arguments of `block_step` after x, for a MambaBlock (norm, then mixer). Read from
    the modules' own dicts: nn.Module.__getattr__ would cost ~1 us for each of ~30 names, a
    block, a token."""
    norm, mixer = block._modules["norm"], block._modules["mixer"]
    mods = mixer._modules
    in_proj, conv1d, x_proj, dt_proj, out_proj = (
        mods[n]._parameters for n in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"))
    eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
    return (norm._parameters["weight"], eps, in_proj["weight"], in_proj.get("bias"),
            conv1d["weight"], conv1d.get("bias"), x_proj["weight"], dt_proj["weight"],
            dt_proj["bias"], mixer._parameters["A_log"], mixer._parameters["D"],
            out_proj["weight"], out_proj.get("bias"))


def block_step_ref(x, norm_w, eps, in_w, in_b, conv_w, conv_b, xproj_w, dt_w, dt_b, A_log,
                   D, out_w, out_b, conv_state, ssm_state) -> torch.Tensor:
    """The block step in PyTorch: x (B, H) -> x + mixer(RMSNorm(x)) (B, H); conv_state
    (B, D, K-1) and ssm_state (B, D, N) move on by one token, in place. conv_w: conv1d's
    weight (D, 1, K)."""
    N = A_log.shape[1]
    u = F.rms_norm(x, (x.shape[-1],), norm_w, eps)  # (B, H)
    xs, z = F.linear(u, in_w, in_b).chunk(2, dim=-1)  # (B, D) each
    window = torch.cat([conv_state, xs[..., None]], dim=-1)  # (B, D, K)
    conv_state.copy_(window[..., 1:])
    xc = (window * conv_w[:, 0]).sum(-1)  # (B, D)
    xc = F.silu(xc if conv_b is None else xc + conv_b)
    dt, B, C = F.linear(xc, xproj_w).split([dt_w.shape[1], N, N], dim=-1)
    delta = F.softplus(F.linear(dt, dt_w, dt_b))  # (B, D)
    y, h = selective_scan_step(ssm_state, xc, delta, -torch.exp(A_log), B, C, D)
    ssm_state.copy_(h)
    return x + F.linear(y * F.silu(z), out_w, out_b)


def block_step(x: torch.Tensor, weights: tuple, state: dict) -> torch.Tensor:
    """The fused C++ step (see `block_step_ref`); state {"conv", "ssm"} updated in place."""
    for key in ("conv", "ssm"):
        if not state[key].is_contiguous():  # a prompt's forward leaves views
            state[key] = state[key].contiguous()
    return load_extension().block_step(x, *weights, state["conv"], state["ssm"])


def fused_block_step(block: nn.Module, x: torch.Tensor, state: dict) -> torch.Tensor | None:
    """x (B, H) through a MambaBlock by `block_step` when `fusable` allows, the block's scan
    backend is "auto" or "cpp" and no hook watches inside the block; else None."""
    if block.mixer.backend not in ("auto", "cpp"):
        return None
    weights = block_weights(block)
    if not fusable(x, *weights) or hk.watched(block.norm, block.mixer):
        return None
    return block_step(x, weights, state)


def head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, H) @ weight.T (V, H): the output head of a step, streamed by the C++ kernel
    when `fusable` allows, else F.linear."""
    if fusable(x, weight):
        return load_extension().rows_times(x.contiguous(), weight)
    return F.linear(x, weight)


def fusable(x: torch.Tensor, *tensors) -> bool:
    """Whether a decoding step on x (B, ...) may run in C++: no gradient, a small batch,
    float32 CPU tensors and the kernel built."""
    return (not torch.is_grad_enabled() and x.shape[0] <= MAX_BATCH
            and all(t is None or isinstance(t, float) or (t.is_cpu and t.dtype is torch.float32)
                    for t in (x, *tensors))
            and load_extension() is not None)
