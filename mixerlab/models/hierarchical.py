"""Hierarchical backbone: a stem, then stages of MetaFormer blocks separated by strided-conv
downsampling (PoolFormer, arXiv 2111.11418; LaViT, arXiv 2406.00427; PVT-style stages).

Tokens stay (B, N, C) inside stages; the stem and downsampling convs see (B, C, H, W). Names follow
timm's ``MetaFormer`` where the parts exist there (``stem.conv``, ``stages.i.downsample.conv``,
``stages.i.blocks.j``), so PoolFormer checkpoints map with few renames. The head norms the map then
pools (the official PoolFormer) or, with ``head_norm_first=False``, pools then norms (timm, and the
MetaFormer baselines, arXiv 2210.13452).

The MetaFormer baselines (v2) are options of the same backbone: ``embed_norm`` with
``downsample_norm_first`` (a bias-free LayerNorm after the stem conv and before each downsampling
conv), per-stage ``res_scale_init``, ``head="mlp"`` (ConvFormer / CAFormer's MLP head) and
``conv_init="trunc_normal"`` (every conv trunc-normal(0.02), as sail-sg/metaformer).
"""
from __future__ import annotations

import dataclasses
import re

import torch
import torch.fx
from torch import nn

from ..layers import drop_path_rates, dropout, get_act_layer, get_norm_layer, resample_pos_embed
from ..layers.linear import Linear
from ..layers.mlp import MlpHead
from ..layers.norm import LayerNorm
from ..mixers.base import TokenContext, map_to_tokens
from .base import MixerModel, mixer_factory
from .block import MetaFormerBlock
from .config import HierarchicalConfig

torch.fx.wrap("resample_pos_embed")  # a leaf for torch.fx (it branches on the grid)


