"""Tiny MambaLMs for the tests, with weights in ranges where the scan matters."""

from __future__ import annotations

import torch
from torch import nn

from ssm_bridge.mamba.lm import MambaConfig, MambaLM

TINY = dict(vocab_size=37, hidden_size=16, state_size=4, num_hidden_layers=2)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with Δ near 1, A near -1 and B, C of order 1, so that the scan mixes
    tokens for real (at init Δ ~ 0.01 and the model is nearly a bag of tokens). Works on
    MambaLM and on transformers' MambaForCausalLM alike (the parameter names end the same)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("A_log", "dt_proj.bias", "D")):
                p.copy_(0.5 * noise)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(noise * fan_in ** -0.5)
    return model


def tiny_mamba(seed: int = 0, **overrides) -> MambaLM:
    """A perturbed tiny MambaLM in eval mode."""
    model = MambaLM(MambaConfig(**{**TINY, **overrides}), seed=seed)
    return perturb(model, seed).eval()


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = TINY["vocab_size"]):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()
