"""DeepViT and its ViT depth study (Zhou et al., arXiv 2103.11886; zhoudaquan/dvit_repo).
Depth study: width 384, 12 heads (d = 32), MLP ratio 3, conv16 patch embedding, qkv bias;
``vit_depthN`` uses plain attention, ``deepvit_depthN`` re-attention in every block. DeepViT-S/L:
widths 396/420, re-attention in the last 5/12 blocks only, CNN stem, ``scale_adjustment`` 0.5
(branches x2), DeepViT-S with ``transform_scale``. Normalisation mean = std = 0.5 (the code's
data config). Params measured on the official code (shared/papers/deepvit.md); for the ViT
baselines the README's 24.5/36.3/48.1M (our count is the DeepViT count minus the 180 re-attention
parameters per block). DeepViT-S/L top-1 from the README's "optimised" table (82.3/83.1); the code
measures 27.31M/58.88M while the paper says 27M/55M (we follow the code)."""
from __future__ import annotations

from ..models.config import BlockConfig, IsotropicConfig
from ..models.registry import ZooEntry, register_zoo

PAPER = "DeepViT: Towards Deeper Vision Transformer (arXiv 2103.11886)"
HALF = (0.5, 0.5, 0.5)


def deepvit(depth: int, *, dim: int = 384, heads: int = 12, reattn_last: int | None = None,
            transform_scale: bool = False, **kw) -> IsotropicConfig:
    """``reattn_last`` = number of final blocks with re-attention (None: all, 0: plain ViT)."""
    n_re = depth if reattn_last is None else reattn_last
    attn = ("attention", {"num_heads": heads, "qkv_bias": True})
    re = ("reattention", {"num_heads": heads, "qkv_bias": True, "transform_scale": transform_scale})
    mixers = (attn,) * (depth - n_re) + (re,) * n_re
    kw.setdefault("block", BlockConfig(mlp_ratio=3.0))
    return IsotropicConfig(mixers=mixers, dim=dim, mean=HALF, std=HALF, **kw)


MICRO = dict(dim=96, heads=6, img_size=32, patch_size=4, num_classes=10)

register_zoo([
    ZooEntry("vit_depth16", "vit", deepvit(16, reattn_last=0), PAPER,
             dict(params=24.5, top1=78.88, similar_blocks=5, params_source="README (rounded)")),
    ZooEntry("vit_depth24", "vit", deepvit(24, reattn_last=0), PAPER,
             dict(params=36.3, top1=79.35, similar_blocks=11, params_source="README (rounded)")),
    ZooEntry("vit_depth32", "vit", deepvit(32, reattn_last=0), PAPER,
             dict(params=48.1, top1=79.27, similar_blocks=15, params_source="README (rounded)")),
    ZooEntry("deepvit_depth16", "deepvit", deepvit(16), PAPER,
             dict(params=24.43, top1=79.10, gmacs=5.30, similar_blocks=0, params_source="measured (official)")),
    ZooEntry("deepvit_depth24", "deepvit", deepvit(24), PAPER,
             dict(params=36.26, top1=79.99, gmacs=7.92, similar_blocks=0, params_source="measured (official)")),
    ZooEntry("deepvit_depth32", "deepvit", deepvit(32), PAPER,
             dict(params=48.10, top1=80.90, gmacs=10.54, similar_blocks=0, params_source="measured (official)")),
    ZooEntry("deepvit_s", "deepvit",
             deepvit(16, dim=396, reattn_last=5, transform_scale=True, stem="cnn",
                     block=BlockConfig(mlp_ratio=3.0, scale_adjustment=0.5)), PAPER,
             dict(params=27.31, top1=82.3, gmacs=6.38, params_source="measured (official code; paper 27M)")),
    ZooEntry("deepvit_l", "deepvit",
             deepvit(32, dim=420, reattn_last=12, stem="cnn",
                     block=BlockConfig(mlp_ratio=3.0, scale_adjustment=0.5)), PAPER,
             dict(params=58.88, top1=83.1, gmacs=13.19, params_source="measured (official code; paper 55M)")),
    ZooEntry("deepvit_micro", "deepvit", deepvit(10, **MICRO), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant (deep and narrow: 10 blocks, width 96); not in the paper"), param_tolerance=0.15),
])
