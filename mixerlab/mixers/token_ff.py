"""Feed-forward over the token axis (FF-only: Melas-Kyriazi, "Do You Even Need Attention?",
arXiv 2105.02723; official code lukemelas/do-you-even-need-attention).

The tokens (B, T, D) are transposed to (B, D, T) and an MLP Linear(T -> 4T) -> GELU -> Dropout ->
Linear(4T -> T) -> Dropout is applied over the T tokens (class token included), with weights shared
across channels; then transposed back. As in the official code, the norm in front of it is a
LayerNorm over the *token* axis (T affine pairs): this mixer asks the block for that norm through
``build_norm``. The block runs the channel MLP *before* this mixer (``mlp_first``), as the code does.
T is fixed at construction, so the model only accepts the input size it was built for.

Fast path (switch ``token_major``, on by default): the same two linear maps applied from the left
to the tokens laid out as a (T, B*D) matrix, ``W2 @ act(W1 @ X + b1) + b2``, instead of to (B*D, T)
rows. The weights, the maths and the state dict are unchanged; only the GEMM layout differs, and
GEMMs dominate an FF-only step on a CPU (measurements: ``scripts/profile_model.py ffonly_tiny
--paths``, docs/benchmarks.md). With active dropout the module path runs instead, which is also
the reference the tests compare with (``token_major = False``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.mlp import Mlp
from ..layers.norm import TokenLayerNorm
from ..layers.fast_paths import fast_path_switch
from .base import MixerCost, TokenContext, TokenMixer, register_mixer


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
    fast_path_switches = (fast_path_switch(
        "token_major", "token_ff: token-major GEMMs on a (T, B*D) layout; off: the Mlp module call"),)

    def __init__(self, dim: int, *, num_tokens: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.drop = drop
        self.token_major = True  # token-major GEMMs; False: the module path (the reference)
        self.mlp = Mlp(num_tokens, hidden_dim=int(mlp_ratio * num_tokens), act_layer=nn.GELU, drop=drop)

    def build_norm(self, dim: int, norm_layer):
        return TokenLayerNorm(dim, num_tokens=self.num_tokens)

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """2 T h C with h = int(mlp_ratio T) hidden units (8 T^2 C at ratio 4)."""
        return MixerCost(2 * num_tokens * self.mlp.fc1.out_features * dim)

    def describe(self) -> dict:
        return {"num_tokens": self.num_tokens, "hidden": self.mlp.fc1.out_features}

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        # torch._assert, not `if`: traceable by torch.fx (the model's input check names the sizes)
        torch._assert(x.shape[1] == self.num_tokens, "token_ff got another token count than it was "
                      "built for: the feed-forward over the token axis has a fixed token count")
        if self.token_major and not (self.training and self.drop > 0):
            return self._forward_token_major(x)
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) -> (B, T, D)

    def _forward_token_major(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        h = x.transpose(0, 1).reshape(t, b * d)  # (T, B*D): every column is one channel's tokens
        h = torch.addmm(fc1.bias[:, None], fc1.weight, h) if fc1.bias is not None else fc1.weight @ h
        h = self.mlp.act(h)
        h = torch.addmm(fc2.bias[:, None], fc2.weight, h) if fc2.bias is not None else fc2.weight @ h
        return h.view(t, b, d).transpose(0, 1)
