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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .recipes import RECIPES, default_recipe, recipe_values

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Frozen: derive variants with ``dataclasses.replace``.

    The field defaults are the ``deit`` recipe (:mod:`.recipes`); ``load_config`` starts from the
    recipe named by ``recipe`` (default: the dataset's, e.g. ``small`` for Fashion-MNIST)."""


    # --- model ---
    model: str = "deit_micro"  # a name from mixerlab.list_models(), or timm:NAME (any timm model)
    model_args: dict = field(default_factory=dict)  # extra create_model overrides
    drop_path_rate: float = 0.1  # DeiT: 0.1; DeepViT: 0.2
    img_size: int = 32  # *_micro models are native 32 px
    recipe: str = "deit"  # the named recipe the values started from (mixerlab.engine.recipes)
    # --- data ---
    data: str = "fashion-mnist"  # one of DATASETS
    data_dir: Optional[str] = None  # None: the Debian package folder for fashion-mnist
    train_fraction: float = 1.0  # class-balanced subset of the training split
    val_fraction: float = 1.0  # class-balanced fixed subset of the test split
    # images held out of the training split as a fixed, class-balanced validation split, which the
    # loop then evaluates instead of the test split (0: evaluate on the test split)
    val_images: int = 0
    subset_seed: int = 0  # fixed, so every run/seed sees the same subset
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)
    synthetic_size: int = 512  # training images of the synthetic dataset (val: 1/4)
    synthetic_classes: int = 10
    synthetic_chans: int = 1
    # --- augmentation (train split only) ---
    train_crop: Literal["pad-crop", "rrc", "none"] = "pad-crop"  # pad 4 + random 32 crop
    crop_padding: Optional[int] = None  # pad-crop's padding (max shift in px); None: img_size // 8
    hflip: float = 0.5
    randaugment: Optional[int] = 9  # torchvision RandAugment magnitude (2 ops); None: off
    random_erasing: float = 0.25  # timm RandomErasing probability, pixel mode
    mixup: float = 0.8  # Mixup alpha (0: off)
    cutmix: float = 1.0  # CutMix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    # --- optimisation ---
    epochs: int = 10
    batch_size: int = 128  # per process; global batch = batch_size * accum_steps * world size
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step
    lr: float = 1e-3  # peak learning rate (not rescaled by batch size)
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: Optional[float] = None  # max global grad norm; None: no clipping
    ema_decay: Optional[float] = 0.999  # None: no EMA weights
    # weight of each auxiliary loss term a model returns (forward(x, return_aux=True)), by term
    # name; LaViT's diagonality-preserving terms: dp_sym (symmetry), dp_diag (diagonal dominance)
    aux_weights: dict = field(default_factory=lambda: {"dp_sym": 1.0, "dp_diag": 1.0})
    # --- evaluation ---
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    eval_batch_size: int = 256
    bn_calibration: Literal["auto", "on", "off"] = "auto"  # auto: on iff the model has BatchNorm
    bn_calibration_batches: int = 50  # DeepViT: max_iter=50
    # --- system ---
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: Optional[int] = None  # CPU intra-op threads (torch.set_num_threads); None: torch default
    amp: Literal["none", "bf16", "fp16"] = "none"  # fp16 only on CUDA
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50  # optimiser steps between plain log lines
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        checks = {
            "data": (self.data in DATASETS, f"one of {', '.join(DATASETS)}"),
            "recipe": (self.recipe in _recipe_names(), f"one of {', '.join(_recipe_names())}"),
            "val_images": (self.val_images >= 0, ALLOWED["val_images"]),
            "crop_padding": (self.crop_padding is None or self.crop_padding >= 0, ALLOWED["crop_padding"]),
            "img_size": (self.img_size >= 8, ALLOWED["img_size"]),
            "train_fraction": (0.0 < self.train_fraction <= 1.0, ALLOWED["train_fraction"]),
            "val_fraction": (0.0 < self.val_fraction <= 1.0, ALLOWED["val_fraction"]),
            "num_workers": (self.num_workers >= 0, ALLOWED["num_workers"]),
            "synthetic_size": (self.synthetic_size >= 8, ALLOWED["synthetic_size"]),
            "synthetic_classes": (self.synthetic_classes >= 2, ALLOWED["synthetic_classes"]),
            "synthetic_chans": (self.synthetic_chans in (1, 3), ALLOWED["synthetic_chans"]),
            "hflip": (0.0 <= self.hflip <= 1.0, ALLOWED["hflip"]),
            "randaugment": (self.randaugment is None or 0 <= self.randaugment <= 30, ALLOWED["randaugment"]),
            "random_erasing": (0.0 <= self.random_erasing <= 1.0, ALLOWED["random_erasing"]),
            "mixup": (self.mixup >= 0.0, ALLOWED["mixup"]),
            "cutmix": (self.cutmix >= 0.0, ALLOWED["cutmix"]),
            "mixup_prob": (0.0 <= self.mixup_prob <= 1.0, ALLOWED["mixup_prob"]),
            "mixup_switch_prob": (0.0 <= self.mixup_switch_prob <= 1.0, ALLOWED["mixup_switch_prob"]),
            "label_smoothing": (0.0 <= self.label_smoothing < 1.0, ALLOWED["label_smoothing"]),
            "drop_path_rate": (0.0 <= self.drop_path_rate < 1.0, ALLOWED["drop_path_rate"]),
            "epochs": (self.epochs >= 1, ALLOWED["epochs"]),
            "batch_size": (self.batch_size >= 1, ALLOWED["batch_size"]),
            "accum_steps": (self.accum_steps >= 1, ALLOWED["accum_steps"]),
            "lr": (self.lr > 0.0, ALLOWED["lr"]),
            "min_lr": (0.0 <= self.min_lr <= self.lr, f"in [0, lr={self.lr}]"),
            "warmup_lr": (0.0 <= self.warmup_lr <= self.lr, f"in [0, lr={self.lr}]"),
            "warmup_epochs": (0.0 <= self.warmup_epochs <= self.epochs, f"in [0, epochs={self.epochs}]"),
            "weight_decay": (self.weight_decay >= 0.0, ALLOWED["weight_decay"]),
            "betas": (len(self.betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                                                   for b in self.betas), ALLOWED["betas"]),
            "eps": (self.eps > 0.0, ALLOWED["eps"]),
            "clip_grad": (self.clip_grad is None or self.clip_grad > 0.0, ALLOWED["clip_grad"]),
            "ema_decay": (self.ema_decay is None or 0.0 < self.ema_decay < 1.0, ALLOWED["ema_decay"]),
            "aux_weights": (all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                and v >= 0.0 for k, v in self.aux_weights.items()), ALLOWED["aux_weights"]),
            "eval_every": (self.eval_every >= 1, ALLOWED["eval_every"]),
            "eval_batch_size": (self.eval_batch_size >= 1, ALLOWED["eval_batch_size"]),
            "bn_calibration_batches": (self.bn_calibration_batches >= 1, ALLOWED["bn_calibration_batches"]),
            "log_every": (self.log_every >= 1, ALLOWED["log_every"]),
            "num_threads": (self.num_threads is None or self.num_threads >= 1, ALLOWED["num_threads"]),
        }
        for key, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"config value {key}={getattr(self, key)!r} is out of range: must be {allowed}")
        if self.mixup_active and self.batch_size % 2:
            raise ValueError(f"batch_size={self.batch_size} must be even when mixup/cutmix is on (timm Mixup)")

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0.0 or self.cutmix > 0.0) and self.mixup_prob > 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


