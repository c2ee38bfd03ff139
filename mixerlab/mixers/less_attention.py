"""Less attention (LaViT: Zhang, Liu, Lin, He, "You Only Need Less Attention at Each Stage in
Vision Transformers", CVPR 2024, arXiv 2406.00427). No official code exists; what the paper does
not pin down follows mixerlab's own proposals, listed here.

One mixer, two modes, chosen per block by configuration:

* ``mode="va"`` (vanilla attention layer): logits L = q k^T / sqrt(d), A = softmax(L), out = proj(A v).
  It stores the matrix to be reused in ``ctx.state`` for the following layers.
* ``mode="la"`` (less-attention layer): no q or k. From the carried matrix M of the previous layer,
  M_l = Psi(Theta(M)^T)^T = W_Psi M W_Theta^T + (W_Psi 1) b_Theta^T + b_Psi 1^T
  (Theta mixes the key axis, Psi the query axis, both N x N Linear layers shared by all heads),
  A = softmax(M_l), out = proj(A v_l) with the layer's own value projection. M_l (pre-softmax, as
  Fig. 2 taps it) is carried on to the next layer.

Proposals adopted (PROPOSAL = not published in arXiv 2406.00427):

1. What the VA layer hands on (``la_source``): default ``"logits"`` (q k^T / sqrt(d)): a softmax of
   probabilities degenerates toward uniform rows, and on logits the chain factors exactly (the
   fused path below). ``"post_softmax"`` is the literal reading of the paper's Fig. 2 (the VA
   layer hands on softmax(L)); LA layers always hand on their pre-softmax M_l.
2. Psi/Theta init: identity weights, zero bias (``transform_init="identity"``), so an LA layer
   starts as an exact reuse of the previous map; ``"trunc_normal"`` (std 0.02) is the alternative.
3. Psi/Theta shared across heads, with bias.
4. The LA block is wrapped like the VA block (pre-norm, V, proj, drop path, MLP): the block does it.
5. Attention residual across stages (``attn_residual=True``, first VA layer of a stage): the
   previous stage's carried matrix (B, H', N', N') is averaged over heads, viewed as
   (h', w', h', w'), and downsampled by a learnable single-channel f x f / stride-f filter on the
   query grid and another on the key grid (f = the spatial downsampling factor, 2; both initialised
   to averaging), broadcast to the H heads with a learnable per-head scale initialised to 0, and
   added to this layer's logits before the softmax. Mixed head counts across stages are why it is
   head-averaged. (The student reading, a 4x4/4 conv on the flattened matrix, is not implemented:
   it groups consecutive raster indices, not 2x2 spatial blocks.)
6. Diagonality-preserving loss (``dp_mode="corrected"``): on P = softmax(M_l), per LA layer,
   dp_sym = mean_ij |P_ij - P_ji| and dp_diag = mean_i (1 - N P_ii) / (N - 1) (the printed
   diagonal term with its sign corrected, normalised to [-1, 1/(N-1)]), averaged over batch and
   heads. ``dp_mode="literal"`` sums the printed expression on the raw M_l (unbounded; for
   paper-parity experiments only). Terms go to ``ctx.aux`` as ``dp_sym`` / ``dp_diag``; the model
   sums them over layers (``model(x, return_aux=True)``) and the trainer adds lambda_DP times the sum.
7. Placement (stage 1 plain attention with PVT spatial reduction, no LA there: an N x N Linear
   at 56 x 56 tokens would cost 9.8M parameters) is model configuration, see ``zoo/lavit.py``.

Two paths. The explicit one (the reference; used by ``attention_maps``) materialises every N x N
matrix and applies the transforms to it: O(N^3) per head. The fused one (default, ``la_source=
"logits"`` only) carries the logits in factored form, M = U V^T (+ the head-shared residual term),
transforms the factors (Psi Q)(Theta K)^T with the rank-one bias terms as extra columns, and calls
fused attention with q = U, k = V: O(N^2 r). Once the rank r is not small next to N (3r + 2 >= 2N,
e.g. stage 4 at 224 px where N = 49 < the head width) the dense N x N transform is cheaper and is
used instead. Diagonality-preserving terms are computed only when autograd is on (training); they
need the dense M. The switch between the two paths is ``fused_attn`` (``mixerlab.fast_paths``).
Measured costs: ``scripts/bench_lavit.py`` and ``docs/benchmarks.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.drop import dropout
from ..layers.linear import Linear
from .base import AttentionMixer, MixerCost, TokenContext, attention_macs, register_mixer

CARRY = "less_attention.carry"  # (B, H, N, N) matrix handed to the next layer
CARRY_GRID = "less_attention.grid"  # the (H, W) grid it was computed on


class AttentionResidual(nn.Module):
    """Carries the previous stage's attention matrix to this stage's grid (proposal 5)."""

    def __init__(self, num_heads: int, *, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.filter_q = nn.Parameter(torch.full((1, 1, factor, factor), 1.0 / factor ** 2))
        self.filter_k = nn.Parameter(torch.full((1, 1, factor, factor), 1.0 / factor ** 2))
        self.scale = nn.Parameter(torch.zeros(num_heads))

    def init_weights(self) -> None:
        nn.init.constant_(self.filter_q, 1.0 / self.factor ** 2)
        nn.init.constant_(self.filter_k, 1.0 / self.factor ** 2)
        nn.init.zeros_(self.scale)

    def downsample(self, prev: torch.Tensor, prev_grid: tuple[int, int], grid: tuple[int, int]):
        """(B, H', N', N') -> head-averaged, downsampled (B, 1, N, N)."""
        f = self.factor
        hp, wp = prev_grid
        if (hp, wp) != (grid[0] * f, grid[1] * f):
            raise ValueError(f"attention residual: the previous stage's {hp}x{wp} grid is not "
                             f"{f}x the current {grid[0]}x{grid[1]} grid")
        b = prev.shape[0]
        n_p, n = hp * wp, grid[0] * grid[1]
        m = prev.mean(dim=1)  # (B, Np, Np): heads averaged
        # Downsample the query axis: (B, Nq', Nk') -> (B * Nk', 1, h', w') -> (B, Nk', N)
        m = m.transpose(1, 2).reshape(b * n_p, 1, hp, wp)
        m = F.conv2d(m, self.filter_q.to(m.dtype), stride=f).reshape(b, n_p, n).transpose(1, 2)
        # Downsample the key axis: (B, N, Nk') -> (B * N, 1, h', w') -> (B, N, N)
        m = F.conv2d(m.reshape(b * n, 1, hp, wp), self.filter_k.to(m.dtype), stride=f)
        return m.reshape(b, 1, n, n)

    def head_scale(self, dtype) -> torch.Tensor:
        return self.scale.to(dtype).view(1, -1, 1, 1)  # (1, H, 1, 1)

    def forward(self, prev: torch.Tensor, prev_grid: tuple[int, int], grid: tuple[int, int]):
        """The term added to the logits: per-head scale x downsampled map, (B, H, N, N)."""
        return self.head_scale(prev.dtype) * self.downsample(prev, prev_grid, grid)


class Factored:
    """A carried logit matrix kept in factored form: M = U V^T + s R.

    U, V: (B, H, N, r); R: None or a head-shared dense part (B, 1, N, N) with per-head scale s
    (1, H, 1, 1) (the attention residual). Less-attention transforms act on the factors:
    Psi M Theta^T + (Psi 1) b_Theta^T + b_Psi 1^T = [Psi U | Psi 1 | b_Psi] [Theta V | b_Theta | 1]^T
    + s Psi R Theta^T, so the rank grows by 2 per layer and no N x N matrix is needed except R.
    """

    def __init__(self, u, v, r=None, s=None):
        self.u, self.v, self.r, self.s = u, v, r, s

    def dense(self) -> torch.Tensor:
        m = self.u @ self.v.transpose(-2, -1)  # (B, H, N, N)
        return m if self.r is None else m + self.s * self.r

    def mask(self):
        return None if self.r is None else self.s * self.r


def as_dense(carry) -> torch.Tensor:
    return carry.dense() if isinstance(carry, Factored) else carry


@register_mixer("less_attention")
class LessAttention(AttentionMixer):
    """LaViT's vanilla-attention (``mode="va"``) or less-attention (``mode="la"``) layer.

    Args:
        dim: token width C.
        num_heads: heads H.
        num_tokens: N, the tokens of this stage (fixes the size of Psi/Theta).
        mode: ``"va"`` computes attention, ``"la"`` transforms the carried one.
        la_source: what a VA layer carries: ``"logits"`` or ``"post_softmax"``.
        attn_residual: (VA only) add the previous stage's carried matrix, downsampled.
        qkv_bias: bias on the q, k, v projections.
        attn_drop: dropout on the attention map.
        proj_drop: dropout after the output projection.
        transform_init: ``"identity"`` or ``"trunc_normal"`` for Psi/Theta.
        dp_mode: ``"corrected"`` or ``"literal"`` diagonality-preserving terms.
    """

    needs_num_tokens = True
    supports_prefix_tokens = False
    uses_context_state = True
    monitor_diagonality = True
    examples = ({"num_heads": 2, "mode": "va"}, {"num_heads": 2, "mode": "la"},
                {"num_heads": 2, "mode": "va", "la_source": "post_softmax"},
                {"num_heads": 2, "mode": "la", "la_source": "post_softmax"})

    def __init__(self, dim: int, *, num_heads: int, num_tokens: int, mode: str = "la",
                 la_source: str = "logits", attn_residual: bool = False, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, transform_init: str = "identity",
                 dp_mode: str = "corrected"):
        super().__init__()
        for name, val, allowed in (("mode", mode, ("va", "la")),
                                   ("la_source", la_source, ("logits", "post_softmax")),
                                   ("transform_init", transform_init, ("identity", "trunc_normal")),
                                   ("dp_mode", dp_mode, ("corrected", "literal"))):
            if val not in allowed:
                raise ValueError(f"less_attention: {name}={val!r}; allowed: {list(allowed)}")
        self.set_heads(dim, num_heads)
        if attn_residual and mode != "va":
            raise ValueError("less_attention: attn_residual applies to mode='va' layers only")
        self.num_tokens = num_tokens
        self.mode = mode
        self.la_source = la_source
        self.transform_init = transform_init
        self.dp_mode = dp_mode
        self.fixed_num_tokens = mode == "la" or attn_residual
        if mode == "va":
            self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.v = Linear(dim, dim, bias=qkv_bias)
            self.theta = Linear(num_tokens, num_tokens)  # mixes the key axis
            self.psi = Linear(num_tokens, num_tokens)  # mixes the query axis
        self.residual = AttentionResidual(num_heads) if attn_residual else None
        self.attn_drop_p = attn_drop
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = dropout(proj_drop)

    def init_weights(self) -> None:
        if self.mode == "la":
            for lin in (self.theta, self.psi):
                if self.transform_init == "identity":
                    with torch.no_grad():
                        lin.weight.copy_(torch.eye(self.num_tokens))
                else:
                    nn.init.trunc_normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        if self.residual is not None:
            self.residual.init_weights()

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """VA: attention (4NC^2 + 2N^2 C), + N'^2 + N N' for the attention residual's two f x f
        filters (N' = N f^2 tokens of the previous stage). LA (no q, k): v NC^2 + Theta and Psi
        2HN^3 + A v N^2 C + proj NC^2. The explicit path's MACs (the fused one does less)."""
        n, c, h = num_tokens, dim, self.num_heads
        if self.mode == "la":
            return MixerCost(2 * n * c * c + n * n * c + 2 * h * n ** 3)
        extra = 0
        if self.residual is not None:
            npv = n * self.residual.factor ** 2
            extra = npv * npv + n * npv
        return MixerCost(attention_macs(n, c) + extra)

    def describe(self) -> dict:
        d = {**super().describe(), "mode": self.mode}
        if self.la_source != "logits":
            d["la_source"] = self.la_source
        if self.residual is not None:
            d["attn_residual"] = True
        return d

    def transform(self, m: torch.Tensor) -> torch.Tensor:
        """Psi(Theta(M)^T)^T on (B, H, N, N): Theta on keys (last axis), Psi on queries."""
        return self.psi(self.theta(m).transpose(-2, -1)).transpose(-2, -1)

    def dp_terms(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dp_sym, dp_diag) of one layer's pre-softmax matrix M (B, H, N, N)."""
        n = m.shape[-1]
        if self.dp_mode == "literal":
            sym = (m - m.transpose(-2, -1)).abs().sum(dim=(-2, -1)).mean()
            diag = m.diagonal(dim1=-2, dim2=-1)
            diag_term = ((n - 1) * diag - (m.sum(dim=-1) - diag)).sum(dim=-1).mean()
            return sym, diag_term
        p = m.softmax(dim=-1)
        sym = (p - p.transpose(-2, -1)).abs().mean()
        diag_term = ((1.0 - n * p.diagonal(dim1=-2, dim2=-1)) / (n - 1)).mean()
        return sym, diag_term

    def transform_factored(self, c: Factored) -> Factored:
        """The same transform on the factors (see ``Factored``)."""
        wp, bp = self.psi.weight, self.psi.bias  # (N, N), (N,)
        wt, bt = self.theta.weight, self.theta.bias
        b, h, n, _ = c.u.shape
        ones = c.u.new_ones(b, h, n, 1)
        u = torch.cat([wp @ c.u, (wp.sum(dim=1)[:, None] * ones), bp[:, None] * ones], dim=-1)
        v = torch.cat([wt @ c.v, bt[:, None] * ones, ones], dim=-1)
        r = None if c.r is None else wp @ c.r @ wt.T
        return Factored(u, v, r, c.s)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        self.check_tokens(x, ctx)
        b, n, c = x.shape
        if self.fixed_num_tokens and n != self.num_tokens:
            raise ValueError(f"less_attention was built for {self.num_tokens} tokens, got {n}: its "
                             "N x N transforms fix the input size")
        # The factored (fused) path needs the carried matrix to be logits (softmax breaks it).
        factored = self.fused_attn and self.la_source == "logits"
        drop = self.attn_drop_p if self.training else 0.0
        if self.mode == "va":
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, N, D)
            res = None
            if self.residual is not None:
                prev = ctx.state.get(CARRY)
                if prev is None:
                    raise ValueError("less_attention: attn_residual=True but no earlier stage "
                                     "carried an attention matrix")
                res = self.residual.downsample(as_dense(prev), ctx.state[CARRY_GRID], ctx.grid)
            if factored:
                carry = Factored(q * self.scale, k, res,
                                 None if res is None else self.residual.head_scale(x.dtype))
                ctx.state[CARRY] = carry
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=carry.mask(), dropout_p=drop)
            else:
                logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
                if res is not None:
                    logits = logits + self.residual.head_scale(x.dtype) * res
                attn = self.attn_probe(logits.softmax(dim=-1))
                ctx.state[CARRY] = logits if self.la_source == "logits" else attn
                out = self.attn_drop(attn) @ v
        else:
            prev = ctx.state.get(CARRY)
            size = prev.u.shape[-2] if isinstance(prev, Factored) else (prev.shape[-1] if prev is not None else None)
            if size != n:
                raise ValueError("less_attention: an 'la' layer needs a preceding 'va' or 'la' "
                                 f"layer in the same stage with {n} tokens")
            v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            # Per head, the factored transform costs N^2 (2 r + r + 2) against 2 N^3 for the dense
            # one: keep the factors while their rank r is small next to N (stage 3 at 224 px), switch
            # to the dense matrix once it is not (stage 4: N = 49 < the head width).
            if factored and isinstance(prev, Factored) and 3 * prev.u.shape[-1] + 2 < 2 * n:
                carry = self.transform_factored(prev)
                ctx.state[CARRY] = carry
                if torch.is_grad_enabled():
                    self.add_dp_terms(ctx, carry.dense())
                out = F.scaled_dot_product_attention(carry.u, carry.v, v, attn_mask=carry.mask(),
                                                     dropout_p=drop, scale=1.0)
            else:
                m = self.transform(as_dense(prev))  # (B, H, N, N) pre-softmax
                ctx.state[CARRY] = m
                if torch.is_grad_enabled():
                    self.add_dp_terms(ctx, m)
                attn = self.attn_probe(m.softmax(dim=-1))
                out = self.attn_drop(attn) @ v
        ctx.state[CARRY_GRID] = ctx.grid
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def add_dp_terms(self, ctx: TokenContext, m: torch.Tensor) -> None:
        sym, diag = self.dp_terms(m)
        ctx.add_aux("dp_sym", sym)
        ctx.add_aux("dp_diag", diag)
