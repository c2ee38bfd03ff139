"""Per-channel LayerScale (CaiT; used by PoolFormer) and a fixed residual-branch scale.

``LayerScale`` is timm's (``timm.layers.LayerScale(dim, init_values)``: ``x * gamma``, the same
parameter name ``gamma`` as before); ``FixedScale`` (a constant, DeepViT-S/L) has no timm layer.
"""
from __future__ import annotations

import torch
from timm.layers import LayerScale
from torch import nn

__all__ = ["FixedScale", "LayerScale"]


class FixedScale(nn.Module):
    """Multiply by a constant (DeepViT-S/L's ``1 / scale_adjustment`` on each residual branch)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value

    def extra_repr(self) -> str:
        return f"value={self.value}"
