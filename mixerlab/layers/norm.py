"""Normalisation layers for token tensors laid out as (B, N, C).

* ``LayerNorm``: the transformer LayerNorm over channels (ViT/DeiT/ConViT/DeepViT: eps 1e-6).
* ``GroupNorm1``: PoolFormer's "modified layer norm", ``GroupNorm(1, C)``: normalises each sample
  over all tokens *and* channels jointly, with a per-channel affine (MetaFormer, arXiv 2111.11418;
  sail-sg/poolformer). Equal to ``nn.GroupNorm(1, C)`` on the (B, C, H, W) map.
* ``TokenLayerNorm``: FF-only's LayerNorm over the *token* axis, with one affine pair per token
  (Melas-Kyriazi, arXiv 2105.02723; lukemelas/do-you-even-need-attention).
* ``ScaledInputLayerNorm``: LN(a * x), DeepViT-S/L's ``scale_adjustment`` (zhoudaquan/dvit_repo).
* ``groupnorm1_nobias`` / ``layernorm_nobias``: the MetaFormer baselines' norms (arXiv 2210.13452;
  sail-sg/metaformer ``LayerNormGeneral(bias=False, eps=1e-6)``): GroupNorm(1) ("modified layer
  norm", IdentityFormer / RandFormer / PoolFormerV2) or the channel LayerNorm (ConvFormer /
  CAFormer, the stem and downsampling norms), eps 1e-6, a per-channel weight and no bias.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the channel (last) axis; eps 1e-6 by default, as in DeiT; ``bias=False``
    gives the MetaFormer baselines' bias-free LayerNorm."""

    def __init__(self, dim: int, *, eps: float = 1e-6, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)


class ScaledInputLayerNorm(nn.LayerNorm):
    """LayerNorm of ``input_scale * x``: DeepViT's ``norm(x * scale_adjustment)``.

    Kept exact (rather than dropped as "LN is scale invariant") because the eps makes it differ.
    """

    def __init__(self, dim: int, *, input_scale: float, eps: float = 1e-6):
        super().__init__(dim, eps=eps)
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.input_scale)


class GroupNorm1(nn.Module):
    """GroupNorm with one group on (B, N, C) tokens: statistics over (N, C), affine per channel
    (``bias=False``: weight only, as the MetaFormer baselines)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm1(x, self.weight, self.bias, self.eps)


@torch.fx.wrap  # a leaf for torch.fx: the kernel choice depends on the token count, a shape
def group_norm1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm(1, C) of (B, N, C) tokens with a per-channel affine."""
    b, n, c = x.shape
    h = _split(n)
    if h is None:  # no 2-D factorisation: normalise over (N, C), then the per-channel affine
        y = F.layer_norm(x, (n, c), eps=eps) * weight
        return y + bias if bias is not None else y
    # The statistics do not depend on where the tokens sit, so view the (B, N, C) tokens as a
    # channels-last (B, C, h, N / h) map: PyTorch's channels-last GroupNorm kernel then runs
    # with the affine fused and returns channels-last memory, i.e. (B, N, C) tokens again, with
    # no copy (faster forward + backward than layer_norm + affine on the CPU, see
    # docs/benchmarks.md, and one activation less kept for backward).
    m = x.reshape(b, h, n // h, c).permute(0, 3, 1, 2)  # (B, C, h, w), channels-last
    y = F.group_norm(m, 1, weight, bias, eps)
    return y.permute(0, 2, 3, 1).reshape(b, n, c)


def _split(n: int) -> int | None:
    """The largest divisor h of n with 1 < h <= sqrt(n) (None when n is 1 or prime)."""
    for h in range(math.isqrt(n), 1, -1):
        if n % h == 0:
            return h
    return None


class TokenLayerNorm(nn.Module):
    """LayerNorm over the token axis of (B, N, C) tokens, with ``num_tokens`` affine pairs."""

    def __init__(self, dim: int, *, num_tokens: int, eps: float = 1e-6):
        super().__init__()
        del dim  # the normalised axis is the token axis; the width plays no role
        self.num_tokens = num_tokens
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_tokens))
        self.bias = nn.Parameter(torch.zeros(num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch._assert, not `if`: traceable by torch.fx (the model's input check names the sizes)
        torch._assert(x.shape[1] == self.num_tokens, "TokenLayerNorm got another token count than "
                      "it was built for: a token-axis norm only works at that sequence length")
        x = x.transpose(1, 2)  # (B, C, N)
        x = F.layer_norm(x, (self.num_tokens,), self.weight, self.bias, self.eps)
        return x.transpose(1, 2)  # (B, N, C)


_NORMS = {
    "layernorm": LayerNorm,
    "layernorm_eps5": partial(LayerNorm, eps=1e-5),
    "groupnorm1": GroupNorm1,
    "groupnorm1_nobias": partial(GroupNorm1, eps=1e-6, bias=False),
    "layernorm_nobias": partial(LayerNorm, eps=1e-6, bias=False),
}


def get_norm_layer(name: str):
    """Resolve a norm name from a config (``layernorm``, ``layernorm_eps5``, ``groupnorm1``,
    ``groupnorm1_nobias``, ``layernorm_nobias``)."""
    try:
        return _NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; allowed: {sorted(_NORMS)}") from None
