"""HookPoint: an identity module marking a tensor worth studying.

Every interesting activation in the model passes through one, so PyTorch forward
hooks can read or replace it by module path (e.g. ``bridge.layers.0.mixer.dirs.0.hook_delta``).
Memory-heavy captures (the full SSM state trajectory) are only computed when a
hook is attached to their HookPoint: see ``HookPoint.active``.
"""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Module):
    """Identity on the forward pass; a named place to attach hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when a forward hook is attached (opt-in captures check this)."""
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)
