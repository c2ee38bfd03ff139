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
from .timm import TIMM_PAIRS, export_timm_weights, load_timm_weights


@torch.no_grad()
def randomize_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values of a plausible scale, in place.

    Norm weights ~ 1 + 0.2 n, LayerScale ~ 0.5 + 0.2 n, ConViT gates ~ n, other vectors (biases)
    ~ 0.1 n, class token / position tables ~ 0.5 n, matrices and kernels ~ n / sqrt(fan_in).
    Names of both libraries are recognised (``ls1.gamma`` / ``layer_scale1.scale``).
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
    return (a.float() - b.float()).abs().max().item()


def _tokens(features: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, N, C) tokens of a feature tensor: timm's MetaFormer returns (B, C, H, W) maps,
    mixerlab's hierarchical models (B, H, W, C) (``channels_last``), ViTs (B, N, C) tokens."""
    if features.ndim != 4:
        return features
    return features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)


@torch.no_grad()
def check_pair(timm_name: str, *, batch: int = 1, seed: int = 0) -> dict:
    """Convert a randomised timm model both ways and measure the differences.

    Returns a dict: ``timm_name``, ``mixerlab_name``, ``logits`` (max |timm - mixerlab| after
    loading timm's weights), ``features`` (same for ``forward_features``), ``export_logits``
    (randomised mixerlab weights exported into timm), ``roundtrip_exact`` (mixerlab -> timm ->
    mixerlab gives bit-identical tensors), ``seconds``.
    """
    import timm

    t0 = time.perf_counter()
    tm = randomize_parameters(timm.create_model(timm_name, pretrained=False), seed).eval()
    model = create_from_timm(tm.state_dict(), TIMM_PAIRS[timm_name]).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 1))
    out = dict(timm_name=timm_name, mixerlab_name=TIMM_PAIRS[timm_name])
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
