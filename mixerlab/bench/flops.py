"""Analytic MACs/FLOPs per token mixer, and a per-model breakdown checked against the counter.

Each token mixer owns its formula: ``TokenMixer.cost(num_tokens, grid, dim=, batch=)`` returns a
``MixerCost`` (per image, N tokens of width C; the formulas and their papers are in each mixer's
``cost`` docstring). MACs = multiply-accumulates of matmuls and convolutions, what
``torch.utils.flop_counter.FlopCounterMode`` counts as FLOPs / 2; ``extra_flops`` are counted
operations the counter does not see (pooling's additions). A mixer without a formula raises
``NoCostFormula``.

FLOPs = 2 MACs + extra_flops. Softmax, norms, GELU and elementwise ops are not counted (as in
fvcore, timm and the counter), so every number here is comparable with timm's published GMACs.
"""
from __future__ import annotations

import copy
from dataclasses import asdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..mixers.base import MixerCost, TokenMixer, explicit_attention

Cost = MixerCost  # the name this module used before the mixers owned their cost


def mixer_cost(mixer: TokenMixer, *, tokens: int, dim: int, grid: tuple[int, int], num_prefix: int = 0,
               batch: int = 1) -> MixerCost:
    """Analytic cost of ``mixer`` on one image of ``tokens`` tokens (prefix included), width ``dim``.

    Args:
        grid: the patch grid (H, W) of the grid tokens.
        num_prefix: prefix (class) tokens in the sequence (``tokens - H * W``; informational).
        batch: images per forward (for work a mixer does once per forward).
    """
    return mixer.cost(tokens, tuple(grid), dim=dim, batch=batch)


def mixer_shapes(model: nn.Module, input_size) -> dict[str, dict]:
    """Mixer name -> tokens, dim, grid, prefix, from one forward on the meta device."""
    meta = copy.deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" else model
    meta.eval()
    shapes, handles = {}, []
    for name, m in meta.named_modules():
        if isinstance(m, TokenMixer):
            def hook(mod, args, name=name):
                x, ctx = args[0], args[1]
                shapes[name] = dict(tokens=x.shape[1], dim=x.shape[2], grid=tuple(ctx.grid),
                                    num_prefix=ctx.num_prefix_tokens)
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(1, *input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return shapes


def counted_macs(model: nn.Module, input_size, *, batch: int = 1) -> tuple[int, dict[str, int]]:
    """(total MACs per image, per-module MACs) from ``FlopCounterMode`` on the explicit paths
    (a meta-device copy: shapes only). Module names are the model's own (no class prefix)."""
    meta = copy.deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" else model
    meta.eval()
    x = torch.empty(batch, *input_size, device="meta")
    with explicit_attention(meta), FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    root = type(meta).__name__
    per = {}
    for k, ops in counter.get_flop_counts().items():
        if k.startswith(root + "."):
            per[k[len(root) + 1:]] = sum(ops.values()) // (2 * batch)
    return counter.get_total_flops() // (2 * batch), per


def model_breakdown(model: nn.Module, input_size=None) -> dict:
    """Params, MACs and FLOPs of one image, in total and per token mixer.

    Layers are grouped by mixer name, split by the ``mode`` of ``describe()`` where a mixer has
    one (kind ``<name>_<mode>``).

    Returns a record: ``params``, ``macs`` (counter, explicit attention), ``flops`` (2 macs +
    pooling additions), ``mixer_macs`` / ``mixer_extra_flops`` (analytic, all token mixers),
    ``mixer_share`` (token-mixer share of the MACs), ``by_mixer`` (mixer kind -> macs, flops,
    layers) and ``layers`` (per mixer: analytic and counted MACs).
    """
    from .complexity import count_params
    if input_size is None:
        input_size = tuple(model.pretrained_cfg["input_size"])
    # Count first: a mixer may cache input-independent work in eval mode without autograd (see its
    # cost()), so on a model (meta: not copied) that has already run a forward the counter would
    # miss that term.
    total, per = counted_macs(model, input_size)
    shapes = mixer_shapes(model, input_size)
    layers, by_kind, mix = [], {}, MixerCost()
    for name, m in model.named_modules():
        if not isinstance(m, TokenMixer) or name not in shapes:
            continue
        cost = mixer_cost(m, **shapes[name])
        mode = m.describe().get("mode")
        kind = m.mixer_name + (f"_{mode}" if mode else "")
        layers.append(dict(name=name, mixer=kind, tokens=shapes[name]["tokens"], dim=shapes[name]["dim"],
                           macs=cost.macs, extra_flops=cost.extra_flops, counted_macs=per.get(name, 0)))
        k = by_kind.setdefault(kind, dict(layers=0, macs=0, flops=0))
        k["layers"] += 1
        k["macs"] += cost.macs
        k["flops"] += cost.flops
        mix = mix + cost
    return dict(params=count_params(model), input_size=list(input_size), macs=total,
                flops=2 * total + mix.extra_flops, mixer_macs=mix.macs, mixer_extra_flops=mix.extra_flops,
                mixer_share=(mix.macs / total) if total else 0.0, by_mixer=by_kind, layers=layers)


__all__ = ["Cost", "MixerCost", "counted_macs", "mixer_cost", "model_breakdown", "asdict"]
