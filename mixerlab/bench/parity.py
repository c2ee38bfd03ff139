"""Numerical parity checks between timm models and their mixerlab conversions (used by
``tests/test_convert.py`` and ``scripts/check_timm_parity.py``).

timm's random init leaves many parameters at trivial values (LayerScale, norms at 1/0, biases at
0, ConViT's gates at 1), so a wrong mapping between two such tensors would go unnoticed;
``randomize_parameters`` gives every parameter distinct, kind-appropriate random values first.
Needs timm (models are built with ``pretrained=False``; nothing is downloaded).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..factory import create_from_timm
from ..convert.timm import TIMM_PAIRS, export_timm_weights, load_timm_weights


@torch.no_grad()
def randomize_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values of a plausible scale, in place.

    Norm weights ~ 1 + 0.2 n, LayerScale / residual scales / StarReLU scales ~ 0.5 + 0.2 n,
    ConViT gates ~ n, other vectors (biases) ~ 0.1 n, class token / position tables ~ 0.5 n,
    matrices and kernels ~ n / sqrt(fan_in). Names of both libraries are recognised
    (``ls1.gamma`` / ``layer_scale1.scale``, ``rs1.gamma`` / ``res_scale1.scale``).
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        n = torch.randn(p.shape, generator=g, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name in ("cls_token", "pos_embed") or name.endswith(".pos_embed"):
            v = 0.5 * n
        elif leaf == "gating_param":
            v = n
        elif leaf in ("gamma", "scale") and p.ndim == 1:
            v = 0.5 + 0.2 * n
        elif p.ndim == 1 and leaf == "weight" and "norm" in name:
            v = 1.0 + 0.2 * n
        elif p.ndim == 1:
            v = 0.1 * n
        else:
            v = n * (p[0].numel() ** -0.5)
        p.copy_(v.to(p.dtype))
    return model


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()


def _tokens(features: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, N, C) tokens of a feature tensor: timm's MetaFormer returns (B, C, H, W) maps,
    mixerlab's hierarchical models (B, H, W, C) (``channels_last``), ViTs (B, N, C) tokens."""
    if features.ndim != 4:
        return features
    return features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)


@torch.no_grad()
def check_pair(timm_name: str, *, batch: int = 1, seed: int = 0, img_size: int = 224,
               dtype: torch.dtype = torch.float32, model_args: dict | None = None) -> dict:
    """Convert a randomised timm model both ways and measure the differences on a random
    ``img_size`` x ``img_size`` input (models with a fixed input size need their native 224), with
    both models in ``dtype``. ``model_args``: architecture arguments given to both sides (timm's
    ``create_model`` keywords, which are the zoo builder's for the MetaFormer families:
    ``depths``, ``dims``), for reduced test variants.

    Returns a dict: ``timm_name``, ``mixerlab_name``, ``logits`` (max |timm - mixerlab| after
    loading timm's weights), ``features`` (same for ``forward_features``), ``export_logits``
    (randomised mixerlab weights exported into timm), ``roundtrip_exact`` (mixerlab -> timm ->
    mixerlab gives bit-identical tensors), ``seconds``.
    """
    t0 = time.perf_counter()
    args = dict(model_args or {})
    tm = randomize_parameters(_timm_model(timm_name, args), seed).eval()
    model = create_from_timm(tm.state_dict(), TIMM_PAIRS[timm_name], **args).eval()
    tm.to(dtype)
    model.to(dtype)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=torch.float64).to(dtype)
    out = dict(timm_name=timm_name, mixerlab_name=TIMM_PAIRS[timm_name], img_size=img_size,
               dtype=str(dtype).removeprefix("torch."))
    out["features"] = max_abs_diff(_tokens(tm.forward_features(x)),
                                   _tokens(model.forward_features(x), channels_last=True))
    out["logits"] = max_abs_diff(tm(x), model(x))
    # mixerlab -> timm: new random weights on the mixerlab side, exported into timm.
    randomize_parameters(model, seed + 2)
    exported = export_timm_weights(model)
    tm.load_state_dict(exported, strict=True)
    out["export_logits"] = max_abs_diff(tm(x), model(x))
    # ... -> mixerlab again: scramble, reload from timm, compare bit for bit.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomize_parameters(model, seed + 3)
    load_timm_weights(model, tm.state_dict())
    after = model.state_dict()
    out["roundtrip_exact"] = before.keys() == after.keys() and all(
        torch.equal(before[k], after[k]) for k in before)
    out["seconds"] = time.perf_counter() - t0
    return out


def _timm_model(name: str, args: dict) -> nn.Module:
    """timm's registered model, or, with architecture ``args`` (``depths``, ``dims``) for a
    MetaFormer v2 family, timm's ``MetaFormer`` class with that family's registered options (the
    registered functions fix depths and dims)."""
    import timm
    if not args:
        return timm.create_model(name, pretrained=False)
    from timm.models import metaformer as mf
    family = {
        "poolformerv2": dict(norm_layers=mf.GroupNorm1NoBias, use_mlp_head=False),
        "convformer": dict(token_mixers=mf.SepConv, norm_layers=mf.LayerNorm2dNoBias),
        "caformer": dict(token_mixers=[mf.SepConv, mf.SepConv, mf.Attention, mf.Attention],
                         norm_layers=[mf.LayerNorm2dNoBias] * 2 + [mf.LayerNormNoBias] * 2),
    }.get(name.split("_")[0])
    if family is None:
        raise ValueError(f"model_args are supported for timm's MetaFormer v2 families only, not {name}")
    return mf.MetaFormer(**family, **args)
