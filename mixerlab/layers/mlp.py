"""The channel MLP of every block: Linear -> act -> dropout -> Linear -> dropout."""
from __future__ import annotations

from torch import nn

from .drop import dropout


class Mlp(nn.Module):
    """Two-layer MLP acting on the last axis.

    Args:
        dim: input and output width.
        hidden_dim: hidden width (``mlp_ratio * dim`` for channel MLPs).
        act_layer: activation class.
        drop: dropout after the activation and after the second layer.
        bias: whether both linear layers have a bias.
    """

    def __init__(self, dim: int, *, hidden_dim: int, act_layer=nn.GELU, drop: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
