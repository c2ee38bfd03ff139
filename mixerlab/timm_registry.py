"""Registers every zoo model in timm's registry as ``mixerlab_<name>``, so that
``timm.create_model('mixerlab_convit_tiny')`` works after ``import mixerlab``. (Prefixed: a
duplicate timm name would silently replace timm's own model.)

Each name has a registered pretrained cfg (input size, ``pool_size``, mean/std, crop,
interpolation, first conv, classifier; no hub weights), and the entry points go through timm's
``build_model_with_cfg``, so ``default_cfg``, ``features_only`` / ``feature_cls`` / ``out_indices``,
``device`` / ``dtype`` and ``global_pool`` behave as for timm's own models. Weights come from a
local file named by the cfg:
``timm.create_model('mixerlab_x', pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``
loads a mixerlab weight file or checkpoint, or a timm state dict (converted), as
``mixerlab.create_model(name, pretrained=PATH)`` does.
"""
from __future__ import annotations

import contextlib

import timm.models
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, resolve_pretrained_cfg

from .factory import create_model
from .models.base import config_fixed_input_size, timm_pretrained_cfg
from .models.factory import build_model
from .zoo.registry import get_model_info, list_models

__all__: list[str] = []


def _build(zoo_name: str, *, device=None, dtype=None, global_pool: str | None = None,
           weights=None, **kwargs):
    """The model class timm's builder calls: mixerlab's factory, on ``device`` / in ``dtype``,
    with ``weights`` (a local file) loaded before any feature wrapper prunes the model."""
    if global_pool is not None and "global_pool" in type(get_model_info(zoo_name).config).__dataclass_fields__:
        kwargs["global_pool"], global_pool = global_pool, None
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = create_model(zoo_name, pretrained=weights, **kwargs)
        if global_pool is not None:
            model.set_global_pool(global_pool)
    if dtype is not None:
        model.to(dtype)
    return model


def _entrypoint(zoo_name: str):
    variant = f"mixerlab_{zoo_name}"

    def fn(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        kwargs.pop("cache_dir", None)
        feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
        if kwargs.get("features_only"):
            # every mixerlab model has forward_intermediates: timm's getter wrapper by default;
            # all stages, or the last three blocks of an isotropic model
            feature_cfg.setdefault("feature_cls", "getter")
            config = get_model_info(zoo_name).config
            kwargs.setdefault("out_indices", tuple(range(len(config.stages))) if hasattr(config, "stages")
                              else min(3, len(config.mixers)))
        if pretrained:
            file = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                          pretrained_cfg_overlay=pretrained_cfg_overlay).file
            if not file:
                raise ValueError(f"{variant}: no hub weights are registered; name a local file: "
                                 "pretrained_cfg_overlay=dict(file=PATH)")
            kwargs["weights"] = file
        return build_model_with_cfg(lambda **kw: _build(zoo_name, **kw), variant, pretrained=False,
                                    pretrained_cfg=pretrained_cfg,
                                    pretrained_cfg_overlay=pretrained_cfg_overlay,
                                    feature_cfg=feature_cfg, **kwargs)
    fn.__name__ = f"mixerlab_{zoo_name}"
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__
    fn.__doc__ = f"mixerlab zoo model {zoo_name!r} (see mixerlab.get_model_info)."
    return fn


def _pretrained_cfg(name: str) -> dict:
    cfg = get_model_info(name).config
    fixed = config_fixed_input_size(cfg)
    if fixed is None:  # mixers sized to the real grid (LaViT): ask a model built on the meta device
        with torch.device("meta"):
            fixed = bool(build_model(cfg).fixed_input_size)
    return timm_pretrained_cfg(cfg, fixed_input_size=fixed)


default_cfgs = generate_default_cfgs({
    f"mixerlab_{name}": dict(_pretrained_cfg(name), license="apache-2.0")
    for name in list_models()})


def _register_all() -> None:
    for name in list_models():
        f = _entrypoint(name)
        globals()[f.__name__] = f
        timm.models.register_model(f)


_register_all()
