"""Random token mixing (RandFormer, "MetaFormer Baselines for Vision", arXiv 2210.13452;
sail-sg/metaformer).

A frozen N x N matrix, softmax(U(0, 1)) row-normalised at construction, mixes the tokens:
out = R x. By default it is a persistent buffer (saved with the weights, never trained, not counted
as a parameter); with ``as_parameter=True`` it is a frozen parameter (``requires_grad=False``), as in
sail-sg/metaformer's ``RandomMixing``, so that parameter counts include it (the v2 RandFormer
entries: the paper's "11.9 + 0.2 M"). The state-dict key is ``random_matrix`` either way. R acts on
the grid tokens only; prefix tokens get 0 on the mixing branch, so the block's residual carries
them through unchanged.
"""
from __future__ import annotations

import torch

from torch import nn

from .base import MixerCost, TokenContext, TokenMixer, register_mixer, split_prefix


@register_mixer("random")
class RandomMixing(TokenMixer):
    """Frozen random token mixing.

    Args:
        dim: token width (unused).
        num_tokens: number of grid tokens N (fixed at construction).
        as_parameter: hold R as a frozen ``nn.Parameter`` (v2) instead of a buffer.
    """

    needs_num_tokens = True
    fixed_num_tokens = True

    examples = ({}, {"as_parameter": True})

    def __init__(self, dim: int, *, num_tokens: int, as_parameter: bool = False):
        super().__init__()
        self.num_tokens = num_tokens
        self.as_parameter = as_parameter
        r = torch.rand(num_tokens, num_tokens).softmax(dim=-1)
        if as_parameter:
            self.random_matrix = nn.Parameter(r, requires_grad=False)
        else:
            self.register_buffer("random_matrix", r)

    def init_weights(self) -> None:
        with torch.no_grad():
            self.random_matrix.copy_(torch.rand_like(self.random_matrix).softmax(dim=-1))

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """N^2 C over the N grid tokens (prefix tokens are not mixed)."""
        ng = grid[0] * grid[1]
        return MixerCost(ng * ng * dim)

    def describe(self) -> dict:
        return {"num_tokens": self.num_tokens, **({"frozen_parameter": True} if self.as_parameter else {})}

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        prefix, tokens = split_prefix(x, ctx)
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"random mixing was built for {self.num_tokens} tokens, got "
                             f"{tokens.shape[1]}: its N x N matrix fixes the input size")
        out = self.random_matrix.to(tokens.dtype) @ tokens  # (N, N) @ (B, N, C) -> (B, N, C)
        if prefix.shape[1]:
            out = torch.cat([torch.zeros_like(prefix), out], dim=1)
        return out
