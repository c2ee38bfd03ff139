"""Activations of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", arXiv
2210.13452; sail-sg/metaformer ``metaformer_baselines.py``).

* ``StarReLU``: s * relu(x)^2 + b with learnable scalars s (init 1) and b (init 0): the channel
  MLP's and SepConv's activation in every v2 baseline. Written as four autograd ops (relu, square,
  scale, shift) it allocates four activation-sized tensors forward and more backward, and on the
  CPU those allocations (fresh pages of a 50-200 MB tensor) cost more than the arithmetic: fusing
  them made PoolFormerV2-S12's CPU training step 1.6-1.8x faster (``docs/benchmarks.md``). The
  fast path (switch ``fused_star_relu``) is an autograd function that keeps only its input x and
  allocates one tensor per direction:
  forward ``y = relu(x)``, then ``y <- s y^2 + b`` in place; backward ``t = relu(x) * g``,
  ``ds = <t, x>`` (t is 0 where x <= 0 and relu(x) = x elsewhere, so this is sum(g relu(x)^2)),
  ``db = sum(g)``, ``dx = 2 s t`` in place. Under ``create_graph`` its backward uses
  differentiable ops, so double backward works.
* ``SquaredReLU``: relu(x)^2 (So et al., arXiv 2109.08668), the activation of the MLP head of
  ConvFormer / CAFormer.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .fast_paths import fast_path_switch, plain_eager_cpu


class _FusedStarReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bias):
        ctx.save_for_backward(x, scale)
        y = torch.relu(x)
        return torch.addcmul(bias, y, y, value=float(scale), out=y)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: keep the backward differentiable
            r = torch.relu(x)
            gr = grad * r
            return gr * (2 * scale), (gr * r).sum().reshape(1), grad.sum().reshape(1)
        t = torch.relu(x).mul_(grad)
        gs = torch.dot(t.reshape(-1), x.reshape(-1)).reshape(1)
        gb = grad.sum().reshape(1)
        return t.mul_(2 * float(scale)), gs, gb


@torch.fx.wrap  # a leaf for torch.fx: the kernel choice reads the tensors' properties
def star_relu(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """``scale * relu(x) ** 2 + bias`` (``scale``, ``bias``: one-element tensors); ``fast``: the
    fused autograd function where :func:`~mixerlab.layers.fast_paths.plain_eager_cpu` allows it."""
    if (fast and plain_eager_cpu(x, scale, bias)  # first: under jit.trace numel() is a tensor
            and x.dtype in (torch.float32, torch.float64) and x.numel() > 0
            and scale.dtype == x.dtype and bias.dtype == x.dtype
            and scale.numel() == 1 and bias.numel() == 1):
        return _FusedStarReLU.apply(x, scale, bias)
    return scale * F.relu(x).square() + bias


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with one learnable scale and one learnable bias
    (``fused_star_relu = False``: the four reference autograd ops)."""

    fast_path_switches = (fast_path_switch(
        "fused_star_relu", "layers.StarReLU: one saved tensor and one allocation per direction "
        "(hand-written backward); off: relu, square, scale and shift as autograd ops"),)

    def __init__(self, *, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.scale_init, self.bias_init = float(scale), float(bias)
        self.scale = nn.Parameter(torch.full((1,), self.scale_init))
        self.bias = nn.Parameter(torch.full((1,), self.bias_init))
        self.fused_star_relu = True

    def init_weights(self) -> None:
        nn.init.constant_(self.scale, self.scale_init)
        nn.init.constant_(self.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return star_relu(x, self.scale, self.bias, fast=self.fused_star_relu)


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
