"""ViT / DeiT baseline (Dosovitskiy et al., arXiv 2010.11929; Touvron et al., DeiT, arXiv
2012.12877; facebookresearch/deit, timm ``deit.py``). Reported: DeiT paper / README; params
measured on the official/timm code (shared/papers/vit_deit.md)."""
from __future__ import annotations

from ..models.config import IsotropicConfig
from ..models.registry import ZooEntry, register_zoo

PAPER = "DeiT: Training data-efficient image transformers (arXiv 2012.12877)"


def deit(dim: int, heads: int, depth: int = 12, **kw) -> IsotropicConfig:
    mixers = (("attention", {"num_heads": heads, "qkv_bias": True}),) * depth
    return IsotropicConfig(mixers=mixers, dim=dim, **kw)


# 28-32 px images, patch 4 (8x8 tokens at 32 px), ~1.0M parameters.
MICRO = dict(img_size=32, patch_size=4, num_classes=10)

register_zoo([
    ZooEntry("deit_tiny", "deit", deit(192, 3), PAPER,
             dict(params=5.72, top1=72.2, gmacs=1.26, params_source="measured (timm/official)")),
    ZooEntry("deit_small", "deit", deit(384, 6), PAPER,
             dict(params=22.05, top1=79.8, gmacs=4.61, params_source="measured (timm/official)")),
    ZooEntry("deit_base", "deit", deit(768, 12), PAPER,
             dict(params=86.57, top1=81.8, gmacs=17.58, params_source="measured (timm/official)")),
    ZooEntry("deit_micro", "deit", deit(128, 4, depth=5, **MICRO), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant for 28-32 px; not in the paper"), param_tolerance=0.15),
])
