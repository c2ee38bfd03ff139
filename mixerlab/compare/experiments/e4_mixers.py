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

The v2 row set (``v2_variants``): the same question in the MetaFormer Baselines' backbone
(``poolformerv2_micro``: StarReLU, bias-free norms, residual scale; see
``zoo/metaformer_baselines.py``), the five v2 mixers in one backbone: identity (IdentityFormer),
random mixing in stages 3-4 (RandFormer), pooling (PoolFormerV2), separable convolution
(ConvFormer) and sepconv-sepconv-attention-attention (CAFormer). Only the mixers change (the
official ConvFormer / CAFormer also switch to LayerNorm and an MLP head; here the backbone is held
fixed so that the rows isolate the mixer). Criteria from the v2 paper's S12 / S18 rows: RandFormer
76.6 vs IdentityFormer 74.6 (**random minus identity > 0**), ConvFormer-S18 83.0 vs PoolFormerV2-S24
80.7, the closest in MACs (**sepconv minus pooling > 0**), CAFormer-S18 83.6 vs ConvFormer-S18 83.0
(**caformer minus sepconv > 0**). E4's word combines every part, v1 and v2.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report import decide, _bars, _diff, _val_curves, markdown_table, paired_test, tests_table, verdict_sentence
from ..stats import Criterion
from .base import Experiment, RunSpec, Section, register_experiment

VARIANTS = ("attention", "pooling", "random", "identity", "hybrid")
V2_VARIANTS = ("identity", "random", "pooling", "sepconv", "caformer")
# CAFormer's attention (no qkv / projection bias) with 16 channels per head instead of 32: the
# micro widths 96 / 176 and the CPU-scale 64 / 96 of stages 3-4 are multiples of 16, not all of 32
V2_ATTENTION = ["attention", {"head_dim": 16, "qkv_bias": False, "proj_bias": False}]


@register_experiment
@dataclass(frozen=True)
class MixersInMetaFormer(Experiment):
    """Knobs: ``variants``: which of attention | pooling | random | identity | hybrid;
    ``attention_heads``: heads per stage of the attention stages (24 channels per head in stages
    1-3, 44 in stage 4 of ``poolformer_micro``); ``v2_variants``: which of identity | random |
    pooling | sepconv | caformer in the v2 backbone (rows labelled ``v2 <variant>``; empty: none)."""

    id = "E4"
    title = "E4: what matters in MetaFormer: mixers in one hierarchical backbone (PoolFormer)"
    claim = ("PoolFormer: with the MetaFormer block, even parameter-free pooling is competitive; identity "
             "mixing is still decent (74.3% vs 77.2% on ImageNet); pooling early + attention late is best.")

    criteria = (
        Criterion("pooling - identity", ">", 0.0, "PoolFormer Table 5: 77.2 vs 74.3 (+2.9)"),
        Criterion("pooling - attention", ">", -2.9, "competitive: within the paper's identity gap, 2.9"),
        Criterion("hybrid - pooling", ">", 0.0, "PoolFormer: Pool-Pool-Attn-Attn 81.0 vs 77.2 (+3.8)"),
    )
    v2_criteria = (
        Criterion("v2 random - v2 identity", ">", 0.0, "MetaFormer Baselines: RandFormer-S12 76.6 vs IdentityFormer-S12 74.6"),
        Criterion("v2 sepconv - v2 pooling", ">", 0.0, "ConvFormer-S18 83.0 vs PoolFormerV2-S24 80.7 (similar MACs)"),
        Criterion("v2 caformer - v2 sepconv", ">", 0.0, "CAFormer-S18 83.6 vs ConvFormer-S18 83.0"),
    )

    variants: tuple = VARIANTS
    attention_heads: tuple = (1, 2, 4, 4)
    v2_variants: tuple = V2_VARIANTS

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

    @staticmethod
    def v2_stage_mixers(kind: str) -> list | None:
        """The ``mixers`` argument of ``poolformerv2_micro`` for a v2 variant (None: pooling, the
        entry itself). Random mixing in stages 3-4 only, as RandFormer (its N x N matrices)."""
        return {
            "identity": ["identity"] * 4,
            "random": ["identity", "identity", ["random", {"as_parameter": True}], ["random", {"as_parameter": True}]],
            "pooling": None,
            "sepconv": ["sepconv"] * 4,
            "caformer": ["sepconv", "sepconv", V2_ATTENTION, V2_ATTENTION],
        }[kind]

    def plan(self, preset) -> list[RunSpec]:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"E4: unknown variant(s) {unknown}; allowed: {list(VARIANTS)}")
        unknown = sorted(set(self.v2_variants) - set(V2_VARIANTS))
        if unknown:
            raise ValueError(f"E4: unknown v2 variant(s) {unknown}; allowed: {list(V2_VARIANTS)}")
        runs = []
        for kind in self.variants:
            if kind == "identity":
                runs.append(RunSpec(self.id, kind, "identityformer_micro"))
                continue
            mixers = self.stage_mixers(kind)
            runs.append(RunSpec(self.id, kind, "poolformer_micro",
                                model_args={} if mixers is None else {"mixers": mixers}))
        for kind in self.v2_variants:
            mixers = self.v2_stage_mixers(kind)
            runs.append(RunSpec(self.id, f"v2 {kind}", "poolformerv2_micro",
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
        if any(lbl.startswith("v2 ") for lbl in g):
            pairs = (("random", "identity"), ("sepconv", "pooling"), ("caformer", "sepconv"))
            tests += [paired_test(c, g.get(f"v2 {a}"), g.get(f"v2 {b}")) for c, (a, b) in zip(self.v2_criteria, pairs)]
            diffs = [(f"v2 {a} − v2 {b}", _diff(g.get(f"v2 {a}"), g.get(f"v2 {b}"))) for a, b in pairs]
            finding.append("; ".join(f"{n}: {'–' if d is None else f'{d:+.2f}'}" for n, d in diffs) + " points.")
        tests, word = decide(tests)
        figs.append(_val_curves(aggs, "E4: validation top-1 vs images seen", fig_dir / "e4_val_curves.png"))
        verdict = verdict_sentence(word, tests, "PoolFormer and the MetaFormer Baselines"
                                   if len(tests) > 3 else "PoolFormer")
        return Section(markdown_table(aggs) + "\n\n" + tests_table(tests), figs, finding, verdict, tests, word)
