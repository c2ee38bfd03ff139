"""Isotropic (ViT-style) backbone: patch embedding, optional class token, position embedding,
a stack of MetaFormer blocks at one resolution, final norm, head.

Covers ViT/DeiT, ConViT (class token inserted before block ``cls_token_at``, position table
without a class slot), DeepViT (CNN stem option) and FF-only (token FF with a fixed token count,
position grid stored at 14x14 and interpolated). State-dict names follow timm's ViT
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.norm1``, ``norm``, ``head``), with
the mixer under ``blocks.i.token_mixer``.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ..layers import (ConvStem, Linear, PatchEmbed, drop_path_rates, dropout, get_act_layer,
                      resample_pos_embed)
from ..mixers.base import TokenContext
from .base import MixerModel, mixer_factory
from .block import MetaFormerBlock
from .config import IsotropicConfig

torch.fx.wrap("resample_pos_embed")  # a leaf for torch.fx (it branches on the grid)


class IsotropicModel(MixerModel):
    """A ViT-style model built from an ``IsotropicConfig``."""

    def __init__(self, cfg: IsotropicConfig):
        super().__init__()
        self._setup_common(cfg)
        depth = len(cfg.mixers)
        if depth == 0:
            raise ValueError("an isotropic model needs at least one block (mixers is empty)")
        if cfg.global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool={cfg.global_pool!r}; allowed: ['', 'avg', 'token']")
        if cfg.class_token and not 0 <= cfg.cls_token_at < depth:
            raise ValueError(f"cls_token_at={cfg.cls_token_at} must be in 0..{depth - 1}")
        if cfg.pos_embed_cls_slot and cfg.class_token and cfg.cls_token_at != 0:
            raise ValueError("a position table with a class slot needs cls_token_at=0")
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        self.dim = self.num_features = self.head_hidden_size = cfg.dim
        if cfg.stem == "patch":
            self.patch_embed = PatchEmbed(cfg.in_chans, cfg.dim, patch_size=cfg.patch_size)
        elif cfg.stem == "cnn":
            self.patch_embed = ConvStem(cfg.in_chans, cfg.dim)
        else:
            raise ValueError(f"stem={cfg.stem!r}; allowed: ['cnn', 'patch']")
        self.first_conv = "patch_embed.proj" if cfg.stem == "patch" else "patch_embed.conv1"
        if self.img_size[0] % self.patch_embed.patch_size or self.img_size[1] % self.patch_embed.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of the patch size "
                             f"{self.patch_embed.patch_size}")
        self.input_multiple = self.patch_embed.patch_size
        self.grid = self.patch_embed.output_grid(self.img_size)
        n_patches = self.grid[0] * self.grid[1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.cls_token_at = cfg.cls_token_at
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.pos_slots = 1 if (cfg.class_token and cfg.pos_embed_cls_slot) else 0
        self.pos_grid = tuple(cfg.pos_grid) if cfg.pos_grid is not None else self.grid
        if cfg.pos_embed:
            n_pos = self.pos_slots + self.pos_grid[0] * self.pos_grid[1]
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, cfg.dim))
        else:
            self.pos_embed = None
        self.pos_drop = dropout(cfg.drop_rate)

        dpr = drop_path_rates(cfg.drop_path_rate, depth)
        blocks = []
        for i, spec in enumerate(cfg.mixers):
            # Tokens the block sees: the class token counts once it has been inserted.
            n_tok = n_patches + (1 if cfg.class_token and i >= cfg.cls_token_at else 0)
            blocks.append(MetaFormerBlock(
                cfg.dim, token_mixer=mixer_factory(spec, num_tokens=n_tok, drop=cfg.drop_rate),
                norm_layer=self.norm_layer, mlp_ratio=cfg.block.mlp_ratio, drop=cfg.drop_rate,
                drop_path=dpr[i], layer_scale_init=cfg.block.layer_scale_init,
                scale_adjustment=cfg.block.scale_adjustment, mlp_first=cfg.block.mlp_first,
                act_layer=get_act_layer(cfg.block.mlp_act), mlp_bias=cfg.block.mlp_bias))
        self.blocks = nn.ModuleList(blocks)
        self.norm = self.norm_layer(cfg.dim)
        self.global_pool = cfg.global_pool
        self.head_drop = dropout(cfg.drop_rate)
        self.head = Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=cfg.dim, reduction=self.patch_embed.patch_size,
                                  module=f"blocks.{i}") for i in range(depth)]
        self._finish()

    def _finish(self) -> None:
        super()._finish()
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {n for n in ("pos_embed", "cls_token") if getattr(self, n) is not None}

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def set_global_pool(self, global_pool: str) -> None:
        """``token`` (the class token), ``avg`` (mean of the patch tokens) or ``''`` (none: the
        head sees every token, ``forward`` returns (B, prefix + N, classes or dim))."""
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool={global_pool!r}; allowed: ['', 'avg', 'token']")
        if global_pool == "token" and self.cls_token is None:
            raise ValueError("global_pool='token' needs a class token")
        self.global_pool = global_pool

    # -- forward --------------------------------------------------------------------------------
    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed(self.pos_embed, self.pos_grid, grid, num_prefix=self.pos_slots,
                                  mode=self.cfg.pos_interp)

    def _embed(self, x: torch.Tensor, ctx: TokenContext | None = None) -> tuple[torch.Tensor, TokenContext]:
        x = self.check_input(x)
        x, grid = self.patch_embed(x)  # (B, N, C)
        ctx = ctx if ctx is not None else TokenContext()
        ctx.grid, ctx.num_prefix_tokens = grid, 0
        if self.cls_token is not None and self.cls_token_at == 0:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            ctx.num_prefix_tokens = 1
        if self.pos_embed is not None:
            x = x + self._pos(grid)
        return self.pos_drop(x), ctx

    def _blocks(self, x: torch.Tensor, ctx: TokenContext, upto: int | None = None):
        """Run the blocks, yielding (index, tokens) after each."""
        for i, blk in enumerate(self.blocks):
            if self.cls_token is not None and i == self.cls_token_at and i > 0:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
                ctx.num_prefix_tokens = 1
            x = self.run_block(blk, x, ctx)
            yield i, x
            if upto is not None and i >= upto:
                return

    def forward_features(self, x: torch.Tensor, ctx: TokenContext | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> normed tokens (B, prefix + N, dim). ``ctx`` (optional) receives
        what the layers report (auxiliary loss terms)."""
        x, ctx = self._embed(x, ctx)
        for _, x in self._blocks(x, ctx):
            pass
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Outputs of the chosen blocks (timm's API).

        Args:
            indices: None (all blocks), an int n (the last n) or a list of block indices.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block (only with ``intermediates_only``).
            output_fmt: ``NCHW``/``NHWC`` (patch tokens as maps) or ``NLC`` (tokens incl. the
                class token).
            intermediates_only: return only the list.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; allowed: ['NCHW', 'NHWC', 'NLC']")
        take = self._resolve_indices(indices, len(self.blocks))
        x, ctx = self._embed(x)
        upto = max(take) if (stop_early or intermediates_only) else None
        feats = []
        for i, x in self._blocks(x, ctx, upto):
            if i in take:
                y = self.norm(x) if norm else x
                feats.append(self._to_fmt(y, ctx.grid, ctx.num_prefix_tokens, output_fmt))
        if intermediates_only:
            return feats
        return self.norm(x), feats

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm, the head), as
        timm's ``FeatureGetterNet(prune=True)`` asks; returns the block indices to take."""
        take = self._resolve_indices(indices, len(self.blocks))
        last = max(take)
        if self.cls_token is not None and self.cls_token_at > last:
            # the class token would never be inserted: pool the patch tokens instead
            self.cls_token, self.num_prefix_tokens = None, 0
            if self.global_pool == "token":
                self.global_pool = "avg"
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        self._prune_head(prune_head)
        return take