# What each field does, for ``mixerlab train --help`` (the allowed values are added from the field's
# type and ALLOWED below). One entry per field: tests/test_train_config.py checks that none is missing.
FIELD_HELP: dict[str, str] = {
    "model": "zoo model name (mixerlab list), or timm:NAME for any timm model (random init)",
    "model_args": "model builder arguments / config fields as a YAML mapping, e.g. {depth: 6, num_heads: 4} "
                  "(timm:NAME: timm's keywords)",
    "drop_path_rate": "stochastic-depth rate of the last block (linear from 0 over the blocks)",
    "img_size": "input size in pixels; images are padded or resized to it",
    "recipe": "named recipe the other values start from",
    "data": "dataset (read offline only)",
    "data_dir": "dataset folder (null: the Debian package folder for fashion-mnist)",
    "train_fraction": "class-balanced fraction of the training split (after the validation images)",
    "val_fraction": "class-balanced fixed fraction of the test split used for evaluation",
    "val_images": "images held out of the training split as a fixed, class-balanced validation split, "
                  "evaluated instead of the test split (0: evaluate on the test split)",
    "subset_seed": "seed of the fixed subsets (the same for every run seed)",
    "num_workers": "DataLoader worker processes (0: load in the main process)",
    "synthetic_size": "training images of the synthetic dataset (validation: a quarter as many)",
    "synthetic_classes": "classes of the synthetic dataset",
    "synthetic_chans": "channels of the synthetic dataset",
    "train_crop": "training crop: pad-crop (pad, random crop back), rrc (random resized crop), none",
    "crop_padding": "pad-crop's padding = largest shift in px (null: img_size // 8)",
    "hflip": "probability of a horizontal flip",
    "randaugment": "torchvision RandAugment magnitude, 2 ops (null: off)",
    "random_erasing": "timm RandomErasing probability (pixel mode)",
    "mixup": "Mixup alpha (0: off)",
    "cutmix": "CutMix alpha (0: off)",
    "mixup_prob": "probability of applying Mixup/CutMix to a batch",
    "mixup_switch_prob": "probability of CutMix instead of Mixup when both are on",
    "label_smoothing": "label smoothing of the cross-entropy",
    "epochs": "training epochs",
    "batch_size": "images per process and micro-batch (global batch = batch_size x accum_steps x processes)",
    "accum_steps": "micro-batches per optimiser step (gradient accumulation)",
    "lr": "peak learning rate of AdamW (not rescaled by the batch size)",
    "min_lr": "learning rate at the end of the cosine schedule",
    "warmup_lr": "learning rate at the start of the linear warm-up",
    "warmup_epochs": "epochs of linear warm-up (fractions allowed)",
    "weight_decay": "AdamW weight decay (norms, biases and position embeddings get none)",
    "betas": "AdamW betas as a YAML list, e.g. [0.9, 0.999]",
    "eps": "AdamW epsilon",
    "clip_grad": "largest global gradient norm (null: no clipping)",
    "ema_decay": "decay of the EMA copy of the weights, evaluated and saved beside them (null: no EMA)",
    "aux_weights": "weight of each auxiliary loss term a model returns, by name, as a YAML mapping "
                   "(LaViT: {dp_sym: 1.0, dp_diag: 1.0}; 0 trains without a term)",
    "eval_every": "epochs between evaluations (the last epoch is always evaluated)",
    "eval_batch_size": "batch size of evaluation and BatchNorm calibration",
    "bn_calibration": "re-estimate BatchNorm statistics on training images before each evaluation "
                      "(auto: when the model has BatchNorm)",
    "bn_calibration_batches": "batches of training images used by the BatchNorm calibration",
    "seed": "seed of initialisation, data order and augmentation",
    "deterministic": "deterministic kernels (needed for bit-identical resume)",
    "device": "device (auto: CUDA when available)",
    "num_threads": "CPU intra-op threads, torch.set_num_threads (null: torch's default)",
    "amp": "mixed precision (fp16 only on CUDA)",
    "channels_last": "channels-last memory format for the model and inputs",
    "compile": "torch.compile the model",
    "log_every": "optimiser steps between plain log lines",
    "progress": "progress display (auto: a bar on a terminal, plain lines otherwise)",
    "tensorboard": "also write TensorBoard event files",
}

