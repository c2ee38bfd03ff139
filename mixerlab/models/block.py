"""The one MetaFormer block (Yu et al., arXiv 2111.11418; as in timm ``Block`` and sail-sg
``MetaFormerBlock``):

    x = x + drop_path1(ls1(token_mixer(norm1(x), ctx)))
    x = x + drop_path2(ls2(mlp(norm2(x))))

Every mixer runs inside it. Paper-specific variants are options, not new classes:
``layer_scale_init`` (PoolFormer), ``scale_adjustment`` (DeepViT-S/L: LN(a x) and a 1/a branch
scale), ``mlp_first`` (FF-only runs the channel MLP first), ``res_scale_init`` (the MetaFormer
baselines, arXiv 2210.13452: a learnable per-channel scale on the residual path,
``x = rs1(x) + drop_path1(mixer(norm1(x)))``), ``act_layer`` / ``mlp_bias`` (their StarReLU,
bias-free channel MLP). The norm in front of the mixer is
whatever the mixer asks for (``build_norm``: FF-only's token mixer asks for a token-axis norm).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..layers import DropPath, FixedScale, LayerScale, Mlp, ScaledInputLayerNorm
from ..mixers.base import TokenContext


class MetaFormerBlock(nn.Module):
    """Norm -> token mixer -> scale -> drop path -> residual; the same around the channel MLP.

    Args:
        dim: token width.
        token_mixer: factory ``token_mixer(dim) -> TokenMixer`` (a class or partial).
        norm_layer: factory ``norm_layer(dim)``.
        mlp_ratio: MLP hidden width / dim.
        act_layer: MLP activation.
        drop: dropout inside the MLP.
        drop_path: stochastic-depth rate of both branches.
        layer_scale_init: initial LayerScale value, None for none.
        scale_adjustment: DeepViT's a: norms see a * x and branches are scaled by 1 / a.
        mlp_first: run the MLP sub-layer before the mixer sub-layer.
        mlp_bias: biases of the MLP's linears.
        res_scale_init: initial residual scale (a learnable vector on the skip path), None for none.
    """

    def __init__(self, dim: int, *, token_mixer, norm_layer, mlp_ratio: float = 4.0,
                 act_layer=nn.GELU, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale_init: float | None = None, scale_adjustment: float | None = None,
                 mlp_first: bool = False, mlp_bias: bool = True,
                 res_scale_init: float | None = None):
        super().__init__()
        if scale_adjustment is not None:
            if layer_scale_init is not None:
                raise ValueError("scale_adjustment and layer_scale_init are exclusive")
            norm_layer = partial(ScaledInputLayerNorm, input_scale=scale_adjustment)
        mixer = token_mixer(dim)
        self.norm1 = mixer.build_norm(dim, norm_layer)
        self.token_mixer = mixer
        self.ls1 = self._scale(dim, layer_scale_init, scale_adjustment)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio), act_layer=act_layer, drop=drop,
                       bias=mlp_bias)
        self.ls2 = self._scale(dim, layer_scale_init, scale_adjustment)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_first = mlp_first
        if res_scale_init is not None:
            self.rs1 = LayerScale(dim, init_values=res_scale_init)
            self.rs2 = LayerScale(dim, init_values=res_scale_init)
        else:
            self.rs1 = self.rs2 = None

    @staticmethod
    def _scale(dim, layer_scale_init, scale_adjustment) -> nn.Module:
        if layer_scale_init is not None:
            return LayerScale(dim, init_values=layer_scale_init)
        if scale_adjustment is not None:
            return FixedScale(1.0 / scale_adjustment)
        return nn.Identity()

    def mix(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        skip = self.rs1(x) if self.rs1 is not None else x
        return skip + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x), ctx)))

    def channel_mlp(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.rs2(x) if self.rs2 is not None else x
        return skip + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        if self.mlp_first:
            return self.mix(self.channel_mlp(x), ctx)
        return self.channel_mlp(self.mix(x, ctx))
