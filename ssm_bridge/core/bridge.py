"""The SSM bridge: vision tokens -> a stack of residual selective-SSM blocks -> text width."""

from __future__ import annotations

import torch
from torch import nn

from ..config import VLMConfig
from .hooks import HookPoint
from .layers import layer_norm, maybe_checkpoint
from .ssm import SSMLayer


class BridgeBlock(nn.Module):
    """Pre-norm residual block: x + Dropout(SSMLayer(LayerNorm(x)))."""

    def __init__(self, hidden_dim: int, state_dim: int, dropout: float, eps: float,
                 **ssm_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.mixer = SSMLayer(hidden_dim, state_dim, **ssm_kwargs)
        self.drop = nn.Dropout(dropout)
        self.hook_resid_post = HookPoint()  # (B, L, D): the bridge's residual stream

    explain = False  # MambaLRP rules (see ssm.explain_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = layer_norm(self.norm, x, self.explain)
        return self.hook_resid_post(x + self.drop(self.mixer(h)))


class EnhancedSSMBridge(nn.Module):
    """(B, L, input_dim) -> (B, L, output_dim) through `num_layers` selective-SSM blocks.

    Args (as in the original package): input_dim, state_dim (N), hidden_dim (D),
    output_dim, num_layers, dropout. Keyword-only extras set the Mamba details
    and the scan order; `from_config` reads them all from a VLMConfig.
    """

    def __init__(self, input_dim: int, state_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int, dropout: float = 0.1, *, eps: float = 1e-5,
                 conv_kernel: int = 4, dt_rank: int | None = None, dt_min: float = 1e-3,
                 dt_max: float = 0.1, scan_order: str = "raster", backend: str = "auto",
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.in_proj = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(
            BridgeBlock(hidden_dim, state_dim, dropout, eps, conv_kernel=conv_kernel,
                        dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max, scan_order=scan_order,
                        backend=backend)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.out_proj = nn.Linear(hidden_dim, output_dim)
        self.gradient_checkpointing = gradient_checkpointing
        self.hook_in = HookPoint()  # (B, L, D) after the input projection
        self.hook_out = HookPoint()  # (B, L, output_dim)

    explain = False  # MambaLRP rules (see ssm.explain_mode)

    @classmethod
    def from_config(cls, c: VLMConfig) -> EnhancedSSMBridge:
        return cls(c.vision_embed_dim, c.ssm_state_dim, c.ssm_hidden_dim, c.text_embed_dim,
                   c.ssm_num_layers, c.ssm_dropout, eps=c.layer_norm_eps,
                   conv_kernel=c.ssm_conv_kernel, dt_rank=c.ssm_dt_rank, dt_min=c.ssm_dt_min,
                   dt_max=c.ssm_dt_max, scan_order=c.ssm_scan_order,
                   backend=c.ssm_scan_backend, gradient_checkpointing=c.gradient_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(self.in_proj(x))  # (B, L, D)
        for layer in self.layers:
            x = maybe_checkpoint(layer, x, self.gradient_checkpointing and self.training)
        x = layer_norm(self.norm, x, self.explain)
        return self.hook_out(self.out_proj(x))  # (B, L, output_dim)
