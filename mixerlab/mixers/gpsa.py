"""Gated positional self-attention (ConViT: d'Ascoli et al., ICML 2021, arXiv 2103.10697;
official code facebookresearch/convit, Apache-2.0; timm ``convit.py``).

Per head h, with relative positions r_ij = (dx, dy, dx^2 + dy^2) of key j relative to query i:

    A = (1 - sigmoid(lambda_h)) softmax(q k^T / sqrt(d)) + sigmoid(lambda_h) softmax(w_h . r_ij + b_h)

then A / sum_j A (a no-op kept for parity with the official code), attention dropout, A v, proj.
q, k come from one bias-free ``qk`` Linear; ``v`` is separate (identity-initialised).

Convolutional ("local") init: v.weight = I; for head h1 + k*h2 (k = floor(sqrt(H))), with centre
c0 = (k-1)/2 for even k else k//2, the ``pos_proj`` row is (2(h2-c0), 2(h1-c0), -1) * alpha
(column order [dx, dy, d^2]), i.e. a Gaussian around offset (h2-c0, h1-c0). Heads beyond k^2 keep
their random init; the gates start at lambda = 1 (sigmoid ~ 0.73, mostly positional).

Deviations from the official code: the relative-position table is a non-persistent buffer rebuilt
only when the grid changes (not a plain attribute moved with ``.to(device)`` at first use), any
H x W grid is allowed, and the positional softmax is computed once per forward, not per sample.
Fused path: since both softmaxes are row-stochastic, out = (1-g) SDPA(q, k, v) + g (P_pos v).
"""
from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..layers.drop import dropout
from ..layers.linear import Linear
from .base import AttentionMixer, MixerCost, TokenContext, attention_macs, register_mixer


