"""The language decoder: gated cross-attention on the text, then a causal transformer
over [image prefix ; text], with a KV cache for incremental decoding.

    tokens -> embed + positions -> cross_layers (text attends to bridge outputs)
           -> blocks over [bridge outputs + prefix_embed ; text] (causal)
           -> final norm -> lm_head -> logits of the text positions
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import VLMConfig
from .attention import KVCache
from .hooks import HookPoint, attached
from .layers import maybe_checkpoint
from .transformer import GatedCrossAttentionBlock, TransformerBlock


@dataclass
class DecoderCache:
    """Everything generation keeps between steps: per-block keys/values (image prefix
    included) and the cross-attention keys/values of the image, computed once."""

    layers: list[KVCache]
    media_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    text_len: int = 0  # text positions already decoded
    prefix_len: int = 0  # image positions at the start of every block's keys

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0


class ImageConditioning:
    """What every decoder does with the bridge's media (B, P, dim): image-prefix dropout
    and gated cross-attention from the text. Needs `config`, `training`,
    `prefix_dropout_on` and `cross_layers`; a cache, when given, keeps `media_kv`."""

    def _drop_prefix(self, media: torch.Tensor) -> torch.Tensor:
        """Blank the image prefix of a random subset of samples (training only; see
        VLMConfig.image_prefix_dropout). media: (B, P, dim)."""
        p = self.config.image_prefix_dropout
        if not self.training or p == 0 or not self.prefix_dropout_on:
            return media
        keep = torch.rand(media.shape[0], 1, 1, device=media.device) >= p  # (B, 1, 1)
        return media * keep

    def _cross_attend(self, x: torch.Tensor, media: torch.Tensor, cache=None) -> torch.Tensor:
        """x (B, T, dim) text through the gated cross-attention layers; the media's keys and
        values are projected once per cache."""
        if cache is not None and not cache.media_kv:
            cache.media_kv = [layer.attn.project_kv(media, media) for layer in self.cross_layers]
        for i, layer in enumerate(self.cross_layers):
            media_kv = cache.media_kv[i] if cache is not None else None
            x = layer(x, media, media_kv=media_kv)
        return x


class LanguageDecoder(ImageConditioning, nn.Module):
    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        c = self.config = config
        dim = c.text_embed_dim
        eager = c.attn_impl == "eager"
        self.tok_embed = nn.Embedding(c.vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.max_seq_length, dim))
        self.prefix_embed = nn.Parameter(torch.zeros(1, 1, dim))  # marks image positions
        self.drop = nn.Dropout(c.dropout)
        self.cross_layers = nn.ModuleList(
            GatedCrossAttentionBlock(dim, c.cross_attn_heads, c.cross_attn_kv_heads, c.ffn_dim,
                                     c.dropout, eps=c.layer_norm_eps, eager=eager)
            for _ in range(c.cross_attn_layers)
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, c.text_num_heads, c.text_kv_heads, c.ffn_dim, c.dropout,
                             eps=c.layer_norm_eps, eager=eager)
            for _ in range(c.text_num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(dim, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.tok_embed.weight
        self.gradient_checkpointing = c.gradient_checkpointing
        # image_prefix_dropout applies only while this is True (the trainer holds it off
        # until TrainConfig.prefix_dropout_start).
        self.prefix_dropout_on = True
        self.hook_image_prefix = HookPoint()  # (B, P, dim) what the decoder sees of the image
        self.hook_text_embed = HookPoint()  # (B, T, dim)
        self.hook_logits = HookPoint()  # (B, T, vocab)
        # per block, (B, H, T, P): the text queries' attention to the image prefix, a slice
        # of `blocks.<i>.attn.hook_pattern` (patching it patches that slice).
        self.hook_prefix_attn = nn.ModuleList(HookPoint() for _ in self.blocks)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.prefix_embed, std=0.02)

    def new_cache(self, batch: int, max_text_len: int, num_image_tokens: int,
                  device: torch.device, dtype: torch.dtype) -> DecoderCache:
        total = num_image_tokens + max_text_len
        layers = [KVCache(batch, b.attn.kv_heads, total, b.attn.head_dim, device, dtype)
                  for b in self.blocks]
        return DecoderCache(layers)

    def forward(self, media: torch.Tensor, tokens: torch.Tensor,
                cache: DecoderCache | None = None) -> torch.Tensor:
        """media: (B, P, dim) bridge outputs; tokens: (B, T) -> logits (B, T, vocab).

        Without a cache the whole sequence is run. With one, the first call
        (prefill) runs [prefix ; tokens] and later calls run only the new tokens.
        """
        T = tokens.shape[1]
        start = cache.text_len if cache is not None else 0
        x = self.tok_embed(tokens) + self.pos_embed[:, start : start + T]  # (B, T, dim)
        x = self.hook_text_embed(self.drop(x))
        x = self._cross_attend(x, media, cache)  # (B, T, dim)
        first = cache is None or cache.length == 0
        if first:
            prefix = self.hook_image_prefix(self._drop_prefix(media) + self.prefix_embed)
            x = torch.cat([prefix, x], dim=1)  # (B, P + T, dim)
            if cache is not None:
                cache.prefix_len = media.shape[1]
        P = media.shape[1] if cache is None else cache.prefix_len
        mask = None if first or T == 1 else self._cached_mask(cache.length, T, x.device)
        checkpointing = self.gradient_checkpointing and self.training and cache is None
        for i, block in enumerate(self.blocks):
            kv = cache.layers[i] if cache is not None else None
            with self._route_prefix_attention(i, P, T):
                x = maybe_checkpoint(block, x, checkpointing, is_causal=first, kv_cache=kv,
                                     mask=mask)
        if cache is not None:
            cache.text_len += T
        logits = self.lm_head(self.norm(x[:, -T:]))  # (B, T, vocab)
        return self.hook_logits(logits)

    @contextlib.contextmanager
    def _route_prefix_attention(self, i: int, P: int, T: int):
        """While block i runs, pass its text-to-image slice through hook_prefix_attn[i]."""
        hook = self.hook_prefix_attn[i]
        if not hook.active:
            yield
            return

        def route(pattern):  # pattern: (B, H, Tq, Tk)
            part = pattern[..., -T:, :P]  # (B, H, T, P)
            patched = hook(part)
            if patched is part:
                return None
            pattern = pattern.clone()
            pattern[..., -T:, :P] = patched
            return pattern

        with attached(self.blocks[i].attn.hook_pattern, route):  # this thread only
            yield

    @staticmethod
    def _cached_mask(cached: int, T: int, device: torch.device) -> torch.Tensor:
        """(T, cached + T) bool: new token i sees every cached position and new ones <= i."""
        q = torch.arange(T, device=device)[:, None] + cached  # (T, 1)
        k = torch.arange(cached + T, device=device)[None, :]  # (1, cached + T)
        return k <= q
