"""Hierarchical backbone: a stem, then stages of MetaFormer blocks separated by strided-conv
downsampling (PoolFormer, arXiv 2111.11418; LaViT, arXiv 2406.00427; PVT-style stages).

Tokens stay (B, N, C) inside stages; the stem and downsampling convs see (B, C, H, W). Names follow
timm's ``MetaFormer`` where the parts exist there (``stem.conv``, ``stages.i.downsample.conv``,
``stages.i.blocks.j``), so PoolFormer checkpoints map with few renames. The head norms the map then
pools (the official PoolFormer) or, with ``head_norm_first=False``, pools then norms (timm).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.fx
from torch import nn

from ..layers import drop_path_rates, dropout, get_norm_layer, resample_pos_embed
from ..layers.linear import Linear
from ..layers.norm import LayerNorm
from ..mixers.base import TokenContext, map_to_tokens
from .base import MixerModel, mixer_factory
from .block import MetaFormerBlock
from .config import HierarchicalConfig

torch.fx.wrap("resample_pos_embed")  # a leaf for torch.fx (it branches on the grid)


class ConvEmbed(nn.Module):
    """Strided conv on the (B, C, H, W) map, optional norm on the resulting tokens."""

    def __init__(self, in_chs: int, out_chs: int, *, kernel: int, stride: int, padding: int,
                 norm_layer=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding)
        self.norm = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def output_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        k, s, p = self.kernel, self.stride, self.padding
        return tuple((g + 2 * p - k) // s + 1 for g in grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(x)  # (B, C, H, W)
        grid = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), grid  # (B, N, C)


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
        embed_norm = get_norm_layer(cfg.embed_norm) if cfg.embed_norm is not None else None
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
                                 norm_layer=embed_norm)
                grid = down.output_grid(grid)
                reduction *= s
            if min(grid) < 1:
                raise ValueError(f"img_size {self.img_size} is too small: stage {i} has no tokens")
            n_tok = grid[0] * grid[1]
            blocks = [MetaFormerBlock(
                st.dim, token_mixer=mixer_factory(spec, num_tokens=n_tok, drop=cfg.drop_rate),
                norm_layer=self.norm_layer, mlp_ratio=st.mlp_ratio, drop=cfg.drop_rate,
                drop_path=dpr[b0 + j], layer_scale_init=cfg.block.layer_scale_init,
                scale_adjustment=cfg.block.scale_adjustment, mlp_first=cfg.block.mlp_first)
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
        self.head_drop = dropout(cfg.drop_rate)
        self.head = Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._finish()

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
                b, n, c = x.shape
                x = x.transpose(1, 2).reshape(b, c, *grid)  # (B, C, H, W)
                x, grid = stage.downsample(x)
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
