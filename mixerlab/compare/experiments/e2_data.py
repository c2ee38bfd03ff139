"""E2: sample efficiency, ConViT vs DeiT on growing fractions of the training set; GPSA gates
after training.

Claim tested: ConViT (d'Ascoli et al., arXiv 2103.10697; facebookresearch/convit): gated
positional self-attention's soft convolutional prior beats DeiT (Touvron et al., arXiv
2012.12877), most of all with little data; late GPSA layers turn content-based.

Verdict criteria (fixed before the run, from the paper's effect): ConViT's Table 2 (ConViT-S vs
DeiT-S on class-balanced subsets of ImageNet) gives +13.0 points at 5 % of the data (47.8 vs 34.8,
+37 % relative), shrinking to +1.5 at 100 % (81.4 vs 79.9); ahead at every fraction. Two parts,
both needed: **ConViT minus DeiT at the smallest fraction > 0**, and **the gap at the smallest
fraction minus the gap at the largest > 0** (the advantage shrinks with data; a difference of
differences over the same test images, models paired by seed).

Protocol (ConViT section 4, "sample efficiency", and Table 2's caption): at a fraction f of the
data the number of epochs is multiplied by 1/f, "so that the total number of images presented to
the model remains constant" -- the number of optimiser steps is the same at every fraction, and a
small-fraction run is not cut short (the paper's code does not rescale by itself: the epochs are
passed in). Here the unit is E2's budget ``E`` in epochs of the preset's fraction (the ``epochs``
knob; by default the preset's own epochs): a run on fraction f of the pool, when the preset trains
on ``train_fraction``, trains ``E * train_fraction / f`` epochs (rounded), with its warm-up and its
evaluation interval scaled alike, so every fraction sees as many images and has as many
validation points (``scale_epochs``; off: ``E`` epochs at every fraction). Each seed draws its own
class-balanced subset (``subset_seed`` = the run's seed; the engine draws the validation split
with the same seed, so it moves with the subset, never overlapping it); the runs at the preset's
own fraction keep E1's fixed subset, and are E1's runs when ``E`` is the preset's epochs.

Trained to the end, not to the budget of the other experiments: ConViT's Table 2 compares models
trained to convergence at every fraction, and a comparison of two models still learning measures
how fast they learn, not what they learn. ``quick`` and ``standard`` therefore give E2 five and
four times their own epochs (``{"E2": {"epochs": ...}}``), so the cosine schedule has run its course well
after the curve bends; the report's plateau check (``report.plateau_check``) marks any run whose
validation top-1 still rises by more than its seed spread per epoch of the preset's fraction at the
end.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import (decide, _diff, _get, _heatmaps, _lines, _val_curves, markdown_table, paired_test, tests_table,
                      verdict_sentence)
from ..stats import Criterion
from .base import Experiment, RunSpec, Section, register_experiment


@register_experiment
@dataclass(frozen=True)
class SampleEfficiency(Experiment):
    """Knobs: ``fractions``: absolute fractions of the training set (a fraction equal to the
    preset's ``train_fraction`` is the preset's own run, shared with E1 unless ``epochs`` differs
    from the preset's); ``models``: the zoo names compared at each fraction; ``analyzed``: the
    model whose GPSA gates are read at the largest fraction; ``scale_epochs``: ConViT's 1/f epoch
    scaling; ``epochs``: E2's budget in epochs of the preset's fraction (None: the preset's)."""

    id = "E2"
    title = "E2: sample efficiency, ConViT vs DeiT (ConViT)"
    claim = ("ConViT: GPSA's soft convolutional prior beats DeiT, most of all with little data "
             "(+37% relative at 5% of ImageNet, +2% at 100%); late GPSA layers turn content-based.")

    criteria = (
        Criterion("convit - deit at the smallest fraction", ">", 0.0,
                  "ConViT Table 2: +13.0 points at 5 % of ImageNet"),
        Criterion("(convit - deit) at the smallest - at the largest fraction", ">", 0.0,
                  "ConViT Table 2: the gain shrinks from +13.0 (5 %) to +1.5 (100 %)"),
    )

    fractions: tuple = (0.01, 0.025, 0.05)
    models: tuple = ("deit_micro", "convit_micro")
    analyzed: str = "convit_micro"
    scale_epochs: bool = True  # ConViT's protocol: epochs x (preset's fraction / f), same number of steps
    # E2's budget in epochs of the preset's fraction (None: the preset's ``epochs``, and the runs at
    # the preset's fraction are E1's). More than the preset's: E2 trains its own runs at every
    # fraction, long enough for the validation curves to flatten (issue: no verdict on unfinished
    # training), at the same number of images per run at every fraction.
    epochs: int | None = None

    def train_args(self, preset, f: float) -> dict:
        """The TrainConfig overrides of a run on fraction ``f`` of the pool (module docstring)."""
        budget = self.epochs or preset.epochs
        k = preset.train_fraction / f if (self.scale_epochs and f < preset.train_fraction) else 1.0
        args = {} if f == preset.train_fraction else {"train_fraction": f}
        if k != 1.0 or budget != preset.epochs:
            every = (preset.train_overrides or {}).get("eval_every", 1)
            args.update(epochs=max(1, round(budget * k)), warmup_epochs=preset.warmup_epochs * k,
                        eval_every=max(1, round(every * k)))
        return args

    def plan(self, preset) -> list[RunSpec]:
        runs = []
        for f in self.fractions:
            for name in self.models:
                runs.append(RunSpec(self.id, name.removesuffix("_micro"), name, train_args=self.train_args(preset, f),
                                    x=f, subset_per_seed=f < preset.train_fraction,
                                    analyze=(name == self.analyzed and f == max(self.fractions))))
        return runs

    def section(self, aggs, analyses, fig_dir) -> Section:
        figs = [_lines(aggs, "fraction of the training set", "E2: sample efficiency",
                       fig_dir / "e2_acc_vs_fraction.png", logx=True)]
        for name, rec in analyses.items():
            g = rec.get("gpsa_gates") or {}
            if g:
                layers = list(g)
                mat = [[v for v in g[l]["gate"]] for l in layers]
                heads = [f"h{i}" for i in range(len(mat[0]))]
                figs.append(_heatmaps([("sigmoid(lambda): 1 = positional, 0 = content", mat, (layers, heads))],
                                      f"E2: GPSA gates after training ({name})", fig_dir / "e2_gates.png",
                                      xlabel="head", ylabel="GPSA layer", cbar="gate sigmoid(lambda)"))
        xs = sorted({a["x"] for a in aggs})
        gaps = {x: _diff(_get(aggs, "convit", x), _get(aggs, "deit", x)) for x in xs}
        finding = ["ConViT minus DeiT top-1 per fraction: " + ", ".join(
            f"{x:g}: {'–' if g is None else f'{g:+.2f}'}" for x, g in gaps.items()) + " points."]
        lo_x, hi_x = (xs[0], xs[-1]) if xs else (None, None)
        c0, d0 = _get(aggs, "convit", lo_x), _get(aggs, "deit", lo_x)
        c1, d1 = _get(aggs, "convit", hi_x), _get(aggs, "deit", hi_x)
        tests = [paired_test(self.criteria[0], c0, d0)]
        tests.append(paired_test(self.criteria[1], c0, d0, c1, d1) if len(xs) > 1 else
                     dict(paired_test(self.criteria[1], None, None), note="one fraction only"))
        tests, word = decide(tests)
        figs.append(_val_curves(aggs, "E2: validation top-1 vs images seen", fig_dir / "e2_val_curves.png"))
        for name, rec in analyses.items():
            g = rec.get("gpsa_gates") or {}
            if g:
                means = [sum(v["gate"]) / len(v["gate"]) for v in g.values()]
                every = [x for v in g.values() for x in v["gate"]]
                finding.append(f"Mean gate per GPSA layer after training ({name}): "
                               + ", ".join(f"{m:.3f}" for m in means)
                               + f"; heads range {min(every):.3f}-{max(every):.3f} (initial 0.731).")
        verdict = verdict_sentence(word, tests, "ConViT's claim")
        return Section(markdown_table(aggs, "fraction") + "\n\n" + tests_table(tests), figs, finding, verdict,
                       tests, word)
