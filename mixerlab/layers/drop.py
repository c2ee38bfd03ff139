"""Stochastic depth (Huang et al., 2016) and its per-block schedule."""
from __future__ import annotations

import torch
from torch import nn


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block drop-path rates rising linearly from 0 to ``rate`` (DeiT, PoolFormer, ConViT).

    ``depth`` counts every block of the model, all stages together.
    """
    if depth <= 0:
        return []
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Zero the whole residual branch of a sample with probability ``p`` (and rescale the rest)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` when ``p`` is 0 (no kernel call in training)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()
