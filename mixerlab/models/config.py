"""Frozen model configurations: the data the zoo tables hold and ``build_model`` reads.

A mixer is specified as ``(name, kwargs)``: ``("attention", {"num_heads": 3})``. Strings are
resolved once, in ``build_model``; model code only sees classes and partials.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MixerSpec = tuple  # (mixer name, dict of keyword arguments)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BlockConfig:
    """Options of the MetaFormer block shared by all blocks of a model."""

    mlp_ratio: float = 4.0  # channel-MLP hidden width / dim
    norm: str = "layernorm"  # layernorm (eps 1e-6) | layernorm_eps5 | groupnorm1 | *_nobias (v2)
    layer_scale_init: float | None = None  # None = no LayerScale (PoolFormer: 1e-5 / 1e-6)
    mlp_act: str = "gelu"  # gelu | starrelu (MetaFormer baselines) | squared_relu | relu
    mlp_bias: bool = True  # biases of the channel MLP's linears (MetaFormer baselines: False)
    scale_adjustment: float | None = None  # DeepViT-S/L: x + f(LN(a x)) / a, with a = 0.5
    mlp_first: bool = False  # FF-only: channel MLP before the token mixer


class _ModelConfig:
    """``to_dict()`` / ``from_dict()`` of the model configs (see :func:`config_to_dict`).

    ``img_size`` has one type in mixerlab: a model's input size is an ``(H, W)`` pair (as the
    built model's ``img_size`` attribute); an int ``n`` (a builder argument, a stored config
    written before) is read as ``(n, n)`` when the config is made."""

    def __post_init__(self) -> None:
        v = self.img_size
        if isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(self, "img_size", (v, v))
        elif isinstance(v, list):
            object.__setattr__(self, "img_size", tuple(v))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict):
        cfg = config_from_dict(d)
        if not isinstance(cfg, cls):
            raise ValueError(f"the dict holds a {type(cfg).__name__}, not a {cls.__name__}")
        return cfg


@dataclass(frozen=True)
class IsotropicConfig(_ModelConfig):
    """A ViT-style model: patch embedding, optional class token, position embedding, blocks."""

    mixers: tuple  # one MixerSpec per block (depth = len(mixers))
    dim: int = 192
    patch_size: int = 16
    img_size: tuple = (224, 224)  # (H, W); an int n is read as (n, n)
    in_chans: int = 3
    num_classes: int = 1000
    block: BlockConfig = field(default_factory=BlockConfig)
    stem: str = "patch"  # patch (conv k=s=patch) | cnn (DeepViT-S/L, stride 16)
    class_token: bool = True
    cls_token_at: int = 0  # block index before which the class token joins (ConViT: 10)
    pos_embed: bool = True
    pos_embed_cls_slot: bool = True  # the position table has a slot for the class token
    pos_grid: tuple | None = None  # stored grid of the position table (default: native grid)
    pos_interp: str = "bicubic"  # how the table is resampled to another grid
    global_pool: str = "token"  # token | avg
    drop_rate: float = 0.0  # dropout after position embedding, in MLPs, before the head
    drop_path_rate: float = 0.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


@dataclass(frozen=True)
class StageConfig:
    """One stage of a hierarchical model."""

    dim: int
    mixers: tuple  # one MixerSpec per block
    mlp_ratio: float = 4.0
    pos_embed: str | None = None  # None | zeros | trunc_normal: added after the stage's embedding
    res_scale_init: float | None = None  # learnable residual scale, x * s + branch (v2: 1.0 in 3-4)


@dataclass(frozen=True)
class HierarchicalConfig(_ModelConfig):
    """A 4-stage (or n-stage) model with strided-conv downsampling, as PoolFormer and LaViT."""

    stages: tuple  # StageConfig per stage
    img_size: tuple = (224, 224)  # (H, W); an int n is read as (n, n)
    in_chans: int = 3
    num_classes: int = 1000
    block: BlockConfig = field(default_factory=lambda: BlockConfig(norm="groupnorm1"))
    stem: tuple = (7, 4, 2)  # (kernel, stride, padding) of the first embedding
    downsample: tuple = (3, 2, 1)  # (kernel, stride, padding) between stages
    embed_norm: str | None = None  # norm after each embedding conv (LaViT: layernorm)
    downsample_norm_first: bool = False  # embed_norm before the downsampling convs (v2: the stem
    #                                      conv is post-normed, the downsampling convs pre-normed)
    head_norm: str = "groupnorm1"  # final norm
    head_norm_first: bool = True  # norm the map, then pool (official PoolFormer); False = timm / v2
    head: str = "linear"  # linear | mlp (ConvFormer / CAFormer's MlpHead)
    head_hidden_norm_eps: float = 1e-5  # eps of the MLP head's LayerNorm (official 1e-5, timm 1e-6)
    conv_init: str = "default"  # default (PyTorch's) | trunc_normal (0.02, v2)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


ModelConfig = IsotropicConfig | HierarchicalConfig


def _merge(obj, value, what: str):
    """A dict (from YAML or the CLI) updates a nested config dataclass field by field."""
    if not isinstance(value, dict):
        return value
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise TypeError(f"unknown {what} option(s) {unknown}; allowed: {sorted(names)}")
    value = dict(value)
    if "mixers" in value:
        value["mixers"] = tuple(tuple(m) if isinstance(m, list) else m for m in value["mixers"])
    return dataclasses.replace(obj, **value)


def replace_config(cfg, **overrides):
    """``dataclasses.replace`` that names the allowed fields when a key is unknown.

    Plain data is accepted for the nested parts, so overrides can come from YAML: ``block`` as a
    dict of ``BlockConfig`` fields, ``stages`` as a list of dicts each updating that stage, and
    mixer specs as ``[name, {kwargs}]`` lists.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown} for {type(cfg).__name__}; "
                        f"allowed: {sorted(names)}")
    overrides = dict(overrides)
    if "block" in overrides:
        overrides["block"] = _merge(cfg.block, overrides["block"], "block")
    if "mixers" in overrides:
        overrides["mixers"] = tuple(tuple(m) if isinstance(m, list) else m for m in overrides["mixers"])
    if "stages" in overrides:
        new = list(overrides["stages"])
        if all(isinstance(st, dict) for st in new):
            if len(new) != len(cfg.stages):
                base = [cfg.stages[min(i, len(cfg.stages) - 1)] for i in range(len(new))]
            else:
                base = list(cfg.stages)
            new = [_merge(b, st, f"stage {i}") for i, (b, st) in enumerate(zip(base, new))]
        overrides["stages"] = tuple(new)
    for key in ("img_size", "stem", "downsample", "pos_grid", "mean", "std"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key])
    return dataclasses.replace(cfg, **overrides)


