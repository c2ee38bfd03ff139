"""Multi-head self-attention (ViT, arXiv 2010.11929; DeiT, arXiv 2012.12877).

A = softmax(q k^T / sqrt(d)); out = proj(A v). The fused path (``fused_attn``) calls
``F.scaled_dot_product_attention``; the explicit path materialises A and passes it through the
probe. ``sr_ratio > 1`` gives PVT's spatial-reduction attention (Wang et al., arXiv 2102.12122):
keys and values come from the grid tokens reduced by a strided conv + LayerNorm (used by LaViT's
stage-1 layers, see ``less_attention.py``). ``head_dim`` may be given instead of ``num_heads``
(MetaFormer hybrids and CAFormer use 32 channels per head); CAFormer's attention has no bias on
qkv nor on the output projection (``qkv_bias=False, proj_bias=False``; sail-sg/metaformer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.drop import dropout
from ..layers.linear import Linear
from .base import (AttentionMixer, MixerCost, TokenContext, attention_macs, map_to_tokens, register_mixer,
                   tokens_to_map)


def resolve_heads(dim: int, num_heads: int | None, head_dim: int | None) -> int:
    if (num_heads is None) == (head_dim is None):
        raise TypeError("give exactly one of num_heads and head_dim")
    if head_dim is not None:
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        return dim // head_dim
    return num_heads


@register_mixer("attention")
class Attention(AttentionMixer):
    """Multi-head self-attention.

    Args:
        dim: token width C.
        num_heads: number of heads H (or give ``head_dim``).
        head_dim: channels per head; the heads are ``dim // head_dim``.
        qkv_bias: bias on the q, k, v projections.
        attn_drop: dropout on the attention map (explicit path; SDPA's dropout on the fused one).
        proj_drop: dropout after the output projection.
        sr_ratio: spatial reduction of keys/values (PVT); 1 = full attention.
        proj_bias: bias on the output projection.
    """

    examples = ({"num_heads": 2}, {"num_heads": 2, "sr_ratio": 2})

    def __init__(self, dim: int, *, num_heads: int | None = None, head_dim: int | None = None,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 sr_ratio: int = 1, proj_bias: bool = True):
        super().__init__()
        self.set_heads(dim, resolve_heads(dim, num_heads, head_dim))
        self.sr_ratio = sr_ratio
        if sr_ratio == 1:
            self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.supports_prefix_tokens = False
            self.q = Linear(dim, dim, bias=qkv_bias)
            self.kv = Linear(dim, dim * 2, bias=qkv_bias)
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn_drop_p = attn_drop
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim, bias=proj_bias)
        self.proj_drop = dropout(proj_drop)

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """4NC^2 + 2N^2 C; with spatial reduction R (N' = (H // R)(W // R) keys): q NC^2, the
        reduction conv N' C^2 R^2, kv 2N'C^2, q k^T and A v 2NN'C, proj NC^2."""
        n, c, r = num_tokens, dim, self.sr_ratio
        if r == 1:
            return MixerCost(attention_macs(n, c))
        nr = (grid[0] // r) * (grid[1] // r)
        return MixerCost(n * c * c + nr * c * c * r * r + 2 * nr * c * c + 2 * n * nr * c + n * c * c)

    def describe(self) -> dict:
        return {**super().describe(), **({"sr_ratio": self.sr_ratio} if self.sr_ratio != 1 else {})}

    def value_projection(self):
        """Rows 2C:3C of the qkv projection (full attention only; reduced keys have no N x N map)."""
        if self.sr_ratio != 1:
            return None
        c = self.proj.in_features
        b = self.qkv.bias
        return self.qkv.weight[2 * c:], (b[2 * c:] if b is not None else None)

    def qkv_heads(self, x: torch.Tensor, ctx: TokenContext):
        """q, k, v as (B, H, N, D) (keys and values reduced when ``sr_ratio > 1``)."""
        b, n, c = x.shape
        if self.sr_ratio == 1:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
            return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        r = map_to_tokens(self.sr(tokens_to_map(x, ctx.grid)))  # (B, N / R^2, C)
        kv = self.kv(self.sr_norm(r)).reshape(b, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        self.check_tokens(x, ctx)
        b, n, c = x.shape
        q, k, v = self.qkv_heads(x, ctx)
        if self.fused_attn:
            drop = self.attn_drop_p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, Nk)
            attn = self.attn_probe(attn.softmax(dim=-1))
            out = self.attn_drop(attn) @ v  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))
