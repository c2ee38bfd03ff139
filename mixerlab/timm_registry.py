"""Registers every zoo model in timm's registry as ``mixerlab_<name>``, so that
``timm.create_model('mixerlab_convit_tiny')`` works after ``import mixerlab``. (Prefixed: a
duplicate timm name would silently replace timm's own model.)"""
from __future__ import annotations

import timm.models

from .factory import create_model
from .zoo.registry import list_models

__all__: list[str] = []
default_cfgs: dict = {}


def _entrypoint(zoo_name: str):
    def fn(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        if pretrained:
            raise ValueError(f"mixerlab_{zoo_name}: no hub weights are registered; load a local file "
                             "with mixerlab.create_model(name, pretrained=PATH)")
        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", None)
        for k in ("feature_cfg", "cache_dir"):
            kwargs.pop(k, None)
        model = create_model(zoo_name, **kwargs)
        if not features_only:
            return model
        # timm's getter wrapper, built on forward_intermediates (multi-scale NCHW maps)
        from timm.models._features import FeatureGetterNet
        if out_indices is None:
            out_indices = tuple(range(len(model.feature_info)))[-4:]
        return FeatureGetterNet(model, out_indices=tuple(out_indices), prune=False)
    fn.__name__ = f"mixerlab_{zoo_name}"
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__
    fn.__doc__ = f"mixerlab zoo model {zoo_name!r} (see mixerlab.get_model_info)."
    return fn


def _register_all() -> None:
    for name in list_models():
        f = _entrypoint(name)
        globals()[f.__name__] = f
        timm.models.register_model(f)


_register_all()
