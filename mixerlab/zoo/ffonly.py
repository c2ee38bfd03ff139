"""FF-only ViT (Melas-Kyriazi, "Do You Even Need Attention?", arXiv 2105.02723; official code
lukemelas/do-you-even-need-attention). Each block: channel FF first, then the token FF with a
token-axis LayerNorm (hidden 4T). The position table is stored on a 14x14 grid (+ class slot) for
every variant, as in the code, and bilinearly interpolated (FF-large's 7x7 grid comes from it).
Reported params are the paper/README's rounded numbers; the exact counts derived from the code
(7.676M / 61.943M / 206.364M) are the test reference. Training used dropout 0.1 (README's
``--drop 0.1``): a training option here, the model default is 0."""
from __future__ import annotations

from ..models.config import BlockConfig, IsotropicConfig
from .registry import ZooEntry, register_zoo

PAPER = "Do You Even Need Attention? (arXiv 2105.02723)"


def ffonly(dim: int = 192, depth: int = 12, patch_size: int = 16, *, mlp_ratio: float = 4.0,
           pos_grid=(14, 14), **kw) -> IsotropicConfig:
    """``depth`` blocks of channel FF then token FF at width ``dim``."""
    return IsotropicConfig(mixers=(("token_ff", {}),) * depth, dim=dim, patch_size=patch_size,
                           block=BlockConfig(mlp_ratio=mlp_ratio, mlp_first=True), pos_grid=pos_grid,
                           pos_interp="bilinear", **kw)


def _e(name, args, params, top1, gmacs, paper_params):
    return ZooEntry(name, "ffonly", ffonly, args, PAPER,
                    dict(params=params, top1=top1, gmacs=gmacs,
                         params_source=f"derived from the code (paper: {paper_params})"))


register_zoo([
    _e("ffonly_tiny", dict(dim=192, depth=12, patch_size=16), 7.676, 61.4, 1.44, "7.7M"),
    _e("ffonly_base", dict(dim=768, depth=12, patch_size=16), 61.943, 74.9, 14.13, "62M"),
    _e("ffonly_large", dict(dim=1024, depth=24, patch_size=32), 206.364, 71.4, 10.71, "206M"),
    ZooEntry("ffonly_micro", "ffonly", ffonly,
             dict(dim=128, depth=6, patch_size=4, pos_grid=None, img_size=32, num_classes=10), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
])