# -- serialisation: the resolved config as plain (JSON-able) data --------------------------------
CONFIG_FORMAT = "mixerlab-model-config/1"
_KINDS = {"isotropic": IsotropicConfig, "hierarchical": HierarchicalConfig}


def _plain(v):
    """Tuples -> lists, dataclasses -> dicts, recursively (JSON's types)."""
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (tuple, list)):
        return [_plain(i) for i in v]
    if isinstance(v, dict):
        return {str(k): _plain(i) for k, i in v.items()}
    return v


def _frozen(v):
    """Lists -> tuples, recursively (the configs' own types, hashable)."""
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(i) for i in v)
    if isinstance(v, dict):
        return {k: _frozen(i) for k, i in v.items()}
    return v


def _mixer_specs(specs) -> tuple:
    out = []
    for s in specs:
        if isinstance(s, str):
            s = (s, {})
        if not (isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str)
                and isinstance(s[1], dict)):
            raise ValueError(f"a mixer spec is [name, {{kwargs}}], got {s!r}")
        out.append((s[0], _frozen(s[1])))
    return tuple(out)


def config_to_dict(cfg) -> dict:
    """``{"format", "kind", "config"}``: everything needed to rebuild the same model."""
    kind = next((k for k, t in _KINDS.items() if isinstance(cfg, t)), None)
    if kind is None:
        raise TypeError(f"expected an IsotropicConfig or HierarchicalConfig, got {type(cfg).__name__}")
    return {"format": CONFIG_FORMAT, "kind": kind, "config": _plain(cfg)}


def _build(cls, data: dict, what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; allowed: {sorted(names)}")
    return cls(**data)


def config_from_dict(d: dict):
    """Inverse of :func:`config_to_dict`; ``ValueError`` naming what does not fit."""
    if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT or d.get("kind") not in _KINDS:
        raise ValueError(f"not a mixerlab model config (expected format {CONFIG_FORMAT!r} and kind "
                         f"in {sorted(_KINDS)}): {str(d)[:120]}")
    kind, data = d["kind"], dict(d["config"])
    data["block"] = _build(BlockConfig, dict(data.get("block", {})), "block")
    if kind == "isotropic":
        data["mixers"] = _mixer_specs(data["mixers"])
    else:
        data["stages"] = tuple(
            _build(StageConfig, {**st, "mixers": _mixer_specs(st["mixers"])}, f"stage {i}")
            for i, st in enumerate(data["stages"]))
    data = {k: (_frozen(v) if isinstance(v, list) else v) for k, v in data.items()}
    return _build(_KINDS[kind], data, f"{kind} config")


