"""Backbones, the block, configs and ``build_model`` (config -> module). The zoo (names) is above."""
from .block import MetaFormerBlock
from .config import (BlockConfig, HierarchicalConfig, IsotropicConfig, StageConfig, config_from_dict,
                     config_to_dict)
from .factory import build_model
from .hierarchical import HierarchicalModel
from .isotropic import IsotropicModel

__all__ = [
    "BlockConfig", "HierarchicalConfig", "HierarchicalModel", "IsotropicConfig", "IsotropicModel",
    "MetaFormerBlock", "StageConfig", "build_model", "config_from_dict", "config_to_dict",
]
