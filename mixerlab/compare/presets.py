"""Presets of ``mixerlab compare``: budgets and data (how much data, how many epochs, batch size,
learning rate, seeds, which experiments, how many images the diagnostics read, further training
overrides). What each experiment varies lives in its module (``experiments/``); a preset changes an
experiment's knobs through ``knobs`` (``{"E3": {"depths": (4, 8, 12)}}``).

Sizes (2 CPU cores unless stated; measured wall times are in the committed reports):
* ``smoke``: synthetic data, seconds; for tests.
* ``quick``: 15 minutes or less on 2 CPU cores: 5% of Fashion-MNIST (3,000 images), 2 epochs, one
  seed, fewer variants, 1,000 test images. Enough to show every table and plot, not to rank
  close mixers.
* ``standard``: about 2 hours on 2 CPU cores (minutes on one GPU): 10% of the training set,
  5 epochs, two seeds, the full test set (27 distinct configurations x 2 seeds; the estimate
  scales the measured ``quick`` run times by the images seen).
* ``full``: sized for one GPU: the full training set, 30 epochs, three seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    data: str = "fashion-mnist"
    train_fraction: float = 0.05  # base fraction of the training set for every run
    val_fraction: float = 1.0  # fraction of the test split used for evaluation
    epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-3
    warmup_epochs: float = 0.5
    seeds: tuple = (0,)
    experiments: tuple | None = None  # experiment ids; None: every registered one, in order
    analysis_images: int = 64
    train_overrides: dict = field(default_factory=dict)  # any further TrainConfig fields
    knobs: dict = field(default_factory=dict)  # experiment id -> {knob: value} (see experiments/)


PRESETS = {
    "smoke": Preset(
        "smoke", data="synthetic", train_fraction=1.0, epochs=1, batch_size=16, lr=1e-3,
        warmup_epochs=0.0, analysis_images=8,
        train_overrides=dict(synthetic_size=64, randaugment=None, mixup=0.0, cutmix=0.0,
                             random_erasing=0.0, bn_calibration_batches=2, num_threads=1),
        knobs={"E2": {"fractions": (0.5, 1.0)}, "E3": {"depths": (2, 3)},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    "quick": Preset(
        "quick", train_fraction=0.05, val_fraction=0.1, epochs=2, batch_size=32, lr=1e-3,
        warmup_epochs=0.2, analysis_images=64,
        # Few epochs on little data: the light end of the DeiT recipe, evaluated once at the end.
        train_overrides=dict(randaugment=None, mixup=0.0, cutmix=0.0, random_erasing=0.0,
                             ema_decay=None, eval_every=2, bn_calibration_batches=10),
        knobs={"E2": {"fractions": (0.01, 0.05)}, "E3": {"depths": (4, 8)},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    "standard": Preset(
        "standard", train_fraction=0.1, val_fraction=1.0, epochs=5, batch_size=64, lr=1e-3,
        warmup_epochs=0.5, seeds=(0, 1), analysis_images=128,
        train_overrides=dict(randaugment=None, mixup=0.0, cutmix=0.0, random_erasing=0.0,
                             ema_decay=None, eval_every=5, bn_calibration_batches=20),
        knobs={"E2": {"fractions": (0.01, 0.02, 0.05, 0.1)}, "E3": {"depths": (4, 8, 12)}}),
    "full": Preset(
        "full", train_fraction=1.0, val_fraction=1.0, epochs=30, batch_size=128, lr=1e-3,
        warmup_epochs=3.0, seeds=(0, 1, 2), analysis_images=256,
        knobs={"E2": {"fractions": (0.05, 0.1, 0.25, 0.5, 1.0)}, "E3": {"depths": (4, 8, 12, 16)}}),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}") from None
