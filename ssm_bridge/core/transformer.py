"""Pre-norm transformer blocks shared by the ViT and the language decoder, and the
Flamingo-style gated cross-attention block."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossModalAttention, KVCache, MultiQueryAttention
from .hooks import HookPoint
from .layers import GeluMLP, SwiGLU


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + FFN(LN(x)).

    Args (as in the original package): dim, num_heads, kv_heads, ffn_dim, dropout.
    `mlp="gelu"` gives the ViT's feed-forward, the default "swiglu" the decoder's.
    """

    def __init__(self, dim: int, num_heads: int, kv_heads: int, ffn_dim: int,
                 dropout: float = 0.0, *, mlp: str = "swiglu", eps: float = 1e-5,
                 eager: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiQueryAttention(dim, num_heads, kv_heads, dropout, eager=eager)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        ffn = {"swiglu": SwiGLU, "gelu": GeluMLP}[mlp]
        self.mlp = ffn(dim, ffn_dim, dropout)
        self.hook_resid_post = HookPoint()  # (B, T, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                is_causal: bool = False, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, is_causal=is_causal, kv_cache=kv_cache))
        x = x + self.mlp(self.norm2(x))
        return self.hook_resid_post(x)


class GatedCrossAttentionBlock(nn.Module):
    """Text attends to the bridge outputs; each residual branch is scaled by tanh(gate).

    Gates start at zero (Flamingo), so the freshly built model is exactly the
    text-only decoder plus its image prefix, and training opens the gates. Each
    gate is one scalar: plot `tanh(block.attn_gate)` to see how much the layer reads.
    """

    def __init__(self, dim: int, num_heads: int, kv_heads: int, ffn_dim: int,
                 dropout: float = 0.0, *, eps: float = 1e-5, eager: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossModalAttention(dim, num_heads, dropout, kv_heads, eager=eager)
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, ffn_dim, dropout)
        self.ff_gate = nn.Parameter(torch.zeros(()))
        self.hook_attn_gate = HookPoint()  # () scalar tanh(attn_gate)
        self.hook_ff_gate = HookPoint()  # () scalar tanh(ff_gate)
        # The gate is a multiplier, not the size of what passes: compare
        # |tanh(attn_gate) * hook_attn_out| with |hook_resid_pre| (maps.gated_update).
        self.hook_resid_pre = HookPoint()  # (B, T, dim) the text stream entering the block
        self.hook_attn_out = HookPoint()  # (B, T, dim) cross-attention output, before its gate
        self.hook_resid_post = HookPoint()  # (B, T, dim)

    def forward(self, x: torch.Tensor, media: torch.Tensor | None = None, *,
                media_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, T, dim) text; media: (B, P, dim) bridge outputs (or media_kv precomputed)."""
        attn_gate = self.hook_attn_gate(self.attn_gate.tanh())
        ff_gate = self.hook_ff_gate(self.ff_gate.tanh())
        x = self.hook_resid_pre(x)
        x = x + attn_gate * self.hook_attn_out(self.attn(self.norm1(x), media, media,
                                                         kv=media_kv))
        x = x + ff_gate * self.mlp(self.norm2(x))
        return self.hook_resid_post(x)
