"""Shrunken versions of zoo models for fast CPU tests: the same mixers, widths and options, fewer
blocks and a smaller input."""
from __future__ import annotations

import dataclasses

import torch

import mixerlab
from mixerlab.models.config import HierarchicalConfig, IsotropicConfig


def small_config(name: str, *, img_size: int | None = None):
    cfg = mixerlab.get_model_info(name).config
    if isinstance(cfg, IsotropicConfig):
        if tuple(cfg.img_size) == (32, 32):  # micro models: native size, all blocks
            return cfg
        # first and last block keep every mixer kind (GPSA + MHSA, attention + re-attention)
        mixers = (cfg.mixers[0], cfg.mixers[-1])
        at = 1 if cfg.cls_token_at > 0 else 0
        return dataclasses.replace(cfg, mixers=mixers, cls_token_at=at, img_size=img_size or 64)
    assert isinstance(cfg, HierarchicalConfig)
    if tuple(cfg.img_size) == (32, 32):
        return cfg
    # through the builder: LaViT's layers are built for their stage's grid
    cfg = mixerlab.get_model_info(name).resolve(img_size=img_size or 64)
    stages = tuple(dataclasses.replace(st, mixers=st.mixers[:2]) for st in cfg.stages)
    return dataclasses.replace(cfg, stages=stages)


def randomise_less_attention(m):
    """Move Psi/Theta and the residual away from their identity/zero init so tests can fail."""
    with torch.no_grad():
        for mod in m.modules():
            if type(mod).__name__ == "LessAttention" and mod.mode == "la":
                mats = [mod.theta.weight] + ([mod.psi.weight] if mod.psi_kind == "dense" else [mod.psi_h, mod.psi_w])
                for w in mats:
                    w.add_(torch.randn_like(w) * 0.05)
                mod.theta.bias.normal_(0, 0.1)
                (mod.psi.bias if mod.psi_kind == "dense" else mod.psi_bias).normal_(0, 0.1)
            if type(mod).__name__ == "AttentionResidual":
                mod.head_mix.normal_(0, 1)
                mod.filter_q.normal_(0.25, 0.1)
                if mod.filter_k is not None:
                    mod.filter_k.normal_(0.25, 0.1)
