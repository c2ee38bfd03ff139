"""Tables, plots and the Markdown report of ``mixerlab compare``.

Records first (``rows``: one per run; ``aggregate``: mean and spread over seeds), plots second
(matplotlib, Agg), prose last: each section states the paper's claim, what this run measured and
whether the two agree, with the caveat that these are tiny models on little data.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import OrderedDict
from pathlib import Path

from .experiments import CLAIMS, TITLES


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mean_sd(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run_rows(results, macs: dict) -> list[dict]:
    rows = []
    for r in results:
        final = r.summary.get("final", {}) if r.summary else {}
        rows.append(OrderedDict(
            experiment=r.spec.exp, label=r.spec.label, model=r.spec.model, x=r.spec.x, seed=r.seed,
            status=r.status, top1=final.get("val_top1"), top5=final.get("val_top5"),
            val_loss=final.get("val_loss"), params_m=(r.summary.get("params") or 0) / 1e6 or None,
            gmacs=macs.get(str(r.run_dir)), train_img_s=final.get("images_per_s"),
            peak_mem_mb=final.get("peak_mem_mb"), train_wall_s=r.summary.get("train_wall_s"),
            run_dir=str(r.run_dir), error=r.error))
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for row in rows:
        groups.setdefault((row["experiment"], row["label"], row["x"]), []).append(row)
    out = []
    for (exp, label, x), rs in groups.items():
        ok = [r for r in rs if r["status"] in ("done", "cached")]
        m, sd = _mean_sd([r["top1"] for r in ok])
        out.append(dict(experiment=exp, label=label, x=x, model=rs[0]["model"], seeds=len(ok),
                        failed=sum(r["status"] == "failed" for r in rs),
                        missing=sum(r["status"] == "missing" for r in rs), top1=m, top1_sd=sd,
                        params_m=_mean_sd([r["params_m"] for r in ok])[0],
                        gmacs=_mean_sd([r["gmacs"] for r in ok])[0],
                        train_img_s=_mean_sd([r["train_img_s"] for r in ok])[0],
                        peak_mem_mb=_mean_sd([r["peak_mem_mb"] for r in ok])[0],
                        errors=[r["error"] for r in rs if r["error"]]))
    return out


def write_tables(out: Path, rows: list[dict], agg: list[dict]) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["experiment"])
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(dict(runs=rows, aggregate=agg), indent=1, default=str))


def _f(v, nd=2, suffix=""):
    return "–" if v is None else f"{v:.{nd}f}{suffix}"


def _acc(a):
    if a["top1"] is None:
        return "not run" if a.get("missing") and not a["failed"] else "failed"
    return _f(a["top1"]) + (f" ± {a['top1_sd']:.2f}" if a["seeds"] > 1 else "")


def markdown_table(aggs: list[dict], x_name: str | None = None, extra=None) -> str:
    head = ["variant"] + ([x_name] if x_name else []) + ["top-1 (%)", "params (M)", "GMACs",
                                                        "train img/s", "peak mem (MB)"]
    extra = extra or {}
    head += list(extra)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        cells = [a["label"]] + ([str(a["x"])] if x_name else []) + [
            _acc(a), _f(a["params_m"], 3), _f(a["gmacs"], 4), _f(a["train_img_s"], 0),
            _f(a["peak_mem_mb"], 0)] + [fn(a) for fn in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------------
def _scatter(aggs, xkey, xlabel, title, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for a in aggs:
        if a["top1"] is None or a[xkey] is None:
            continue
        ax.errorbar(a[xkey], a["top1"], yerr=a["top1_sd"] or 0, fmt="o", capsize=3)
        ax.annotate(a["label"], (a[xkey], a["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(aggs, xlabel, title, path, logx=False):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    by = OrderedDict()
    for a in aggs:
        if a["top1"] is not None:
            by.setdefault(a["label"], []).append(a)
    for label, pts in by.items():
        pts = sorted(pts, key=lambda a: a["x"])
        ax.errorbar([a["x"] for a in pts], [a["top1"] for a in pts],
                    yerr=[a["top1_sd"] or 0 for a in pts], marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if by:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _heatmaps(mats: list[tuple[str, list, list]], title, path, vmin=0.0, vmax=1.0, xlabel="layer",
              ylabel="layer", cbar="cosine similarity"):
    import numpy as np
    plt = _plt()
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4.2), squeeze=False)
    im = None
    for ax, (name, mat, labels) in zip(axes[0], mats):
        m = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
        im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        step = max(1, len(labels[1]) // 12)
        ax.set_xticks(range(0, len(labels[1]), step), labels[1][::step], rotation=90, fontsize=7)
        step = max(1, len(labels[0]) // 12)
        ax.set_yticks(range(0, len(labels[0]), step), labels[0][::step], fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label=cbar)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _curves(curves: dict, xlabel, ylabel, title, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(aggs, title, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ok = [a for a in aggs if a["top1"] is not None]
    ax.bar([a["label"] for a in ok], [a["top1"] for a in ok], yerr=[a["top1_sd"] or 0 for a in ok],
           capsize=3, color="tab:blue")
    lo = min((a["top1"] for a in ok), default=0)
    ax.set_ylim(max(0, lo - 10), min(100, max((a["top1"] for a in ok), default=100) + 3))
    ax.set_xlabel("token mixer")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sections -----------------------------------------------------------------------------------
def _get(aggs, label, x=None):
    for a in aggs:
        if a["label"] == label and (x is None or a["x"] == x):
            return a
    return None


def _diff(a, b):
    if a is None or b is None or a["top1"] is None or b["top1"] is None:
        return None
    return a["top1"] - b["top1"]


def _verdict(ok):
    return {True: "**agrees**", False: "**does not agree**", "partly": "**partly agrees**",
            None: "**cannot tell** (missing runs)"}[ok]


def _yes_no(ok):
    return {True: "yes", False: "no", None: "not run"}[ok]


def section_e1(aggs, ana, fig_dir):
    figs = [_scatter(aggs, "gmacs", "GMACs per image", "E1: accuracy vs MACs", fig_dir / "e1_acc_vs_macs.png"),
            _scatter(aggs, "train_img_s", "training images/s (2 CPU cores)", "E1: accuracy vs throughput",
                     fig_dir / "e1_acc_vs_throughput.png")]
    ok = [a for a in aggs if a["top1"] is not None]
    best = max(ok, key=lambda a: a["top1"]) if ok else None
    d_ff = _diff(_get(aggs, "ffonly"), _get(aggs, "deit"))
    d_id = _diff(_get(aggs, "identityformer"), _get(aggs, "poolformer"))
    finding = []
    if best:
        finding.append(f"Best: {best['label']} at {best['top1']:.2f}%. Spread across the seven families: "
                       f"{max(a['top1'] for a in ok) - min(a['top1'] for a in ok):.2f} points.")
    if d_ff is not None:
        finding.append(f"FF-only minus DeiT: {d_ff:+.2f} points.")
    if d_id is not None:
        finding.append(f"IdentityFormer minus PoolFormer (same backbone, no token mixing in blocks): {d_id:+.2f} points.")
    agree = None if d_ff is None else d_ff > -3.0
    verdict = (f"{_verdict(agree)} with FF-only's claim that attention is not essential "
               f"(taken as: FF-only within 3 points of DeiT).")
    return markdown_table(aggs), figs, finding, verdict


def section_e2(aggs, ana, fig_dir):
    figs = [_lines(aggs, "fraction of the training set", "E2: sample efficiency", fig_dir / "e2_acc_vs_fraction.png", logx=True)]
    for name, rec in ana.items():
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
    agree = None
    if xs and gaps[xs[0]] is not None and gaps[xs[-1]] is not None:
        agree = gaps[xs[0]] > 0 and gaps[xs[0]] >= gaps[xs[-1]]
    for name, rec in ana.items():
        g = rec.get("gpsa_gates") or {}
        if g:
            means = [sum(v["gate"]) / len(v["gate"]) for v in g.values()]
            every = [x for v in g.values() for x in v["gate"]]
            finding.append(f"Mean gate per GPSA layer after training ({name}): "
                           + ", ".join(f"{m:.3f}" for m in means)
                           + f"; heads range {min(every):.3f}-{max(every):.3f} (initial 0.731).")
    verdict = (f"{_verdict(agree)} with ConViT's claim (taken as: ConViT ahead at the smallest "
               "fraction, by at least as much as at the largest).")
    return markdown_table(aggs, "fraction"), figs, finding, verdict


def section_e3(aggs, ana, fig_dir):
    figs = [_lines(aggs, "depth (blocks)", "E3: accuracy vs depth", fig_dir / "e3_acc_vs_depth.png")]
    mats, counts = [], {}
    for name, rec in ana.items():
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
    return markdown_table(aggs, "depth"), figs, finding, verdict


def section_e4(aggs, ana, fig_dir):
    figs = [_bars(aggs, "E4: token mixers in the same MetaFormer backbone", fig_dir / "e4_mixers.png")]
    g = {a["label"]: a for a in aggs}
    d_pool_id = _diff(g.get("pooling"), g.get("identity"))
    d_hyb_pool = _diff(g.get("hybrid"), g.get("pooling"))
    d_att_pool = _diff(g.get("attention"), g.get("pooling"))
    finding = [f"pooling − identity: {'–' if d_pool_id is None else f'{d_pool_id:+.2f}'}; "
               f"hybrid − pooling: {'–' if d_hyb_pool is None else f'{d_hyb_pool:+.2f}'}; "
               f"attention − pooling: {'–' if d_att_pool is None else f'{d_att_pool:+.2f}'} points."]
    agree = None if d_pool_id is None or d_att_pool is None else (d_pool_id >= 0 and d_att_pool < 3.0)
    verdict = (f"{_verdict(agree)} with PoolFormer (taken as: pooling beats identity and attention "
               "does not beat pooling by 3 points or more).")
    return markdown_table(aggs), figs, finding, verdict


def section_e5(aggs, ana, fig_dir):
    figs = [_scatter(aggs, "gmacs", "GMACs per image", "E5: accuracy vs MACs (less attention)", fig_dir / "e5_acc_vs_macs.png")]
    curves = {}
    for name, rec in ana.items():
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
    # Two claims: reusing attention loses nothing (the best LA-everywhere variant within 1 point of
    # vanilla), and the DP loss helps (on >= off).
    best_la = max((x for x in (d, d_nodp) if x is not None), default=None)
    lose_nothing = None if best_la is None else best_la > -1.0
    dp_helps = None if dp is None else dp >= 0.0
    parts = [p for p in (lose_nothing, dp_helps) if p is not None]
    agree = None if not parts else ("partly" if len(set(parts)) > 1 else parts[0])
    verdict = (f"{_verdict(agree)} with LaViT (taken as: less attention in every stage within 1 point of "
               f"vanilla with or without the DP loss: {_yes_no(lose_nothing)}; the DP loss does not lower "
               f"accuracy: {_yes_no(dp_helps)}). At 32 px the transforms act on tiny N, so MACs barely "
               "change: the compute claim is not tested here (see `docs/benchmarks.md`).")
    extra = {"# LA layers": lambda a: str(a["x"])}
    return markdown_table(aggs, extra=extra), figs, finding, verdict


SECTIONS = {"E1": section_e1, "E2": section_e2, "E3": section_e3, "E4": section_e4, "E5": section_e5}


def write_report(out: Path, preset, data: str, rows: list[dict], agg: list[dict], analyses: dict,
                 machine: dict, wall_s: float) -> Path:
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    trained = {r["run_dir"]: r["train_wall_s"] or 0.0 for r in rows if r["status"] in ("done", "cached")}
    lines = [f"# mixerlab compare: preset `{preset.name}` on {data}", "",
             f"Machine: {machine.get('desc', '?')}; torch {machine.get('torch', '?')}. Wall time of this "
             f"invocation {wall_s / 60:.1f} min (runs found in the cache cost nothing); the "
             f"{len(trained)} distinct runs took {sum(trained.values()) / 60:.1f} min of training "
             "in total (sum over runs; runs train side by side with `--jobs`).", "",
             f"Recipe for every run: {preset.epochs} epochs on {preset.train_fraction:g} of the training "
             f"set (class-balanced, fixed subset), batch {preset.batch_size}, AdamW lr {preset.lr:g}, "
             f"warm-up + cosine, seeds {list(preset.seeds)}; evaluation on {preset.val_fraction:g} of the "
             "test split. Overrides: " + (", ".join(f"{k}={v}" for k, v in preset.train_overrides.items()) or "none") + ".",
             "",
             "**Read this first.** These are ~1M-parameter models trained for minutes on a small dataset. "
             "The papers' claims are about ImageNet-scale training; agreement or disagreement here is a "
             "hint, not a replication. Differences smaller than the seed spread (or, with one seed, than "
             "about one point) mean nothing.", ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['experiment']} {r['label']} (seed {r['seed']}): {r['error']} "
                                           f"(`{r['run_dir']}/error.txt`)" for r in failed] + [""]
    missing = [r for r in rows if r["status"] == "missing"]
    if missing:
        lines += ["## Runs not trained yet", "", f"This report was written before {len(missing)} of "
                  f"{len(rows)} runs finished (`report_only`); their rows are missing or average fewer seeds: "
                  + ", ".join(f"{r['experiment']} {r['label']}" + (f" x={r['x']:g}" if r["x"] is not None else "")
                              + f" seed {r['seed']}" for r in missing) + ".", ""]
    for exp in preset.experiments:
        aggs = [a for a in agg if a["experiment"] == exp]
        if not aggs:
            continue
        table, figs, finding, verdict = SECTIONS[exp](aggs, analyses.get(exp, {}), fig_dir)
        lines += [f"## {TITLES[exp]}", "", f"**Paper's claim.** {CLAIMS[exp]}", "", table, ""]
        lines += [f"**This run.** " + " ".join(finding), "", f"**Verdict.** This run {verdict}", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figs if p is not None] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
