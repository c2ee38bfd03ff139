"""Reading weight files safely and loading them into mixerlab models.

Files: ``.safetensors`` (preferred), or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)`` (never unpickles arbitrary objects). A mixerlab training
checkpoint (a dict with a ``model`` state dict) is unwrapped. Loading is strict: a missing,
unexpected or mis-shaped key raises ``ValueError`` naming the first one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file; ``ValueError`` for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt: say so, without a traceback wall
        raise ValueError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None
    return unwrap_state_dict(sd, source=str(path))


def unwrap_state_dict(sd, *, source: str = "state dict") -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, what: str = "state dict") -> None:
    """Raise ``ValueError`` naming the first key that is missing, unexpected or mis-shaped."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise ValueError(f"{what} does not fit this model: missing key {k!r} "
                             f"(expected shape {tuple(v.shape)})")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{what} does not fit this model: {k!r} has shape "
                             f"{tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
    extra = [k for k in sd if k not in own]
    if extra:
        raise ValueError(f"{what} does not fit this model: unexpected key {extra[0]!r} "
                         f"({len(extra)} unexpected in all)")


def load_pretrained(model: nn.Module, path_or_sd) -> nn.Module:
    """Load a mixerlab state dict (a file path or a dict) strictly into ``model``."""
    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, (str, os.PathLike)) else \
        unwrap_state_dict(path_or_sd)
    check_state_dict(model, sd, what=f"weights {path_or_sd}" if isinstance(path_or_sd, (str, os.PathLike)) else "state dict")
    model.load_state_dict(sd, strict=True)
    return model
