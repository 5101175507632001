"""The vision encoder: a pre-norm ViT with a conv patch embedding and a cls token."""

from __future__ import annotations

import itertools
import math

import torch
from einops import rearrange
from torch import nn

from ..config import VLMConfig
from .hooks import HookPoint
from .layers import maybe_checkpoint
from .transformer import TransformerBlock


def _he_conv(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
    # He init keeps the signal's scale through the GELUs (PyTorch's default shrinks it ~2x
    # per layer, and the image then drowns in the position embedding).
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def conv_stem(in_channels: int, dim: int, patch_size: int, depth: int = 1) -> nn.Sequential:
    """log2(patch_size) stages, each a stride-2 3x3 conv then depth - 1 stride-1 3x3 convs
    (GELU after each), widths doubling up to `dim`, then a 1x1 projection:
    (B, C, H, W) -> (B, dim, H / patch, W / patch)."""
    n = patch_size.bit_length() - 1
    widths = [in_channels] + [max(dim >> (n - 1 - i), 8) for i in range(n)]
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(widths):
        layers += [_he_conv(c_in, c_out, 2), nn.GELU()]
        for _ in range(depth - 1):
            layers += [_he_conv(c_out, c_out, 1), nn.GELU()]
    layers.append(nn.Conv2d(widths[-1], dim, 1))
    return nn.Sequential(*layers)


def patch_embedding(c: VLMConfig) -> nn.Module:
    """The patch embedding config.vision_stem names: (B, C, H, W) -> (B, dim, g, g)."""
    dim = c.vision_embed_dim
    if c.vision_stem == "conv":
        return conv_stem(c.in_channels, dim, c.patch_size, c.vision_stem_depth)
    return nn.Conv2d(c.in_channels, dim, c.patch_size, stride=c.patch_size)


def route_grid(hook_grid: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass the patch tokens of x (B, 1 + P, dim), cls first, through `hook_grid` as a
    (B, dim, g, g) feature map (a GradCAM target); only when a hook watches it."""
    if not hook_grid.active:
        return x
    g = math.isqrt(x.shape[1] - 1)
    grid = hook_grid(rearrange(x[:, 1:], "b (gh gw) d -> b d gh gw", gh=g))
    return torch.cat([x[:, :1], rearrange(grid, "b d gh gw -> b (gh gw) d")], dim=1)


class EnhancedVisionTransformer(nn.Module):
    """images (B, C, H, W) -> tokens (B, 1 + num_patches, vision_embed_dim), cls first."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        c = config
        dim = c.vision_embed_dim
        self.patch_embed = patch_embedding(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, dim))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, c.vision_num_heads, c.vision_num_heads,
                             int(dim * c.vision_mlp_ratio), c.dropout, mlp="gelu",
                             eps=c.layer_norm_eps, eager=c.attn_impl == "eager")
            for _ in range(c.vision_num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.gradient_checkpointing = c.gradient_checkpointing
        self.hook_embed = HookPoint()  # (B, 1 + P, dim) after positions
        # (B, dim, g, g): the final patch tokens as a feature map, a GradCAM target. Only
        # routed through (two views and a cat) when a hook watches it.
        self.hook_grid = HookPoint()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.patch_embed(images), "b d gh gw -> b (gh gw) d")  # (B, P, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + P, dim)
        x = self.hook_embed(self.drop(x))
        for block in self.blocks:
            x = maybe_checkpoint(block, x, self.gradient_checkpointing and self.training)
        return route_grid(self.hook_grid, self.norm(x))  # (B, 1 + P, dim)
