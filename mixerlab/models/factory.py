"""``build_model``: a model config (a value) -> the module it describes."""
from __future__ import annotations

from torch import nn

from .config import HierarchicalConfig, IsotropicConfig
from .hierarchical import HierarchicalModel
from .isotropic import IsotropicModel


def build_model(cfg, *, name: str | None = None) -> nn.Module:
    """Build a model from an ``IsotropicConfig`` or ``HierarchicalConfig``.

    ``name`` (a zoo name) is recorded as ``model.zoo_name`` and ``pretrained_cfg["architecture"]``.
    """
    if isinstance(cfg, IsotropicConfig):
        model = IsotropicModel(cfg)
    elif isinstance(cfg, HierarchicalConfig):
        model = HierarchicalModel(cfg)
    else:
        raise TypeError(f"expected an IsotropicConfig or HierarchicalConfig, got {type(cfg).__name__}")
    if name is not None:
        model.zoo_name = name
        model.pretrained_cfg["architecture"] = name
    return model
