"""The channel MLP of every block: Linear -> act -> dropout -> Linear -> dropout."""
from __future__ import annotations

import torch.fx
from torch import nn

from .drop import dropout
from .linear import Linear, linear

torch.fx.wrap("linear")  # a leaf for torch.fx (its kernel choice reads the tensors' properties)


class Mlp(nn.Module):
    """Two-layer MLP acting on the last axis.

    Both layers are :class:`~mixerlab.layers.linear.Linear` (``nn.Linear`` with a oneDNN fast path
    on the CPU). With an exact GELU, the first layer's bias and activation run inside its GEMM when
    no gradient is needed (inference); ``fc1.onednn_linear = False`` gives the reference path.

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
        self.fc1 = Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = dropout(drop)
        self.fc2 = Linear(hidden_dim, dim, bias=bias)
        self.drop2 = dropout(drop)

    def forward(self, x):
        fc1, act = self.fc1, self.act
        exact_gelu = type(act) is nn.GELU and act.approximate == "none"
        if exact_gelu and not (fc1._forward_hooks or fc1._forward_pre_hooks):
            x = linear(x, self.fc1.weight, self.fc1.bias, act="gelu", fast=self.fc1.onednn_linear)
        else:
            x = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.drop1(x)))
