"""The channel MLP of every block: Linear -> act -> dropout -> Linear -> dropout; the MLP head of
the MetaFormer baselines."""
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


class MlpHead(nn.Module):
    """The MLP classifier of ConvFormer / CAFormer (arXiv 2210.13452; sail-sg/metaformer
    ``MlpHead``): Linear(C -> r C) -> SquaredReLU -> LayerNorm(r C) -> dropout -> Linear(r C ->
    classes), both linears with bias.

    Args:
        dim: input width C.
        num_classes: output width.
        mlp_ratio: hidden width / C (4).
        norm_eps: eps of the hidden LayerNorm: 1e-5 in the official code (``nn.LayerNorm``),
            1e-6 in timm's port.
        drop: dropout before the last linear.
    """

    def __init__(self, dim: int, num_classes: int, *, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-5, drop: float = 0.0):
        super().__init__()
        from .activations import SquaredReLU
        hidden = int(mlp_ratio * dim)
        self.fc1 = Linear(dim, hidden)
        self.act = SquaredReLU()
        self.norm = nn.LayerNorm(hidden, eps=norm_eps)
        # not "drop": torchvision's feature-extraction tracer (timm's FX tests) reads "head.drop"
        # as a regex that also matches the model's own "head_drop" and then fails
        self.dropout = dropout(drop)
        self.fc2 = Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.dropout(self.norm(self.act(self.fc1(x)))))
