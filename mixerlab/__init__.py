"""mixerlab: does my vision transformer even need attention?

One MetaFormer block with pluggable token mixers (attention, GPSA, re-attention, less-attention,
pooling, identity, random, token feed-forward), isotropic and hierarchical backbones, and a model
zoo matching the papers' configurations.
"""
from .mixers import attention_maps, explicit_attention, get_mixer, list_mixers
from .layers.fast_paths import fast_paths
from .models import (BlockConfig, HierarchicalConfig, IsotropicConfig, MetaFormerBlock, StageConfig,
                     build_model, config_from_dict)
from .zoo import get_model_info, list_models
from .factory import create_from_timm, create_model, load_pretrained
from .version import __version__
from . import timm_registry as _timm_registry  # noqa: F401  (registers mixerlab_* in timm)

__all__ = [
    "BlockConfig", "HierarchicalConfig", "IsotropicConfig", "MetaFormerBlock", "StageConfig",
    "__version__", "attention_maps", "build_from_checkpoint", "build_model", "config_from_dict",
    "create_detector", "create_from_timm", "create_model", "create_segmenter", "explicit_attention", "fast_paths", "get_mixer", "get_model_info",
    "list_mixers", "list_models", "load_pretrained", "open_model",
]


def __getattr__(name):
    # Training/evaluation and weight conversion are imported on first use (keeps import light).
    # importlib, not "from . import", which would re-enter this hook through hasattr().
    import importlib
    if name in ("train", "evaluate", "TrainConfig", "build_from_checkpoint", "open_model"):
        return getattr(importlib.import_module("mixerlab.engine"), name)
    if name in ("create_detector", "create_segmenter"):  # detection / segmentation (torchvision heads)
        return getattr(importlib.import_module("mixerlab.dense"), name)
    if name in ("load_timm_weights", "export_timm_weights"):
        return getattr(importlib.import_module("mixerlab.convert"), name)
    raise AttributeError(f"module 'mixerlab' has no attribute {name!r}")
