"""Small building blocks: activations, feed-forward networks, gradient checkpointing, an
eval-mode context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .hooks import checkpoint_contexts


class Swish(nn.Module):
    """Swish / SiLU, x * sigmoid(x), numerically stable for any finite input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class SwiGLU(nn.Module):
    """Gated feed-forward: W2 (silu(W1 x) * W3 x), with W1 and W3 fused in one matmul.

    Args (as in the original package): dim, hidden_dim, dropout.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)  # 2 x (..., hidden)
        return self.dropout(self.w2(F.silu(gate) * up))


class GeluMLP(nn.Module):
    """The ViT feed-forward: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() for the duration (dropout off), then the mode it had before, also when
    the body raises: analysis tools must not leave a model that was training in eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def maybe_checkpoint(module: nn.Module, x: torch.Tensor, enabled: bool, **kw) -> torch.Tensor:
    """Run `module(x, **kw)`, recomputing it in backward when `enabled` (saves activations)."""
    if enabled and torch.is_grad_enabled():
        # the recomputation in backward sees the hooks attached now (hooks are per thread)
        return checkpoint(module, x, use_reentrant=False, context_fn=checkpoint_contexts,
                          **kw)
    return module(x, **kw)


# ---- explain mode (MambaLRP-style rules): same forward values, modified gradients ----
# Each rule returns `exact + (lin - lin.detach())`: the forward value is bit-identical to
# the plain op, and the gradient is that of `lin`, so gradient x input becomes an
# LRP-style relevance that is (approximately) conserved through the layer.


def silu(x: torch.Tensor, explain: bool = False) -> torch.Tensor:
    """SiLU; in explain mode the identity rule: gradient sigmoid(x), so x * grad = silu(x)."""
    if not explain:
        return F.silu(x)
    return F.silu(x).detach() + (x - x.detach()) * torch.sigmoid(x).detach()


def gate_product(y: torch.Tensor, g: torch.Tensor, explain: bool = False) -> torch.Tensor:
    """y * g; in explain mode the half rule: each factor receives half the relevance."""
    if not explain:
        return y * g
    lin = 0.5 * (y * g.detach() + y.detach() * g)
    return (y * g).detach() + (lin - lin.detach())


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor, explain: bool = False) -> torch.Tensor:
    """`norm(x)`; in explain mode the standard deviation is a constant (the LN rule)."""
    out = norm(x)
    if not explain:
        return out
    xc = x - x.mean(-1, keepdim=True)  # (..., dim)
    std = (xc.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().detach()  # (..., 1)
    lin = xc / std * norm.weight + norm.bias
    return out.detach() + (lin - lin.detach())
