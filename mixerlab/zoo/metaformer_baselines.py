"""MetaFormer Baselines for Vision (Yu et al., arXiv 2210.13452; official code sail-sg/metaformer
``metaformer_baselines.py``; timm ``metaformer.py``): IdentityFormer, RandFormer, PoolFormerV2,
ConvFormer and CAFormer, the "v2" MetaFormer backbone with five token mixers.

The v2 backbone differs from PoolFormer (v1, ``poolformer.py``) in its options, not its classes:
a bias-free channel LayerNorm (eps 1e-6) after the stem conv and before each downsampling conv;
block norms without bias, eps 1e-6 (GroupNorm(1) for IdentityFormer / RandFormer / PoolFormerV2,
the channel LayerNorm for ConvFormer / CAFormer); no LayerScale but a learnable residual scale
(init 1) in stages 3-4; a bias-free channel MLP with StarReLU; pooling, then LayerNorm (eps 1e-6),
then the head (a Linear, or ConvFormer / CAFormer's MLP head); every conv and linear
trunc-normal(0.02). RandFormer's N x N matrices are frozen parameters (counted, as the paper's
"11.9 + 0.2 M"); CAFormer's attention has 32 channels per head and no qkv / projection bias.

Parameter counts equal the official code's: for poolformerv2 / convformer / caformer those of
timm's registered models (which load the official weights), for IdentityFormer those of
PoolFormerV2 (pooling has no parameters), for RandFormer those plus the frozen matrices. Top-1 is
the paper's ImageNet-1k 224 px number (sail-sg/metaformer README; RandFormer from the paper, the
README's RandFormer column repeats IdentityFormer's). GMACs are the README's.

The official MLP head normalises with ``nn.LayerNorm`` (eps 1e-5); timm's port uses eps 1e-6
(``head_hidden_norm_eps``; loading timm weights switches it, see ``convert/timm.py``).
"""
from __future__ import annotations

from ..models.config import BlockConfig, HierarchicalConfig, StageConfig
from .registry import ZooEntry, register_zoo

PAPER = "MetaFormer Baselines for Vision (arXiv 2210.13452)"
S_DIMS, M_DIMS = (64, 128, 320, 512), (96, 192, 384, 768)
C_M_DIMS, C_B_DIMS = (96, 192, 384, 576), (128, 256, 512, 768)
RANDOM = ("random", {"as_parameter": True})
ATTN = ("attention", {"head_dim": 32, "qkv_bias": False, "proj_bias": False})