# The allowed values of the range-checked fields, as the help and the error messages say them.
ALLOWED: dict[str, str] = {
    "model": "a name of mixerlab list, or timm:NAME", "model_args": "a YAML mapping",
    "data_dir": "a folder or null", "val_images": ">= 0", "crop_padding": ">= 0 or null", "img_size": ">= 8",
    "train_fraction": "in (0, 1]", "val_fraction": "in (0, 1]", "num_workers": ">= 0",
    "synthetic_size": ">= 8", "synthetic_classes": ">= 2", "synthetic_chans": "1 or 3",
    "hflip": "in [0, 1]", "randaugment": "in [0, 30] or null", "random_erasing": "in [0, 1]",
    "mixup": ">= 0", "cutmix": ">= 0", "mixup_prob": "in [0, 1]", "mixup_switch_prob": "in [0, 1]",
    "label_smoothing": "in [0, 1)", "drop_path_rate": "in [0, 1)", "epochs": ">= 1",
    "batch_size": ">= 1", "accum_steps": ">= 1", "lr": "> 0", "min_lr": "in [0, lr]",
    "warmup_lr": "in [0, lr]", "warmup_epochs": "in [0, epochs]", "weight_decay": ">= 0",
    "betas": "two values in [0, 1), e.g. [0.9, 0.999]", "eps": "> 0", "clip_grad": "> 0 or null",
    "ema_decay": "in (0, 1) or null",
    "aux_weights": "a mapping of term name -> weight >= 0, e.g. {dp_sym: 1.0, dp_diag: 1.0}",
    "eval_every": ">= 1", "eval_batch_size": ">= 1", "bn_calibration_batches": ">= 1",
    "log_every": ">= 1", "num_threads": ">= 1 or null",
}


def field_help(name: str) -> str:
    """``--help`` text of config field ``name``: what it does, its allowed values, its default."""
    tp = _field_types()[name]
    allowed = ALLOWED.get(name)
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


def _recipe_names() -> list[str]:
    return list(RECIPES)


def recipe_config(name: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of recipe ``name`` (:mod:`.recipes`) with ``overrides``."""
    return dataclasses.replace(TrainConfig(), **{**recipe_values(name), **overrides})


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
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    if base is None:
        name = values.get("recipe") or default_recipe(values.get("data", TrainConfig.data))
        base = recipe_config(name)
        values["recipe"] = name
    lr = values.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):  # keep a lowered lr consistent with the base's min/warm-up LR
        for k in ("min_lr", "warmup_lr"):
            if k not in values and getattr(base, k) > lr:
                values[k] = lr
    try:
        return dataclasses.replace(base, **values)
    except TypeError as e:  # only reachable through a programming error: keys are checked
        raise ValueError(str(e)) from None


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