class ConvEmbed(nn.Module):
    """Strided conv on the (B, C, H, W) map, optional norm on the resulting tokens (or, with
    ``norm_first``, on the input tokens, before the conv: the v2 downsampling)."""

    def __init__(self, in_chs: int, out_chs: int, *, kernel: int, stride: int, padding: int,
                 norm_layer=None, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first and norm_layer is not None
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding)
        self.norm = (norm_layer(in_chs if norm_first else out_chs) if norm_layer is not None
                     else nn.Identity())
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def output_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        k, s, p = self.kernel, self.stride, self.padding
        return tuple((g + 2 * p - k) // s + 1 for g in grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) map -> (B, N, C) tokens and their grid."""
        x = self.conv(x)  # (B, C, H, W)
        grid = (x.shape[2], x.shape[3])
        x = map_to_tokens(x)
        return (x if self.norm_first else self.norm(x)), grid  # (B, N, C)

    def forward_tokens(self, x: torch.Tensor, grid: tuple[int, int]):
        """(B, N, C) tokens on ``grid`` -> the next stage's tokens and grid."""
        if self.norm_first:
            x = self.norm(x)
        b, n, c = x.shape
        return self(x.transpose(1, 2).reshape(b, c, *grid))


class Stage(nn.Module):
    """Optional downsampling, optional position embedding, blocks."""

    def __init__(self, downsample: ConvEmbed | None, blocks: list[nn.Module], pos_grid,
                 pos_init: str | None, dim: int):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.pos_grid = pos_grid
        self.pos_init = pos_init
        self.pos_embed = (nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], dim))
                          if pos_init is not None else None)
        self.blocks = nn.ModuleList(blocks)

    def init_weights(self) -> None:
        if self.pos_embed is not None:
            if self.pos_init == "trunc_normal":
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
            else:
                nn.init.zeros_(self.pos_embed)

    def add_pos(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.pos_embed is None:
            return x
        return x + resample_pos_embed(self.pos_embed, self.pos_grid, grid, mode="bilinear")


class HierarchicalModel(MixerModel):
    """A multi-stage model built from a ``HierarchicalConfig``.

    ``forward_features`` returns the last stage as a channels-last map (B, H, W, C): timm's
    ``output_fmt = "NHWC"`` (a view of the (B, N, C) tokens, no copy).
    """

    output_fmt = "NHWC"

    def __init__(self, cfg: HierarchicalConfig):
        super().__init__()
        self._setup_common(cfg)
        if not cfg.stages:
            raise ValueError("a hierarchical model needs at least one stage")
        for i, st in enumerate(cfg.stages):
            if st.pos_embed not in (None, "zeros", "trunc_normal"):
                raise ValueError(f"stage {i}: pos_embed={st.pos_embed!r}; allowed: "
                                 "[None, 'trunc_normal', 'zeros']")
        for key, allowed in (("head", ("linear", "mlp")), ("conv_init", ("default", "trunc_normal"))):
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"{key}={getattr(cfg, key)!r}; allowed: {list(allowed)}")
        embed_norm = get_norm_layer(cfg.embed_norm) if cfg.embed_norm is not None else None
        act_layer = get_act_layer(cfg.block.mlp_act)
        dims = [st.dim for st in cfg.stages]
        depth = sum(len(st.mixers) for st in cfg.stages)
        dpr = drop_path_rates(cfg.drop_path_rate, depth)
        k, s, p = cfg.stem
        self.stem = ConvEmbed(cfg.in_chans, dims[0], kernel=k, stride=s, padding=p, norm_layer=embed_norm)
        self.first_conv = "stem.conv"
        grid = self.stem.output_grid(self.img_size)
        reduction = s
        stages, self.feature_info, b0 = [], [], 0
        for i, st in enumerate(cfg.stages):
            down = None
            if i > 0:
                k, s, p = cfg.downsample
                down = ConvEmbed(dims[i - 1], st.dim, kernel=k, stride=s, padding=p,
                                 norm_layer=embed_norm, norm_first=cfg.downsample_norm_first)
                grid = down.output_grid(grid)
                reduction *= s
            if min(grid) < 1:
                raise ValueError(f"img_size {self.img_size} is too small: stage {i} has no tokens")
            n_tok = grid[0] * grid[1]
            blocks = [MetaFormerBlock(
                st.dim, token_mixer=mixer_factory(spec, num_tokens=n_tok, drop=cfg.drop_rate),
                norm_layer=self.norm_layer, mlp_ratio=st.mlp_ratio, drop=cfg.drop_rate,
                drop_path=dpr[b0 + j], layer_scale_init=cfg.block.layer_scale_init,
                scale_adjustment=cfg.block.scale_adjustment, mlp_first=cfg.block.mlp_first,
                act_layer=act_layer, mlp_bias=cfg.block.mlp_bias, res_scale_init=st.res_scale_init)
                for j, spec in enumerate(st.mixers)]
            b0 += len(st.mixers)
            stages.append(Stage(down, blocks, grid, st.pos_embed, st.dim))
            self.feature_info.append(dict(num_chs=st.dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.head_norm_first = cfg.head_norm_first
        self.global_pool = "avg"
        # timm's PoolFormer pools, then applies a channel LayerNorm (eps 1e-6) to the vector.
        self.norm = (get_norm_layer(cfg.head_norm)(dims[-1]) if cfg.head_norm_first
                     else LayerNorm(dims[-1], eps=1e-6))
        self.head_kind = cfg.head
        self.head_drop = dropout(cfg.drop_rate) if cfg.head == "linear" else nn.Identity()
        self.head = self._make_head(cfg.num_classes)
        self._finish(conv_trunc_normal=cfg.conv_init == "trunc_normal")

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.head_kind == "mlp":  # dropout inside, before its last linear (sail-sg/metaformer)
            return MlpHead(self.num_features, num_classes, norm_eps=self.cfg.head_hidden_norm_eps,
                           drop=self.cfg.drop_rate)
        return Linear(self.num_features, num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if self.head_kind == "linear":
            return super().reset_classifier(num_classes, global_pool)
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        ref = next(self.parameters())  # the new head on the model's device and dtype, in its mode
        self.head = self._make_head(num_classes).to(device=ref.device, dtype=ref.dtype)
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.head.train(self.training)

    def set_head_hidden_norm_eps(self, eps: float) -> None:
        """Set the eps of the MLP head's LayerNorm in place (official 1e-5, timm 1e-6); ``cfg``
        follows (a linear head has no such norm: only ``cfg`` changes)."""
        if isinstance(self.head, MlpHead):
            self.head.norm.eps = float(eps)
        self.cfg = dataclasses.replace(self.cfg, head_hidden_norm_eps=float(eps))

    def set_head_norm_first(self, value: bool) -> None:
        """Switch the head between the official order (norm the map, then pool: ``True``) and
        timm's (pool, then LayerNorm eps 1e-6: ``False``), in place. The final norm is rebuilt
        (identity affine) when the order changes; load weights afterwards. ``cfg`` follows."""
        if self.head_norm_first == value:
            return
        dim, ref = self.num_features, self.norm.weight
        norm = get_norm_layer(self.cfg.head_norm)(dim) if value else LayerNorm(dim, eps=1e-6)
        self.norm = norm.to(device=ref.device, dtype=ref.dtype)
        self.head_norm_first = value
        self.cfg = dataclasses.replace(self.cfg, head_norm_first=value)

    def set_global_pool(self, global_pool: str) -> None:
        """``avg`` (mean over the map) or ``''`` (none: ``forward`` returns (B, H, W, classes or
        dim))."""
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}; allowed: ['', 'avg']")
        self.global_pool = global_pool

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.pos_embed" for i, st in enumerate(self.stages) if st.pos_embed is not None}

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                           (r"^norm", (99999,))])

    # -- forward --------------------------------------------------------------------------------
    def _stages(self, x: torch.Tensor, upto: int | None = None, ctx: TokenContext | None = None):
        """Run the stages, yielding (index, tokens (B, N, C), grid) after each."""
        x, grid = self.stem(self.check_input(x))
        ctx = ctx if ctx is not None else TokenContext()
        ctx.grid = grid
        for i, stage in enumerate(self.stages):
            if i > 0:
                x, grid = stage.downsample.forward_tokens(x, grid)
                ctx.grid = grid
            x = stage.add_pos(x, grid)
            for blk in stage.blocks:
                x = self.run_block(blk, x, ctx)
            yield i, x, grid
            if upto is not None and i >= upto:
                break

    def forward_features(self, x: torch.Tensor, ctx: TokenContext | None = None) -> torch.Tensor:
        """Images -> the last stage's map (B, H, W, C), normed when the head norms before
        pooling. ``ctx`` (optional) receives what the layers report (auxiliary loss terms)."""
        for _, x, grid in self._stages(x, ctx=ctx):
            pass
        return self._to_fmt(self.norm(x) if self.head_norm_first else x, grid, 0, "NHWC")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))  # global average over the (B, H, W, C) map
        if not self.head_norm_first:
            x = self.norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs as (B, C, H, W) maps (``NHWC``: (B, H, W, C); ``NLC``: tokens), for
        dense prediction; the final output is ``forward_features``'s.

        ``norm`` applies the final norm to the last stage's output only (the other stages have
        other widths).
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; allowed: ['NCHW', 'NHWC', 'NLC']")
        take = self._resolve_indices(indices, len(self.stages))
        upto = max(take) if (stop_early or intermediates_only) else None
        feats, last = [], len(self.stages) - 1
        for i, x, grid in self._stages(x, upto):
            if i in take:
                y = self.norm(x) if (norm and i == last and self.head_norm_first) else x
                feats.append(self._to_fmt(y, grid, 0, output_fmt))
        if intermediates_only:
            return feats
        return self._to_fmt(self.norm(x) if self.head_norm_first else x, grid, 0, "NHWC"), feats

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the final norm, the head), as
        timm's ``FeatureGetterNet(prune=True)`` asks; returns the stage indices to take."""
        take = self._resolve_indices(indices, len(self.stages))
        last = max(take)
        self.stages = self.stages[:last + 1]
        self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        self.feature_info = self.feature_info[:last + 1]
        width = getattr(getattr(self.norm, "weight", None), "shape", (self.num_features,))[0]
        if prune_norm or width != self.num_features:  # the final norm fits the last stage only
            self.norm = nn.Identity()
        self._prune_head(prune_head or getattr(self.head, "in_features", self.num_features) != self.num_features)
        return take


_V2_KEY = re.compile(r"^stages\.\d+\.blocks\.\d+\.mlp\.act\.scale$")  # StarReLU channel MLP
_V1_KEY = re.compile(r"^stages\.\d+\.blocks\.\d+\.(ls1\.gamma|layer_scale1\.scale)$")  # LayerScale

METAFORMER_VERSIONS = {
    1: "MetaFormer v1 (PoolFormer, arXiv 2111.11418: LayerScale, GELU MLP with biases)",
    2: "MetaFormer v2 (MetaFormer Baselines, arXiv 2210.13452: StarReLU MLP, residual scale, "
       "stem/downsampling norms)",
}


def metaformer_version(keys) -> int | None:
    """1 or 2 when the state-dict ``keys`` (mixerlab's or timm's names) are those of a v1
    (PoolFormer) or v2 (MetaFormer baselines) hierarchical MetaFormer, else None."""
    keys = list(keys)
    if any(_V2_KEY.match(k) for k in keys):
        return 2
    if any(_V1_KEY.match(k) for k in keys):
        return 1
    return None
