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
    check_model_config(cfg)
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_model_config(cfg) -> None:
    """Type and range of the scalar fields every model has, before anything is built: a wrong
    value raises ``ValueError`` naming the field, the value and what is allowed (instead of an
    error from deep inside a layer)."""
    if not isinstance(cfg, (IsotropicConfig, HierarchicalConfig)):
        return  # build_model names the expected types
    checks = [
        ("num_classes", _is_int(cfg.num_classes) and cfg.num_classes >= 0, "an int >= 0 (0: no classifier head)"),
        ("in_chans", _is_int(cfg.in_chans) and cfg.in_chans >= 1, "an int >= 1"),
        ("img_size", (_is_int(cfg.img_size) and cfg.img_size >= 1) or (
            isinstance(cfg.img_size, (tuple, list)) and len(cfg.img_size) == 2
            and all(_is_int(v) and v >= 1 for v in cfg.img_size)), "an int >= 1 or a pair (H, W) of them"),
    ]
    for name in ("drop_rate", "drop_path_rate"):
        v = getattr(cfg, name)
        checks.append((name, isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0,
                       "a number in [0, 1)"))
    if isinstance(cfg, IsotropicConfig):
        checks += [("dim", _is_int(cfg.dim) and cfg.dim >= 1, "an int >= 1"),
                   ("patch_size", _is_int(cfg.patch_size) and cfg.patch_size >= 1, "an int >= 1")]
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"model option {name}={getattr(cfg, name)!r} is invalid: must be {allowed}")
