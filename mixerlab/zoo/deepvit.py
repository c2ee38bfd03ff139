"""DeepViT and its ViT depth study (Zhou et al., arXiv 2103.11886; zhoudaquan/dvit_repo).
Depth study: width 384, 12 heads (d = 32), MLP ratio 3, conv16 patch embedding, qkv bias;
``vit_depthN`` uses plain attention, ``deepvit_depthN`` re-attention in every block. DeepViT-S/L:
widths 396/420, re-attention in the last 5/12 blocks only, CNN stem, ``scale_adjustment`` 0.5
(branches x2), DeepViT-S with ``transform_scale``. Normalisation mean = std = 0.5 (the code's
data config). Params measured on the official code; for the ViT baselines the README's
24.5/36.3/48.1M (our count is the DeepViT count minus the 180 re-attention parameters per block).
DeepViT-S/L top-1 from the README's "optimised" table (82.3/83.1); the code measures 27.31M/58.88M
while the paper says 27M/55M (we follow the code)."""
from __future__ import annotations

from ..models.config import BlockConfig, IsotropicConfig
from .registry import ZooEntry, register_zoo

PAPER = "DeepViT: Towards Deeper Vision Transformer (arXiv 2103.11886)"
HALF = (0.5, 0.5, 0.5)


def deepvit(depth: int = 16, dim: int = 384, num_heads: int = 12, *, reattn_last: int | None = None,
            transform_scale: bool = False, mlp_ratio: float = 3.0,
            scale_adjustment: float | None = None, **kw) -> IsotropicConfig:
    """``reattn_last`` = number of final blocks with re-attention (None: all, 0: plain ViT)."""
    n_re = depth if reattn_last is None else reattn_last
    if not 0 <= n_re <= depth:
        raise ValueError(f"reattn_last={reattn_last} must be in 0..depth={depth}")
    attn = ("attention", {"num_heads": num_heads, "qkv_bias": True})
    re = ("reattention", {"num_heads": num_heads, "qkv_bias": True, "transform_scale": transform_scale})
    mixers = (attn,) * (depth - n_re) + (re,) * n_re
    kw.setdefault("mean", HALF)
    kw.setdefault("std", HALF)
    return IsotropicConfig(mixers=mixers, dim=dim,
                           block=BlockConfig(mlp_ratio=mlp_ratio, scale_adjustment=scale_adjustment), **kw)


def _e(name, family, args, reported, tol=0.01):
    return ZooEntry(name, family, deepvit, args, PAPER, reported, tol)


MICRO = dict(dim=96, num_heads=6, img_size=32, patch_size=4, num_classes=10)
README = "README (rounded)"
OFFICIAL = "measured (official)"

register_zoo([
    _e("vit_depth16", "vit", dict(depth=16, reattn_last=0),
       dict(params=24.5, top1=78.88, similar_blocks=5, params_source=README)),
    _e("vit_depth24", "vit", dict(depth=24, reattn_last=0),
       dict(params=36.3, top1=79.35, similar_blocks=11, params_source=README)),
    _e("vit_depth32", "vit", dict(depth=32, reattn_last=0),
       dict(params=48.1, top1=79.27, similar_blocks=15, params_source=README)),
    _e("deepvit_depth16", "deepvit", dict(depth=16),
       dict(params=24.43, top1=79.10, gmacs=5.30, similar_blocks=0, params_source=OFFICIAL)),
    _e("deepvit_depth24", "deepvit", dict(depth=24),
       dict(params=36.26, top1=79.99, gmacs=7.92, similar_blocks=0, params_source=OFFICIAL)),
    _e("deepvit_depth32", "deepvit", dict(depth=32),
       dict(params=48.10, top1=80.90, gmacs=10.54, similar_blocks=0, params_source=OFFICIAL)),
    _e("deepvit_s", "deepvit",
       dict(depth=16, dim=396, reattn_last=5, transform_scale=True, stem="cnn", scale_adjustment=0.5),
       dict(params=27.31, top1=82.3, gmacs=6.38, params_source="measured (official code; paper 27M)")),
    _e("deepvit_l", "deepvit", dict(depth=32, dim=420, reattn_last=12, stem="cnn", scale_adjustment=0.5),
       dict(params=58.88, top1=83.1, gmacs=13.19, params_source="measured (official code; paper 55M)")),
    _e("deepvit_micro", "deepvit", dict(depth=10, **MICRO),
       dict(target_params=1.0, note="mixerlab micro variant (deep and narrow: 10 blocks, width 96); "
            "not in the paper"), 0.15),
])
