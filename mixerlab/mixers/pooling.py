"""Pooling mixer (PoolFormer / MetaFormer: Yu et al., CVPR 2022, arXiv 2111.11418; official code
sail-sg/poolformer, Apache-2.0).

    Pool(x) = AvgPool(k, stride 1, padding k // 2, count_include_pad=False)(x) - x

"- x" because the block already adds the residual. With padding excluded from the average, a
constant map gives exactly 0. Prefix (class) tokens, if any, get 0 (they have no neighbours).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (MixerCost, TokenContext, TokenMixer, map_to_tokens, register_mixer, split_prefix,
                   tokens_to_map)


@register_mixer("pooling")
class Pooling(TokenMixer):
    """Average pooling minus identity; no parameters.

    Args:
        dim: token width (unused; part of the mixer signature).
        pool_size: odd window size.
    """

    def __init__(self, dim: int, *, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be a positive odd integer, got {pool_size}")
        self.pool_size = pool_size

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """0 MACs; k^2 N C additions over the N grid tokens as ``extra_flops`` (approximately: the
        window sums, the divide and the "- x" are k^2 + 1 operations per element at interior
        positions and fewer at the border). The FLOP counter sees pooling as 0."""
        return MixerCost(0, self.pool_size ** 2 * grid[0] * grid[1] * dim)

    def describe(self) -> dict:
        return {"pool_size": self.pool_size}

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        prefix, tokens = split_prefix(x, ctx)
        m = tokens_to_map(tokens, ctx.grid)  # (B, C, H, W), channels-last view
        k = self.pool_size
        pooled = F.avg_pool2d(m, k, 1, k // 2, count_include_pad=False)
        out = map_to_tokens(pooled) - tokens  # (B, N, C)
        if ctx.num_prefix_tokens:
            out = torch.cat([torch.zeros_like(prefix), out], dim=1)
        return out
