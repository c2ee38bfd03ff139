"""Batch-level Mixup / CutMix with label smoothing folded into the soft targets.

Mixup: Zhang et al., arXiv:1710.09412. CutMix: Yun et al., arXiv:1905.04899. We use
``timm.data.Mixup`` (DeiT: mixup 0.8, cutmix 1.0, prob 1.0, switch prob 0.5, mode 'batch').
It draws its parameters from numpy's global RNG, which the checkpoint saves and restores.
"""
from __future__ import annotations

from timm.data import Mixup


def build_mixup(
    *,
    mixup: float,
    cutmix: float,
    prob: float,
    switch_prob: float,
    label_smoothing: float,
    num_classes: int,
) -> Mixup | None:
    """A callable ``(x, y) -> (x_mixed, y_soft)`` with ``y_soft`` (B, num_classes), or None when off."""
    if (mixup <= 0 and cutmix <= 0) or prob <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        switch_prob=switch_prob,
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
