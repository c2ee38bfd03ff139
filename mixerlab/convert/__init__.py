"""Weight conversion between mixerlab and other libraries (timm).

Each source has its own module (``convert/<source>.py``) holding its key remaps; mixerlab's own
state-dict names stay fixed. ``mixerlab.factory.create_from_timm`` builds and loads a zoo model
from a timm state dict.
"""
from .timm import (TIMM_PAIRS, detect_timm_family, export_timm_weights,
                   guess_model_name, is_timm_state_dict, load_timm_weights, set_head_norm_first,
                   timm_family)

__all__ = [
    "TIMM_PAIRS", "detect_timm_family", "export_timm_weights",
    "guess_model_name", "is_timm_state_dict", "load_timm_weights", "set_head_norm_first",
    "timm_family",
]
