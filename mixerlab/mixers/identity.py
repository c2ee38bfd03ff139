"""Identity mixer (MetaFormer's ablation / IdentityFormer, arXiv 2111.11418 and 2210.13452).

Returns its input, so the block's first branch is x + ls * Norm(x): no token mixing inside blocks.
"""
from __future__ import annotations

import torch

from .base import MixerCost, TokenContext, TokenMixer, register_mixer


@register_mixer("identity")
class IdentityMixer(TokenMixer):
    """No token mixing. Args: dim (unused)."""

    def __init__(self, dim: int):
        super().__init__()

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """No arithmetic."""
        return MixerCost(0)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return x
