"""Presets of ``mixerlab compare``: budgets and data (the model scale, how much data, how many
epochs, batch size, the recipe, how learning rates are chosen, seeds, which experiments, how many
images the diagnostics read, further training overrides). What each experiment varies lives in its
module (``experiments/``); a preset changes an experiment's knobs through ``knobs``
(``{"E3": {"depths": (4, 8, 12)}}``).

Every preset holds a fixed, class-balanced validation split of ``val_images`` training images out
(the same images for every run); the loop evaluates on it (validation curves, the LR sweep), and
the test split is read once per run, after training, for the reported numbers.

The budgets and the measurements behind them (images/s per family, the time arithmetic of each
preset, why ``standard`` keeps a three-value LR grid) are in ``docs/compare_presets.md``.

* ``smoke``: synthetic data, seconds; for tests (E6 at toy size, ``E6_TOY``).
* ``quick`` (budget 900 s on 2 CPU cores): the CPU scale (``CPU_SCALE``), half the training pool x 2
  epochs, the committed LR table ``lr_table_quick.json`` (``python scripts/sweep_lr.py --preset
  quick``), E4's v2 rows left out (``knobs``). One seed: its seed term comes from the committed
  calibration table ``calibration_quick.json`` (5 seeds of every configuration quick trains,
  ``mixerlab compare --preset quick --seeds 0 1 2 3 4 --save-calibration ...``; E2's entries remade
  with ``--experiments E2``); with ``--seeds`` (>= 2) the run's own seeds give it. E2 trains its
  own runs at 5x quick's images (``{"E2": {"epochs": 10}}``: to a plateau, ConViT's 1/f scaling
  kept). E6 (dense) is left
  out (``experiments`` lists E1-E5): its six fine-tuning runs cost more than the whole budget.
* ``standard`` (budget 90 min on 2 CPU cores): the CPU scale, three seeds (0, 1, 2: every interval
  takes its seed term from the run's own seeds), half the training pool x 3 epochs (1.5x quick's
  images per run), an LR sweep on the validation split inside the preset (a quarter of the pool,
  one epoch), E2 at 5 % and 50 % on its own budget of 4x the preset's images (12 epochs of half the
  pool, 330,000 images per run; under ConViT's protocol the 5 % runs train 120 epochs of their
  subset), so that its runs end on a flat validation curve, E6 for one pass over its 1,000
  training scenes (``iters=125``). What gave way to pay
  for three seeds (it trained one seed of the whole pool x 6 epochs before issue 28): epochs and
  images per run, and E4's v2 rows (now in ``full`` only); the arithmetic is in
  ``docs/compare_presets.md``.
* ``full``: sized for one GPU: the ``*_micro`` models as the zoo defines them (32 px), the full
  pool, 30 epochs, three seeds, an extended LR sweep inside (~60 min on an H200: more than the
  15-minute loan of a device).
* ``gpu`` (budget 8 min on one H100/H200 from a cold start; needs CUDA): the ``*_micro`` models,
  three seeds per run, the whole pool x 5 epochs at batch 512 in bf16, 8 runs side by side, an LR
  sweep inside; E2 at 10 % and 100 % with ConViT's epoch scaling; E4's v2 rows left out.
  ``--dry-run`` (:func:`dry_run_preset`) tries it on a CPU at toy sizes. E6's dense runs train on
  the host's CPU (the dense engine has no CUDA path): the 8 minutes do not cover them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelScale:
    """A zoo model at a preset's scale: the run's input size (a ``TrainConfig`` field: the data is
    read at that size and the model built for it) and the builder arguments (``model_args``)."""

    img_size: int
    model_args: dict = field(default_factory=dict)


# The CPU scale of ``quick`` and ``standard``: builder arguments of the ``*_micro`` zoo entries
# (``ZooEntry.resolve(**overrides)``), not new classes. Native 28 x 28 Fashion-MNIST grid (no padding
# to 32): the isotropic families take 7 x 7 patches (16 tokens), width 64, 4 blocks (FF-only 6: its
# token-FF blocks are lighter, so 6 match DeiT's parameters); the hierarchical ones widths
# 16/32/64/96 on 14/7/4/2 grids. LaViT keeps 32 px: its attention residual needs each stage's grid
# to be half the previous one (16/8/4/2). Matched in parameters within the isotropic families
# (0.17-0.22 M) and in MACs within 2x overall (3.0-6.3 M MACs vs 36-90 M at the *_micro scale);
# the hierarchical ones carry more parameters (0.38 M) for the same MACs.
_HIER = dict(depths=(2, 2, 4, 2), dims=(16, 32, 64, 96))
CPU_SCALE: dict[str, ModelScale] = {
    "deit_micro": ModelScale(28, dict(patch_size=7, dim=64, num_heads=4, depth=4)),
    "ffonly_micro": ModelScale(28, dict(patch_size=7, dim=64, depth=6)),
    "convit_micro": ModelScale(28, dict(patch_size=7, num_heads=4, head_dim=16, depth=4, local_layers=3)),
    "deepvit_micro": ModelScale(28, dict(patch_size=7, dim=64, num_heads=4, depth=4)),
    "poolformer_micro": ModelScale(28, dict(_HIER)),
    "identityformer_micro": ModelScale(28, dict(_HIER)),
    "poolformerv2_micro": ModelScale(28, dict(_HIER)),
    "lavit_micro": ModelScale(32, dict(dims=(16, 32, 64, 96), num_heads=(1, 1, 2, 3))),
    # E1's CNN anchor: ResNet-18's blocks at the hierarchical families' widths (0.50 M params,
    # 2.8 M MACs at 28 px; timm keywords)
    "timm:resnet18": ModelScale(28, dict(channels=(16, 32, 64, 96), stem_width=16)),
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
    scale: dict | None = None  # zoo name -> ModelScale (input size, builder arguments); None: the zoo as it is
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
    # committed seed-calibration table (mixerlab/compare/<file>, ``mixerlab.compare.calibration``):
    # the seed term of every interval when the preset trains fewer than 5 seeds
    calibration: str | None = None
    device: str | None = None  # TrainConfig.device of every run; "cuda": refused on a machine without one
    jobs: int | None = None  # runs trained at once when the caller does not say (CLI --jobs); None: 2 (CLI)


# E6 at toy size (the smoke preset and every --dry-run): tiny scenes, a few iterations, a small
# bootstrap; it checks the plumbing (backbone runs -> dense runs -> statistics -> report), not numbers
E6_TOY = dict(scenes_train=4, scenes_test=4, canvas=64, iters=2, batch_size=2, n_boot=20)

PRESETS = {
    "smoke": Preset(
        "smoke", data="synthetic", train_fraction=1.0, val_images=16, epochs=1, batch_size=16, lr=1e-3,
        warmup_epochs=0.0, analysis_images=8,
        train_overrides=dict(synthetic_size=64, bn_calibration_batches=2, num_threads=1),
        knobs={"E2": {"fractions": (0.5, 1.0)}, "E3": {"depths": (2, 3)},
               "E4": {"v2_variants": ("identity", "random", "caformer")},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}, "E6": dict(E6_TOY)}),
    "quick": Preset(
        "quick", train_fraction=0.5, val_fraction=1.0, val_images=5000, epochs=2, batch_size=64,
        warmup_epochs=0.1, scale=CPU_SCALE, lr_table="lr_table_quick.json", analysis_images=64,
        sweep_lrs=(1e-3, 2e-3, 4e-3), sweep_fraction=0.05, sweep_epochs=1,  # what made the table
        experiments=("E1", "E2", "E3", "E4", "E5"),  # E6's dense fine-tuning does not fit 15 minutes
        train_overrides=dict(eval_every=1, bn_calibration_batches=10),
        # the seed term of a one-seed run: 5 seeds of every configuration quick trains, made by
        # ``mixerlab compare --preset quick --seeds 0 1 2 3 4 --save-calibration ...``
        calibration="calibration_quick.json",
        # E2 trains its own runs, 5x quick's images (10 epochs of half the pool at every fraction):
        # trained to a plateau (issue 28; docs/compare_presets.md: 8 left DeiT at 5 % rising)
        knobs={"E2": {"fractions": (0.05, 0.5), "epochs": 10}, "E3": {"depths": (4, 8)}, "E4": {"v2_variants": ()},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
    # Three seeds within 90 minutes (docs/compare_presets.md, "standard since issue 28"): half the
    # pool x 3 epochs (82,500 images per run, 1.5x quick), E4's v2 rows moved to ``full``, E6 for one
    # pass over its 1,000 training scenes (125 iterations at batch 8), the LR sweep on a quarter of
    # the pool; every interval takes its seed term from the run's own three seeds.
    "standard": Preset(
        "standard", train_fraction=0.5, val_fraction=1.0, val_images=5000, epochs=3, batch_size=64,
        warmup_epochs=0.2, seeds=(0, 1, 2), scale=CPU_SCALE, sweep_lrs=(1e-3, 2e-3, 4e-3), sweep_fraction=0.25,
        sweep_epochs=1, analysis_images=128,  # sweep_extend off: see the docstring
        train_overrides=dict(eval_every=1, bn_calibration_batches=20),
        # E2 at ConViT's smallest fraction (5 %) and the preset's fraction, 4x the preset's images
        # (12 epochs of half the pool; at 5 % epochs x 1/f: 120 epochs of its subset) so that every E2
        # run ends on a flat validation curve (docs/compare_presets.md)
        knobs={"E2": {"fractions": (0.05, 0.5), "epochs": 12}, "E3": {"depths": (4, 8)}, "E4": {"v2_variants": ()},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}, "E6": {"iters": 125}}),
    "full": Preset(
        "full", train_fraction=1.0, val_fraction=1.0, val_images=5000, epochs=30, batch_size=128,
        warmup_epochs=3.0, seeds=(0, 1, 2), sweep_lrs=(5e-4, 1e-3, 2e-3), sweep_fraction=1.0,
        sweep_epochs=5, sweep_extend=2, analysis_images=256,
        knobs={"E2": {"fractions": (0.05, 0.1, 0.25, 0.5, 1.0)}, "E3": {"depths": (4, 8, 12, 16)}}),
    # One H100/H200 in <= 8 min from a cold start (arithmetic in docs/compare_presets.md): the
    # *_micro models as the zoo defines them (32 px), 3 seeds, the whole pool x 5 epochs at batch
    # 512 in bf16, 8 runs side by side, an LR sweep inside (3 LRs per model, a quarter of the pool x 2
    # epochs, extended once past an edge), E2 at 10 % (epochs x 10, ConViT's protocol) and 100 %,
    # E4's v2 rows left out (5 configurations x 3 seeds would not fit).
    "gpu": Preset(
        "gpu", train_fraction=1.0, val_fraction=1.0, val_images=5000, epochs=5, batch_size=512, lr=4e-3,
        warmup_epochs=0.5, seeds=(0, 1, 2), sweep_lrs=(2e-3, 4e-3, 8e-3), sweep_fraction=0.25, sweep_epochs=2,
        sweep_extend=1, analysis_images=256, device="cuda", jobs=8,
        train_overrides=dict(eval_every=1, bn_calibration_batches=10, amp="bf16"),
        knobs={"E2": {"fractions": (0.1, 1.0)}, "E3": {"depths": (4, 8)}, "E4": {"v2_variants": ()},
               "E5": {"variants": ("vanilla", "la_all", "la_all_no_dp")}}),
}


def dry_run_preset(p: Preset) -> Preset:
    """``p`` shrunk to toy sizes on the CPU (``mixerlab compare --preset NAME --dry-run``): the same
    experiments and variants, its first two seeds and the first two LRs of its sweep grid, on 64
    synthetic images, one epoch of the CPU scale (``CPU_SCALE``) of its models, E2 at 50 % and
    100 % and E3 at 2 and 3 blocks, E6 at toy size (``E6_TOY``), no calibration table, on the CPU. What it checks is the
    plumbing (every run builds, trains, is predicted, analysed and reported, the seed-aware
    statistics have two seeds to work with), not the numbers."""
    import dataclasses
    smoke = PRESETS["smoke"]
    knobs = {k: dict(v) for k, v in (p.knobs or {}).items()}
    knobs.setdefault("E2", {})["fractions"] = (0.5, 1.0)
    knobs.setdefault("E3", {})["depths"] = (2, 3)
    knobs.setdefault("E6", {}).update(E6_TOY)
    return dataclasses.replace(
        smoke, name=f"{p.name}-dry-run", experiments=p.experiments, seeds=tuple(p.seeds[:2]), scale=CPU_SCALE,
        sweep_lrs=tuple(p.sweep_lrs[:2]), sweep_fraction=1.0, sweep_epochs=1, sweep_extend=0, knobs=knobs,
        device="cpu", train_overrides={**smoke.train_overrides, "device": "cpu"})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}") from None
