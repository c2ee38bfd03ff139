"""Presets of ``mixerlab compare``: budgets and data (the model scale, how much data, how many
epochs, batch size, the recipe, how learning rates are chosen, seeds, which experiments, how many
images the diagnostics read, further training overrides). What each experiment varies lives in its
module (``experiments/``); a preset changes an experiment's knobs through ``knobs``
(``{"E3": {"depths": (4, 8, 12)}}``).

Every preset holds a fixed, class-balanced validation split of ``val_images`` training images out
(the same images for every run); the loop evaluates on it (validation curves, the LR sweep), and
the test split is read once per run, after training, for the reported numbers.

Throughput behind the arithmetic: images/s of one training run, one thread (what each ``--jobs``
worker gets), measured in the committed quick run (``docs/results/compare-quick/results.json``,
``train_img_s``: the training loop with data loading, 2 runs side by side on the 2-core machine,
no other jobs): deit 1,246, ffonly 984, convit 1,339, deepvit 1,280, poolformer 636,
identityformer 888, lavit 801; E3's 4-block ViT 1,859, 8-block ViT 1,008 and DeepViT 783; E4's
attention backbone 468, random 858, hybrid 607; E5's vanilla LaViT 847, LaViT without the DP loss
700. (The model step alone, ``scripts/bench_compare_scale.py``, is 1.0-1.2x these: the batched
data path, ``mixerlab.data.transforms.ArrayTransform``, costs ~1/40 of a step; the per-image
torchvision pipeline it replaced cost more than the step itself, 100-390 images/s per run in the
previous quick run.) E4's v2 rows, model step only: identity 824, random 766, pooling 634,
sepconv 382, CAFormer 471.

Sizes (2 CPU cores, ``--jobs 2``: two runs side by side, one thread each):

* ``smoke``: synthetic data, seconds; for tests.
* ``quick`` (budget 900 s; measured 614 s): the CPU scale (``CPU_SCALE``), 27,500 training images
  (half the pool of 55,000 left after the 5,000 validation images) x 2 epochs = 54,912 images
  seen per run (858 steps of 64), two validation points per run, the whole 10,000-image test split.
  17 distinct runs (E1's seven families; E2 at 5 % and 50 %, sharing 50 % with E1; E3 ViT/DeepViT
  at 4 and 8 blocks, DeepViT-4 shared with E1; E4 attention/random/hybrid, pooling/identity shared
  with E1; E5 vanilla and no-DP, LA-everywhere shared with E1). Time = images seen / images/s
  summed over runs: E1 54,912 x (1/1246 + 1/984 + 1/1339 + 1/1280 + 1/636 + 1/888 + 1/801) = 403 s;
  E2's 5 % runs 5,376 images each, 7 s; E3 54,912 x (1/1859 + 1/1008 + 1/783) = 154 s; E4 54,912 x
  (1/468 + 1/858 + 1/607) = 272 s; E5 54,912 x (1/847 + 1/700) = 143 s; total 979 s of one core
  (the measured sum of the runs' training loops, evaluation included), 490 s on two; plus start-up,
  the test predictions and the analyses: 614 s of wall time measured (``time mixerlab compare
  --preset quick``). E4's v2 rows are left out (``knobs``): five more runs of ~54,912 x (1/824 +
  1/766 + 1/634 + 1/382 + 1/471) = 485 s of one core, ~250 s on two, would bring quick to ~870 s,
  too close to its budget; ``standard`` and ``full`` run them. Learning rates: the committed
  table ``lr_table_quick.json`` from ``python scripts/sweep_lr.py --preset quick`` (3 LRs per
  model, on 5 % of the pool for one epoch). Measured: every E1 family 73.3-81.0 % top-1 on the
  10,000 test images (target >= 70 %).
* ``standard`` (budget 90 min; measured 83.5 min): the CPU scale, the whole pool (55,000) x 6 epochs =
  330,000 images per run, an LR sweep inside the preset (3 LRs per model on half the pool for one
  epoch), E2 at 2 %, 10 % and 100 %, E4's v2 rows. Time from the quick run's per-image costs
  (seconds of one core per image seen, summed over an experiment's runs): E1 0.00734 x 330,000 =
  2,422 s; E2's small runs 39,600 images x 2 models, ~60 s; E3 0.00280 x 330,000 = 924 s; E4
  0.00495 x 330,000 = 1,635 s; E4 v2 0.00883 x 330,000 = 2,914 s (model-step rates: an upper
  bound on speed); E5 0.00260 x 330,000 = 858 s; the sweep 24 runs x 27,500 images x ~0.00115 s =
  760 s; total ~9,570 s of one core, ~4,790 s on two, plus evaluation and analyses (~300 s): about
  85 min; measured 83.5 min of wall time (139 min of training summed over the 25 runs;
  ``time mixerlab compare --preset standard``, ``docs/results/compare-standard/``). Measured E1
  test top-1 on the 10,000 test images: deit 84.48, ffonly 86.97, convit 85.01, deepvit 84.38,
  poolformer 89.83, identityformer 89.50, lavit 87.07 (resnet18 anchor 90.38): the best family
  misses 90 % by 0.17 points and DeiT / DeepViT miss 85 % by 0.5-0.6. Capacity is not the lever:
  on the validation split DeiT at depth 6 gains +0.62 points (85.44; 1.7x the time), width 80
  loses 0.22 (``mixerlab train --model deit_micro --model-args "{img_size: 28, patch_size: 7,
  dim: 64, num_heads: 4, depth: 6}" --img-size 28 --recipe small --data fashion-mnist
  --val-images 5000 --epochs 6 --batch-size 64 --lr 0.004 --warmup-epochs 0.3 --eval-every 1
  --num-threads 1``; ``dim: 80`` at depth 4 for the width); deeper isotropic models for four families would add ~5-7 min and take the preset
  past its budget. What limits them is the images seen (6 epochs in the budget).
  The sweep's grid edge: six of nine models chose an edge LR (0.004 five times, 0.001 once).
  Extending the grid (``sweep_extend=2``, measured 2026-12-03 on the same kind of machine with
  ``run_compare(dataclasses.replace(get_preset("standard"), sweep_extend=2), experiments=["E1"],
  jobs=2)``, stopped after E1's first six runs) moved
  ffonly, poolformer and resnet18 to 0.016 and identityformer to 0.008 on the one-epoch sweep
  (val 76.72 / 77.74 / 85.22 / 77.16 vs 73.70 / 77.16 / 83.82 / 76.62 at 0.004), but at the full
  6 epochs the validation top-1 moved by -0.58 (ffonly 86.68 vs 87.26), -0.06 (poolformer 89.58
  vs 89.64) and +0.50 (identityformer 89.88 vs 89.38): a short sweep favours large LRs, and the
  changes are within what a rerun at unchanged LRs moves (deit, convit, deepvit: -0.08, +0.08,
  +0.60; a later commit, the same seed). So ``standard`` keeps the three-value grid; ``full``,
  whose five-epoch sweep on the whole pool is closer to its training length, extends it.
* ``full``: sized for one GPU: the *_micro models as the zoo defines them (32 px), the full pool,
  30 epochs, three seeds, an LR sweep inside. No GPU result exists yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# The CPU scale of ``quick`` and ``standard``: builder arguments of the ``*_micro`` zoo entries
# (``ZooEntry.resolve(**overrides)``), not new classes. Native 28 x 28 Fashion-MNIST grid (no padding
# to 32): the isotropic families take 7 x 7 patches (16 tokens), width 64, 4 blocks (FF-only 6: its
# token-FF blocks are lighter, so 6 match DeiT's parameters); the hierarchical ones widths
# 16/32/64/96 on 14/7/4/2 grids. LaViT keeps 32 px: its attention residual needs each stage's grid
# to be half the previous one (16/8/4/2). Matched in parameters within the isotropic families
# (0.17-0.22 M) and in MACs within 2x overall (3.0-6.3 M MACs vs 36-90 M at the *_micro scale);
# the hierarchical ones carry more parameters (0.38 M) for the same MACs. "img_size" goes to the
# training config (the data is read at that size), the rest to the builder.
CPU_SCALE: dict[str, dict] = {
    "deit_micro": dict(img_size=28, patch_size=7, dim=64, num_heads=4, depth=4),
    "ffonly_micro": dict(img_size=28, patch_size=7, dim=64, depth=6),
    "convit_micro": dict(img_size=28, patch_size=7, num_heads=4, head_dim=16, depth=4, local_layers=3),
    "deepvit_micro": dict(img_size=28, patch_size=7, dim=64, num_heads=4, depth=4),
    "poolformer_micro": dict(img_size=28, depths=(2, 2, 4, 2), dims=(16, 32, 64, 96)),
    "identityformer_micro": dict(img_size=28, depths=(2, 2, 4, 2), dims=(16, 32, 64, 96)),
    "poolformerv2_micro": dict(img_size=28, depths=(2, 2, 4, 2), dims=(16, 32, 64, 96)),
    "lavit_micro": dict(img_size=32, dims=(16, 32, 64, 96), num_heads=(1, 1, 2, 3)),
    # E1's CNN anchor: ResNet-18's blocks at the hierarchical families' widths (0.50 M params,
    # 2.8 M MACs at 28 px; timm keywords)
    "timm:resnet18": dict(img_size=28, channels=(16, 32, 64, 96), stem_width=16),
}


@dataclass(frozen=True)
class Preset:
    name: str
    data: str = "fashion-mnist"
    train_fraction: float = 1.0  # base fraction of the training pool (training split minus validation)
    val_fraction: float = 1.0  # fraction of the test split used for the reported numbers
    val_images: int = 5000  # fixed class-balanced validation split held out of the training split
    epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-3  # used for a model the LR table / sweep has no entry for
    warmup_epochs: float = 0.5
    seeds: tuple = (0,)
    recipe: str = "small"  # mixerlab.engine.recipes
    scale: dict | None = None  # zoo name -> builder arguments (+ img_size); None: the zoo as it is
    lr_table: str | None = None  # committed table (mixerlab/compare/<file>) of the LR per zoo name
    sweep_lrs: tuple = ()  # LRs tried per E1 family on the validation split before the runs
    sweep_fraction: float = 0.25  # sweep runs: fraction of the training pool ...
    sweep_epochs: int = 1  # ... and epochs
    # rounds of extension: where a model's best LR is the largest (smallest) tried, the next value
    # of the geometric grid above (below) is tried too, so no chosen LR sits on the grid's edge
    sweep_extend: int = 0
    experiments: tuple | None = None  # experiment ids; None: every registered one, in order
    analysis_images: int = 64
    train_overrides: dict = field(default_factory=dict)  # any further TrainConfig fields
    knobs: dict = field(default_factory=dict)  # experiment id -> {knob: value} (see experiments/)


PRESETS = {
    "smoke": Preset(
        "smoke", data="synthetic", train_fraction=1.0, val_images=16, epochs=1, batch_size=16, lr=1e-3,
        warmup_epochs=0.0, analysis_images=8,
        train_overrides=dict(synthetic_size=64, bn_calibration_batches=2, num_threads=1),
        knobs={"E2": {"fractions": (0.5, 1.0)}, "E3": {"depths": (2, 3)},
               "E4": {"v2_variants": ("identity", "random", "caformer")},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    "quick": Preset(
        "quick", train_fraction=0.5, val_fraction=1.0, val_images=5000, epochs=2, batch_size=64,
        warmup_epochs=0.1, scale=CPU_SCALE, lr_table="lr_table_quick.json", analysis_images=64,
        sweep_lrs=(1e-3, 2e-3, 4e-3), sweep_fraction=0.05, sweep_epochs=1,  # what made the table
        train_overrides=dict(eval_every=1, bn_calibration_batches=10),
        knobs={"E2": {"fractions": (0.05, 0.5)}, "E3": {"depths": (4, 8)}, "E4": {"v2_variants": ()},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    "standard": Preset(
        "standard", train_fraction=1.0, val_fraction=1.0, val_images=5000, epochs=6, batch_size=64,
        warmup_epochs=0.3, scale=CPU_SCALE, sweep_lrs=(1e-3, 2e-3, 4e-3), sweep_fraction=0.5,
        sweep_epochs=1, analysis_images=128,  # sweep_extend off: see the docstring
        train_overrides=dict(eval_every=1, bn_calibration_batches=20),
        knobs={"E2": {"fractions": (0.02, 0.1, 1.0)}, "E3": {"depths": (4, 8)},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    "full": Preset(
        "full", train_fraction=1.0, val_fraction=1.0, val_images=5000, epochs=30, batch_size=128,
        warmup_epochs=3.0, seeds=(0, 1, 2), sweep_lrs=(5e-4, 1e-3, 2e-3), sweep_fraction=1.0,
        sweep_epochs=5, sweep_extend=2, analysis_images=256,
        knobs={"E2": {"fractions": (0.05, 0.1, 0.25, 0.5, 1.0)}, "E3": {"depths": (4, 8, 12, 16)}}),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}") from None
