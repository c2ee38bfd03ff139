"""Per-channel LayerScale (CaiT; used by PoolFormer) and a fixed residual-branch scale."""
from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiply the last axis by a learnable vector initialised to ``init``."""

    def __init__(self, dim: int, *, init: float):
        super().__init__()
        self.init = float(init)
        self.gamma = nn.Parameter(torch.full((dim,), self.init))

    def init_weights(self) -> None:
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class FixedScale(nn.Module):
    """Multiply by a constant (DeepViT-S/L's ``1 / scale_adjustment`` on each residual branch)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value

    def extra_repr(self) -> str:
        return f"value={self.value}"
