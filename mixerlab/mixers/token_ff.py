"""Feed-forward over the token axis (FF-only: Melas-Kyriazi, "Do You Even Need Attention?",
arXiv 2105.02723; official code lukemelas/do-you-even-need-attention).

The tokens (B, T, D) are transposed to (B, D, T) and an MLP Linear(T -> 4T) -> GELU -> Dropout ->
Linear(4T -> T) -> Dropout is applied over the T tokens (class token included), with weights shared
across channels; then transposed back. As in the official code, the norm in front of it is a
LayerNorm over the *token* axis (T affine pairs): this mixer asks the block for that norm through
``build_norm``. The block runs the channel MLP *before* this mixer (``mlp_first``), as the code does.
T is fixed at construction, so the model only accepts the input size it was built for.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.mlp import Mlp
from ..layers.norm import TokenLayerNorm
from .base import TokenContext, TokenMixer, register_mixer


@register_mixer("token_ff")
class TokenFF(TokenMixer):
    """MLP over the token axis.

    Args:
        dim: token width D (unused by the weights).
        num_tokens: T, the sequence length including the class token.
        mlp_ratio: hidden size = int(mlp_ratio * T).
        drop: dropout inside the MLP.
    """

    needs_num_tokens = True
    fixed_num_tokens = True
    drop_kwarg = "drop"

    def __init__(self, dim: int, *, num_tokens: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.mlp = Mlp(num_tokens, hidden_dim=int(mlp_ratio * num_tokens), act_layer=nn.GELU, drop=drop)

    def build_norm(self, dim: int, norm_layer):
        return TokenLayerNorm(dim, num_tokens=self.num_tokens)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"token_ff was built for {self.num_tokens} tokens, got {x.shape[1]}: "
                             "the feed-forward over the token axis has a fixed token count")
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) -> (B, T, D)
