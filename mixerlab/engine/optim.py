"""AdamW parameter groups (the no-weight-decay rule) and the warm-up + cosine schedule.

Sources:
    * AdamW: Loshchilov & Hutter, arXiv:1711.05101.
    * No-decay rule as in DeiT / timm ``param_groups_weight_decay``: parameters with ndim <= 1,
      names ending in ``.bias`` and names listed by ``model.no_weight_decay()`` get wd 0. We also
      match a listed name as a prefix of a dotted path (``"pos_embed"`` covers
      ``"pos_embed.weight"``), so renamed sub-parameters do not silently lose the exemption.
    * Schedule: linear warm-up from ``warmup_lr`` then half-cosine down to ``min_lr``
      (SGDR, arXiv:1608.03983), evaluated **per optimiser step** (DeiT steps per epoch).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
          warmup_lr: float = 0.0, min_lr: float = 0.0) -> float:
    """Learning rate before optimiser step ``step`` (0-based). Pure function.

    Args:
        step: optimiser steps already taken.
        base_lr: peak LR, reached at ``step == warmup_steps``.
        total_steps: steps of the whole run; the cosine reaches ``min_lr`` there.
        warmup_steps: linear ramp from ``warmup_lr`` to ``base_lr`` over these steps.
        warmup_lr: LR at step 0 when there is a warm-up.
        min_lr: floor of the cosine; also the LR for any step >= ``total_steps``.
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and exempt parameters (see module docstring)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or name in skip or any(name.startswith(s + ".") for s in skip)
        (no_decay if exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters :func:`param_groups` exempts (for logs and tests)."""
    exempt = {id(p) for p in param_groups(model, 1.0)[1]["params"]}
    return [n for n, p in model.named_parameters() if id(p) in exempt]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)
