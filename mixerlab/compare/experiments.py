"""The five experiments of ``mixerlab compare``: what each trains and how its section reads.

Every experiment trains ``*_micro`` models (about 1M parameters, 32 px) with the same recipe on the
same data; variants are expressed as model-config overrides, never as new classes.

* E1 (FF-only, MetaFormer): every family at matched parameter count.
* E2 (ConViT): ConViT vs DeiT on growing fractions of the training set; GPSA gates after training.
* E3 (DeepViT): plain attention vs re-attention at several depths (width 96); attention collapse.
* E4 (PoolFormer): attention / pooling / random / identity mixers and the pool-pool-attention-
  attention hybrid in one hierarchical backbone.
* E5 (LaViT): less-attention replacing more of each stage's attention, with and without the
  diagonality-preserving loss; token-similarity curves.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..zoo.registry import get_model_info

MICRO_FAMILIES = ("deit_micro", "ffonly_micro", "convit_micro", "deepvit_micro", "poolformer_micro",
                  "identityformer_micro", "lavit_micro")


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment.

    Attributes:
        exp: experiment id (E1..E5).
        label: row label in the report.
        model: zoo name.
        model_args: ``create_model`` overrides as plain data (stored in the run's config).
        train_args: ``TrainConfig`` overrides of this run (e.g. ``train_fraction``, ``aux_weights``).
        x: the experiment's x-axis value (fraction, depth, number of LA layers), if any.
        analyze: run the diagnostics on the trained model.
    """

    exp: str
    label: str
    model: str
    model_args: dict = field(default_factory=dict)
    train_args: dict = field(default_factory=dict)
    x: float | None = None
    analyze: bool = False


def _mixers_data(mixers) -> list:
    return [[name, dict(kw)] for name, kw in mixers]


def _stages_data(cfg) -> list:
    return [{"mixers": _mixers_data(st.mixers)} for st in cfg.stages]


def plan_e1(p) -> list[RunSpec]:
    return [RunSpec("E1", name.removesuffix("_micro"), name) for name in MICRO_FAMILIES]


def plan_e2(p) -> list[RunSpec]:
    runs = []
    for f in p.e2_fractions:
        for name in ("deit_micro", "convit_micro"):
            args = {} if f == p.train_fraction else {"train_fraction": f}
            runs.append(RunSpec("E2", name.removesuffix("_micro"), name, train_args=args, x=f,
                                analyze=(name == "convit_micro" and f == max(p.e2_fractions))))
    return runs


def plan_e3(p) -> list[RunSpec]:
    base = get_model_info("deepvit_micro").config  # width 96, 6 heads, MLP ratio 3
    heads = dict(base.mixers[0][1])
    runs = []
    for d in p.e3_depths:
        for mixer, label in (("attention", "vit"), ("reattention", "deepvit")):
            kw = {"num_heads": heads["num_heads"], "qkv_bias": True}
            runs.append(RunSpec("E3", label, "deepvit_micro",
                                model_args={"mixers": [[mixer, kw]] * d}, x=d,
                                analyze=(d == max(p.e3_depths))))
    return runs


def _e4_stage_mixers(kind: str) -> list:
    cfg = get_model_info("poolformer_micro").config
    heads = (1, 2, 4, 4)  # 24 channels per head in stages 1-3, 44 in stage 4
    per_stage = {
        "attention": [("attention", {"num_heads": h}) for h in heads],
        "pooling": [("pooling", {})] * 4,
        "random": [("random", {})] * 4,
        "identity": [("identity", {})] * 4,
        "hybrid": [("pooling", {}), ("pooling", {}), ("attention", {"num_heads": heads[2]}),
                   ("attention", {"num_heads": heads[3]})],
    }[kind]
    return [{"mixers": [[m, dict(kw)]] * len(st.mixers)} for st, (m, kw) in zip(cfg.stages, per_stage)]


