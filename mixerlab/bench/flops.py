"""Analytic MACs/FLOPs per token mixer, and a per-model breakdown checked against the counter.

Per image, with N tokens of width C, H heads (formulas of shared/ECOSYSTEM.md section 5 and the
papers; MACs = multiply-accumulates of matmuls and convolutions, what
``torch.utils.flop_counter.FlopCounterMode`` counts as FLOPs / 2):

* attention (ViT/DeiT, arXiv 2010.11929 / 2012.12877): qkv 3NC^2 + q k^T N^2 C + A v N^2 C +
  proj NC^2 = 4NC^2 + 2N^2 C.
* PVT spatial-reduction attention (arXiv 2102.12122), ratio R, N' = N / R^2 keys: q NC^2,
  reduction conv N' C^2 R^2 = NC^2, kv 2N'C^2, q k^T and A v 2NN'C, proj NC^2.
* GPSA (ConViT, arXiv 2103.10697): attention + 3HN^2 for ``pos_proj`` on the (N, N, 3) relative
  positions; that term is computed once per forward, not per image (so per image it is 3HN^2 / B),
  and cached across forwards in eval mode without autograd (then it is 0 after the first).
* re-attention (DeepViT, arXiv 2103.11886): attention + H^2 N^2 (the head-mixing matrix).
* less attention (LaViT, arXiv 2406.00427): a VA layer is attention (+ N'^2 + N N' for the
  attention residual's two f x f filters, N' = N f^2 tokens of the previous stage); an LA layer
  has no q/k: v NC^2 + Theta and Psi 2HN^3 + A v N^2 C + proj NC^2.
* token feed-forward (FF-only, arXiv 2105.02723): 2 T h C with h = int(r T) (8 T^2 C at r = 4).
* random mixing (arXiv 2210.13452): N^2 C; identity: 0.
* pooling (PoolFormer, arXiv 2111.11418): 0 MACs; k^2 N C additions (approximately: the window
  sums, the divide and the "- x" are k^2 + 1 operations per element at interior positions and
  fewer at the border) reported as ``extra_flops``: the counter sees pooling as 0.

FLOPs = 2 MACs + extra_flops. Softmax, norms, GELU and elementwise ops are not counted (as in
fvcore, timm and the counter), so every number here is comparable with timm's published GMACs.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..mixers.base import TokenMixer, explicit_attention


@dataclass
class Cost:
    """Arithmetic of one forward on one image."""

    macs: int = 0  # multiply-accumulates of matmuls / convs (= counter FLOPs / 2)
    extra_flops: int = 0  # counted non-MAC operations (pooling additions)

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.extra_flops

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.extra_flops + other.extra_flops)


def mixer_cost(mixer: TokenMixer, *, tokens: int, dim: int, grid: tuple[int, int], num_prefix: int = 0,
               batch: int = 1) -> Cost:
    """Analytic cost of ``mixer`` on one image of ``tokens`` tokens (prefix included), width ``dim``.

    Args:
        grid: the patch grid (H, W) of the grid tokens.
        num_prefix: prefix (class) tokens in the sequence.
        batch: images per forward; only GPSA's per-forward positional term depends on it.
    """
    name = getattr(mixer, "mixer_name", type(mixer).__name__)
    n, c = tokens, dim
    ng = grid[0] * grid[1]  # grid tokens
    if name == "attention":
        r = getattr(mixer, "sr_ratio", 1)
        if r == 1:
            return Cost(4 * n * c * c + 2 * n * n * c)
        nr = (grid[0] // r) * (grid[1] // r)
        return Cost(n * c * c + nr * c * c * r * r + 2 * nr * c * c + 2 * n * nr * c + n * c * c)
    if name == "gpsa":
        h = mixer.num_heads
        return Cost(4 * n * c * c + 2 * n * n * c + (3 * h * n * n) // batch)
    if name == "reattention":
        h = mixer.num_heads
        return Cost(4 * n * c * c + 2 * n * n * c + h * h * n * n)
    if name == "less_attention":
        h = mixer.num_heads
        if mixer.mode == "la":
            return Cost(2 * n * c * c + n * n * c + 2 * h * n ** 3)
        extra = 0
        if mixer.residual is not None:
            f = mixer.residual.factor
            npv = n * f * f
            extra = npv * npv + n * npv
        return Cost(4 * n * c * c + 2 * n * n * c + extra)
    if name == "token_ff":
        hidden = mixer.mlp.fc1.out_features
        return Cost(2 * n * hidden * c)
    if name == "random":
        return Cost(ng * ng * c)
    if name == "pooling":
        return Cost(0, mixer.pool_size ** 2 * ng * c)
    if name == "identity":
        return Cost(0)
    raise ValueError(f"no analytic cost formula for token mixer {name!r}")


def _shapes(model: nn.Module, input_size) -> dict[str, dict]:
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

    Returns a record: ``params``, ``macs`` (counter, explicit attention), ``flops`` (2 macs +
    pooling additions), ``mixer_macs`` / ``mixer_extra_flops`` (analytic, all token mixers),
    ``mixer_share`` (token-mixer share of the MACs), ``by_mixer`` (mixer kind -> macs, flops,
    layers) and ``layers`` (per mixer: analytic and counted MACs).
    """
    from .complexity import count_params
    if input_size is None:
        input_size = tuple(model.pretrained_cfg["input_size"])
    # Count first: GPSA caches its positional map in eval mode without autograd, so on a model
    # (meta: not copied) that has already run a forward the counter would miss that term.
    total, per = counted_macs(model, input_size)
    shapes = _shapes(model, input_size)
    layers, by_kind, mix = [], {}, Cost()
    for name, m in model.named_modules():
        if not isinstance(m, TokenMixer) or name not in shapes:
            continue
        cost = mixer_cost(m, **shapes[name])
        kind = m.mixer_name + (f"_{m.mode}" if getattr(m, "mode", None) else "")
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


__all__ = ["Cost", "counted_macs", "mixer_cost", "model_breakdown", "asdict"]
