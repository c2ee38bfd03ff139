"""Any timm model as a training target on mixerlab's recipes: ``mixerlab train --model timm:resnet18``.

A baseline (a CNN, say) only reads as an anchor when it is trained with the same data, recipe,
budget and evaluation as the mixers it is compared with, so the engine takes ``timm:NAME`` where it
takes a zoo name. The timm model is built with random weights (``pretrained=False``: nothing is
downloaded) and wrapped so that it speaks the engine's interface: ``forward(x, return_aux=True)``
returns ``(logits, {})`` (a timm model has no auxiliary loss terms) and ``cfg.to_dict()`` records
what rebuilds it (timm's name and every keyword it was built with), so resume, ``eval`` and
``compare`` rebuild it from the checkpoint as they rebuild a zoo model. The wrapped module is
``.net``: weight names carry a ``net.`` prefix (``timm_state_dict()`` strips it, for timm).

Builder options are timm's keywords (``model_args``): ``channels=[16, 32, 64, 96]`` narrows a
ResNet (timm's ``ResNet(channels=...)``), ``stem_width=16`` its stem. ``img_size`` is passed only to
models whose constructor takes it (ViTs and their kin); a CNN adapts to any size by its pooling.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

TIMM_PREFIX = "timm:"
TIMM_CONFIG_FORMAT = "mixerlab-timm-model/1"


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def check_timm_name(name: str) -> str:
    """The timm architecture of ``timm:NAME``; ``ValueError`` naming close matches when timm has none."""
    import timm
    arch = name[len(TIMM_PREFIX):] if is_timm_name(name) else name
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4)
        raise ValueError(f"unknown timm model {arch!r} (in {name!r}); "
                         + (f"close matches: {', '.join(TIMM_PREFIX + c for c in close)}" if close
                            else "see timm.list_models()"))
    return arch


@dataclass(frozen=True)
class TimmModelConfig:
    """What rebuilds a wrapped timm model: the architecture and every keyword given to timm."""

    name: str  # timm's architecture name (no prefix)
    num_classes: int = 1000
    in_chans: int = 3
    img_size: int | None = None
    drop_path_rate: float = 0.0
    kwargs: dict = field(default_factory=dict)  # further keywords for timm.create_model (JSON values)

    def to_dict(self) -> dict:
        return {"format": TIMM_CONFIG_FORMAT, **json.loads(json.dumps(dataclasses.asdict(self)))}

    @classmethod
    def from_dict(cls, d: dict) -> "TimmModelConfig":
        if not isinstance(d, dict) or d.get("format") != TIMM_CONFIG_FORMAT:
            raise ValueError(f"not a timm model config (expected format {TIMM_CONFIG_FORMAT!r}): {str(d)[:120]}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed - {"format"})
        if unknown:
            raise ValueError(f"timm model config: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**{k: d[k] for k in allowed if k in d})


class TimmModel(nn.Module):
    """A timm model (random weights) with the engine's interface; see the module docstring."""

    def __init__(self, cfg: TimmModelConfig):
        super().__init__()
        import timm
        arch = check_timm_name(cfg.name)
        kwargs = dict(cfg.kwargs)
        clash = sorted(set(kwargs) & {"num_classes", "in_chans", "img_size", "drop_path_rate", "pretrained"})
        if clash:
            raise TypeError(f"timm:{arch}: {clash} are set by the run (data and config), not by model options")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        common = dict(pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                      drop_path_rate=cfg.drop_path_rate, **kwargs)
        try:
            try:  # img_size only where the constructor takes it (a keyword error comes before any weight)
                self.net = timm.create_model(arch, **common, **({} if cfg.img_size is None else {"img_size": cfg.img_size}))
            except TypeError as e:
                if cfg.img_size is None or "img_size" not in str(e):
                    raise
                self.net = timm.create_model(arch, **common)
        except TypeError as e:
            raise TypeError(_option_error(arch, cfg.kwargs, e)) from None
        self.cfg = cfg
        self.zoo_name = TIMM_PREFIX + arch
        self.num_classes, self.in_chans = cfg.num_classes, cfg.in_chans
        self.pretrained_cfg = dict(getattr(self.net, "pretrained_cfg", {}) or {})
        native = tuple(self.pretrained_cfg.get("input_size", (cfg.in_chans, 224, 224)))
        side = cfg.img_size if cfg.img_size is not None else native[-1]
        self.img_size = (side, side)  # (H, W), as every mixerlab model's
        # the size this model is trained and counted at (count_macs reads it), not timm's ImageNet one
        self.pretrained_cfg.update(input_size=(cfg.in_chans, *self.img_size),
                                   num_classes=cfg.num_classes, architecture=self.zoo_name)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        logits = self.net(x)
        return (logits, {}) if return_aux else logits

    def no_weight_decay(self) -> set[str]:
        own = self.net.no_weight_decay() if hasattr(self.net, "no_weight_decay") else ()
        return {f"net.{n}" for n in own}

    def timm_state_dict(self) -> dict:
        """The weights under timm's own names (loadable into ``timm.create_model(name, ...)``)."""
        return self.net.state_dict()


def timm_model_config(name: str, *, num_classes: int, in_chans: int, img_size: int | None,
                      drop_path_rate: float, model_args: dict | None) -> TimmModelConfig:
    return TimmModelConfig(name=check_timm_name(name), num_classes=num_classes, in_chans=in_chans,
                           img_size=img_size, drop_path_rate=drop_path_rate, kwargs=dict(model_args or {}))


def _option_error(arch: str, kwargs: dict, e: TypeError) -> str:
    """What was wrong with timm's keywords: an unknown name, or a known one with a value of the
    wrong type (named with the type its constructor's default has, e.g. ResNet's ``channels``)."""
    import inspect
    import re
    import sys

    from timm.models._registry import model_entrypoint

    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
    if unknown:
        return f"timm:{arch} does not accept the option(s) [{unknown.group(1)!r}]: an unknown keyword ({e})"
    defaults = {}
    module = sys.modules.get(getattr(model_entrypoint(arch), "__module__", ""), None)
    for cls in vars(module).values() if module else ():
        if inspect.isclass(cls) and issubclass(cls, nn.Module):
            try:
                params = inspect.signature(cls.__init__).parameters
            except (TypeError, ValueError):
                continue
            for k in kwargs:
                if k in params and k not in defaults and params[k].default not in (inspect.Parameter.empty, None):
                    defaults[k] = params[k].default
    parts = []
    for k, v in kwargs.items():
        d = defaults.get(k)
        expected = (f", expected a {type(d).__name__} like {d!r}" if d is not None and type(d) is not type(v)
                    else "")
        parts.append(f"{k}={v!r} ({type(v).__name__}{expected})")
    return f"timm:{arch} rejects the value of its option(s) {', '.join(parts)}: {e}"
