"""Re-attention (DeepViT: Zhou et al., arXiv 2103.11886; official code zhoudaquan/dvit_repo, MIT).

    A = softmax(q k^T / sqrt(d));  A <- attn_drop(A);  A_hat = BN_H(Theta * A) * s;  out = proj(A_hat v)

Theta * A mixes the H post-softmax maps with an H x H matrix plus bias (the official code's
``nn.Conv2d(H, H, 1)`` with heads as channels, kept as a 1x1 conv so its state dict maps 1:1, and
left at PyTorch's default init, not the identity). BN_H is ``BatchNorm2d(H)``: per-head statistics
over (B, N, N). There is no second softmax: A_hat is not row-stochastic. s = head_dim ** -0.5 when
``transform_scale`` (DeepViT-S only), else 1.

The BatchNorm makes evaluation depend on its running statistics; the official recipe recalibrates
them on clean training images before every evaluation (the trainer does this for any BatchNorm).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.drop import dropout
from ..layers.linear import Linear
from .base import AttentionMixer, MixerCost, TokenContext, attention_macs, register_mixer


@register_mixer("reattention")
class ReAttention(AttentionMixer):
    """Multi-head attention whose maps are re-mixed across heads.

    Args:
        dim: token width C.
        num_heads: heads H.
        qkv_bias: bias on the fused qkv projection (DeepViT: True).
        attn_drop: dropout on the softmax map, before the head mixing.
        proj_drop: dropout after the output projection.
        transform_scale: multiply the re-attended map by head_dim ** -0.5 (DeepViT-S).
    """

    examples = ({"num_heads": 2}, {"num_heads": 2, "transform_scale": True})

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, transform_scale: bool = False):
        super().__init__()
        self.set_heads(dim, num_heads)
        self.transform_scale = transform_scale
        self.reatten_scale = self.scale if transform_scale else 1.0
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.head_mix = nn.Conv2d(num_heads, num_heads, 1)  # Theta (H, H) + bias
        self.head_norm = nn.BatchNorm2d(num_heads)
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = dropout(proj_drop)

    def init_weights(self) -> None:
        # The generic walk leaves convs alone; restate PyTorch's default for clarity on re-init.
        self.head_mix.reset_parameters()
        self.head_norm.reset_parameters()
        self.head_norm.reset_running_stats()

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """Attention (4NC^2 + 2N^2 C) + H^2 N^2 for the head-mixing matrix Theta."""
        n, h = num_tokens, self.num_heads
        return MixerCost(attention_macs(n, dim) + h * h * n * n)

    def describe(self) -> dict:
        return {**super().describe(), **({"transform_scale": True} if self.transform_scale else {})}

    def folded_mixing(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode BN folded into the mixing: (Theta' (H, H), b' (H,)) with
        BN(Theta A + b) * s = Theta' A + b'."""
        bn = self.head_norm
        inv = bn.weight * torch.rsqrt(bn.running_var + bn.eps) * self.reatten_scale  # (H,)
        h = self.num_heads
        theta = self.head_mix.weight.view(h, h) * inv[:, None]
        bias = (self.head_mix.bias - bn.running_mean) * inv + bn.bias * self.reatten_scale
        return theta, bias

    def mix_heads(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, H, N, Nk) -> BN(Theta A + b) * s, with Theta applied as one batched matmul.

        In eval mode (running statistics) the BatchNorm is folded into Theta and b: one matmul and
        one add, no normalisation pass.
        """
        b, h, n, m = attn.shape
        if not self.training and self.head_norm.track_running_stats and \
                self.head_norm.running_mean is not None:
            theta, bias = self.folded_mixing()
            mixed = (theta.to(attn.dtype) @ attn.reshape(b, h, n * m)).view(b, h, n, m)
            return mixed + bias.to(attn.dtype).view(1, h, 1, 1)
        theta = self.head_mix.weight.view(h, h)
        mixed = (theta @ attn.reshape(b, h, n * m)).view(b, h, n, m)  # out_g = sum_h Theta_gh A_h
        mixed = mixed + self.head_mix.bias.view(1, h, 1, 1)
        return self.head_norm(mixed) * self.reatten_scale

    def value_projection(self):
        """Rows 2C:3C of the qkv projection (the recorded map is the head-mixed one)."""
        c = self.proj.in_features
        b = self.qkv.bias
        return self.qkv.weight[2 * c:], (b[2 * c:] if b is not None else None)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        attn = self.attn_probe(self.mix_heads(self.attn_drop(attn)))
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))
