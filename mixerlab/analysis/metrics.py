"""Attention and feature diagnostics as plain tensor functions (no hooks, no plotting).

Definitions (from the papers cited per item):

* Cross-layer attention similarity (DeepViT: Zhou et al., "DeepViT: Towards Deeper Vision
  Transformer", arXiv 2103.11886, section 3; zhoudaquan/dvit_repo): for layers p, q, head h and
  key token t, M^{p,q}_{h,t} = cos(A^p[h, :, t], A^q[h, :, t]), the cosine of the t-th attention
  *column* (how much token t feeds every output token); the layer-pair value averages M over
  heads, tokens and images. Head similarity is the same cosine between two heads of one layer.
  A block is "similar" when its similarity with the previous block exceeds 0.9.
* Nonlocality (ConViT: d'Ascoli et al., arXiv 2103.10697, section 4; facebookresearch/convit):
  D^{l,h} = (1/N) sum_i sum_j A^{l,h}_ij ||delta_ij||, the attention-weighted distance (in patch
  units) between query patch i and key patch j, averaged over queries, per head.
* Token / feature similarity (LaViT's "attention saturation": Zhang et al., arXiv 2406.00427;
  DeepViT's feature-map similarity): mean cosine between the features of the same token in two
  layers, and the mean pairwise cosine of tokens within one layer (over-smoothing).
* Diagonality-preserving monitors (LaViT, arXiv 2406.00427, its diagonality-preserving loss): mean
  |P - P^T| and the diagonal mass tr(P) / N of a less-attention layer's softmax map P.

Implementation choices (recorded here, repeated in the analysis records):

* Nonlocality excludes prefix (class) tokens from both axes, then renormalises each query row over
  the patch keys, so the value is a mean distance in patch units. The weights are |A| (identical
  to A for softmax maps; re-attention maps are not row-stochastic and can be negative after the
  head BatchNorm). Spatial-reduction keys (PVT) sit at the centres of their R x R cells.
* Cosines use ``eps = 1e-12`` in the norm, so an all-zero column gives 0, not NaN.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-12


def _cos(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    num = (a * b).sum(dim)
    den = a.norm(dim=dim).clamp_min(EPS) * b.norm(dim=dim).clamp_min(EPS)
    return num / den


def column_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """M_{h,t} per image: cosine of attention columns of two (B, H, Nq, Nk) maps -> (B, H, Nk)."""
    if a.shape != b.shape:
        raise ValueError(f"attention maps of different shapes {tuple(a.shape)} and {tuple(b.shape)} "
                         "cannot be compared column by column")
    return _cos(a.float(), b.float(), dim=-2)


def attention_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """DeepViT's cross-layer similarity: column cosines averaged over images, heads and tokens."""
    return column_cosine(a, b).mean().item()


def head_similarity(a: torch.Tensor) -> torch.Tensor:
    """(H, H) mean column cosine between the heads of one (B, H, Nq, Nk) map."""
    a = a.float()
    b, h, nq, nk = a.shape
    unit = a / a.norm(dim=-2, keepdim=True).clamp_min(EPS)  # columns of unit length
    # sum over queries of unit_g[:, t] * unit_h[:, t] -> (B, H, H, Nk), then mean over B and t.
    sim = torch.einsum("bgqt,bhqt->bght", unit, unit)
    return sim.mean(dim=(0, 3))


