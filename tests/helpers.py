"""Shrunken versions of zoo models for fast CPU tests: the same mixers, widths and options, fewer
blocks and a smaller input."""
from __future__ import annotations

import dataclasses

import mixerlab
from mixerlab.models.config import HierarchicalConfig, IsotropicConfig


def small_config(name: str, *, img_size: int | None = None):
    cfg = mixerlab.get_model_info(name).config
    if isinstance(cfg, IsotropicConfig):
        if cfg.img_size == 32:  # micro models: native size, all blocks
            return cfg
        # first and last block keep every mixer kind (GPSA + MHSA, attention + re-attention)
        mixers = (cfg.mixers[0], cfg.mixers[-1])
        at = 1 if cfg.cls_token_at > 0 else 0
        return dataclasses.replace(cfg, mixers=mixers, cls_token_at=at, img_size=img_size or 64)
    assert isinstance(cfg, HierarchicalConfig)
    if cfg.img_size == 32:
        return cfg
    # through the builder: LaViT's layers are built for their stage's grid
    cfg = mixerlab.get_model_info(name).resolve(img_size=img_size or 64)
    stages = tuple(dataclasses.replace(st, mixers=st.mixers[:2]) for st in cfg.stages)
    return dataclasses.replace(cfg, stages=stages)
