"""The zoo registry: name -> ``ZooEntry`` (a builder, its arguments, the paper's numbers).

A zoo entry is a *builder* (a function of the paper's architecture arguments, e.g.
``deit(dim, num_heads, depth)``) plus the arguments of that variant, the way timm's entry points
pass a small ``model_args`` dict to one model class. ``entry.resolve(**overrides)`` accepts the
builder's arguments (``depth=6``, ``num_heads=4``, LaViT's ``layout``) and any field of the
resulting config (``num_classes``, ``img_size``, ``drop_path_rate``, ``block``, ...); the result is
a frozen ``IsotropicConfig`` / ``HierarchicalConfig``, the value a model is built from and
serialised as (``config.to_dict()``).
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from ..models.config import replace_config
from ..registry import Registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    Attributes:
        name: mixerlab name, ``family_size``.
        family: deit | ffonly | convit | vit | deepvit | poolformer | identityformer | randformer | lavit.
        builder: the family's config builder (keyword arguments -> model config).
        args: the builder arguments of this variant.
        paper: short citation (title, arXiv id).
        reported: the paper's / official code's numbers: ``params`` (millions, the reference our
            count is tested against), ``top1`` (ImageNet-1k unless ``note`` says otherwise),
            ``gmacs``, ``params_source`` and ``note``. mixerlab's own variants (``*_micro``)
            have no paper numbers, only ``target_params``.
        param_tolerance: allowed relative deviation of our count from the reference.
    """

    name: str
    family: str
    builder: Callable
    args: dict
    paper: str
    reported: dict = field(default_factory=dict)
    param_tolerance: float = 0.01

    @property
    def reference_params(self) -> float:
        """Millions of parameters our count must match (paper/official, or the micro target)."""
        return self.reported.get("params", self.reported.get("target_params"))

    @cached_property
    def config(self):
        """The variant's config with no overrides."""
        return self.builder(**self.args)

    def builder_arguments(self) -> list[str]:
        """Names the builder takes (the overridable architecture arguments)."""
        return [p.name for p in inspect.signature(self.builder).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def resolve(self, **overrides):
        """The config with ``overrides``: builder arguments first, then config fields.

        An unknown key raises ``TypeError`` naming both allowed sets (and close matches).
        """
        builder_args = set(self.builder_arguments())
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - builder_args - fields)
        if unknown:
            close = sorted({c for k in unknown
                            for c in difflib.get_close_matches(k, builder_args | fields, n=2)})
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TypeError(f"unknown option(s) {unknown} for {self.name}{hint}; allowed: builder "
                            f"arguments {sorted(builder_args)}, config fields {sorted(fields)}")
        arch = {k: v for k, v in overrides.items() if k in builder_args}
        rest = {k: v for k, v in overrides.items() if k not in builder_args}
        cfg = self.builder(**{**self.args, **arch}) if arch else self.config
        return replace_config(cfg, **rest) if rest else cfg


_ZOO: Registry[ZooEntry] = Registry(
    "model", allowed=lambda names: f"see `mixerlab list` for all {len(names)} names")


def register_zoo(entries) -> None:
    for e in entries:
        _ZOO.add(e.name, e)


def list_models(pattern: str = "*") -> list[str]:
    """Zoo names matching a shell-style pattern (``"convit_*"``), in table order."""
    return [n for n in _ZOO if fnmatch.fnmatch(n, pattern)]


def get_model_info(name: str) -> ZooEntry:
    """The zoo entry of ``name``; a ``ValueError`` suggests close names."""
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a string from mixerlab.list_models(), got {name!r}")
    if name.startswith("mixerlab_"):
        name = name[len("mixerlab_"):]
    return _ZOO.get(name)
