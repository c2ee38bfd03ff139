"""Mean attention: one fixed, learned token-mixing map per head, the same for every image.

    out = proj(A_h v_h),   v = x W_v + b_v,   A: (H, N, N) parameters

It is what remains of an attention layer when the map stops depending on the input: the question
"does this block need *content-dependent* mixing, or only a (learned) spatial pattern?" that the
FF-only paper (Melas-Kyriazi, arXiv 2105.02723) asks of the whole model and that mixer surgery
(``mixerlab ablate``) asks block by block. :meth:`MeanAttention.adopt` initialises it from a trained
attention-family layer: ``A`` from that layer's map averaged over data, ``W_v`` and ``proj`` from
its value and output projections, so that the replacement starts as the layer's best
data-independent approximation (exact when the trained layer's map does not vary with the input).

Like the token feed-forward, the map is sized to the sequence (N tokens, prefix tokens included),
so a model holding this mixer accepts only the input size it was built for.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.linear import Linear
from .base import AttentionMixer, MixerCost, TokenContext, TokenMixer, register_mixer


@register_mixer("mean_attention")
class MeanAttention(TokenMixer):
    """Data-independent multi-head attention.

    Args:
        dim: token width C.
        num_tokens: N, the sequence length the map is sized to (prefix tokens included).
        num_heads: heads H (C must divide evenly).
        qkv_bias: bias on the value projection.
    """

    needs_num_tokens = True
    fixed_num_tokens = True
    examples = ({"num_heads": 2},)

    def __init__(self, dim: int, *, num_tokens: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_tokens, self.num_heads, self.head_dim = num_tokens, num_heads, dim // num_heads
        self.v = Linear(dim, dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        # Uniform rows at construction: every token averages all tokens (global average pooling).
        self.attn = nn.Parameter(torch.full((num_heads, num_tokens, num_tokens), 1.0 / num_tokens))

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """v N C^2 + A v N^2 C + proj N C^2."""
        return MixerCost(2 * num_tokens * dim * dim + num_tokens * num_tokens * dim)

    def describe(self) -> dict:
        return {"heads": self.num_heads, "num_tokens": self.num_tokens}

    @torch.no_grad()
    def adopt(self, source: AttentionMixer, mean_map: torch.Tensor) -> None:
        """Initialise from a trained attention-family layer and its map averaged over data.

        Raises ``ValueError`` when ``source`` has no value path over the full token sequence
        (``source.value_projection()`` is None) or the map does not fit this layer.
        """
        vp = source.value_projection() if isinstance(source, AttentionMixer) else None
        if vp is None:
            raise ValueError(f"{type(source).__name__} exposes no value projection over the full token "
                             "sequence, so mean_attention cannot be initialised from it")
        if tuple(mean_map.shape) != tuple(self.attn.shape):
            raise ValueError(f"the mean map has shape {tuple(mean_map.shape)}, this layer needs "
                             f"{tuple(self.attn.shape)} (heads, tokens, tokens)")
        w, b = vp
        self.v.weight.copy_(w)
        if self.v.bias is not None:
            self.v.bias.copy_(b if b is not None else torch.zeros_like(self.v.bias))
        self.proj.weight.copy_(source.proj.weight)
        if source.proj.bias is not None:
            self.proj.bias.copy_(source.proj.bias)
        else:
            self.proj.bias.zero_()
        self.attn.copy_(mean_map)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        b, n, c = x.shape
        if n != self.num_tokens:
            raise ValueError(f"mean_attention was built for {self.num_tokens} tokens, got {n}: its "
                             "map has a fixed token count")
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        out = (self.attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)
