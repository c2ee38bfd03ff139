"""E3: depth and attention collapse, plain attention vs re-attention at several depths
(``deepvit_micro``: width 96, 6 heads, MLP ratio 3).

Claim tested: DeepViT (Zhou et al., arXiv 2103.11886; zhoudaquan/dvit_repo): deep ViTs suffer
attention collapse (adjacent layers' maps become alike, more "similar blocks" with depth);
re-attention keeps the maps diverse and lets accuracy grow with depth. The variants are the zoo
builder's arguments: ``depth`` and ``reattn_last`` (0: plain ViT; default: re-attention in every
block).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import _diff, _get, _heatmaps, _lines, _verdict, markdown_table
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
        vit_n = next((v for k, v in counts.items() if k.startswith("vit")), None)
        dv_n = next((v for k, v in counts.items() if k.startswith("deepvit")), None)
        agree = None if (d is None or vit_n is None or dv_n is None) else (d >= 0 and dv_n <= vit_n)
        verdict = (f"{_verdict(agree)} with DeepViT (taken as: at the largest depth re-attention is not "
                   "worse and has no more similar blocks than attention).")
        return Section(markdown_table(aggs, "depth"), figs, finding, verdict)
