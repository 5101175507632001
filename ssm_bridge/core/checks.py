"""Input validation: every bad input gets a ValueError naming the problem and the fix."""

from __future__ import annotations

import math

import torch

from ..config import VLMConfig


def check_images(images: torch.Tensor, c: VLMConfig) -> None:
    expected = f"(batch, {c.in_channels}, {c.img_size}, {c.img_size})"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape {expected}, got {type(images)}")
    if images.dim() != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(
            f"images must have rank 4 {expected}, got rank {images.dim()} with shape "
            f"{tuple(images.shape)}{hint}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor, got {images.dtype}; convert pixels with "
            "images.float() / 255 and normalise them as in training"
        )
    if images.shape[1] != c.in_channels:
        raise ValueError(
            f"images must have {c.in_channels} channels {expected}, got {images.shape[1]} "
            f"(shape {tuple(images.shape)}); convert them or set VLMConfig.in_channels"
        )
    if images.shape[2] != c.img_size or images.shape[3] != c.img_size:
        raise ValueError(
            f"images must be {c.img_size}x{c.img_size} {expected}, got "
            f"{images.shape[2]}x{images.shape[3]}; resize them or set VLMConfig.img_size"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite pixels; every pixel must be finite")


def check_tokens(tokens: torch.Tensor, c: VLMConfig, name: str = "tokens",
                 allow_ignore: bool = False) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens)
        raise ValueError(f"{name} must be a 2-D tensor (batch, seq_len), got {shape}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[1] > c.max_seq_length:
        raise ValueError(
            f"{name} has length {tokens.shape[1]} > max_seq_length={c.max_seq_length}; "
            "truncate the sequence or raise VLMConfig.max_seq_length"
        )
    if tokens.numel() == 0:
        return
    valid = (tokens >= 0) & (tokens < c.vocab_size)
    if allow_ignore:
        valid |= tokens == -100
    if not valid.all():
        bad = tokens[~valid][0].item()
        allowed = f"[0, {c.vocab_size})" + (" or -100 (ignored)" if allow_ignore else "")
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary: ids must be in {allowed}")


def check_sampling(c: VLMConfig, max_length: int, temperature: float, top_k: int | None,
                   top_p: float | None) -> None:
    if not isinstance(max_length, int) or not 1 <= max_length <= c.max_seq_length:
        raise ValueError(
            f"max_length must be an integer in [1, max_seq_length={c.max_seq_length}], "
            f"got {max_length!r}"
        )
    check_sampling_params(temperature, top_k, top_p)


def check_sampling_params(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """temperature >= 0 (0 = greedy), top_k >= 1 or None, top_p in (0, 1] or None."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature >= 0):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 or None = no nucleus cut), got {top_p!r}")
