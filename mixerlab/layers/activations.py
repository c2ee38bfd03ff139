"""Activations of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", arXiv
2210.13452; sail-sg/metaformer ``metaformer_baselines.py``).

* ``StarReLU``: s * relu(x)^2 + b with learnable scalars s (init 1) and b (init 0): the channel
  MLP's and SepConv's activation in every v2 baseline.
* ``SquaredReLU``: relu(x)^2 (So et al., arXiv 2109.08668), the activation of the MLP head of
  ConvFormer / CAFormer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with one learnable scale and one learnable bias."""

    def __init__(self, *, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.scale_init, self.bias_init = float(scale), float(bias)
        self.scale = nn.Parameter(torch.full((1,), self.scale_init))
        self.bias = nn.Parameter(torch.full((1,), self.bias_init))

    def init_weights(self) -> None:
        nn.init.constant_(self.scale, self.scale_init)
        nn.init.constant_(self.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class SquaredReLU(nn.Module):
    """``relu(x) ** 2``; no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


_ACTS = {"gelu": nn.GELU, "starrelu": StarReLU, "squared_relu": SquaredReLU, "relu": nn.ReLU}


def get_act_layer(name: str):
    """Resolve an activation name from a config (``gelu``, ``starrelu``, ``squared_relu``, ``relu``)."""
    try:
        return _ACTS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(_ACTS)}") from None
