"""Stochastic depth (Huang et al., 2016): timm's ``DropPath`` and the per-block schedule.

``DropPath`` is timm's (``timm.layers.DropPath``: the same per-sample Bernoulli mask, rescaled by
1 / keep). ``drop_path_rates`` is kept: plain Python floats ``rate * i / (depth - 1)``, where timm's
``calculate_drop_path_rates`` goes through ``torch.linspace`` (float32 rounding in the config).
"""
from __future__ import annotations

from timm.layers import DropPath
from torch import nn

__all__ = ["DropPath", "drop_path_rates", "dropout"]


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block drop-path rates rising linearly from 0 to ``rate`` (DeiT, PoolFormer, ConViT).

    ``depth`` counts every block of the model, all stages together.
    """
    if depth <= 0:
        return []
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


def dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` when ``p`` is 0 (no kernel call in training)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()
