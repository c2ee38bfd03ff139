"""Tables, plots and the Markdown report of ``mixerlab compare``: the machinery the experiments share.

Records first (``rows``: one per run; ``aggregate``: mean and spread over seeds), plots second
(matplotlib, Agg), prose last: ``write_report`` writes the common header, then one section per
experiment the preset selects (``experiments/``: each states the paper's claim, what this run
measured and whether the two agree), with the caveat that these are tiny models on little data.
The helpers below (``markdown_table``, ``_scatter`` / ``_lines`` / ``_heatmaps`` / ``_curves`` /
``_bars``, ``_get`` / ``_diff`` / ``_verdict``) are what the experiments' ``section`` methods use.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import OrderedDict
from pathlib import Path



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


# -- helpers of the sections ------------------------------------------------------------------------------
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


def write_report(out: Path, preset, data: str, rows: list[dict], agg: list[dict], analyses: dict,
                 machine: dict, wall_s: float, experiments, lr_info: dict | None = None) -> Path:
    """``report.md`` in ``out``: the header, failed / missing runs, then one section per
    experiment (``experiments``: ``Experiment`` objects, e.g. ``selected_experiments(preset)``, with
    its knobs) that has rows in ``agg``."""
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
    for exp in experiments:
        aggs = [a for a in agg if a["experiment"] == exp.id]
        if not aggs:
            continue
        table, figs, finding, verdict = exp.section(aggs, analyses.get(exp.id, {}), fig_dir)
        lines += [f"## {exp.title}", "", f"**Paper's claim.** {exp.claim}", "", table, ""]
        lines += [f"**This run.** " + " ".join(finding), "", f"**Verdict.** This run {verdict}", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figs if p is not None] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