def mean_off_diagonal(m: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix (nan for 1 x 1)."""
    n = m.shape[0]
    if n < 2:
        return float("nan")
    return ((m.sum() - m.diagonal().sum()) / (n * n - n)).item()


def grid_positions(grid: tuple[int, int], stride: float = 1.0) -> torch.Tensor:
    """(N, 2) (row, col) of a raster grid's cells, in units of query patches.

    ``stride`` > 1 places a coarser grid's cells (PVT-reduced keys) at the centres of the stride x
    stride blocks of the query grid they summarise.
    """
    h, w = grid
    rows = torch.arange(h, dtype=torch.float32).repeat_interleave(w)  # (N,)
    cols = torch.arange(w, dtype=torch.float32).repeat(h)  # (N,)
    off = (stride - 1) / 2
    return torch.stack([rows * stride + off, cols * stride + off], dim=-1)


def patch_distances(q_grid: tuple[int, int], k_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(Nq, Nk) Euclidean distances between query and key patches, in query-patch units."""
    k_grid = q_grid if k_grid is None else k_grid
    stride = q_grid[0] / k_grid[0]
    pq, pk = grid_positions(q_grid), grid_positions(k_grid, stride)
    return torch.cdist(pq, pk)


def key_grid(num_keys: int, q_grid: tuple[int, int]) -> tuple[int, int]:
    """The key grid of a map with ``num_keys`` grid keys over query grid ``q_grid`` (SR attention)."""
    n = q_grid[0] * q_grid[1]
    if num_keys == n:
        return q_grid
    r = math.isqrt(n // num_keys) if num_keys else 0
    if num_keys == 0 or r * r * num_keys != n or q_grid[0] % r or q_grid[1] % r:
        raise ValueError(f"{num_keys} keys are not a square reduction of the {q_grid} query grid")
    return (q_grid[0] // r, q_grid[1] // r)


def grid_part(attn: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Drop prefix tokens from the query and (if the keys have them) key axes of (B, H, Nq, Nk)."""
    n = grid[0] * grid[1]
    a = attn[:, :, attn.shape[2] - n:]  # queries: the last N are the grid
    if attn.shape[3] == attn.shape[2]:  # keys are the same tokens (no spatial reduction)
        a = a[..., num_prefix:]
    return a


def nonlocality(attn: torch.Tensor, grid: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
    """ConViT's nonlocality per head: (B, H, Nq, Nk) map -> (H,) mean attended distance in patches.

    Args:
        attn: attention map of one layer, prefix tokens first on both axes.
        grid: the (H, W) patch grid of the queries.
        num_prefix: prefix (class) tokens in the sequence; excluded from both axes.
    """
    a = grid_part(attn.float(), num_prefix, grid).abs()  # (B, H, N, Nk)
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(EPS)  # rows over patch keys only
    d = patch_distances(grid, key_grid(a.shape[-1], grid)).to(a.device)  # (N, Nk)
    # Average over images first (as the official code), then sum_ij A_ij d_ij / N.
    return torch.einsum("nm,hnm->h", d, a.mean(dim=0)) / a.shape[2]


def token_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cosine between the features of the same token in two (B, N, C) layers."""
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"token features of shapes {tuple(x.shape)} and {tuple(y.shape)} do not "
                         "have the same tokens")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError("token features of different widths cannot be compared by cosine")
    return _cos(x.float(), y.float(), dim=-1).mean().item()


def intra_token_similarity(x: torch.Tensor) -> float:
    """Over-smoothing: mean pairwise cosine between distinct tokens of one (B, N, C) layer."""
    x = x.float()
    b, n, c = x.shape
    if n < 2:
        return float("nan")
    u = x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)
    gram = u @ u.transpose(1, 2)  # (B, N, N)
    off = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off / (n * n - n)).mean().item()


def diagonality_terms(p: torch.Tensor) -> dict[str, float]:
    """LaViT monitors of a square softmax map P (B, H, N, N).

    Returns ``asymmetry`` = mean_ij |P_ij - P_ji| (LaViT's dp_sym, corrected form),
    ``diag_mass`` = mean tr(P) / N (1 = each token attends only to itself, 1/N = uniform) and
    ``dp_diag`` = mean_i sum_{j != i} max(0, P_ij - P_ii), the training loss's diagonal-dominance
    term (0 when every diagonal entry is its row's largest; see ``mixers/less_attention.py``).
    """
    p = p.float()
    n = p.shape[-1]
    if p.shape[-2] != n:
        raise ValueError(f"diagonality terms need a square map, got {tuple(p.shape)}")
    diag = p.diagonal(dim1=-2, dim2=-1)  # (B, H, N)
    return dict(asymmetry=(p - p.transpose(-2, -1)).abs().mean().item(),
                diag_mass=diag.mean().item(),
                dp_diag=(p - diag[..., None]).clamp_min(0).sum(-1).mean().item())


def entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean row entropy (nats) per head of a row-stochastic (B, H, Nq, Nk) map -> (H,)."""
    a = attn.float().clamp_min(0)
    a = a / a.sum(-1, keepdim=True).clamp_min(EPS)
    return -(a * a.clamp_min(EPS).log()).sum(-1).mean(dim=(0, 2))
