"""E3: depth and attention collapse, plain attention vs re-attention at several depths
(``deepvit_micro``: width 96, 6 heads, MLP ratio 3).

Claim tested: DeepViT (Zhou et al., arXiv 2103.11886; zhoudaquan/dvit_repo): deep ViTs suffer
attention collapse (adjacent layers' maps become alike, more "similar blocks" with depth);
re-attention keeps the maps diverse and lets accuracy grow with depth. The variants are the zoo
builder's arguments: ``depth`` and ``reattn_last`` (0: plain ViT; default: re-attention in every
block).

Verdict criterion (fixed before the run, from the paper's effect): the DeepViT README's depth study
gives re-attention +0.22 points over plain attention at 16 blocks (79.10 vs 78.88), +0.64 at 24 and
+1.63 at 32 (80.90 vs 79.27): the gain appears with depth. Read as: **at the largest depth run,
re-attention minus attention > 0**. The "similar blocks" count (adjacent-layer similarity > 0.9;
5/11/15 for ViT-16/24/32, 0 for DeepViT) and the similarity matrices of the trained models are
reported beside it; they carry no interval, so they do not enter the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import (decide, _diff, _get, _heatmaps, _lines, _val_curves, markdown_table, paired_test, tests_table,
                      verdict_sentence)
from ..stats import Criterion
from .base import Experiment, RunSpec, Section, register_experiment


@register_experiment
@dataclass(frozen=True)
class DepthCollapse(Experiment):
    """Knobs: ``depths``: numbers of blocks; ``model``: the zoo entry (a ``deepvit`` builder).
    The deepest pair is analysed."""

    id = "E3"
    title = "E3: depth and attention collapse, attention vs re-attention (DeepViT)"
    claim = ("DeepViT: deep ViTs suffer attention collapse (adjacent layers' maps become alike: more "
             "'similar blocks' with depth); re-attention keeps maps diverse and lets accuracy grow with depth.")

    criteria = (Criterion("deepvit - vit at the largest depth", ">", 0.0,
                          "DeepViT README: +0.22 (16 blocks) to +1.63 (32 blocks)"),)

    depths: tuple = (4, 8)
    model: str = "deepvit_micro"

    def plan(self, preset) -> list[RunSpec]:
        runs = []
        for d in self.depths:
            for label, args in (("vit", {"depth": d, "reattn_last": 0}), ("deepvit", {"depth": d})):
                runs.append(RunSpec(self.id, label, self.model, model_args=args, x=d,
                                    analyze=(d == max(self.depths))))
        return runs

    def section(self, aggs, analyses, fig_dir) -> Section:
        figs = [_lines(aggs, "depth (blocks)", "E3: accuracy vs depth", fig_dir / "e3_acc_vs_depth.png")]
        mats, counts = [], {}
        for name, rec in analyses.items():
            s = rec.get("attention_similarity") or {}
            if s.get("matrix"):
                mats.append((f"{name}: {s['similar_blocks']} similar blocks", s["matrix"], (s["layers"], s["layers"])))
                counts[name] = s["similar_blocks"]
        if mats:
            figs.append(_heatmaps(mats, "E3: cross-layer attention similarity (deepest models)",
                                  fig_dir / "e3_similarity.png"))
        depth = max((a["x"] for a in aggs), default=None)
        d = _diff(_get(aggs, "deepvit", depth), _get(aggs, "vit", depth))
        finding = [f"At depth {depth}: re-attention minus attention top-1 {'–' if d is None else f'{d:+.2f}'} points."]
        if counts:
            finding.append("Similar blocks (adjacent-layer similarity > 0.9): " +
                           ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".")
        tests = [paired_test(self.criteria[0], _get(aggs, "deepvit", depth), _get(aggs, "vit", depth))]
        tests, word = decide(tests)
        figs.append(_val_curves(aggs, "E3: validation top-1 vs images seen", fig_dir / "e3_val_curves.png"))
        verdict = verdict_sentence(word, tests, "DeepViT")
        return Section(markdown_table(aggs, "depth") + "\n\n" + tests_table(tests), figs, finding, verdict,
                       tests, word)
