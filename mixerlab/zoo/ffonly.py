"""FF-only ViT (Melas-Kyriazi, "Do You Even Need Attention?", arXiv 2105.02723; official code
lukemelas/do-you-even-need-attention). Each block: channel FF first, then the token FF with a
token-axis LayerNorm (hidden 4T). The position table is stored on a 14x14 grid (+ class slot) for
every variant, as in the code, and bilinearly interpolated (FF-large's 7x7 grid comes from it).
Reported params are the paper/README's rounded numbers; the derived exact counts (7.676M /
61.943M / 206.364M, shared/papers/ffonly.md) are the test reference. Training used dropout 0.1
(README's ``--drop 0.1``): a training option here, the model default is 0."""
from __future__ import annotations

from ..models.config import BlockConfig, IsotropicConfig
from ..models.registry import ZooEntry, register_zoo

PAPER = "Do You Even Need Attention? (arXiv 2105.02723)"


def ffonly(dim: int, depth: int, patch: int, pos_grid=(14, 14), **kw) -> IsotropicConfig:
    return IsotropicConfig(mixers=(("token_ff", {}),) * depth, dim=dim, patch_size=patch,
                           block=BlockConfig(mlp_first=True), pos_grid=pos_grid,
                           pos_interp="bilinear", **kw)


register_zoo([
    ZooEntry("ffonly_tiny", "ffonly", ffonly(192, 12, 16), PAPER,
             dict(params=7.676, top1=61.4, gmacs=1.44, params_source="derived from the code (paper: 7.7M)")),
    ZooEntry("ffonly_base", "ffonly", ffonly(768, 12, 16), PAPER,
             dict(params=61.943, top1=74.9, gmacs=14.13, params_source="derived from the code (paper: 62M)")),
    ZooEntry("ffonly_large", "ffonly", ffonly(1024, 24, 32), PAPER,
             dict(params=206.364, top1=71.4, gmacs=10.71, params_source="derived from the code (paper: 206M)")),
    ZooEntry("ffonly_micro", "ffonly", ffonly(128, 6, 4, pos_grid=None, img_size=32, num_classes=10),
             PAPER, dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
])
