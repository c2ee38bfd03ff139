"""ViT / DeiT baseline (Dosovitskiy et al., arXiv 2010.11929; Touvron et al., DeiT, arXiv
2012.12877; facebookresearch/deit, timm ``deit.py``). Reported: DeiT paper / README; params
measured on the official/timm code."""
from __future__ import annotations

from ..models.config import IsotropicConfig
from .registry import ZooEntry, register_zoo

PAPER = "DeiT: Training data-efficient image transformers (arXiv 2012.12877)"


def deit(dim: int = 192, num_heads: int = 3, depth: int = 12, *, qkv_bias: bool = True,
         **kw) -> IsotropicConfig:
    """``depth`` blocks of multi-head self-attention (``num_heads`` heads) at width ``dim``;
    ``kw``: further ``IsotropicConfig`` fields."""
    mixers = (("attention", {"num_heads": num_heads, "qkv_bias": qkv_bias}),) * depth
    return IsotropicConfig(mixers=mixers, dim=dim, **kw)


def _e(name, args, reported, tol=0.01):
    return ZooEntry(name, "deit", deit, args, PAPER, reported, tol)


# 28-32 px images, patch 4 (8x8 tokens at 32 px), ~1.0M parameters.
MICRO = dict(img_size=32, patch_size=4, num_classes=10)

register_zoo([
    _e("deit_tiny", dict(dim=192, num_heads=3),
       dict(params=5.72, top1=72.2, gmacs=1.26, params_source="measured (timm/official)")),
    _e("deit_small", dict(dim=384, num_heads=6),
       dict(params=22.05, top1=79.8, gmacs=4.61, params_source="measured (timm/official)")),
    _e("deit_base", dict(dim=768, num_heads=12),
       dict(params=86.57, top1=81.8, gmacs=17.58, params_source="measured (timm/official)")),
    _e("deit_micro", dict(dim=128, num_heads=4, depth=5, **MICRO),
       dict(target_params=1.0, note="mixerlab micro variant for 28-32 px; not in the paper"), 0.15),
])
