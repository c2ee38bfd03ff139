"""BatchNorm statistics recalibration before evaluation (DeepViT's official recipe).

DeepViT (Zhou et al., arXiv:2103.11886; zhoudaquan/dvit_repo ``utils/misc.py: bn_calibration``)
resets every BatchNorm, sets ``momentum=None`` (a cumulative average instead of an EMA), runs up
to 50 batches of un-augmented training images with the model in train mode, then validates.
We do the same for any ``torch.nn.modules.batchnorm._BatchNorm`` (re-attention BNs, conv stems).
Differences: the previous momentum is restored afterwards (the official code leaves ``None``;
it only affects running statistics, which are recalibrated before every evaluation anyway),
and under DDP the per-rank statistics are averaged so that every rank evaluates the same model.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm modules with running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, loader, *, device: torch.device, max_batches: int,
                        autocast=contextlib.nullcontext, channels_last: bool = False) -> int:
    """Recompute every BatchNorm's running statistics on ``loader``; returns the batches used."""
    bns = batchnorms(model)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    used = 0
    for x, _ in loader:
        if used >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            model(x)
        used += 1
    model.train(was_training)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for m in bns:  # equal batch counts per rank: the mean of the means is the global mean
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf /= dist.get_world_size()
    return used
