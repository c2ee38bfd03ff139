"""Patch embeddings, DeepViT's CNN stem, and position-embedding resampling.

Every embedding returns tokens (B, N, C) and the grid (H, W) they lie on (raster order).

Kept rather than timm's: ``PatchEmbed`` because timm's has no stride or padding (PoolFormer's
overlapping 7 x 7 / 4 stem, the hierarchical downsampling convs) and does not return the grid;
``resample_pos_embed`` because timm's ``resample_abs_pos_embed`` computes in float32 whatever the
table's dtype (the float64 parity checks need float64) and antialiases by default.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Conv2d patch embedding (``proj``), optional norm over channels.

    Args:
        in_chans: input channels.
        dim: output width.
        patch_size: kernel size.
        stride: stride (default: ``patch_size``, non-overlapping).
        padding: zero padding.
        norm_layer: optional norm applied to the (B, N, C) tokens.
    """

    def __init__(self, in_chans: int, dim: int, *, patch_size: int, stride: int | None = None,
                 padding: int = 0, norm_layer=None, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride or patch_size
        self.padding = padding
        self.proj = nn.Conv2d(in_chans, dim, patch_size, self.stride, padding, bias=bias)
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()

    def output_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = size
        k, s, p = self.patch_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, H, W)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self.norm(x), grid


class ConvStem(nn.Module):
    """DeepViT-S/L's CNN patch embedding (``PatchEmbed_CNN``, "following T2T"), total stride 16.

    conv 7x7/2 (no bias) -> BN -> ReLU -> conv 3x3/1 (no bias) -> BN -> ReLU -> conv 8x8/8.
    """

    def __init__(self, in_chans: int, dim: int, *, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, hidden, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.proj = nn.Conv2d(hidden, dim, 8, 8)
        self.patch_size = 16

    def output_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = size
        h, w = (h + 6 - 7) // 2 + 1, (w + 6 - 7) // 2 + 1
        return h // 8, w // 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.proj(x)  # (B, C, H, W)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


@torch.fx.wrap  # a leaf for torch.fx: it branches on the grid, a shape
def resample_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], *,
                       num_prefix: int = 0, mode: str = "bicubic") -> torch.Tensor:
    """Resample a (1, num_prefix + H*W, C) position table to another grid.

    Prefix slots (class token) are kept as they are; the grid part is interpolated
    (``align_corners=False``), as timm and the FF-only code do.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)  # (1, C, H, W)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], c)  # (1, N, C)
    return torch.cat([prefix, grid], dim=1)

