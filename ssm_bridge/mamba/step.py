"""One decoding step of a Mamba block, fused: what MambaLM does per token when nothing watches.

A token at batch 1 costs reading every weight once from memory (the weight-streaming bound
of benchmarks/bench_mamba.py). Through the modules it also costs ~40 small PyTorch ops per
layer, and MKL's matrix-vector product reads the weights at about half the bandwidth here.
The C++ kernel (csrc/selective_scan.cpp, mamba_block_step) does a block's whole step, with
its matrix-vector products spread over the threads, and `blocks_step` runs consecutive
blocks in one call; `block_step_ref` is its readable PyTorch twin (same arguments, same
maths; the tests hold them equal).

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

MAX_BATCH = 16  # rows of a fused decoding step; past it a step is a matrix product (MKL's)


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


def blocks_step(x: torch.Tensor, blocks: list[tuple[tuple, dict]]) -> torch.Tensor:
    """x (B, H) through consecutive blocks, given as (block_weights, state) pairs, in one C++
    call (see `block_step_ref`); each state {"conv", "ssm"} is updated in place."""
    args = []
    for weights, state in blocks:
        for key in ("conv", "ssm"):
            if not state[key].is_contiguous():  # a prompt's forward leaves views
                state[key] = state[key].contiguous()
        args.append((*weights, state["conv"], state["ssm"]))
    return load_extension().blocks_step(x.contiguous(), args)


def step_layers(layers, x: torch.Tensor, states: list[dict]) -> torch.Tensor:
    """One token x (B, 1, H) through MambaBlocks `layers`, states updated in place: each run
    of blocks that may run fused (`fused_weights`) goes through C++ in one `blocks_step`
    call, the others through their modules (a watched block, a gradient, a big batch)."""
    run: list[tuple[tuple, dict]] = []
    for layer, layer_state in zip(layers, states):
        weights = fused_weights(layer, x)
        if weights is not None:
            run.append((weights, layer_state))
            continue
        if run:
            x = blocks_step(x[:, 0], run)[:, None]  # (B, 1, H)
            run = []
        x = layer(x, layer_state)
    return blocks_step(x[:, 0], run)[:, None] if run else x  # (B, 1, H)


def block_step(x: torch.Tensor, weights: tuple, state: dict) -> torch.Tensor:
    """One block's fused step: `blocks_step` on one block."""
    return blocks_step(x, [(weights, state)])


def fused_weights(block: nn.Module, x: torch.Tensor) -> tuple | None:
    """block_weights(block) when the block's decoding step on x (B, 1, H) may run in C++:
    `fusable`, the scan backend "auto" or "cpp", and no hook anywhere in the block (its
    hook_resid_post included: a fused run of blocks skips their modules); else None."""
    if block.mixer.backend not in ("auto", "cpp"):
        return None
    weights = block_weights(block)
    if not fusable(x, *weights) or hk.watched(block):
        return None
    return weights


def head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, H) @ weight.T (V, H): the output head of a step, streamed by the C++ kernel
    when `fusable` allows, else F.linear."""
    if fusable(x, weight):
        return load_extension().rows_times(x.contiguous(), weight)
    return F.linear(x, weight)


def fusable(x: torch.Tensor, *tensors) -> bool:
    """Whether a decoding step on x (B, ...) may run in C++: no gradient, a small batch,
    contiguous float32 CPU weights (x is made contiguous) and the kernel built."""
    return (not torch.is_grad_enabled() and x.shape[0] <= MAX_BATCH
            and x.is_cpu and x.dtype is torch.float32
            and all(t is None or isinstance(t, float) or
                    (t.is_cpu and t.dtype is torch.float32 and t.is_contiguous()) for t in tensors)
            and load_extension() is not None)
