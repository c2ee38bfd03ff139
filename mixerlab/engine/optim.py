"""AdamW parameter groups (the no-weight-decay rule) and the warm-up + cosine schedule.

Sources:
    * AdamW: Loshchilov & Hutter, arXiv:1711.05101.
    * No-decay rule: timm's ``param_groups_weight_decay`` (DeiT's): parameters with ndim <= 1,
      names ending in ``.bias`` and names listed by ``model.no_weight_decay()`` get wd 0. We also
      match a listed name as a prefix of a dotted path (``"pos_embed"`` covers
      ``"pos_embed.weight"``), so renamed sub-parameters do not silently lose the exemption.
    * ``lr_at`` equals timm's ``CosineLRScheduler`` (warm-up prefix, ``t_in_epochs=False``) to
      ~3e-19 (``tests/test_train_optim.py``); kept as a pure function of the step so that a resumed
      run needs no scheduler state.
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
    """Two AdamW groups, decayed weights first, then the exempt parameters: timm's
    ``param_groups_weight_decay`` with ``model.no_weight_decay()`` widened to the dotted paths under
    each listed name (see module docstring). The order [decay, no decay] is that of the
    optimiser states in existing checkpoints."""
    from timm.optim import param_groups_weight_decay
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = [n for n, _ in model.named_parameters()]
    skip |= {n for n in names if any(n.startswith(s + ".") for s in skip)}
    # timm's split, asked with decay 1.0 so that its two groups are told apart by their value
    split = {g["weight_decay"]: g["params"] for g in param_groups_weight_decay(model, 1.0, no_weight_decay_list=skip)}
    return [{"params": split.get(1.0, []), "weight_decay": weight_decay},
            {"params": split.get(0.0, []), "weight_decay": 0.0}]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters :func:`param_groups` exempts (for logs and tests)."""
    exempt = {id(p) for p in param_groups(model, 1.0)[1]["params"]}
    return [n for n, p in model.named_parameters() if id(p) in exempt]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused`` (None: when every parameter is on a CUDA device)
    selects PyTorch's fused CUDA kernel, one launch for the whole update instead of a few per
    parameter group, the same update up to rounding; on the CPU the default (foreach) kernel is
    kept, so CPU results do not change."""
    params = list(model.parameters())
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             **({"fused": True} if fused else {}))
