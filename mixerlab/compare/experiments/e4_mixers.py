"""E4: what matters in MetaFormer: attention, pooling, random and identity mixing and the
pool-pool-attention-attention hybrid in one hierarchical backbone (``poolformer_micro``).

Claim tested: PoolFormer / MetaFormer (Yu et al., arXiv 2111.11418; sail-sg/poolformer) and the
MetaFormer Baselines (arXiv 2210.13452; sail-sg/metaformer): with the MetaFormer block even
parameter-free pooling is competitive, identity mixing is still decent, pooling early and attention
late is best. The variants are the zoo builder's ``mixers`` argument (one mixer spec per stage).

Verdict criteria (fixed before the run, from the paper's effects): PoolFormer's Table 5 (S12
backbone, 77.2 % with pooling) gives identity mixing 74.3 % (pooling +2.9 points) and the
Pool-Pool-Attention-Attention hybrid 81.0 % (+3.8 over pooling, with more parameters). Three parts,
all needed: **pooling minus identity > 0**; pooling "competitive" with attention, read as no
further behind attention than identity is behind pooling in the paper, **pooling minus attention
> -2.9**; and **hybrid minus pooling > 0**.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import _bars, _diff, _val_curves, markdown_table, paired_test, tests_table, verdict_sentence
from ..stats import Criterion, combine
from .base import Experiment, RunSpec, Section, register_experiment

VARIANTS = ("attention", "pooling", "random", "identity", "hybrid")


@register_experiment
@dataclass(frozen=True)
class MixersInMetaFormer(Experiment):
    """Knobs: ``variants``: which of attention | pooling | random | identity | hybrid;
    ``attention_heads``: heads per stage of the attention stages (24 channels per head in stages
    1-3, 44 in stage 4 of ``poolformer_micro``)."""

    id = "E4"
    title = "E4: what matters in MetaFormer: mixers in one hierarchical backbone (PoolFormer)"
    claim = ("PoolFormer: with the MetaFormer block, even parameter-free pooling is competitive; identity "
             "mixing is still decent (74.3% vs 77.2% on ImageNet); pooling early + attention late is best.")

    criteria = (
        Criterion("pooling - identity", ">", 0.0, "PoolFormer Table 5: 77.2 vs 74.3 (+2.9)"),
        Criterion("pooling - attention", ">", -2.9, "competitive: within the paper's identity gap, 2.9"),
        Criterion("hybrid - pooling", ">", 0.0, "PoolFormer: Pool-Pool-Attn-Attn 81.0 vs 77.2 (+3.8)"),
    )

    variants: tuple = VARIANTS
    attention_heads: tuple = (1, 2, 4, 4)

    def stage_mixers(self, kind: str) -> list | None:
        """The ``mixers`` builder argument of a variant (plain data); None: the zoo model as it is."""
        heads = self.attention_heads
        return {
            "attention": [["attention", {"num_heads": h}] for h in heads],
            "pooling": None,  # poolformer_micro itself (shared with E1)
            "random": ["random"] * len(heads),
            "identity": None,  # identityformer_micro (shared with E1)
            "hybrid": ["pooling", "pooling", ["attention", {"num_heads": heads[2]}],
                       ["attention", {"num_heads": heads[3]}]],
        }[kind]

    def plan(self, preset) -> list[RunSpec]:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"E4: unknown variant(s) {unknown}; allowed: {list(VARIANTS)}")
        runs = []
        for kind in self.variants:
            if kind == "identity":
                runs.append(RunSpec(self.id, kind, "identityformer_micro"))
                continue
            mixers = self.stage_mixers(kind)
            runs.append(RunSpec(self.id, kind, "poolformer_micro",
                                model_args={} if mixers is None else {"mixers": mixers}))
        return runs

    def section(self, aggs, analyses, fig_dir) -> Section:
        figs = [_bars(aggs, "E4: token mixers in the same MetaFormer backbone", fig_dir / "e4_mixers.png")]
        g = {a["label"]: a for a in aggs}
        d_pool_id = _diff(g.get("pooling"), g.get("identity"))
        d_hyb_pool = _diff(g.get("hybrid"), g.get("pooling"))
        d_att_pool = _diff(g.get("attention"), g.get("pooling"))
        finding = [f"pooling − identity: {'–' if d_pool_id is None else f'{d_pool_id:+.2f}'}; "
                   f"hybrid − pooling: {'–' if d_hyb_pool is None else f'{d_hyb_pool:+.2f}'}; "
                   f"attention − pooling: {'–' if d_att_pool is None else f'{d_att_pool:+.2f}'} points."]
        tests = [paired_test(self.criteria[0], g.get("pooling"), g.get("identity")),
                 paired_test(self.criteria[1], g.get("pooling"), g.get("attention")),
                 paired_test(self.criteria[2], g.get("hybrid"), g.get("pooling"))]
        word = combine([t["verdict"] for t in tests])
        figs.append(_val_curves(aggs, "E4: validation top-1 vs images seen", fig_dir / "e4_val_curves.png"))
        verdict = verdict_sentence(word, tests, "PoolFormer")
        return Section(markdown_table(aggs) + "\n\n" + tests_table(tests), figs, finding, verdict, tests, word)
