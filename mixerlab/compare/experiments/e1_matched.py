"""E1: every token-mixer family at matched parameter count (about 1M, 32 px ``*_micro`` models).

Claims tested: FF-only (Melas-Kyriazi, "Do You Even Need Attention?", arXiv 2105.02723;
lukemelas/do-you-even-need-attention): a stack of feed-forward layers does well without attention;
MetaFormer (Yu et al., arXiv 2111.11418; sail-sg/poolformer): the block architecture matters more
than the specific token mixer.

Verdict criterion (fixed before the run, from the paper's effect): FF-only's Table 1 puts FF-Base
at 74.9 % against ViT-B 77.9 % and DeiT-B 79.9 % (the value the paper lists; see the paper notes on
its label), i.e. 3.0 to 5.0 points behind the attention models of its size. "Does surprisingly
well without attention" is read as: no further behind DeiT than the paper's own gap, **FF-only
minus DeiT > -5 points**. Agrees when the whole 95 % interval of the paired difference is above
-5, does not agree when it is wholly below, inconclusive otherwise. The MetaFormer half of the claim
(mixer vs architecture) is tested in E4, in one backbone.

A CNN (timm's ResNet-18 blocks, narrowed to the hierarchical families' widths at the CPU scale)
trained on the same recipe, data and budget is the anchor row: how far each mixer is from a
convolutional network of its size under identical training. It takes part in no verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import (decide, _diff, _get, _scatter, _val_curves, markdown_table, paired_test, tests_table,
                      verdict_sentence)
from ..stats import Criterion
from .base import Experiment, RunSpec, Section, register_experiment

MICRO_FAMILIES = ("deit_micro", "ffonly_micro", "convit_micro", "deepvit_micro", "poolformer_micro",
                  "identityformer_micro", "lavit_micro")
# The CNN anchor every mixer is read against: timm's ResNet-18 (BasicBlock 2-2-2-2) trained with the
# same recipe, data and budget (``mixerlab train --model timm:resnet18``); the presets' CPU scale
# narrows it to the hierarchical families' widths.
CNN_ANCHOR = "timm:resnet18"


def family_label(name: str) -> str:
    """Row label of an E1 model: the zoo name without ``_micro``, a timm name without ``timm:``."""
    return name.removesuffix("_micro").removeprefix("timm:")

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


@register_experiment
@dataclass(frozen=True)
class MatchedSize(Experiment):
    """Knobs: ``families``: zoo names, one run each (label: the name without ``_micro``);
    ``anchors``: baselines outside the mixer families (default: the ResNet-18 CNN anchor), one run
    each, reported in the table and against each family but left out of "best" and "spread"."""

    id = "E1"
    title = "E1: every mixer at matched parameter count (FF-only, MetaFormer)"
    claim = ("FF-only: a stack of feed-forward layers does surprisingly well without attention "
             "(74.9% vs 77.9/79.9% for ViT-B/DeiT on ImageNet). MetaFormer: the block architecture "
             "matters more than the specific token mixer.")

    criteria = (Criterion("ffonly - deit", ">", -5.0,
                          "FF-only Table 1: FF-Base 74.9 vs DeiT-B 79.9 / ViT-B 77.9 (3.0-5.0 behind)"),)

    families: tuple = MICRO_FAMILIES
    anchors: tuple = (CNN_ANCHOR,)

    def plan(self, preset) -> list[RunSpec]:
        return [RunSpec(self.id, family_label(name), name) for name in self.families + self.anchors]

    def section(self, aggs, analyses, fig_dir) -> Section:
        figs = [_scatter(aggs, "gmacs", "GMACs per image", "E1: accuracy vs MACs", fig_dir / "e1_acc_vs_macs.png"),
                _scatter(aggs, "train_img_s", "training images/s (2 CPU cores)", "E1: accuracy vs throughput",
                         fig_dir / "e1_acc_vs_throughput.png")]
        anchor_labels = {family_label(n) for n in self.anchors}
        ok = [a for a in aggs if a["top1"] is not None and a["label"] not in anchor_labels]
        best = max(ok, key=lambda a: a["top1"]) if ok else None
        d_ff = _diff(_get(aggs, "ffonly"), _get(aggs, "deit"))
        d_id = _diff(_get(aggs, "identityformer"), _get(aggs, "poolformer"))
        finding = []
        if best:
            n = len(self.families)
            finding.append(f"Best: {best['label']} at {best['top1']:.2f}%. Spread across the "
                           f"{_WORDS.get(n, n)} families: "
                           f"{max(a['top1'] for a in ok) - min(a['top1'] for a in ok):.2f} points.")
        if d_ff is not None:
            finding.append(f"FF-only minus DeiT: {d_ff:+.2f} points.")
        if d_id is not None:
            finding.append(f"IdentityFormer minus PoolFormer (same backbone, no token mixing in blocks): "
                           f"{d_id:+.2f} points.")
        for lab in sorted(anchor_labels):
            anc = _get(aggs, lab)
            if anc is not None and anc["top1"] is not None and ok:
                finding.append(f"CNN anchor {lab} (same recipe and budget): {anc['top1']:.2f}%; the mixer "
                               "families minus it: " + ", ".join(f"{a['label']} {a['top1'] - anc['top1']:+.2f}"
                                                                 for a in ok) + " points.")
        tests = [paired_test(self.criteria[0], _get(aggs, "ffonly"), _get(aggs, "deit"))]
        tests, word = decide(tests)
        figs.append(_val_curves(aggs, "E1: validation top-1 vs images seen", fig_dir / "e1_val_curves.png"))
        verdict = verdict_sentence(word, tests, "FF-only's claim that attention is not essential")
        return Section(markdown_table(aggs) + "\n\n" + tests_table(tests), figs, finding, verdict, tests, word)
