"""PoolFormer / MetaFormer (Yu et al., CVPR 2022, arXiv 2111.11418; sail-sg/poolformer; timm
``metaformer.py``) and the identity / random mixer baselines (MetaFormer Baselines, arXiv
2210.13452). Four stages, stem conv 7/4 pad 2, downsampling conv 3/2 pad 1, GroupNorm(1), LayerScale
(1e-5 for S12/S24, 1e-6 deeper), head: GroupNorm on the map, mean, Linear (official; timm pools
first, ``head_norm_first=False``). Params measured on the official code.

Decisions: ``poolformer_v1_identity_s12`` (formerly ``identityformer_s12``) is the v1 paper's
identity-mixer ablation (official ``metaformer_id_s12``: 74.3; released checkpoint 74.336).
``poolformer_v1_random_s12`` (formerly ``randformer_s12``) puts the Baselines paper's placement
(identity in stages 1-2, frozen random mixing in 3-4) inside the same v1 backbone, so that every
mixer is compared in one backbone; it was never trained by the authors, so it reports no top-1.
Random matrices are frozen buffers, not parameters. The names ``identityformer_*`` /
``randformer_*`` belong to the v2 baselines of sail-sg/metaformer (``metaformer_baselines.py``).
``identityformer_micro`` is mixerlab's small v1 identity model (not an official name).
``poolformer_hybrid_s12`` is ``metaformer_ppaa_s12_224``: pool, pool, attention, attention with
channel LayerNorm (eps 1e-5) everywhere, 32 channels per head, no qkv bias, and a zero-initialised
position embedding added at the start of stage 3.
"""
from __future__ import annotations

from ..models.config import BlockConfig, HierarchicalConfig, StageConfig
from .registry import ZooEntry, register_zoo

PAPER = "MetaFormer Is Actually What You Need for Vision (arXiv 2111.11418)"
S_DIMS, M_DIMS = (64, 128, 320, 512), (96, 192, 384, 768)


def metaformer(depths=(2, 2, 6, 2), dims=S_DIMS, mixers=("pooling",) * 4, *, ls: float = 1e-5,
               norm: str = "groupnorm1", pos_embed=(None,) * 4, mlp_ratio: float = 4.0,
               **kw) -> HierarchicalConfig:
    """``mixers``: one mixer spec per stage (a name or (name, kwargs)); ``ls``: LayerScale init."""
    lengths = {"depths": len(depths), "dims": len(dims), "mixers": len(mixers), "pos_embed": len(pos_embed)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-stage arguments must have one entry per stage, got lengths {lengths}")
    stages = tuple(
        StageConfig(dim=d, mixers=(tuple(m) if not isinstance(m, str) else (m, {}),) * n,
                    mlp_ratio=mlp_ratio, pos_embed=p)
        for n, d, m, p in zip(depths, dims, mixers, pos_embed))
    return HierarchicalConfig(stages=stages, block=BlockConfig(norm=norm, layer_scale_init=ls),
                              head_norm=norm, **kw)


def _pf(name, depths, dims, ls, params, top1, gmacs):
    return ZooEntry(name, "poolformer", metaformer, dict(depths=depths, dims=dims, ls=ls), PAPER,
                    dict(params=params, top1=top1, gmacs=gmacs, params_source="measured (official)"))


ATTN32 = ("attention", {"head_dim": 32, "qkv_bias": False})
# 28-32 px: stem 3/2 pad 1 (16x16 tokens at 32 px), then 8, 4, 2.
MICRO = dict(img_size=32, num_classes=10, stem=(3, 2, 1))
MICRO_DEPTHS, MICRO_DIMS = (2, 2, 4, 2), (24, 48, 96, 176)

register_zoo([
    _pf("poolformer_s12", (2, 2, 6, 2), S_DIMS, 1e-5, 11.915, 77.2, 1.823),
    _pf("poolformer_s24", (4, 4, 12, 4), S_DIMS, 1e-5, 21.389, 80.3, 3.413),
    _pf("poolformer_s36", (6, 6, 18, 6), S_DIMS, 1e-6, 30.863, 81.4, 5.003),
    _pf("poolformer_m36", (6, 6, 18, 6), M_DIMS, 1e-6, 56.173, 82.1, 8.802),
    _pf("poolformer_m48", (8, 8, 24, 8), M_DIMS, 1e-6, 73.473, 82.5, 11.591),
    ZooEntry("poolformer_v1_identity_s12", "identityformer", metaformer,
             dict(depths=(2, 2, 6, 2), dims=S_DIMS, mixers=("identity",) * 4), PAPER,
             dict(params=11.915, top1=74.3, gmacs=1.823, params_source="measured (official metaformer_id_s12)",
                  note="v1 backbone; formerly identityformer_s12")),
    ZooEntry("poolformer_v1_random_s12", "randformer", metaformer,
             dict(depths=(2, 2, 6, 2), dims=S_DIMS, mixers=("identity", "identity", "random", "random")),
             PAPER,
             dict(params=11.915, params_source="derived: the S12 backbone (random matrices are "
                  "frozen buffers)", note="v1 backbone, not trained by the authors; formerly "
                  "randformer_s12 (the v2 randformer_s12 reports 76.6)")),
    ZooEntry("poolformer_hybrid_s12", "poolformer", metaformer,
             dict(depths=(2, 2, 6, 2), dims=S_DIMS, mixers=("pooling", "pooling", ATTN32, ATTN32),
                  norm="layernorm_eps5", pos_embed=(None, None, "zeros", None)), PAPER,
             dict(params=16.54, top1=81.0, gmacs=2.55, params_source="measured (official metaformer_ppaa_s12_224)")),
    ZooEntry("poolformer_micro", "poolformer", metaformer,
             dict(depths=MICRO_DEPTHS, dims=MICRO_DIMS, **MICRO), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
    ZooEntry("identityformer_micro", "identityformer", metaformer,
             dict(depths=MICRO_DEPTHS, dims=MICRO_DIMS, mixers=("identity",) * 4, **MICRO), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
])
