"""Backbones, the block, configs, and the zoo registry."""
from .block import MetaFormerBlock
from .config import BlockConfig, HierarchicalConfig, IsotropicConfig, StageConfig
from .factory import build_model, create_model
from .hierarchical import HierarchicalModel
from .isotropic import IsotropicModel
from .registry import ZooEntry, get_model_info, list_models

__all__ = [
    "BlockConfig", "HierarchicalConfig", "HierarchicalModel", "IsotropicConfig", "IsotropicModel",
    "MetaFormerBlock", "StageConfig", "ZooEntry", "build_model", "create_model", "get_model_info",
    "list_models",
]
