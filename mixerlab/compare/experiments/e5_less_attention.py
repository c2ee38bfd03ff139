"""E5: less attention at each stage (``lavit_micro``): less-attention layers replacing more of
each stage's attention, with and without the diagonality-preserving loss; token-similarity curves.

Claim tested: LaViT (Zhang et al., "You Only Need Less Attention at Each Stage in Vision
Transformers", arXiv 2406.00427): computing attention only in a few layers per stage and reusing
it through linear transforms loses nothing while saving compute; the diagonality-preserving loss
helps. The variants are the zoo builder's ``layout`` argument (per stage a string of A = plain
attention, V = vanilla attention whose map LA layers reuse, L = less attention) and the trainer's
``aux_weights`` (LaViT's terms ``dp_sym`` and ``dp_diag``).

Verdict criteria (fixed before the run, from the paper's effect): LaViT reports no loss from less
attention: LaViT-T 79.2 % against PVT-v2-b1's 78.7 % at lower cost, and gives no ablation number for
the diagonality-preserving loss. "Loses nothing" is read as non-inferiority with a 1-point margin
(twice the paper's +0.5 over its nearest baseline, and about the 95 % half-width of one accuracy on
10,000 test images): **la_all minus vanilla > -1**; "the DP loss helps" as its sign,
**la_all minus la_all_no_dp > 0**. Both needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..report import (decide, _curves, _diff, _f, _get, _scatter, _val_curves, markdown_table, paired_test,
                      tests_table, verdict_sentence)
from ..stats import Criterion
from .base import Experiment, RunSpec, Section, register_experiment

NO_DP = {"aux_weights": {"dp_sym": 0.0, "dp_diag": 0.0}}

# label: (layout, or None for the zoo model's own ("V", "VL", "VL", "LL"); TrainConfig overrides)
VARIANTS = {
    "vanilla": (("A", "AA", "AA", "AA"), NO_DP),  # the vanilla twin: plain attention everywhere
    "la_last": (("V", "VV", "VV", "VL"), {}),  # less attention in stage 4 only
    "la_all": (None, {}),  # one VA layer per stage, the rest LA (the zoo model)
    "la_all_no_dp": (None, NO_DP),  # same without the diagonality-preserving loss
}


@register_experiment
@dataclass(frozen=True)
class LessAttentionStages(Experiment):
    """Knobs: ``variants``: labels to run; ``table``: label -> (layout or None, train overrides).
    The x value of a run is its number of less-attention (L) layers."""

    id = "E5"
    title = "E5: less attention at each stage (LaViT)"
    claim = ("LaViT: computing attention only in a few layers per stage and reusing it through linear "
             "transforms loses nothing while saving compute; the diagonality-preserving loss helps.")

    criteria = (
        Criterion("la_all - vanilla", ">", -1.0, "LaViT: no loss from less attention (non-inferiority, 1 point)"),
        Criterion("la_all - la_all_no_dp", ">", 0.0, "LaViT: the DP loss helps (sign; no ablation number)"),
    )

    variants: tuple = tuple(VARIANTS)
    table: dict = field(default_factory=lambda: dict(VARIANTS))
    model: str = "lavit_micro"

    def plan(self, preset) -> list[RunSpec]:
        from ...zoo.lavit import layout_from_depths
        from ...zoo.registry import get_model_info
        unknown = sorted(set(self.variants) - set(self.table))
        if unknown:
            raise ValueError(f"E5: unknown variant(s) {unknown}; allowed: {list(self.table)}")
        zoo_args = get_model_info(self.model).args
        zoo_layout = zoo_args.get("layout") or layout_from_depths(zoo_args["depths"], zoo_args["n_va"])
        runs = []
        for label in self.variants:
            layout, train_args = self.table[label]
            n_la = sum(stage.count("L") for stage in (layout or zoo_layout))
            runs.append(RunSpec(self.id, label, self.model,
                                model_args={} if layout is None else {"layout": tuple(layout)},
                                train_args={k: (dict(v) if isinstance(v, dict) else v)
                                            for k, v in train_args.items()},
                                x=n_la, analyze=True))
        return runs

    def section(self, aggs, analyses, fig_dir) -> Section:
        figs = [_scatter(aggs, "gmacs", "GMACs per image", "E5: accuracy vs MACs (less attention)",
                         fig_dir / "e5_acc_vs_macs.png")]
        curves = {}
        for name, rec in analyses.items():
            f = rec.get("feature_similarity") or {}
            adj = [v for v in f.get("adjacent", []) if v is not None]
            if adj:
                curves[name] = adj
        if curves:
            figs.append(_curves(curves, "block pair (l, l+1), same stage", "token-feature cosine similarity",
                                "E5: layer-to-layer token similarity", fig_dir / "e5_token_similarity.png"))
        van, la, la_nodp = _get(aggs, "vanilla"), _get(aggs, "la_all"), _get(aggs, "la_all_no_dp")
        d = _diff(la, van)
        d_nodp = _diff(la_nodp, van)
        dp = _diff(la, la_nodp)
        finding = [f"la_all minus vanilla: {'–' if d is None else f'{d:+.2f}'} points "
                   f"at {_f(la and la['gmacs'], 4)} vs {_f(van and van['gmacs'], 4)} GMACs; "
                   f"without the DP loss: {'–' if d_nodp is None else f'{d_nodp:+.2f}'} points; "
                   f"DP loss on minus off: {'–' if dp is None else f'{dp:+.2f}'} points."]
        tests = [paired_test(self.criteria[0], la, van), paired_test(self.criteria[1], la, la_nodp)]
        tests, word = decide(tests)
        figs.append(_val_curves(aggs, "E5: validation top-1 vs images seen", fig_dir / "e5_val_curves.png"))
        verdict = (verdict_sentence(word, tests, "LaViT") + " The transforms act on few tokens here, so "
                   "MACs barely change: the compute claim is not tested (see `docs/benchmarks.md`).")
        extra = {"# LA layers": lambda a: str(a["x"])}
        diag, diag_finding = diagonality_table(analyses)
        finding += diag_finding
        return Section(markdown_table(aggs, extra=extra) + "\n\n" + tests_table(tests) + diag, figs, finding,
                       verdict, tests, word)


# A map is read as collapsed to the identity above this diagonal mass (each token attends to itself
# alone), and as uniform (average pooling over the keys) when its diagonal mass is within 10 % of
# 1 / N_k and its rows are symmetric to 0.01: both minimise the two DP terms without attending.
IDENTITY_MASS = 0.95


def diagonality_table(analyses: dict) -> tuple[str, list[str]]:
    """The diagonal mass of every map a LaViT layer computes (``analyze_model``'s ``diagonality``
    record, first seed of each analysed variant): mean P_ii against 1/N_k (uniform attention over
    the N_k key cells), with the maps read as collapsed to the identity (> ``IDENTITY_MASS``) or as
    uniform marked. Returns (Markdown, finding sentences); empty when no run recorded a map."""
    rows, n_identity, n_uniform, n_maps = [], 0, 0, 0
    for name, rec in analyses.items():
        dp = rec.get("diagonality") if isinstance(rec, dict) else None
        if not dp:
            continue
        layers = {d.get("label"): d for d in rec.get("layers", [])}
        for label, d in dp.items():
            meta = layers.get(label, {})
            keys = meta.get("tokens")
            if keys and meta.get("sr_ratio"):
                keys = keys // meta["sr_ratio"] ** 2
            uniform = 1.0 / keys if keys else None
            mass = d["diag_mass"]
            if mass > IDENTITY_MASS:
                state, n_identity = "**identity**", n_identity + 1
            elif uniform and abs(mass - uniform) <= 0.1 * uniform and d["asymmetry"] <= 0.01:
                state, n_uniform = "**uniform**", n_uniform + 1
            else:
                state = "attends"
            n_maps += 1
            rows.append(f"| {name} | {label} | {d.get('mode', '?')} | {keys or '?'} | {mass:.3f} | "
                        f"{'–' if uniform is None else f'{uniform:.3f}'} | {d['asymmetry']:.4f} | "
                        f"{d['dp_diag']:.4f} | {state} |")
    if not rows:
        return "", []
    md = ("\n\nLaViT's attention maps after training (first seed; `mixerlab analyze`'s monitors on each map "
          "P, key cells N_k after spatial reduction): diagonal mass mean P_ii (1 = every token attends to "
          f"itself alone, read as **identity** above {IDENTITY_MASS}; 1/N_k = uniform attention, read as "
          "**uniform** within 10 % of it with asymmetry <= 0.01), asymmetry mean |P - P^T| and dp_diag "
          "(the DP loss's two terms, both 0 for a uniform map).\n\n"
          "| variant | layer | mode | N_k | diagonal mass | 1/N_k | asymmetry | dp_diag | reading |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    return md, [f"Attention maps: {n_identity} of {n_maps} collapsed to the identity (diagonal mass > "
                f"{IDENTITY_MASS}), {n_uniform} uniform over their keys."]