def metaformer_v2(depths=(2, 2, 6, 2), dims=S_DIMS, mixers=("pooling",) * 4, *,
                  norm: str = "groupnorm1_nobias", head: str = "linear",
                  res_scale=(None, None, 1.0, 1.0), mlp_ratio: float = 4.0,
                  **kw) -> HierarchicalConfig:
    """The v2 backbone. ``mixers``: one mixer spec per stage (a name or (name, kwargs));
    ``norm``: the block norm; ``head``: ``linear`` | ``mlp``; ``res_scale``: residual-scale init
    per stage (None = none)."""
    lengths = {"depths": len(depths), "dims": len(dims), "mixers": len(mixers),
               "res_scale": len(res_scale)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-stage arguments must have one entry per stage, got lengths {lengths}")
    stages = tuple(
        StageConfig(dim=d, mixers=(tuple(m) if not isinstance(m, str) else (m, {}),) * n,
                    mlp_ratio=mlp_ratio, res_scale_init=r)
        for n, d, m, r in zip(depths, dims, mixers, res_scale))
    return HierarchicalConfig(
        stages=stages, block=BlockConfig(norm=norm, mlp_act="starrelu", mlp_bias=False),
        embed_norm="layernorm_nobias", downsample_norm_first=True, head_norm="layernorm",
        head_norm_first=False, head=head, conv_init="trunc_normal", **kw)


def _frozen_random(depths) -> int:
    """Frozen random-matrix entries at 224 px: 14x14 tokens in stage 3, 7x7 in stage 4."""
    return depths[2] * 196 ** 2 + depths[3] * 49 ** 2


# (size, depths, dims, trainable params of PoolFormerV2 (timm), GMACs (README))
_POOL_SIZES = [("s12", (2, 2, 6, 2), S_DIMS, 11_891_712, 1.8),
               ("s24", (4, 4, 12, 4), S_DIMS, 21_341_464, 3.4),
               ("s36", (6, 6, 18, 6), S_DIMS, 30_791_216, 5.0),
               ("m36", (6, 6, 18, 6), M_DIMS, 56_077_168, 8.8),
               ("m48", (8, 8, 24, 8), M_DIMS, 73_346_056, 11.5)]
_TOP1 = {"identityformer": (74.6, 78.2, 79.3, 80.0, 80.4),
         "randformer": (76.6, 78.2, 79.5, 81.2, 81.4),
         "poolformerv2": (78.0, 80.7, 81.6, 82.2, 82.6)}
_RAND_GMACS = (1.9, 3.5, 5.2, 9.0, 11.9)
# (size, depths, dims, convformer params, GMACs, top-1, caformer params, GMACs, top-1)
_CONV_SIZES = [("s18", (3, 3, 9, 3), S_DIMS, 26_774_448, 3.9, 83.0, 26_341_656, 4.1, 83.6),
               ("s36", (3, 12, 18, 3), S_DIMS, 40_012_152, 7.6, 84.1, 39_297_102, 8.0, 84.5),
               ("m36", (3, 12, 18, 3), C_M_DIMS, 57_051_640, 12.8, 84.5, 56_204_878, 13.2, 85.2),
               ("b36", (3, 12, 18, 3), C_B_DIMS, 99_882_616, 22.6, 84.8, 98_753_614, 23.2, 85.5)]


def _entries():
    out = []
    for i, (size, depths, dims, params, gmacs) in enumerate(_POOL_SIZES):
        base = dict(depths=depths, dims=dims)
        out.append(ZooEntry(
            f"identityformer_{size}", "identityformer", metaformer_v2,
            dict(base, mixers=("identity",) * 4), PAPER,
            dict(params=round(params / 1e6, 3), params_exact=params, top1=_TOP1["identityformer"][i],
                 gmacs=gmacs, params_source="official: = PoolFormerV2 (pooling has no parameters)")))
        extra = _frozen_random(depths)
        out.append(ZooEntry(
            f"randformer_{size}", "randformer", metaformer_v2,
            dict(base, mixers=("identity", "identity", RANDOM, RANDOM)), PAPER,
            dict(params=round((params + extra) / 1e6, 3), params_exact=params + extra, frozen_params=extra,
                 top1=_TOP1["randformer"][i], gmacs=_RAND_GMACS[i],
                 params_source="official: PoolFormerV2's + the frozen random matrices")))
        out.append(ZooEntry(
            f"poolformerv2_{size}", "poolformerv2", metaformer_v2, dict(base), PAPER,
            dict(params=round(params / 1e6, 3), params_exact=params, top1=_TOP1["poolformerv2"][i],
                 gmacs=gmacs, params_source="official (timm poolformerv2, same modules)")))
    for size, depths, dims, cp, cg, ct, ap, ag, at in _CONV_SIZES:
        base = dict(depths=depths, dims=dims, norm="layernorm_nobias", head="mlp")
        out.append(ZooEntry(
            f"convformer_{size}", "convformer", metaformer_v2, dict(base, mixers=("sepconv",) * 4),
            PAPER, dict(params=round(cp / 1e6, 3), params_exact=cp, top1=ct, gmacs=cg,
                        params_source="official (timm convformer, same modules)")))
        out.append(ZooEntry(
            f"caformer_{size}", "caformer", metaformer_v2,
            dict(base, mixers=("sepconv", "sepconv", ATTN, ATTN)), PAPER,
            dict(params=round(ap / 1e6, 3), params_exact=ap, top1=at, gmacs=ag,
                 params_source="official (timm caformer, same modules)")))
    # mixerlab's small v2 backbone (PoolFormerV2 at the *_micro scale of the v1 models: the same
    # depths, widths and stem); compare's E4 varies its ``mixers`` for the v2 row set
    out.append(ZooEntry(
        "poolformerv2_micro", "poolformerv2", metaformer_v2,
        dict(depths=(2, 2, 4, 2), dims=(24, 48, 96, 176), img_size=32, num_classes=10, stem=(3, 2, 1)),
        PAPER, dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15))
    return out


register_zoo(_entries())
