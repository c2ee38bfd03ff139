"""``build_model`` (config -> module) and ``create_model`` (zoo name + overrides -> module)."""
from __future__ import annotations

import os

from torch import nn

from .config import HierarchicalConfig, IsotropicConfig, replace_config
from .hierarchical import HierarchicalModel
from .isotropic import IsotropicModel
from .registry import get_model_info


def build_model(cfg) -> nn.Module:
    """Build a model from an ``IsotropicConfig`` or ``HierarchicalConfig``."""
    if isinstance(cfg, IsotropicConfig):
        return IsotropicModel(cfg)
    if isinstance(cfg, HierarchicalConfig):
        return HierarchicalModel(cfg)
    raise TypeError(f"expected an IsotropicConfig or HierarchicalConfig, got {type(cfg).__name__}")


def create_model(name: str, *, pretrained: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """Build zoo model ``name`` with config overrides.

    Args:
        name: a name from ``list_models()`` (the ``mixerlab_`` prefix is accepted too).
        pretrained: optional path to weights (a mixerlab checkpoint or a timm state dict).
        **overrides: config fields, e.g. ``num_classes=10, in_chans=1, img_size=32,
            drop_path_rate=0.1``. Unknown keys raise ``TypeError`` listing the allowed ones.
    """
    entry = get_model_info(name)
    cfg = replace_config(entry.config, **overrides) if overrides else entry.config
    model = build_model(cfg)
    model.zoo_name = entry.name
    model.pretrained_cfg["architecture"] = entry.name
    if pretrained is not None:
        from ..weights import load_pretrained
        load_pretrained(model, pretrained)
    return model
