"""Parameter and MAC counts.

``count_macs`` runs one forward of a copy of the model on the ``meta`` device (shapes only, no
arithmetic, so it is fast even for 200M-parameter models) under
``torch.utils.flop_counter.FlopCounterMode``, with every attention mixer forced onto its explicit
path so the attention matmuls are counted (the counter does not see CPU fused attention). MACs =
FLOPs / 2. The counter only counts matmuls and convolutions: pooling, norms and softmax count 0.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..mixers.base import explicit_attention


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> int:
    """Multiply-accumulates of one forward on one image of ``input_size`` (C, H, W).

    Defaults to the model's native ``pretrained_cfg['input_size']``.
    """
    if input_size is None:
        input_size = tuple(model.pretrained_cfg["input_size"])
    meta = copy.deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" else model
    meta.eval()
    x = torch.empty(1, *input_size, device="meta")
    with explicit_attention(meta), FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() // 2
