"""Vision Mamba (Vim; Zhu et al. 2024): the attention-free vision encoder of `vision_type="vim"`.

    images (B, C, H, W) --patch embedding--> (B, P, dim)
        --insert the class token at position m = P // 2, add positions--> (B, 1 + P, dim)
        --vision_num_layers x [x + BiS6(LayerNorm(x))]--> LayerNorm
        --move the class token to the front--> (B, 1 + P, dim), cls first, as the ViT's

Each block is the bridge's residual S6 block (`BridgeBlock`: LayerNorm, then `SSMLayer` with
scan order "bidirectional", then the residual): one in_proj, a forward scan and a backward
scan over the whole sequence (each with its own conv, Δ/B/C projections, A and D), their
outputs summed, gated by SiLU(z) and projected back. The scans run over
vim_expand * vision_embed_dim channels with state size vim_state_dim.

Where the class token is. Vim puts it in the middle of the sequence, so that both scans
have read half of the image when they reach it. Inside the encoder (vision.hook_embed and
every `vision.layers.{i}...` hook) the sequence is in that *internal* order:
[patches 0 .. m-1, cls, patches m .. P-1], m = P // 2, and the backward scan
(`mixer.dirs.1`) reads it exactly reversed. The encoder's output (what the bridge sees) and
`vision.hook_grid` are in the ViT's layout, cls first then the patches in raster order.
`VisionMamba.output_order` maps one to the other: output[:, i] = internal[:, output_order[i]].

Hook points: vision.hook_embed (B, 1 + P, dim) internal order, after positions;
vision.layers.{i}.hook_resid_post (B, 1 + P, dim); vision.layers.{i}.mixer.hook_y and
.hook_gate (B, 1 + P, D); vision.layers.{i}.mixer.dirs.{k}.hook_* (the scan direction's
Δ, B, C, conv, the heavy Ā, B̄x, h, ...: k = 0 forward, 1 backward; each in its own scan
order, hook_out back in internal order); vision.hook_grid (B, dim, g, g).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import VLMConfig
from .bridge import BridgeBlock
from .hooks import HookPoint
from .layers import layer_norm, maybe_checkpoint
from .vision import patch_embedding, route_grid


class VisionMamba(nn.Module):
    """images (B, C, H, W) -> tokens (B, 1 + num_patches, vision_embed_dim), cls first (see
    the module docstring for the internal order, class token in the middle)."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        c = config
        dim = c.vision_embed_dim
        self.cls_position = c.num_patches // 2  # m: the class token's internal index
        self.patch_embed = patch_embedding(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, dim))  # internal order
        self.drop = nn.Dropout(c.dropout)
        # prefix_tokens=0: no token is read first; the backward scan reverses the whole
        # sequence, class token included (grid_layout would take token 0 for a cls).
        self.layers = nn.ModuleList(
            BridgeBlock(dim, c.vim_state_dim, c.dropout, c.layer_norm_eps,
                        conv_kernel=c.ssm_conv_kernel, dt_min=c.ssm_dt_min, dt_max=c.ssm_dt_max,
                        scan_order="bidirectional", backend=c.ssm_scan_backend,
                        expand=c.vim_expand, prefix_tokens=0)
            for _ in range(c.vision_num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.gradient_checkpointing = c.gradient_checkpointing
        m, P = self.cls_position, c.num_patches
        order = torch.cat([torch.tensor([m]), torch.arange(m), torch.arange(m + 1, P + 1)])
        self.register_buffer("output_order", order, persistent=False)  # (1 + P,)
        self.hook_embed = HookPoint()  # (B, 1 + P, dim) internal order, after positions
        self.hook_grid = HookPoint()  # (B, dim, g, g) the final patch tokens
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    explain = False  # MambaLRP rules for its blocks (see ssm.explain_mode)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.patch_embed(images), "b d gh gw -> b (gh gw) d")  # (B, P, dim)
        m = self.cls_position
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([x[:, :m], cls, x[:, m:]], dim=1) + self.pos_embed  # (B, 1 + P, dim)
        x = self.hook_embed(self.drop(x))
        for layer in self.layers:
            x = maybe_checkpoint(layer, x, self.gradient_checkpointing and self.training)
        x = layer_norm(self.norm, x, self.explain)[:, self.output_order]  # (B, 1 + P, dim)
        return route_grid(self.hook_grid, x)
