"""ConViT (d'Ascoli et al., ICML 2021, arXiv 2103.10697; facebookresearch/convit; timm
``convit.py``). 10 GPSA blocks then 2 MHSA blocks; the class token joins before block 10; the
position table has no class slot; width = heads x 48 (x 64 for the "+" models); no qkv bias.
Params measured on the official/timm code; top-1 from the paper."""
from __future__ import annotations

from ..models.config import IsotropicConfig
from .registry import ZooEntry, register_zoo

PAPER = "ConViT (arXiv 2103.10697)"


def convit(num_heads: int = 4, head_dim: int = 48, depth: int = 12, local_layers: int = 10, *,
           locality_strength: float = 1.0, **kw) -> IsotropicConfig:
    """``local_layers`` GPSA blocks, then MHSA up to ``depth``; width ``num_heads * head_dim``."""
    if not 0 <= local_layers <= depth:
        raise ValueError(f"local_layers={local_layers} must be in 0..depth={depth}")
    gpsa = ("gpsa", {"num_heads": num_heads, "qkv_bias": False, "locality_strength": locality_strength})
    mhsa = ("attention", {"num_heads": num_heads, "qkv_bias": False})
    mixers = (gpsa,) * local_layers + (mhsa,) * (depth - local_layers)
    return IsotropicConfig(mixers=mixers, dim=num_heads * head_dim, cls_token_at=local_layers,
                           pos_embed_cls_slot=False, **kw)


def _e(name, heads, head_dim, params, top1, gmacs):
    return ZooEntry(name, "convit", convit, dict(num_heads=heads, head_dim=head_dim), PAPER,
                    dict(params=params, top1=top1, gmacs=gmacs, params_source="measured (timm/official)"))


register_zoo([
    _e("convit_tiny", 4, 48, 5.71, 73.1, 1.26),
    _e("convit_tiny_plus", 4, 64, 9.97, 76.7, 2.14),
    _e("convit_small", 9, 48, 27.78, 81.3, 5.76),
    _e("convit_small_plus", 9, 64, 48.98, 82.2, 10.02),
    _e("convit_base", 16, 48, 86.54, 82.4, 17.52),
    _e("convit_base_plus", 16, 64, 153.1, 82.5, 30.77),
    ZooEntry("convit_micro", "convit", convit,
             dict(num_heads=4, head_dim=32, depth=5, local_layers=4, img_size=32, patch_size=4,
                  num_classes=10), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant (4 GPSA + 1 MHSA); not in the paper"),
             param_tolerance=0.15),
])