def relative_positions(grid: tuple[int, int], device=None) -> torch.Tensor:
    """(N, N, 3) table of (dx, dy, dx^2 + dy^2), key minus query, for an H x W raster grid."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (N,)
    cols = torch.arange(w, device=device).repeat(h)  # (N,)
    dx = (cols[None, :] - cols[:, None]).float()  # (N, N)
    dy = (rows[None, :] - rows[:, None]).float()
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)


# ``is_fx_tracing`` warns on newer torch (it is also true under torch.export); the symbolic-trace
# check replaces it where it exists (torch 2.14), with the old one (silent there) as fallback.
_fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None) or torch.fx._symbolic_trace.is_fx_tracing


@register_mixer("gpsa")
class GPSA(AttentionMixer):
    """Gated positional self-attention.

    Args:
        dim: token width C.
        num_heads: heads H.
        qkv_bias: bias on ``qk`` and ``v`` (ConViT: False).
        attn_drop: dropout on the mixed map.
        proj_drop: dropout after the output projection.
        locality_strength: alpha, the sharpness of the initial positional Gaussians.
        local_init: apply the convolutional initialisation (ablation switch).
    """

    supports_prefix_tokens = False
    examples = ({"num_heads": 4},)

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, locality_strength: float = 1.0, local_init: bool = True):
        super().__init__()
        self.set_heads(dim, num_heads)
        self.locality_strength = locality_strength
        self.local_init = local_init
        self.qk = Linear(dim, dim * 2, bias=qkv_bias)
        self.v = Linear(dim, dim, bias=qkv_bias)
        self.pos_proj = Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.attn_drop_p = attn_drop
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = dropout(proj_drop)
        self.register_buffer("rel_pos", torch.zeros(0, 0, 3), persistent=False)
        self._pos_cache = None  # (key, (H, N, N) positional map), eval + no-grad only

    def init_weights(self) -> None:
        self.gating_param.data.fill_(1.0)
        if not self.local_init:
            return
        with torch.no_grad():
            self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
            k = int(math.sqrt(self.num_heads))
            c0 = (k - 1) / 2 if k % 2 == 0 else k // 2
            w = self.pos_proj.weight  # (H, 3): columns [dx, dy, d^2]
            for h1 in range(k):
                for h2 in range(k):
                    head = h1 + k * h2
                    w[head, 2] = -1.0
                    w[head, 1] = 2.0 * (h1 - c0)
                    w[head, 0] = 2.0 * (h2 - c0)
            w.mul_(self.locality_strength)

    def _rel_pos(self, grid: tuple[int, int], device) -> torch.Tensor:
        n = grid[0] * grid[1]
        if self.rel_pos.shape[0] != n or self._grid != grid or self.rel_pos.device != device:
            # Built as a normal tensor even under inference_mode, so a later training step can use it.
            with torch.inference_mode(False):
                self.rel_pos = relative_positions(grid, device)
            self._grid = grid
        return self.rel_pos

    _grid = None

    def positional_attention(self, grid: tuple[int, int], device, dtype) -> torch.Tensor:
        """softmax over keys of the positional scores: (H, N, N); independent of the input.

        In eval mode without autograd the map is cached; the key holds the grid, device, dtype, the
        autocast state (under autocast ``pos_proj`` returns the autocast dtype, whatever ``dtype``
        is) and the version counters of ``pos_proj``'s parameters, so a resolution change, a
        forward with autocast on or off, or any update of the weights (optimizer step,
        ``load_state_dict``) invalidates it. Under ``torch.compile`` neither the cache nor the
        relative-position buffer is used (reading version counters and data pointers would break
        the graph): the table is built inside the graph instead.
        """
        if torch.compiler.is_compiling() or _fx_tracing():
            # built in the graph (the compiler folds it): no buffer or cache to check
            scores = self.pos_proj(relative_positions(grid, device).to(dtype))
            return scores.permute(2, 0, 1).softmax(dim=-1)
        use_cache = not self.training and not torch.is_grad_enabled()
        if use_cache:
            w, b = self.pos_proj.weight, self.pos_proj.bias
            dev_type = torch.device(device).type  # "meta" (FLOP counting) has no autocast state
            amp = (torch.get_autocast_dtype(dev_type) if torch.amp.is_autocast_available(dev_type)
                   and torch.is_autocast_enabled(dev_type) else None)
            key = (tuple(grid), str(device), dtype, amp, w._version, b._version, w.data_ptr())
            if self._pos_cache is not None and self._pos_cache[0] == key:
                return self._pos_cache[1]
        scores = self.pos_proj(self._rel_pos(grid, device).to(dtype))  # (N, N, H)
        pos = scores.permute(2, 0, 1).softmax(dim=-1)
        if use_cache:
            self._pos_cache = (key, pos)
        return pos

    def gates(self) -> torch.Tensor:
        """sigmoid(lambda) per head: 1 = positional, 0 = content."""
        return torch.sigmoid(self.gating_param)

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """Attention (4NC^2 + 2N^2 C) + 3HN^2 for ``pos_proj`` on the (N, N, 3) relative positions.
        That term is computed once per forward, not per image (3HN^2 / batch per image), and is
        cached in eval mode without autograd (0 after the first such forward, not counted here)."""
        n = num_tokens
        return MixerCost(attention_macs(n, dim) + (3 * self.num_heads * n * n) // batch)

    def analysis_summary(self) -> dict[str, torch.Tensor]:
        return self.positional_summary()

    @torch.no_grad()
    def positional_summary(self) -> dict[str, torch.Tensor]:
        """Per head: the gate, the locality strength alpha (minus the d^2 weight) and the distance
        of the positional attention's centre from the query patch (from the [dx, dy, d^2] weights:
        the score -alpha * |delta - c|^2 peaks at c = (w_dx, w_dy) / (2 alpha))."""
        w = self.pos_proj.weight.float()  # (H, 3): [dx, dy, d^2]
        alpha = -w[:, 2]
        centre = (w[:, :2] / (2 * alpha[:, None])).norm(dim=-1)
        return dict(gate=self.gates().detach(), locality_strength=alpha, centre_distance=centre)

    def value_projection(self):
        """The value projection ``v`` (the recorded map is the gated mix of content and position)."""
        return self.v.weight, self.v.bias

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        self.check_tokens(x, ctx)
        b, n, c = x.shape
        qk = self.qk(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qk.unbind(0)  # (B, H, N, D)
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        pos = self.positional_attention(ctx.grid, x.device, x.dtype)  # (H, N, N)
        g = self.gates().to(x.dtype).view(1, -1, 1, 1)  # (1, H, 1, 1)
        if self.fused_attn and not (self.training and self.attn_drop_p > 0):
            content = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
            out = (1.0 - g) * content + g * (pos @ v)
        else:
            content = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
            attn = (1.0 - g) * content + g * pos
            attn = attn / attn.sum(dim=-1, keepdim=True)
            attn = self.attn_probe(attn)
            out = self.attn_drop(attn) @ v  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))
