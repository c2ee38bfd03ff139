"""Training configuration: dataclass defaults <- YAML recipe <- ``key=value`` overrides.

The defaults are a DeiT-style recipe scaled down for the 32 px ``*_micro`` models on one
machine. The ImageNet recipes of the papers live in ``configs/`` as YAML files.

Sources for the default values:
    * DeiT, "Training data-efficient image transformers & distillation through attention",
      arXiv:2012.12877, facebookresearch/deit ``main.py`` (AdamW, wd 0.05, warm-up + cosine,
      label smoothing 0.1, Mixup 0.8 / CutMix 1.0, random erasing 0.25, drop path 0.1).
    * DeepViT, arXiv:2103.11886, zhoudaquan/dvit_repo (BatchNorm calibration, 50 batches).
    * LaViT, arXiv:2406.00427 (diagonality-preserving loss; the paper gives no weight: 1.0 per
      term is mixerlab's proposal).

Every value is checked in ``__post_init__``: a bad key or value raises ``ValueError`` naming
the valid keys or the allowed range, so the CLI can print one line and exit 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .recipes import RECIPES, default_recipe, recipe_values

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


def opt(default: Any = dataclasses.MISSING, *, help: str, factory=None, allowed=None, allowed_static=None,
        check=None):
    """One row of the field table: the default (or a ``factory``), what the field does (``help``),
    its allowed values as the help and errors say them (``allowed``: a string, or a function of the
    config for a range that depends on other fields, with ``allowed_static`` for ``--help``) and
    the ``check(value, config) -> bool`` behind them. The CLI options, ``--help``, the validation and
    ``docs/train_config.md`` are all generated from these rows."""
    md = dict(help=help, allowed=allowed, allowed_static=allowed_static, check=check)
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def _valid_betas(v, cfg) -> bool:
    return len(v) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in v)


def _valid_weights(v, cfg) -> bool:
    return all(isinstance(k, str) and isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0.0
               for k, w in v.items())


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Frozen: derive variants with ``dataclasses.replace``.

    One default recipe whichever door: ``TrainConfig(data="fashion-mnist")`` starts, like
    ``mixerlab train`` and ``load_config``, from the recipe named by ``recipe``, else the dataset's
    (``small`` for the 28-32 px sets, ``deit`` for ImageFolder; :mod:`.recipes`); the values passed
    win over the recipe's. The field defaults below are the ``deit`` recipe."""


    # --- model ---
    model: str = opt(
        "deit_micro",
        help='zoo model name (mixerlab list), or timm:NAME for any timm model (random init)',
        allowed='a name of mixerlab list, or timm:NAME')
    model_args: dict = opt(
        factory=dict,
        help="model builder arguments / config fields as a YAML mapping, e.g. {depth: 6, num_heads: 4} (timm:NAME: timm's keywords)",
        allowed='a YAML mapping')
    drop_path_rate: float = opt(
        0.1,
        help='stochastic-depth rate of the last block (linear from 0 over the blocks)',
        allowed='in [0, 1)',
        check=lambda v, c: 0.0 <= v < 1.0)
    img_size: int = opt(
        32,
        help='input size in pixels; images are padded or resized to it',
        allowed='>= 8',
        check=lambda v, c: v >= 8)
    recipe: str = opt(
        None,
        help="named recipe the other values start from (null: the dataset's: small for fashion-mnist, cifar and "
             "synthetic, deit for imagefolder), in Python as on the command line",
        allowed="one of " + ", ".join(RECIPES),
        check=lambda v, c: v in RECIPES)
    # --- data ---
    data: str = opt(
        "fashion-mnist",
        help='dataset (read offline only)',
        allowed="one of " + ", ".join(DATASETS),
        check=lambda v, c: v in DATASETS)
    data_dir: Optional[str] = opt(
        None,
        help='dataset folder (null: the Debian package folder for fashion-mnist)',
        allowed='a folder or null')
    train_fraction: float = opt(
        1.0,
        help='class-balanced fraction of the training split (after the validation images)',
        allowed='in (0, 1]',
        check=lambda v, c: 0.0 < v <= 1.0)
    val_fraction: float = opt(
        1.0,
        help='class-balanced fixed fraction of the test split (the split evaluated each epoch when val_images is 0)',
        allowed='in (0, 1]',
        check=lambda v, c: 0.0 < v <= 1.0)
    val_images: int = opt(
        0,
        help='images held out of the training split as a fixed, class-balanced validation split, evaluated instead of the test split (0: evaluate on the test split)',
        allowed='>= 0',
        check=lambda v, c: v >= 0)
    subset_seed: int = opt(0, help='seed of the fixed subsets (the same for every run seed)')
    num_workers: int = opt(
        0,
        help='DataLoader worker processes (0: load in the main process)',
        allowed='>= 0',
        check=lambda v, c: v >= 0)
    synthetic_size: int = opt(
        512,
        help='training images of the synthetic dataset (validation: a quarter as many)',
        allowed='>= 8',
        check=lambda v, c: v >= 8)
    synthetic_classes: int = opt(
        10,
        help='classes of the synthetic dataset',
        allowed='>= 2',
        check=lambda v, c: v >= 2)
    synthetic_chans: int = opt(
        1,
        help='channels of the synthetic dataset',
        allowed='1 or 3',
        check=lambda v, c: v in (1, 3))
    # --- augmentation (train split only) ---
    train_crop: Literal["pad-crop", "rrc", "none"] = opt(
        "pad-crop",
        help='training crop: pad-crop (pad, random crop back), rrc (random resized crop), none')
    crop_padding: Optional[int] = opt(
        None,
        help="pad-crop's padding = largest shift in px (null: img_size // 8)",
        allowed='>= 0 or null',
        check=lambda v, c: v is None or v >= 0)
    hflip: float = opt(
        0.5,
        help='probability of a horizontal flip',
        allowed='in [0, 1]',
        check=lambda v, c: 0.0 <= v <= 1.0)
    randaugment: Optional[int] = opt(
        9,
        help='torchvision RandAugment magnitude, 2 ops (null: off)',
        allowed='in [0, 30] or null',
        check=lambda v, c: v is None or 0 <= v <= 30)
    random_erasing: float = opt(
        0.25,
        help='timm RandomErasing probability (pixel mode)',
        allowed='in [0, 1]',
        check=lambda v, c: 0.0 <= v <= 1.0)
    mixup: float = opt(0.8, help='Mixup alpha (0: off)', allowed='>= 0', check=lambda v, c: v >= 0.0)
    cutmix: float = opt(1.0, help='CutMix alpha (0: off)', allowed='>= 0', check=lambda v, c: v >= 0.0)
    mixup_prob: float = opt(
        1.0,
        help='probability of applying Mixup/CutMix to a batch',
        allowed='in [0, 1]',
        check=lambda v, c: 0.0 <= v <= 1.0)
    mixup_switch_prob: float = opt(
        0.5,
        help='probability of CutMix instead of Mixup when both are on',
        allowed='in [0, 1]',
        check=lambda v, c: 0.0 <= v <= 1.0)
    label_smoothing: float = opt(
        0.1,
        help='label smoothing of the cross-entropy',
        allowed='in [0, 1)',
        check=lambda v, c: 0.0 <= v < 1.0)
    # --- optimisation ---
    epochs: int = opt(10, help='training epochs', allowed='>= 1', check=lambda v, c: v >= 1)
    batch_size: int = opt(
        128,
        help='images per process and micro-batch (global batch = batch_size x accum_steps x processes)',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    accum_steps: int = opt(
        1,
        help='micro-batches per optimiser step (gradient accumulation)',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    lr: float = opt(
        1e-3,
        help='peak learning rate of AdamW (not rescaled by the batch size)',
        allowed='> 0',
        check=lambda v, c: v > 0.0)
    min_lr: float = opt(
        1e-5,
        help='learning rate at the end of the cosine schedule',
        allowed=lambda c: f"in [0, lr={c.lr}]", allowed_static="in [0, lr]",
        check=lambda v, c: 0.0 <= v <= c.lr)
    warmup_lr: float = opt(
        1e-6,
        help='learning rate at the start of the linear warm-up',
        allowed=lambda c: f"in [0, lr={c.lr}]", allowed_static="in [0, lr]",
        check=lambda v, c: 0.0 <= v <= c.lr)
    warmup_epochs: float = opt(
        1.0,
        help='epochs of linear warm-up (fractions allowed)',
        allowed=lambda c: f"in [0, epochs={c.epochs}]", allowed_static="in [0, epochs]",
        check=lambda v, c: 0.0 <= v <= c.epochs)
    weight_decay: float = opt(
        0.05,
        help='AdamW weight decay (norms, biases and position embeddings get none)',
        allowed='>= 0',
        check=lambda v, c: v >= 0.0)
    betas: tuple = opt(
        (0.9, 0.999),
        help='AdamW betas as a YAML list, e.g. [0.9, 0.999]',
        allowed='two values in [0, 1), e.g. [0.9, 0.999]',
        check=_valid_betas)
    eps: float = opt(1e-8, help='AdamW epsilon', allowed='> 0', check=lambda v, c: v > 0.0)
    clip_grad: Optional[float] = opt(
        None,
        help='largest global gradient norm (null: no clipping)',
        allowed='> 0 or null',
        check=lambda v, c: v is None or v > 0.0)
    ema_decay: Optional[float] = opt(
        0.999,
        help='decay of the EMA copy of the weights, evaluated and saved beside them (null: no EMA)',
        allowed='in (0, 1) or null',
        check=lambda v, c: v is None or 0.0 < v < 1.0)
    aux_weights: dict = opt(
        factory=lambda: {"dp_sym": 1.0, "dp_diag": 1.0},
        help='weight of each auxiliary loss term a model returns, by name, as a YAML mapping (LaViT: {dp_sym: 1.0, dp_diag: 1.0}; 0 trains without a term)',
        allowed='a mapping of term name -> weight >= 0, e.g. {dp_sym: 1.0, dp_diag: 1.0}',
        check=_valid_weights)
    # --- evaluation ---
    eval_every: int = opt(
        1,
        help='epochs between evaluations (the last epoch is always evaluated)',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    eval_batch_size: int = opt(
        256,
        help='batch size of evaluation and BatchNorm calibration',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    bn_calibration: Literal["auto", "on", "off"] = opt(
        "auto",
        help='re-estimate BatchNorm statistics on training images before each evaluation (auto: when the model has BatchNorm)')
    bn_calibration_batches: int = opt(
        50,
        help='batches of training images used by the BatchNorm calibration',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    # --- system ---
    seed: int = opt(0, help='seed of initialisation, data order and augmentation')
    deterministic: bool = opt(False, help='deterministic kernels (needed for bit-identical resume)')
    device: Literal["auto", "cpu", "cuda"] = opt("auto", help='device (auto: CUDA when available)')
    num_threads: Optional[int] = opt(
        None,
        help="CPU intra-op threads, torch.set_num_threads (null: torch's default)",
        allowed='>= 1 or null',
        check=lambda v, c: v is None or v >= 1)
    amp: Literal["none", "bf16", "fp16"] = opt("none", help='mixed precision (fp16 only on CUDA)')
    channels_last: bool = opt(False, help='channels-last memory format for the model and inputs')
    compile: bool = opt(False, help='torch.compile the model')
    log_every: int = opt(
        50,
        help='optimiser steps between plain log lines',
        allowed='>= 1',
        check=lambda v, c: v >= 1)
    progress: Literal["auto", "rich", "plain", "none"] = opt(
        "auto",
        help='progress display (auto: a bar on a terminal, plain lines otherwise)')
    tensorboard: bool = opt(False, help='also write TensorBoard event files')


    def __post_init__(self) -> None:
        _check_types(self)
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None and not check(getattr(self, f.name), self):
                raise ValueError(f"config value {f.name}={getattr(self, f.name)!r} is out of range: must be "
                                 f"{allowed_text(f.name, self)}")
        if self.mixup_active and self.batch_size % 2:
            raise ValueError(f"batch_size={self.batch_size} must be even when mixup/cutmix is on (timm Mixup)")

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0.0 or self.cutmix > 0.0) and self.mixup_prob > 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


_dataclass_init = TrainConfig.__init__


def _init_from_recipe(self, **values) -> None:
    # the recipe's values under the ones given (dataclasses.replace passes every field, so a
    # derived config keeps its own values)
    if values.get("recipe") is None:
        values.pop("recipe", None)
        name = default_recipe(values.get("data", _FIELD_DEFAULT_DATA))
    else:
        name = values["recipe"]
    base = recipe_values(name) if name in RECIPES else {"recipe": name}  # an unknown name: __post_init__ says so
    _dataclass_init(self, **{**base, **values})


_init_from_recipe.__signature__ = inspect.signature(_dataclass_init).replace(  # help() lists the fields
    parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.name != "self" else p
                for p in inspect.signature(_dataclass_init).parameters.values()])
_FIELD_DEFAULT_DATA = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "data")
TrainConfig.__init__ = _init_from_recipe


def allowed_text(name: str, cfg: "TrainConfig | None" = None) -> str | None:
    """The allowed values of field ``name`` as its ``allowed`` entry says them (with ``cfg``'s
    values where they depend on other fields, e.g. ``min_lr`` in [0, lr])."""
    f = _FIELDS[name]
    allowed = f.metadata.get("allowed")
    if callable(allowed):
        return allowed(cfg) if cfg is not None else f.metadata["allowed_static"]
    return allowed


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Views of the one table (the ``opt(...)`` of each field), kept for readers of these names.
FIELD_HELP: dict[str, str] = {n: f.metadata["help"] for n, f in _FIELDS.items()}
ALLOWED: dict[str, str] = {n: allowed_text(n) for n, f in _FIELDS.items() if f.metadata.get("allowed") is not None}


def field_help(name: str) -> str:
    """``--help`` text of config field ``name``: what it does, its allowed values, its default."""
    tp = _field_types()[name]
    allowed = allowed_text(name)
    if allowed is None:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is Literal:
            allowed = "one of " + ", ".join(map(str, typing.get_args(tp)))
        elif tp is bool:
            allowed = "true or false"
        elif name == "data":
            allowed = "one of " + ", ".join(DATASETS)
        elif name == "recipe":
            allowed = "one of " + ", ".join(_recipe_names())
        elif args and typing.get_origin(tp) in (typing.Union, types.UnionType):
            allowed = f"{_type_name(args[0])} or null"
        else:
            allowed = _type_name(tp)
    base = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    base = base.default_factory() if base.default is dataclasses.MISSING else base.default
    per_recipe = {r: RECIPES[r].get(name, base) for r in _recipe_names()}
    if len({repr(v) for v in per_recipe.values()}) > 1:  # the default depends on the recipe
        default = ", ".join(f"{v!r} ({r} recipe)" for r, v in per_recipe.items())
    else:
        default = repr(base)
    return f"{FIELD_HELP[name]}; allowed: {allowed}; default {default}"


def fields_markdown() -> str:
    """``docs/train_config.md``: every field's type, default, allowed values and help, generated
    from the field table (``tests/test_train_config.py`` checks the committed file is current)."""
    rows = ["# `TrainConfig` fields", "",
            "Generated from the field table in `mixerlab/engine/config.py` (`python -c \"from "
            "mixerlab.engine.config import fields_markdown; print(fields_markdown(), end='')\" > "
            "docs/train_config.md`). Every field is also a `mixerlab train` option (`--batch-size 64`) "
            "and a `--set key=value` / YAML key. Defaults marked per recipe come from "
            "`mixerlab/engine/recipes.py`; `load_config` starts from the dataset's recipe.", "",
            "| field | type | allowed | default | what it does |", "|---|---|---|---|---|"]
    for name in valid_keys():
        text = field_help(name)
        what, rest = text.split("; allowed: ", 1)
        allowed, default = rest.rsplit("; default ", 1)
        cells = [f"`{name}`", _type_name(_field_types()[name]), allowed, default, what]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _recipe_names() -> list[str]:
    return list(RECIPES)


def recipe_config(name: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of recipe ``name`` (:mod:`.recipes`) with ``overrides``."""
    return TrainConfig(**{**recipe_values(name), **overrides})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_types(cfg: TrainConfig) -> None:
    """Coerce-free type check of every field (YAML and CLI values are converted before)."""
    for name, tp in _field_types().items():
        value = getattr(cfg, name)
        if not _is_instance(value, tp):
            raise ValueError(f"config value {name}={value!r} is invalid: expected {_type_name(tp)}")


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else tp.__name__


def _convert(name: str, text: str) -> Any:
    """Convert a command-line string to the type of field ``name`` (YAML syntax: null, true, 1e-3)."""
    tp = _field_types()[name]
    args = typing.get_args(tp)
    if tp is str or (typing.get_origin(tp) is Literal and isinstance(args[0], str)):
        return text
    if str in args:  # Optional[str]
        return None if text in ("null", "None", "none", "~") else text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"config value {name}={text!r} cannot be parsed as {_type_name(tp)}") from None
    if float in (tp, *args) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if float in (tp, *args) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is tuple and isinstance(value, list):
        return tuple(value)
    if tp is dict and value is None:
        return {}
    return value


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_keys(keys, where: str) -> None:
    valid = valid_keys()
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


class DuplicateKeyError(ValueError):
    """A YAML mapping names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} is given twice (lines {seen[key] + 1} and "
                                        f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Resolve a config: ``base`` <- YAML recipe <- overrides.

    Without ``base`` the start is the named recipe (:mod:`.recipes`): ``recipe`` from the
    overrides or the YAML file, else the default of the dataset (``default_recipe``); the
    config records its name.

    Args:
        yaml_path: a recipe file (a flat mapping of TrainConfig keys), or None.
        overrides: mapping of key -> value; string values are parsed like YAML scalars
            and converted to the field's type (``"1e-3"`` -> 0.001, ``"null"`` -> None).
        base: the starting config; defaults to ``TrainConfig()``.

    Raises:
        ValueError: unknown key (listing the valid ones) or a bad value.
        FileNotFoundError: the YAML file does not exist.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if path.is_dir():
            raise ValueError(f"--config {path} is a folder; give a recipe file inside it (e.g. configs/deit/*.yaml)")
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except DuplicateKeyError as e:
            raise ValueError(f"config file {path}: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must be a mapping of key: value")
        _check_keys(loaded, str(path))
        for k, v in loaded.items():  # PyYAML reads "1e-3" as a string: convert like the CLI
            values[k] = _convert(k, v) if isinstance(v, str) else tuple(v) if k == "betas" and isinstance(v, list) else v
    for key, value in (overrides or {}).items():
        _check_keys([key], "overrides")
        values[key] = _convert(key, value) if isinstance(value, str) else value
    fresh = base is None
    if fresh:
        name = values.get("recipe") or default_recipe(values.get("data", _FIELD_DEFAULT_DATA))
        base = recipe_config(name)
        values["recipe"] = name
    lr = values.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):  # keep a lowered lr consistent with the base's min/warm-up LR
        for k in ("min_lr", "warmup_lr"):
            if k not in values and getattr(base, k) > lr:
                values[k] = lr
    try:
        cfg = dataclasses.replace(base, **values)
    except TypeError as e:  # only reachable through a programming error: keys are checked
        raise ValueError(str(e)) from None
    if fresh:  # a new run's config (a stored one is taken as it was trained)
        check_model_args(cfg)
    return cfg


# The settings that fix a model's input and output belong to the run: TrainConfig fields
# (img_size, drop_path_rate) or the data's shape (in_chans, num_classes), never model_args.
RUN_OWNED = ("img_size", "in_chans", "num_classes", "drop_path_rate")


def _same(key: str, a, b) -> bool:
    if key == "img_size":  # 32 and (32, 32) say the same
        def norm(v):
            return (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v) if isinstance(v, (list, tuple)) else v
        return norm(a) == norm(b)
    return a == b


def check_model_args(cfg: TrainConfig, *, num_classes: int | None = None, in_chans: int | None = None) -> None:
    """Refuse ``model_args`` that contradict what the run owns (``RUN_OWNED``): ``img_size`` and
    ``drop_path_rate`` (config fields) and, when given, the data's ``num_classes`` / ``in_chans``
    (without them those two are checked when the model is built for the data). A value equal to
    the run's is accepted: it says nothing new."""
    owned = {"img_size": (cfg.img_size, "--img-size"), "drop_path_rate": (cfg.drop_path_rate, "--drop-path-rate")}
    if num_classes is not None:
        owned["num_classes"] = (num_classes, f"the data ({cfg.data})")
    if in_chans is not None:
        owned["in_chans"] = (in_chans, f"the data ({cfg.data})")
    for key, (run_value, setter) in owned.items():
        if key in (cfg.model_args or {}) and not _same(key, cfg.model_args[key], run_value):
            value = cfg.model_args[key]
            fix = (f"drop it from model_args and pass {setter} {value}" if setter.startswith("--")
                   else "drop it from model_args (the data decides it)")
            raise ValueError(f"model_args sets {key}={value!r}, but the run owns {key}: {run_value!r}, "
                             f"from {setter}; {fix}")


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a config stored in a checkpoint or a run folder's ``config.yaml``.

    Configs written before ``aux_weights`` carry one ``dp_weight`` for every auxiliary term; it
    becomes that weight for both diagonality-preserving terms."""
    d = dict(d)
    if "dp_weight" in d and "aux_weights" not in d:
        w = d.pop("dp_weight")
        d["aux_weights"] = {"dp_sym": w, "dp_diag": w}
    _check_keys(d, "stored config")
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    return TrainConfig(**d)
