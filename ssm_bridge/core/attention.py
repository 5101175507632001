"""Attention: fused (SDPA) by default, with an explicit eager twin that exposes the pattern.

Shapes: B batch, H query heads, G shared key/value heads (G divides H; G = 1 is
multi-query attention), Tq / Tk query / key lengths, E = head_dim.

`head_dim = dim // num_heads`; queries are projected to H * E and the output back
to `dim`, so widths that the head count does not divide (1024 with 12 heads) work.
The eager path is used when `eager=True`; tests check it equals the fused path.
A hook on `hook_pattern` sees the pattern without changing the output (it is
computed beside the fused kernel) and may replace it to patch the attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .hooks import HookPoint


def attention_pattern(q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None = None,
                      is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(E)) with grouped K heads. q: (B, H, Tq, E); k: (B, G, Tk, E);
    mask: bool, True = may attend. Returns the pattern (B, H, Tq, Tk)."""
    H, G = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // G, dim=1)  # (B, H, Tk, E)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Tq, Tk)
    if is_causal:
        Tq, Tk = scores.shape[-2:]
        causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()  # (Tq, Tk), as SDPA
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)  # (B, H, Tq, Tk)


def apply_pattern(pattern: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """pattern (B, H, Tq, Tk) @ v (B, G, Tk, E) -> (B, H, Tq, E)."""
    v = v.repeat_interleave(pattern.shape[1] // v.shape[1], dim=1)  # (B, H, Tk, E)
    return F.dropout(pattern, dropout_p, training=dropout_p > 0) @ v.to(pattern.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    eager: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention with grouped K/V heads.

    q: (B, H, Tq, E); k, v: (B, G, Tk, E); mask: bool, True = may attend,
    broadcastable to (B, H, Tq, Tk). Returns out (B, H, Tq, E) and, on the eager
    path, the pattern (B, H, Tq, Tk) (None on the fused path).
    """
    H, G = q.shape[1], k.shape[1]
    if not eager:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=H != G
        )
        return out, None
    pattern = attention_pattern(q, k, mask=mask, is_causal=is_causal)  # (B, H, Tq, Tk)
    return apply_pattern(pattern, v, dropout_p), pattern


def as_bool_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Accept the original package's masks (1 = attend, 0 = masked; (Tq, Tk),
    (B, Tq, Tk) or (B, H, Tq, Tk)) and return a bool mask broadcastable over heads."""
    if mask is None:
        return None
    if mask.dim() not in (2, 3, 4):
        raise ValueError(
            f"attention mask must have shape (Tq, Tk), (B, Tq, Tk) or (B, H, Tq, Tk); "
            f"got {tuple(mask.shape)}"
        )
    mask = mask if mask.dtype == torch.bool else mask != 0
    return mask[:, None] if mask.dim() == 3 else mask  # (B, 1, Tq, Tk)


class KVCache:
    """Pre-allocated keys and values of one attention layer for incremental decoding."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.empty(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, G, t, E); return all keys and values so far (B, G, length, E)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache full: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class _HeadedAttention(nn.Module):
    """Shared parts: query/output projections, head sizes, the fused/eager choice."""

    def __init__(self, dim: int, num_heads: int, kv_heads: int, dropout: float,
                 eager: bool) -> None:
        super().__init__()
        if num_heads % kv_heads:
            raise ValueError(f"kv_heads ({kv_heads}) must divide num_heads ({num_heads})")
        self.num_heads, self.kv_heads = num_heads, kv_heads
        self.head_dim = max(dim // num_heads, 1)
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)
        self.dropout = dropout
        self.eager = eager
        self.hook_pattern = HookPoint()  # (B, H, Tq, Tk)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.q_proj(x), "b t (h e) -> b h t e", h=self.num_heads)  # (B, H, T, E)

    def attend_and_project(self, q, k, v, mask=None, is_causal: bool = False) -> torch.Tensor:
        """Attention, then o_proj. The output comes from the fused kernel unless the
        layer is eager; when `hook_pattern` is watched the pattern is computed beside
        it (so observing never changes the output) and, if a hook replaces the
        pattern, the output is recomputed from the replacement."""
        mask = as_bool_mask(mask)
        dropout_p = self.dropout if self.training else 0.0
        out, pattern = attend(q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                              eager=self.eager)
        if self.hook_pattern.active:
            if pattern is None:
                pattern = attention_pattern(q, k, mask=mask, is_causal=is_causal)
            patched = self.hook_pattern(pattern)  # (B, H, Tq, Tk)
            if patched is not pattern:
                out = apply_pattern(patched, v, dropout_p)  # (B, H, Tq, E)
        elif pattern is not None:
            self.hook_pattern(pattern)
        return self.o_proj(rearrange(out, "b h t e -> b t (h e)"))  # (B, Tq, dim)


class MultiQueryAttention(_HeadedAttention):
    """Self-attention with `kv_heads` shared key/value heads (1 = multi-query).

    Args (as in the original package): dim, num_heads, kv_heads, dropout.
    forward(x, mask) keeps the original's signature; `is_causal` and `kv_cache`
    serve the decoder.
    """

    def __init__(self, dim: int, num_heads: int, kv_heads: int = 1, dropout: float = 0.0,
                 *, eager: bool = False) -> None:
        super().__init__(dim, num_heads, kv_heads, dropout, eager)
        self.kv_proj = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                is_causal: bool = False, kv_cache: KVCache | None = None) -> torch.Tensor:
        kv = rearrange(self.kv_proj(x), "b t (two g e) -> two b g t e", two=2, g=self.kv_heads)
        k, v = kv[0], kv[1]  # (B, G, T, E) each
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, G, cached + T, E)
        return self.attend_and_project(self.queries(x), k, v, mask, is_causal)


class CrossModalAttention(_HeadedAttention):
    """Queries from one modality attend to keys/values from another (multi-query).

    Args (as in the original package): dim, num_heads, dropout; forward(query,
    key, value, mask). `project_kv` lets generation compute the image keys once.
    `hook_pattern` sees (B, H, text, image tokens).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kv_heads: int = 1,
                 *, eager: bool = False) -> None:
        super().__init__(dim, num_heads, kv_heads, dropout, eager)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = rearrange(self.k_proj(key), "b t (g e) -> b g t e", g=self.kv_heads)  # (B, G, Tk, E)
        v = rearrange(self.v_proj(value), "b t (g e) -> b g t e", g=self.kv_heads)  # (B, G, Tk, E)
        return k, v

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                value: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if kv is None:
            if key is None:
                raise ValueError("CrossModalAttention needs key/value tensors or precomputed kv")
            kv = self.project_kv(key, key if value is None else value)
        return self.attend_and_project(self.queries(query), kv[0], kv[1], mask)
