"""Less attention (LaViT: Zhang, Liu, Lin, He, "You Only Need Less Attention at Each Stage in
Vision Transformers", CVPR 2024, arXiv 2406.00427). No official code exists; what the paper does
not pin down follows mixerlab's own proposals, listed here.

One mixer, two modes, chosen per block by configuration:

* ``mode="va"`` (vanilla attention layer): logits L = q k^T / sqrt(d), A = softmax(L), out = proj(A v).
  With ``sr_ratio`` R > 1 the keys and values come from the grid reduced by a strided R x R conv +
  LayerNorm (PVT's spatial-reduction attention, Wang et al., arXiv 2102.12122): L is N x N_k with
  N_k = N / R^2. It stores the matrix to be reused in ``ctx.state`` for the following layers.
* ``mode="la"`` (less-attention layer): no q or k. From the carried matrix M (B, H, N, N_k) of the
  previous layer, M_l = Psi(Theta(M)^T)^T = W_Psi M W_Theta^T + (W_Psi 1) b_Theta^T + b_Psi 1^T
  (Theta mixes the key axis, N_k x N_k; Psi the query axis, N x N; both shared by all heads),
  A = softmax(M_l), Z = A v_l with the layer's own value projection of the reduced grid
  (v_l = Linear(AvgPool_R(x))). M_l (pre-softmax, as Fig. 2 taps it) is carried on.

Proposals adopted (PROPOSAL = not published in arXiv 2406.00427):

1. What the VA layer hands on (``la_source``): default ``"logits"`` (q k^T / sqrt(d)): a softmax of
   probabilities degenerates toward uniform rows, and on logits the chain factors exactly (the
   low-rank path below). ``"post_softmax"`` is the literal reading of the paper's Fig. 2 (the VA
   layer hands on softmax(L)); LA layers always hand on their pre-softmax M_l.
2. Psi/Theta init: identity weights, zero bias (``transform_init="identity"``), so an LA layer
   starts as an exact reuse of the previous map; ``"trunc_normal"`` (std 0.02) is the alternative.
3. Psi/Theta shared across heads, with bias.
4. Keys on a reduced grid in LA layers too (``sr_ratio``): the paper's Psi and Theta are "N x N"
   linear layers; at 56 x 56 tokens one such matrix has 9.8M parameters and costs N^3 per head.
   With the PVT key grid (N_k = 49 at 224 px in every stage for ratios 8/4/2/1) Theta is 49 x 49
   and the map is N x 49. The values of an LA layer are pooled (AvgPool R x R, then the value
   Linear: no conv, the layer has no keys to reduce).
5. Psi, the query-axis transform (``psi``): ``"dense"`` (N x N) or ``"kron"``, a Kronecker product
   P_h (x) P_w of an h x h and a w x w matrix over the (h, w) query grid, applied as two small
   products (H N N_k (h + w) MACs instead of H N^2 N_k; 2 h^2 parameters instead of N^2; full
   N-vector bias). ``"auto"`` (default) is the cost model's per-layer choice: dense while its
   MACs H N^2 N_k do not exceed the N_k C^2 of the layer's own value projection (H N^2 <= C^2),
   Kronecker beyond. LaViT-T/S/B at 224 px: Kronecker in stages 2-3 (28 x 28 and 14 x 14
   queries), dense in stage 4 (7 x 7). (The earlier rule, dense while H N^2 N_k <= N C^2, kept
   stage 3 dense: 7.5M of its 14.2M MACs per layer and measured 1.3x slower than Kronecker there
   on 2 CPU cores.)
6. No output projection in LA layers by default (``out_proj=False``): the paper's formula is
   Z_l = Softmax(A_l) V_l, and Fig. 2's LA box has no projection after the MatMul; the value
   Linear already maps the tokens. ``out_proj=True`` adds the VA layer's projection back (the
   alternative, NC^2 MACs more per layer). The block around it is the VA block (pre-norm, drop
   path, MLP): the block does it.
7. Attention residual across stages (``attn_residual=True`` on the first VA layer of a stage after
   a stage that carried a map; ``inherit=True`` on the first LA layer of a less-attention-only
   stage, "some stages consist of less-attention layers only", which then starts from it): the
   previous stage's carried matrix (B, H', N', N_k') is downsampled on the query axis by a
   learnable single-channel f x f / stride-f filter over the (h, w) query grid (f = the spatial
   downsampling factor, 2), on the key axis by another one where the key grid shrank (g x g; at
   224 px the key grids are all 7 x 7 and g = 1), and mixed across heads by a learned H x H'
   matrix (the heads differ between stages). Filters start as averaging; the head mix starts at 0
   for a residual added to a VA layer's logits (LayerScale-like: the VA layer starts as plain
   attention) and at 1/H' (head average) for an inherited map (the LA layer starts as a reuse).
   Which matrix is carried: the last layer's of the stage, pre-softmax (what Fig. 2 passes on).
   (The student reading, a 4x4/4 conv on the flattened matrix, is not implemented: it groups
   consecutive raster indices, not 2x2 spatial blocks.)
8. Diagonality-preserving loss (``dp_mode="corrected"``) on a square map: P = softmax(M_l) is
   N x N_k; its query rows are averaged over the R x R blocks that share one key cell (rows stay
   stochastic), giving a square N_k x N_k map per head. On it dp_sym = mean_ij |P_ij - P_ji| and
   dp_diag = mean_i sum_{j != i} max(0, P_ij - P_ii), averaged over batch and heads. The printed
   diagonal term is sum_i ((N-1) A_ii - sum_{j != i} A_ij) = sum_i sum_{j != i} (A_ii - A_ij);
   minimising it lowers the diagonal, so its sign is corrected to sum_i sum_{j != i} (A_ij - A_ii).
   That form rewards every increase of the diagonal: its minimum is the identity map (each token
   attends only to itself; -1 per layer once normalised, as mixerlab had it), and with
   the terms summed over the LA layers at weight 1 the total loss went negative within 60 steps
   and the maps collapsed to the identity. The paper's stated goal is diagonal *dominance*
   (arXiv:2406.00427: each token relates most to itself), so [proposal] each pairwise difference
   A_ij - A_ii is clipped at 0: the term is 0 once every row's diagonal is at least its largest
   entry and only penalises keys that out-attend the token itself; it lies in [0, 1] (a row's
   clipped excess is at most 1 - P_ii), so the loss stays >= the cross-entropy and no longer pays
   for making maps more diagonal than dominant. Its minimisers include the *uniform* map as well
   (P_ij = P_ii everywhere: both terms 0), and training finds it: in ``mixerlab compare --preset
   quick`` (seed 0, ``lavit_micro`` with every layer LA after the first) all four LA maps ended at a
   diagonal mass within 10 % of 1/N_k and no asymmetry, and in ``--preset standard`` (seed 0) six of
   seven maps did (the VA maps feeding LA layers included), while the same model without the loss
   kept attending maps (asymmetry 0.04-0.30); E5's report reads every map this way. A lighter
   weight, lambda_DP = 0.1 (``scripts/e5_dp_weight.py``, quick's scale, 2 seeds), left 5 of 7 maps
   attending (only stage 4's 4-key maps uniform) and test top-1 80.10 % against 79.56 % at 1.0 and
   80.50 % without the loss: no setting where the DP loss helps at this scale, differences within
   the 2-seed intervals. A strict margin (penalise A_ij - A_ii + m, m ~ 1/N_k) is the other
   candidate, not measured; the default stays lambda_DP = 1 as described until one is.
   ``dp_mode="literal"`` sums the printed expression on the raw (block-averaged) M_l (unbounded;
   for paper-parity experiments only).
   Terms go to ``ctx.aux`` as ``dp_sym`` /
   ``dp_diag``; the model sums them over layers (``model(x, return_aux=True)``) and the trainer
   adds lambda_DP times the sum.
9. Placement is model configuration, see ``zoo/lavit.py``.
10. Input sizes (for dense prediction): the size-bound tensors (Theta N_k x N_k over the key grid,
   Psi N x N or its h x h / w x w Kronecker factors over the query grid, their biases) are
   resampled to the grid of the input (``on_grid``, ``resample_grid_operator``): a matrix is split
   into its diagonal, resampled bilinearly as a function over the grid, and its off-diagonal part,
   resampled bilinearly on both axes as an integral kernel and scaled by N / N' (row sums of a
   smooth kernel are kept); biases are resampled bilinearly. On the build grid the parameters are
   used as they are (the same computation as before, bit for bit); the identity init resamples to
   the identity, so an untrained LA layer is an exact reuse at every size. Any input whose token
   grids the reduction ratios divide is accepted (multiples of 32 px for LaViT-T/S/B).

Paths. The explicit one (the reference; used by ``attention_maps`` and by the MAC counter)
materialises every N x N_k matrix and applies the transforms to it. With ``fused_attn`` on (the
default) a VA layer calls fused attention and carries its logits in factored form M = U V^T (+ a
dense residual part), and an LA layer transforms the factors, (Psi U)(Theta V)^T, with the
rank-one bias terms as two extra columns, and calls fused attention with q = U, k = V -- when the
cost model says that is cheaper than materialising M (small head width next to N and N_k; with a
reduced key grid it rarely is); otherwise it materialises M and transforms it densely. Diagonality terms
are computed only when autograd is on (training); they need the dense M. Measured costs:
``scripts/bench_lavit.py`` and ``docs/benchmarks.md``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.drop import dropout
from ..layers.linear import Linear
from .base import (AttentionMixer, MixerCost, TokenContext, map_to_tokens, register_mixer,
                   tokens_to_map)

CARRY = "less_attention.carry"  # (B, H, N, N_k) matrix handed to the next layer (or Factored)
CARRY_GRID = "less_attention.grid"  # the (h, w) query grid it was computed on
CARRY_KEY_GRID = "less_attention.key_grid"  # its (h_k, w_k) key grid


def reduced_grid(grid, r: int) -> tuple[int, int]:
    return (grid[0] // r, grid[1] // r)


def _grid_factor(big, small, what: str) -> int:
    f = big[0] // small[0] if small[0] else 0
    if f < 1 or big[0] != f * small[0] or big[1] != f * small[1]:
        raise ValueError(f"attention residual: the previous stage's {big[0]}x{big[1]} {what} grid is "
                         f"not an integer multiple of this stage's {small[0]}x{small[1]}")
    return f


class AttentionResidual(nn.Module):
    """Carries the previous stage's map (B, H', N', N_k') to this stage's (B, H, N, N_k) (proposal 7).

    Args:
        prev_heads, num_heads: H' and H.
        q_factor: f, the query-grid downsampling (previous query grid = f x this one).
        k_factor: g, the key-grid downsampling (1: the key grids are equal).
        init: ``"zero"`` (head mix 0: a residual added to logits) or ``"mean"`` (1/H': inherited).
    """

    def __init__(self, prev_heads: int, num_heads: int, *, q_factor: int = 2, k_factor: int = 1,
                 init: str = "zero"):
        super().__init__()
        if init not in ("zero", "mean"):
            raise ValueError(f"attention residual: init={init!r}; allowed: ['zero', 'mean']")
        self.q_factor, self.k_factor, self.init = q_factor, k_factor, init
        self.prev_heads, self.num_heads = prev_heads, num_heads
        self.filter_q = nn.Parameter(torch.empty(q_factor, q_factor))
        self.filter_k = nn.Parameter(torch.empty(k_factor, k_factor)) if k_factor > 1 else None
        self.head_mix = nn.Parameter(torch.empty(num_heads, prev_heads))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            self.filter_q.fill_(1.0 / self.q_factor ** 2)
            if self.filter_k is not None:
                self.filter_k.fill_(1.0 / self.k_factor ** 2)
            self.head_mix.fill_(0.0 if self.init == "zero" else 1.0 / self.prev_heads)

    def macs(self, n: int, n_k: int) -> int:
        """Per image, for this stage's N queries and N_k keys."""
        hp, f, g = self.prev_heads, self.q_factor, self.k_factor
        nkp = n_k * g * g
        out = hp * n * nkp * f * f  # query filter
        if g > 1:
            out += hp * n * n_k * g * g  # key filter
        return out + self.num_heads * hp * n * n_k  # head mix

    def filter_queries(self, t: torch.Tensor, grid) -> torch.Tensor:
        """(B, H', N', X) on the f-times finer query grid -> (B, H', N, X): the f x f / stride-f
        filter over the query grid, as a depthwise convolution whose channels are the X columns
        (a view of a contiguous map, no copy); an einsum over the 7-d view permutes the whole map
        first and is ~30x slower on the CPU."""
        b, hp, _, x = t.shape
        h, w, f = grid[0], grid[1], self.q_factor
        t = t.unflatten(2, (h * f, w * f)).permute(0, 1, 4, 2, 3).reshape(b * hp, x, h * f, w * f)
        t = F.conv2d(t, self.filter_q.to(t.dtype).expand(x, 1, f, f), stride=f, groups=x)
        return t.permute(0, 2, 3, 1).reshape(b, hp, h * w, x)

    def forward(self, prev, grid, key_grid) -> torch.Tensor:
        """(B, H', N', N_k') on the f-times finer query grid -> (B, H, N, N_k). ``prev`` may be
        a ``Factored`` map U V^T + R: the query filter is linear on the query axis, so it acts
        on U and R, and the N' x N_k' map is never formed."""
        fact = isinstance(prev, Factored)
        b, hp = (prev.u if fact else prev).shape[:2]
        g = self.k_factor
        h, w = grid
        kh, kw = key_grid
        n = h * w
        npr, nkp = (prev.u.shape[-2], prev.v.shape[-2]) if fact else prev.shape[-2:]
        if npr != n * self.q_factor ** 2 or nkp != kh * kw * g * g or hp != self.prev_heads:
            raise ValueError(f"attention residual: expected a ({self.prev_heads} heads, "
                             f"{n * self.q_factor ** 2}, {kh * kw * g * g}) map from the previous "
                             f"stage, got ({hp}, {npr}, {nkp})")
        if fact:
            m = self.filter_queries(prev.u, grid) @ prev.v.transpose(-2, -1)
            if prev.r is not None:
                m = m + self.filter_queries(prev.r, grid)
        else:
            m = self.filter_queries(prev, grid)
        if g > 1:  # the g x g filter over the key grid, one channel per query
            m = F.conv2d(m.reshape(b * hp * n, 1, kh * g, kw * g), self.filter_k.to(m.dtype)[None, None],
                         stride=g).reshape(b, hp, n, kh * kw)
        # head mix as a batched product (an einsum over one previous head would be a plain multiply)
        out = torch.matmul(self.head_mix.to(m.dtype), m.reshape(b, hp, n * m.shape[-1]))
        return out.reshape(b, self.num_heads, n, m.shape[-1])


class Factored:
    """A carried logit matrix kept in factored form: M = U V^T + R.

    U: (B, H, N, r); V: (B, H, N_k, r); R: None or a dense part (B, H, N, N_k) (the attention
    residual). Less-attention transforms act on the factors:
    Psi M Theta^T + (Psi 1) b_Theta^T + b_Psi 1^T = [Psi U | Psi 1 | b_Psi] [Theta V | b_Theta | 1]^T
    + Psi R Theta^T, so the rank grows by 2 per layer.
    """

    def __init__(self, u, v, r=None):
        self.u, self.v, self.r = u, v, r

    def dense(self) -> torch.Tensor:
        m = self.u @ self.v.transpose(-2, -1)  # (B, H, N, N_k)
        return m if self.r is None else m.add_(self.r)  # in place: the product is a fresh tensor


class GridTransforms(NamedTuple):
    """A layer's size-bound tensors on one (h, w) query grid (``LessAttention.on_grid``): Theta
    (N_k x N_k) and its bias; Psi dense (N x N) or its Kronecker factors (h x h, w x w); Psi's
    bias (N). None for a VA layer."""
    grid: tuple
    key_grid: tuple
    theta: torch.Tensor | None = None
    theta_bias: torch.Tensor | None = None
    psi: torch.Tensor | None = None
    psi_h: torch.Tensor | None = None
    psi_w: torch.Tensor | None = None
    psi_bias: torch.Tensor | None = None


def as_dense(carry) -> torch.Tensor:
    return carry.dense() if isinstance(carry, Factored) else carry


def choose_psi(n: int, n_k: int, dim: int, num_heads: int) -> str:
    """Proposal 5's per-layer choice: ``"dense"`` while H N^2 N_k <= N_k C^2 (i.e. H N^2 <= C^2),
    else ``"kron"``."""
    return "dense" if num_heads * n * n <= dim * dim else "kron"


def _interp_grid(t: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """(X, N) rows of functions on ``grid`` -> (X, N') on ``new_grid``: bilinear,
    ``align_corners=False`` (as the position tables)."""
    x = t.shape[0]
    t = F.interpolate(t.reshape(x, 1, grid[0], grid[1]), size=tuple(new_grid), mode="bilinear",
                      align_corners=False)
    return t.reshape(x, new_grid[0] * new_grid[1])


def resample_grid_vector(b: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """A bias (N,) over ``grid`` -> (N',) over ``new_grid`` (bilinear); unchanged on the same grid."""
    if tuple(grid) == tuple(new_grid):
        return b
    return _interp_grid(b[None], grid, new_grid)[0]


def resample_grid_operator(w: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """A linear map W (N x N) on functions over the (h, w) ``grid`` -> W' (N' x N') over
    ``new_grid``, for inputs of another size (the size flexibility of LaViT's Psi / Theta;
    ``grid`` (h, 1) for a Kronecker factor over one axis).

    W = diag(d) + K is split into a self weight d per token, resampled as a function over the
    grid, and a kernel K, resampled as an integral kernel: bilinear over the output and the input
    axes, times N / N' (a sum over N' input tokens then weighs a region as the sum over N did).
    K's diagonal is the mean of its entries at the token's grid neighbours (the kernel's value
    there, as if the token were not itself) and d = W_ii minus that, so a smooth kernel leaves no
    hole at the diagonal. The identity (the init) maps to the identity; a constant kernel keeps
    its row sums; on the same grid W is returned as it is (the build size computes exactly what
    it did)."""
    if tuple(grid) == tuple(new_grid):
        return w
    n, n2 = grid[0] * grid[1], new_grid[0] * new_grid[1]
    k = w.clone()
    k.diagonal().zero_()
    ring = w.new_ones(1, 1, 3, 3)
    ring[0, 0, 1, 1] = 0
    num = F.conv2d(k.reshape(n, 1, grid[0], grid[1]), ring, padding=1).reshape(n, n).diagonal()
    cnt = F.conv2d(w.new_ones(1, 1, grid[0], grid[1]), ring, padding=1).reshape(n)
    fill = num / cnt.clamp_min(1)  # the mean over each token's (up to 8) grid neighbours
    k = k + torch.diag_embed(fill)
    d = w.diagonal() - fill
    k = _interp_grid(k, grid, new_grid)  # input axis: (N, N')
    k = _interp_grid(k.transpose(0, 1), grid, new_grid).transpose(0, 1)  # output axis: (N', N')
    return torch.diag_embed(resample_grid_vector(d, grid, new_grid)) + k * (n / n2)


@register_mixer("less_attention")
class LessAttention(AttentionMixer):
    """LaViT's vanilla-attention (``mode="va"``) or less-attention (``mode="la"``) layer.

    Args:
        dim: token width C.
        num_heads: heads H.
        num_tokens: N, the tokens of this stage.
        grid: the (h, w) query grid (needed for ``sr_ratio > 1``, ``psi="kron"`` and the
            attention residual; default: square, or one row if N is not a square).
        mode: ``"va"`` computes attention, ``"la"`` transforms the carried one.
        sr_ratio: R, keys (and values) from the R x R-reduced grid; must divide the grid.
        psi: ``"auto"``, ``"dense"`` or ``"kron"`` (LA only, proposal 5).
        out_proj: (LA only) output projection after the attention (proposal 6).
        la_source: what a VA layer carries: ``"logits"`` or ``"post_softmax"``.
        attn_residual: (VA only) add the previous stage's carried matrix, downsampled.
        inherit: (LA only) start from the previous stage's carried matrix, downsampled.
        prev_heads, prev_grid, prev_sr_ratio: the previous stage's heads, query grid and
            reduction ratio (with ``attn_residual`` / ``inherit``).
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
    examples = ({"num_heads": 2, "mode": "va", "grid": (4, 4), "sr_ratio": 2},
                {"num_heads": 2, "mode": "la", "grid": (4, 4), "sr_ratio": 2, "psi": "kron"},
                {"num_heads": 2, "mode": "la", "grid": (4, 4), "sr_ratio": 2, "psi": "dense",
                 "out_proj": True},
                {"num_heads": 2, "mode": "va"}, {"num_heads": 2, "mode": "la"},
                {"num_heads": 2, "mode": "va", "la_source": "post_softmax"},
                {"num_heads": 2, "mode": "la", "la_source": "post_softmax"})

    def __init__(self, dim: int, *, num_heads: int, num_tokens: int, grid=None, mode: str = "la",
                 sr_ratio: int = 1, psi: str = "auto", out_proj: bool | None = None,
                 la_source: str = "logits", attn_residual: bool = False, inherit: bool = False,
                 prev_heads: int | None = None, prev_grid=None, prev_sr_ratio: int | None = None,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 transform_init: str = "identity", dp_mode: str = "corrected"):
        super().__init__()
        for name, val, allowed in (("mode", mode, ("va", "la")),
                                   ("la_source", la_source, ("logits", "post_softmax")),
                                   ("psi", psi, ("auto", "dense", "kron")),
                                   ("transform_init", transform_init, ("identity", "trunc_normal")),
                                   ("dp_mode", dp_mode, ("corrected", "literal"))):
            if val not in allowed:
                raise ValueError(f"less_attention: {name}={val!r}; allowed: {list(allowed)}")
        self.set_heads(dim, num_heads)
        if attn_residual and mode != "va":
            raise ValueError("less_attention: attn_residual applies to mode='va' layers only "
                             "(an 'la' layer takes inherit=True)")
        if inherit and mode != "la":
            raise ValueError("less_attention: inherit applies to mode='la' layers only")
        if grid is None:
            s = int(round(num_tokens ** 0.5))
            grid = (s, s) if s * s == num_tokens else (1, num_tokens)
        grid = tuple(int(g) for g in grid)
        if grid[0] * grid[1] != num_tokens:
            raise ValueError(f"less_attention: grid {grid[0]}x{grid[1]} does not hold {num_tokens} tokens")
        if sr_ratio < 1 or grid[0] % sr_ratio or grid[1] % sr_ratio:
            raise ValueError(f"less_attention: the reduction ratio {sr_ratio} does not divide the "
                             f"{grid[0]}x{grid[1]} token grid")
        self.num_tokens, self.grid, self.sr_ratio = num_tokens, grid, sr_ratio
        self.key_grid = reduced_grid(grid, sr_ratio)
        self.num_keys = self.key_grid[0] * self.key_grid[1]
        self.mode, self.la_source = mode, la_source
        self.transform_init, self.dp_mode = transform_init, dp_mode
        # Size-bound transforms (Psi, Theta, their biases) are resampled to the grid of the input
        # (``resample_grid_operator``): any grid the reduction ratio divides is accepted.
        self.fixed_num_tokens = False
        self.inherit = inherit
        n, nk = num_tokens, self.num_keys
        if mode == "va":
            self.q = Linear(dim, dim, bias=qkv_bias)
            self.kv = Linear(dim, dim * 2, bias=qkv_bias)
            if sr_ratio > 1:
                self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
                self.sr_norm = nn.LayerNorm(dim, eps=1e-6)
            self.psi_kind = None
            out_proj = True if out_proj is None else out_proj
        else:
            self.v = Linear(dim, dim, bias=qkv_bias)
            self.theta = Linear(nk, nk)  # mixes the key axis
            self.psi_kind = choose_psi(n, nk, dim, num_heads) if psi == "auto" else psi
            if self.psi_kind == "dense":
                self.psi = Linear(n, n)  # mixes the query axis
            else:
                self.psi_h = nn.Parameter(torch.empty(grid[0], grid[0]))
                self.psi_w = nn.Parameter(torch.empty(grid[1], grid[1]))
                self.psi_bias = nn.Parameter(torch.zeros(n))
            out_proj = False if out_proj is None else out_proj
        self.residual = None
        if attn_residual or inherit:
            if prev_heads is None or prev_grid is None or prev_sr_ratio is None:
                raise ValueError("less_attention: attn_residual / inherit need prev_heads, prev_grid "
                                 "and prev_sr_ratio (the previous stage's)")
            prev_grid = tuple(int(g) for g in prev_grid)
            qf = _grid_factor(prev_grid, grid, "query")
            kf = _grid_factor(reduced_grid(prev_grid, prev_sr_ratio), self.key_grid, "key")
            self.residual = AttentionResidual(prev_heads, num_heads, q_factor=qf, k_factor=kf,
                                              init="mean" if inherit else "zero")
        self.attn_drop_p = attn_drop
        self.attn_drop = dropout(attn_drop)
        self.has_proj = out_proj
        self.proj = Linear(dim, dim) if out_proj else nn.Identity()
        self.proj_drop = dropout(proj_drop)

    def init_weights(self) -> None:
        if self.mode == "la":
            mats = [self.theta.weight] + ([self.psi.weight] if self.psi_kind == "dense"
                                          else [self.psi_h, self.psi_w])
            with torch.no_grad():
                for w in mats:
                    if self.transform_init == "identity":
                        w.copy_(torch.eye(w.shape[0]))
                    else:
                        nn.init.trunc_normal_(w, std=0.02)
                nn.init.zeros_(self.theta.bias)
                nn.init.zeros_(self.psi.bias if self.psi_kind == "dense" else self.psi_bias)
        if self.residual is not None:
            self.residual.init_weights()

    # -- cost --------------------------------------------------------------------------------------
    def _psi_macs(self, n: int, width: int) -> int:
        """Psi applied to (N, width) per head."""
        if self.psi_kind == "dense":
            return n * n * width
        return n * width * (self.grid[0] + self.grid[1])

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """MACs of the explicit path (N queries, N_k = N / R^2 keys, width C, H heads).

        VA: q NC^2, reduction conv (R > 1) N_k C^2 R^2, kv 2 N_k C^2, q k^T and A v 2 N N_k C,
        proj NC^2. LA: v N_k C^2, Theta H N N_k^2, Psi H N^2 N_k (dense) or H N N_k (h + w)
        (Kronecker), A v N N_k C, proj NC^2 if ``out_proj``. Attention residual / inherited map:
        H' N N_k' f^2 (query filter) + H' N N_k g^2 (key filter, g > 1) + H H' N N_k (head mix)."""
        n, c, h, r = num_tokens, dim, self.num_heads, self.sr_ratio
        nk = reduced_grid(grid, r)[0] * reduced_grid(grid, r)[1]
        proj = n * c * c if self.has_proj else 0
        if self.mode == "la":
            macs = nk * c * c + h * n * nk * nk + h * self._psi_macs(n, nk) + n * nk * c + proj
        else:
            macs = n * c * c + 2 * nk * c * c + 2 * n * nk * c + proj
            if r > 1:
                macs += nk * c * c * r * r
        if self.residual is not None:
            macs += self.residual.macs(n, nk)
        return MixerCost(macs)

    def describe(self) -> dict:
        d = {**super().describe(), "mode": self.mode}
        if self.sr_ratio != 1:
            d["sr_ratio"] = self.sr_ratio
        if self.mode == "la":
            if self.psi_kind != "dense":
                d["psi"] = self.psi_kind
            if self.has_proj:
                d["out_proj"] = True
        if self.la_source != "logits":
            d["la_source"] = self.la_source
        if self.residual is not None:
            d["inherit" if self.inherit else "attn_residual"] = True
        return d

    # -- transforms --------------------------------------------------------------------------------
    def on_grid(self, grid=None) -> "GridTransforms":
        """Psi, Theta and their biases for the (h, w) query ``grid`` (None: the build grid): the
        parameters themselves on the build grid, else resampled (``resample_grid_operator``)."""
        grid = self.grid if grid is None else tuple(int(g) for g in grid)
        kg = reduced_grid(grid, self.sr_ratio)
        if self.mode != "la":
            return GridTransforms(grid, kg)
        th = (resample_grid_operator(self.theta.weight, self.key_grid, kg),
              resample_grid_vector(self.theta.bias, self.key_grid, kg))
        if self.psi_kind == "dense":
            return GridTransforms(grid, kg, *th, resample_grid_operator(self.psi.weight, self.grid, grid),
                                  psi_bias=resample_grid_vector(self.psi.bias, self.grid, grid))
        return GridTransforms(
            grid, kg, *th, psi_h=resample_grid_operator(self.psi_h, (self.grid[0], 1), (grid[0], 1)),
            psi_w=resample_grid_operator(self.psi_w, (self.grid[1], 1), (grid[1], 1)),
            psi_bias=resample_grid_vector(self.psi_bias, self.grid, grid))

    def apply_psi(self, t: torch.Tensor, bias=True, g: "GridTransforms | None" = None) -> torch.Tensor:
        """W_Psi t + bias on the query axis of (B, H, N, X). ``bias``: True (b_Psi 1^T), False
        (none) or an (N, X) matrix; it is added inside the last product (one pass fewer over the
        map).

        Batched products with the small matrices expanded over the batch (stride 0): a broadcast
        matmul of a 2-d by a 4-d tensor would transpose and copy the map instead."""
        g = self.on_grid() if g is None else g
        bsz, hh, n, x = t.shape
        dt = t.dtype
        if bias is True:
            bias = g.psi_bias[:, None]
        if bias is not False:
            bias = bias.to(dt).expand(n, x)
        if self.psi_kind == "dense":
            w, t = g.psi.to(dt).expand(bsz * hh, n, n), t.reshape(bsz * hh, n, x)
            out = torch.bmm(w, t) if bias is False else torch.baddbmm(bias, w, t)
            return out.reshape(bsz, hh, n, x)
        gh, gw = g.grid
        out = torch.bmm(g.psi_w.to(dt).expand(bsz * hh * gh, gw, gw),
                        t.reshape(bsz * hh * gh, gw, x))  # columns
        ph, out = g.psi_h.to(dt).expand(bsz * hh, gh, gh), out.reshape(bsz * hh, gh, gw * x)
        out = torch.bmm(ph, out) if bias is False else torch.baddbmm(bias.reshape(gh, gw * x), ph, out)
        return out.reshape(bsz, hh, n, x)  # rows

    def psi_matrix(self, g: "GridTransforms | None" = None) -> torch.Tensor:
        """The N x N query-axis matrix W_Psi (Kronecker product P_h (x) P_w for ``psi="kron"``);
        ``g``: on another grid (``on_grid``)."""
        g = self.on_grid() if g is None else g
        return g.psi if self.psi_kind == "dense" else torch.kron(g.psi_h, g.psi_w)

    def psi_row_sums(self, g: "GridTransforms | None" = None) -> torch.Tensor:
        """W_Psi 1 (N,): for the Kronecker product, (P_h 1) (x) (P_w 1)."""
        g = self.on_grid() if g is None else g
        if self.psi_kind == "dense":
            return g.psi.sum(1)
        return torch.outer(g.psi_h.sum(1), g.psi_w.sum(1)).reshape(-1)

    def transform(self, m: torch.Tensor, g: "GridTransforms | None" = None) -> torch.Tensor:
        """Psi(Theta(M)^T)^T on (B, H, N, N_k): Theta on keys (last axis), Psi on queries, computed
        as W_Psi M W_Theta^T + [(W_Psi 1) b_Theta^T + b_Psi 1^T] with the bracket (N x N_k, from
        the parameters alone) added in Psi's last product. ``g``: the transforms on another grid
        (``on_grid``; default the build grid's)."""
        g = self.on_grid() if g is None else g
        bias = self.psi_row_sums(g)[:, None] * g.theta_bias[None, :] + g.psi_bias[:, None]
        return self.apply_psi(F.linear(m, g.theta.to(m.dtype)), bias=bias, g=g)

    def transform_factored(self, c: Factored, g: "GridTransforms | None" = None) -> Factored:
        """The same transform on the factors (see ``Factored``)."""
        g = self.on_grid() if g is None else g
        wt, bt = g.theta.to(c.u.dtype), g.theta_bias.to(c.u.dtype)
        b, h, n, _ = c.u.shape
        nk = c.v.shape[-2]
        ones_q = c.u.new_ones(b, h, n, 1)
        psi_one = self.psi_row_sums(g).to(c.u.dtype)[:, None].expand(b, h, n, 1)
        b_psi = g.psi_bias.to(c.u.dtype)
        u = torch.cat([self.apply_psi(c.u, bias=False, g=g), psi_one, b_psi[:, None] * ones_q], dim=-1)
        ones_k = c.u.new_ones(b, h, nk, 1)
        v = torch.cat([torch.matmul(wt, c.v), bt[:, None] * ones_k, ones_k], dim=-1)
        r = None if c.r is None else self.apply_psi(c.r @ wt.T, bias=False, g=g)
        return Factored(u, v, r)

    def factored_pays(self, c: Factored) -> bool:
        """Cost model, per head: transforming the factors of rank r and attending with rank r + 2
        against materialising M (N N_k r) and transforming it densely."""
        n, nk, r = c.u.shape[-2], c.v.shape[-2], c.u.shape[-1]
        dense = n * nk * r + n * nk * nk + self._psi_macs(n, nk)
        fact = self._psi_macs(n, r) + nk * nk * r + n * nk * (r + 2)
        if c.r is not None:
            fact += n * nk * nk + self._psi_macs(n, nk)
        return fact < dense

    # -- diagonality -------------------------------------------------------------------------------
    def square_map(self, p: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N_k) -> (B, H, N_k, N_k): query rows averaged over the R x R blocks that share
        a key cell (proposal 8); unchanged when R = 1."""
        r = self.sr_ratio
        if r == 1:
            return p
        b, h = p.shape[:2]
        # the key grid of the last forward when it ran off the build grid (a map of another size)
        kh, kw = self.__dict__.get("_run_key_grid") or self.key_grid
        return p.reshape(b, h, kh, r, kw, r, p.shape[-1]).mean(dim=(3, 5)).reshape(b, h, kh * kw, -1)

    def diagonality_map(self, p: torch.Tensor) -> torch.Tensor:
        return self.square_map(p)

    @staticmethod
    def dominance_term(p: torch.Tensor) -> torch.Tensor:
        """dp_diag of square row-stochastic maps P (..., N, N): mean over rows (and the leading
        axes) of sum_{j != i} max(0, P_ij - P_ii), in [0, 1]; 0 when every diagonal entry is its
        row's largest (proposal 8, module docstring)."""
        diag = p.diagonal(dim1=-2, dim2=-1)  # (..., N); the j = i entry contributes max(0, 0) = 0
        return (p - diag[..., None]).clamp_min(0).sum(dim=-1).mean()

    def dp_terms(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dp_sym, dp_diag) of one layer's pre-softmax matrix M (B, H, N, N_k)."""
        if self.dp_mode == "literal":
            m = self.square_map(m)
            n = m.shape[-1]
            sym = (m - m.transpose(-2, -1)).abs().sum(dim=(-2, -1)).mean()
            diag = m.diagonal(dim1=-2, dim2=-1)
            diag_term = ((n - 1) * diag - (m.sum(dim=-1) - diag)).sum(dim=-1).mean()
            return sym, diag_term
        p = self.square_map(m.softmax(dim=-1))
        sym = (p - p.transpose(-2, -1)).abs().mean()
        return sym, self.dominance_term(p)

    def add_dp_terms(self, ctx: TokenContext, m: torch.Tensor) -> None:
        sym, diag = self.dp_terms(m)
        ctx.add_aux("dp_sym", sym)
        ctx.add_aux("dp_diag", diag)

    # -- forward -----------------------------------------------------------------------------------
    def _inherited(self, ctx: TokenContext, g: "GridTransforms") -> torch.Tensor:
        """The previous stage's carried map brought to this stage (residual / inherit)."""
        prev = ctx.state.get(CARRY)
        pg = tuple(ctx.state.get(CARRY_GRID, ()))
        if prev is None or pg == tuple(g.grid):
            raise ValueError("less_attention: attn_residual / inherit need the previous stage to "
                             "carry an attention matrix (a 'va' or 'la' layer there)")
        f = self.residual.q_factor
        if pg != (f * g.grid[0], f * g.grid[1]):
            raise ValueError(f"less_attention: this stage's {g.grid[0]}x{g.grid[1]} token grid is not "
                             f"1/{f} of the previous stage's {pg[0]}x{pg[1]}; use an input size the "
                             "downsampling divides (a multiple of the model's coarsest stride)")
        return self.residual(prev, g.grid, g.key_grid)

    def _values(self, x: torch.Tensor, g: "GridTransforms | None" = None) -> torch.Tensor:
        """(B, H, N_k, D) values of an LA layer: the value Linear of the pooled grid."""
        g = GridTransforms(self.grid, self.key_grid) if g is None else g
        b = x.shape[0]
        if self.sr_ratio > 1:
            x = map_to_tokens(F.avg_pool2d(tokens_to_map(x, g.grid), self.sr_ratio))
        nk = g.key_grid[0] * g.key_grid[1]
        return self.v(x).reshape(b, nk, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        self.check_tokens(x, ctx)
        b, n, c = x.shape
        grid = tuple(ctx.grid)
        if grid != self.grid:  # another input size: the key grid and the transforms follow it
            if grid[0] % self.sr_ratio or grid[1] % self.sr_ratio:
                raise ValueError(f"less_attention: the reduction ratio {self.sr_ratio} does not divide "
                                 f"the {grid[0]}x{grid[1]} token grid of this input; use an input "
                                 "size whose token grids the reduction ratios divide")
            self._run_key_grid = reduced_grid(grid, self.sr_ratio)
        elif self.__dict__.get("_run_key_grid") is not None:
            self._run_key_grid = None
        g = self.on_grid(grid) if self.mode == "la" else GridTransforms(grid, reduced_grid(grid, self.sr_ratio))
        # The factored path needs the carried matrix to be logits (softmax breaks it).
        factored = self.fused_attn and self.la_source == "logits"
        drop = self.attn_drop_p if self.training else 0.0
        nk = g.key_grid[0] * g.key_grid[1]
        if self.mode == "va":
            q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            xk = x
            if self.sr_ratio > 1:
                xk = self.sr_norm(map_to_tokens(self.sr(tokens_to_map(x, grid))))
            kv = self.kv(xk).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)  # (B, H, N_k, D)
            res = self._inherited(ctx, g) if self.residual is not None else None
            if factored:
                ctx.state[CARRY] = Factored(q, k * self.scale, res)  # scale the N_k keys, not the N queries
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=res, dropout_p=drop)
            else:
                logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N_k)
                if res is not None:
                    logits = logits + res
                attn = self.attn_probe(logits.softmax(dim=-1))
                ctx.state[CARRY] = logits if self.la_source == "logits" else attn
                out = self.attn_drop(attn) @ v
        else:
            if self.inherit:
                prev = self._inherited(ctx, g)
            else:
                prev = ctx.state.get(CARRY)
                shape = None
                if prev is not None:
                    shape = (prev.u.shape[-2], prev.v.shape[-2]) if isinstance(prev, Factored) else \
                        tuple(prev.shape[-2:])
                if shape != (n, nk) or tuple(ctx.state.get(CARRY_GRID, ())) != grid:
                    raise ValueError("less_attention: an 'la' layer needs a preceding 'va' or 'la' "
                                     f"layer in the same stage with {n} queries and {nk} keys (or "
                                     "inherit=True as the first layer of a less-attention-only stage)")
            v = self._values(x, g)
            if factored and isinstance(prev, Factored) and self.factored_pays(prev):
                carry = self.transform_factored(prev, g)
                ctx.state[CARRY] = carry
                if torch.is_grad_enabled():
                    self.add_dp_terms(ctx, carry.dense())
                out = F.scaled_dot_product_attention(carry.u, carry.v, v, attn_mask=carry.r,
                                                     dropout_p=drop, scale=1.0)
            else:
                m = self.transform(as_dense(prev), g)  # (B, H, N, N_k) pre-softmax
                ctx.state[CARRY] = m
                if torch.is_grad_enabled():
                    self.add_dp_terms(ctx, m)
                # (Fused attention with M as an additive mask and zero q, k computes the same, but
                # is 2-3x slower on the CPU than softmax and a batched product: not used.)
                attn = self.attn_probe(m.softmax(dim=-1))
                out = self.attn_drop(attn) @ v
        ctx.state[CARRY_GRID] = grid
        ctx.state[CARRY_KEY_GRID] = g.key_grid
        out = out.transpose(1, 2)  # (B, N, H, D); a view of fused attention's own (B, N, H, D) output
        if torch.compiler.is_compiling():
            # A traced reshape of it becomes a view, which fails once the ONNX exporter decomposes
            # fused attention into ops with other output strides ("Cannot view [2,16,3,32] as
            # (2,16,96)"); an explicit contiguous copy keeps the graph valid for every lowering.
            out = out.clone(memory_format=torch.contiguous_format)
        out = out.reshape(b, n, c)
        return self.proj_drop(self.proj(out))
