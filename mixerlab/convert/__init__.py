"""Weight conversion between mixerlab and other libraries (issue 3: timm).

Each source has its own module (``convert/<source>.py``) holding its key remaps; mixerlab's own
state-dict names stay fixed (shared/STYLE.md point 11).
"""
from .timm import (TIMM_PAIRS, create_from_timm, detect_timm_family, export_timm_weights,
                   guess_model_name, is_timm_state_dict, load_timm_weights, set_head_norm_first,
                   timm_family)

__all__ = [
    "TIMM_PAIRS", "create_from_timm", "detect_timm_family", "export_timm_weights",
    "guess_model_name", "is_timm_state_dict", "load_timm_weights", "set_head_norm_first",
    "timm_family",
]
