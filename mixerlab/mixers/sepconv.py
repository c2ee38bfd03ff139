"""Separable convolution mixer (ConvFormer / CAFormer stages 1-2: Yu et al., "MetaFormer Baselines
for Vision", arXiv 2210.13452; sail-sg/metaformer ``SepConv``; the inverted separable convolution of
MobileNetV2, arXiv 1801.04381).

    SepConv(x) = pwconv2(act2(dwconv(act1(pwconv1(x)))))

``pwconv1``: pointwise C -> r C (r = ``expansion_ratio``, 2); ``act1``: StarReLU; ``dwconv``: a
depthwise k x k conv (k = 7, padding k // 2) over the token grid; ``act2``: identity; ``pwconv2``:
pointwise r C -> C; no biases by default. The pointwise convs act per token, so they are linears
on the (B, N, C) tokens (the official code's ``nn.Linear``; timm stores them as 1x1 convs).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.activations import get_act_layer
from ..layers.linear import Linear
from .base import MixerCost, TokenContext, TokenMixer, map_to_tokens, register_mixer, tokens_to_map


@register_mixer("sepconv")
class SepConv(TokenMixer):
    """Pointwise expand, activation, depthwise conv, pointwise project.

    Args:
        dim: token width C.
        expansion_ratio: hidden width / C.
        kernel_size: odd depthwise kernel size (padding ``kernel_size // 2`` keeps the grid).
        bias: biases of the three convolutions.
        act: activation after the expansion (``starrelu``, ``gelu``, ...).
    """

    supports_prefix_tokens = False
    examples = ({}, {"kernel_size": 3, "bias": True, "act": "gelu"})

    def __init__(self, dim: int, *, expansion_ratio: float = 2.0, kernel_size: int = 7,
                 bias: bool = False, act: str = "starrelu"):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        hidden = int(expansion_ratio * dim)
        if hidden < 1:
            raise ValueError(f"expansion_ratio {expansion_ratio} leaves no hidden channels at dim {dim}")
        self.kernel_size, self.hidden = kernel_size, hidden
        self.pwconv1 = Linear(dim, hidden, bias=bias)
        self.act1 = get_act_layer(act)()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2,
                                groups=hidden, bias=bias)
        self.act2 = nn.Identity()
        self.pwconv2 = Linear(hidden, dim, bias=bias)

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """Two pointwise convs 2 N C r C and the depthwise conv N r C k^2 (N grid tokens)."""
        n = grid[0] * grid[1]
        return MixerCost(2 * n * dim * self.hidden + n * self.hidden * self.kernel_size ** 2)

    def describe(self) -> dict:
        return {"kernel_size": self.kernel_size, "hidden": self.hidden}

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        self.check_tokens(x, ctx)
        x = self.act1(self.pwconv1(x))  # (B, N, rC)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, ctx.grid)))
        return self.pwconv2(self.act2(x))