def plan_e4(p) -> list[RunSpec]:
    runs = []
    for kind in ("attention", "pooling", "random", "identity", "hybrid"):
        if kind == "pooling":
            runs.append(RunSpec("E4", kind, "poolformer_micro"))  # the zoo model itself (shared with E1)
        elif kind == "identity":
            runs.append(RunSpec("E4", kind, "identityformer_micro"))
        else:
            runs.append(RunSpec("E4", kind, "poolformer_micro",
                                model_args={"stages": _e4_stage_mixers(kind)}))
    return runs


E5_VARIANTS = {
    # label: (VA layers per stage for stages 2-4 (stage depths 2, 2, 2), dp_weight)
    "vanilla": ((2, 2, 2), 0.0),  # every layer computes its attention (same mixer, mode "va")
    "la_last": ((2, 2, 1), 1.0),  # less-attention in stage 4 only
    "la_all": ((1, 1, 1), 1.0),  # one VA layer per stage, the rest LA (the zoo model)
    "la_all_no_dp": ((1, 1, 1), 0.0),  # same without the diagonality-preserving loss
}


def plan_e5(p) -> list[RunSpec]:
    from ..zoo.lavit import lavit
    runs = []
    for label in p.e5_variants:
        n_va, dp = E5_VARIANTS[label]
        cfg = lavit((1, 2, 2, 2), dims=(32, 64, 96, 160), num_heads=(1, 2, 3, 5), mlp_ratios=(4,) * 4,
                    n_va=(None, *n_va), sr_ratios=(2, 1, 1, 1), stem=(2, 2, 0), img_size=32)
        n_la = sum(2 - v for v in n_va)
        model_args = {} if n_va == (1, 1, 1) else {"stages": _stages_data(cfg)}
        runs.append(RunSpec("E5", label, "lavit_micro", model_args=model_args,
                            train_args={"aux_weights": {"dp_sym": dp, "dp_diag": dp}}, x=n_la, analyze=True))
    return runs


PLANS = {"E1": plan_e1, "E2": plan_e2, "E3": plan_e3, "E4": plan_e4, "E5": plan_e5}

TITLES = {
    "E1": "E1: every mixer at matched parameter count (FF-only, MetaFormer)",
    "E2": "E2: sample efficiency, ConViT vs DeiT (ConViT)",
    "E3": "E3: depth and attention collapse, attention vs re-attention (DeepViT)",
    "E4": "E4: what matters in MetaFormer: mixers in one hierarchical backbone (PoolFormer)",
    "E5": "E5: less attention at each stage (LaViT)",
}

CLAIMS = {
    "E1": "FF-only: a stack of feed-forward layers does surprisingly well without attention "
          "(74.9% vs 77.9/79.9% for ViT-B/DeiT on ImageNet). MetaFormer: the block architecture "
          "matters more than the specific token mixer.",
    "E2": "ConViT: GPSA's soft convolutional prior beats DeiT, most of all with little data "
          "(+37% relative at 5% of ImageNet, +2% at 100%); late GPSA layers turn content-based.",
    "E3": "DeepViT: deep ViTs suffer attention collapse (adjacent layers' maps become alike: more "
          "'similar blocks' with depth); re-attention keeps maps diverse and lets accuracy grow with depth.",
    "E4": "PoolFormer: with the MetaFormer block, even parameter-free pooling is competitive; identity "
          "mixing is still decent (74.3% vs 77.2% on ImageNet); pooling early + attention late is best.",
    "E5": "LaViT: computing attention only in a few layers per stage and reusing it through linear "
          "transforms loses nothing while saving compute; the diagonality-preserving loss helps.",
}


def plan(preset) -> list[RunSpec]:
    runs = []
    for exp in preset.experiments:
        runs.extend(PLANS[exp](preset))
    return runs


def with_train_args(spec: RunSpec, **extra) -> RunSpec:
    return dataclasses.replace(spec, train_args={**spec.train_args, **extra})
