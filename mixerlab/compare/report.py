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


def _curve(run_dir: Path, batch_size: int | None) -> list:
    """Validation top-1 after each evaluated epoch: ``[[images seen, top-1], ...]``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "val_top1" in rec:
            out.append([rec["step"] * (batch_size or 0), rec["val_top1"]])
    return out


def _config(run_dir: Path) -> dict:
    import yaml
    path = Path(run_dir) / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    except Exception:
        return {}


def run_rows(results, macs: dict) -> list[dict]:
    """One record per run. ``top1`` is the test top-1 (from the run's per-image test
    predictions), ``val_top1`` the final top-1 on the validation split held out of the training
    set; ``correct`` the per-image correctness on the test split (a NumPy vector, written to
    ``results.json`` as a string of 0/1)."""
    from .predictions import load_predictions
    rows = []
    for r in results:
        final = r.summary.get("final", {}) if r.summary else {}
        ok = r.status in ("done", "cached")
        pred = load_predictions(r.run_dir) if ok else None
        cfg = _config(r.run_dir) if ok else {}
        batch = cfg.get("batch_size")
        rows.append(OrderedDict(
            experiment=r.spec.exp, label=r.spec.label, model=r.spec.model, x=r.spec.x, seed=r.seed,
            status=r.status if (pred is not None or not ok) else "failed",
            top1=None if pred is None else 100.0 * float(pred["correct"].mean()),
            val_top1=final.get("val_top1"), val_loss=final.get("val_loss"),
            test_images=None if pred is None else int(len(pred["correct"])),
            params_m=(r.summary.get("params") or 0) / 1e6 or None,
            gmacs=macs.get(str(r.run_dir)), train_img_s=final.get("images_per_s"),
            peak_mem_mb=final.get("peak_mem_mb"), train_wall_s=r.summary.get("train_wall_s"),
            steps=r.summary.get("steps"), images_seen=(r.summary.get("steps") or 0) * (batch or 0) or None,
            train_images=None, recipe=cfg.get("recipe"), lr=cfg.get("lr"), img_size=cfg.get("img_size"),
            model_args=cfg.get("model_args"), curve=_curve(r.run_dir, batch) if ok else [],
            run_dir=str(r.run_dir),
            error=r.error or (None if pred is not None or not ok else "no test predictions"),
            correct=None if pred is None else pred["correct"]))
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Rows grouped by (experiment, label, x) over seeds: mean test top-1 with its bootstrap
    interval over test images (seeds combined), ``correct`` the (seeds, images) matrix."""
    import numpy as np

    from .stats import accuracy
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for row in rows:
        groups.setdefault((row["experiment"], row["label"], row["x"]), []).append(row)
    out = []
    for (exp, label, x), rs in groups.items():
        ok = [r for r in rs if r["status"] in ("done", "cached") and r["correct"] is not None]
        m, sd = _mean_sd([r["top1"] for r in ok])
        correct = np.stack([r["correct"] for r in ok]) if ok and len({len(r["correct"]) for r in ok}) == 1 else None
        ci = accuracy(correct) if correct is not None else None
        out.append(dict(experiment=exp, label=label, x=x, model=rs[0]["model"], seeds=len(ok),
                        failed=sum(r["status"] == "failed" for r in rs),
                        missing=sum(r["status"] == "missing" for r in rs), top1=m, top1_sd=sd,
                        top1_lo=ci and ci["lo"], top1_hi=ci and ci["hi"],
                        val_top1=_mean_sd([r["val_top1"] for r in ok])[0],
                        params_m=_mean_sd([r["params_m"] for r in ok])[0],
                        gmacs=_mean_sd([r["gmacs"] for r in ok])[0],
                        train_img_s=_mean_sd([r["train_img_s"] for r in ok])[0],
                        peak_mem_mb=_mean_sd([r["peak_mem_mb"] for r in ok])[0],
                        images_seen=ok[0]["images_seen"] if ok else None, steps=ok[0]["steps"] if ok else None,
                        lr=ok[0]["lr"] if ok else None, recipe=ok[0]["recipe"] if ok else None,
                        test_images=ok[0]["test_images"] if ok else None,
                        curve=ok[0]["curve"] if ok else [], correct=correct,
                        errors=[r["error"] for r in rs if r["error"]]))
    return out


def _bits(v) -> str | None:
    return None if v is None else "".join("1" if b else "0" for b in v.tolist())


def write_tables(out: Path, rows: list[dict], agg: list[dict], extra: dict | None = None) -> None:
    """``results.csv`` (one line per run) and ``results.json``: every run with its per-image test
    correctness (``correct``: a string of 0/1, test image i at position i, the same test images for
    every run), the aggregates and ``extra`` (the experiments' paired tests, the LR table)."""
    skip = ("correct", "curve", "model_args")
    with open(out / "results.csv", "w", newline="") as f:
        keys = [k for k in rows[0].keys() if k not in skip] if rows else ["experiment"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    runs = [{**r, "correct": _bits(r["correct"])} for r in rows]
    aggs = [{k: v for k, v in a.items() if k != "correct"} for a in agg]
    (out / "results.json").write_text(json.dumps(dict(runs=runs, aggregate=aggs, **(extra or {})),
                                                 indent=1, default=str))


def _f(v, nd=2, suffix=""):
    return "–" if v is None else f"{v:.{nd}f}{suffix}"


def _acc(a):
    if a["top1"] is None:
        return "not run" if a.get("missing") and not a["failed"] else "failed"
    ci = f" [{a['top1_lo']:.1f}, {a['top1_hi']:.1f}]" if a.get("top1_lo") is not None else ""
    return _f(a["top1"]) + ci + (f" (sd {a['top1_sd']:.2f} over {a['seeds']} seeds)" if a["seeds"] > 1 else "")


def markdown_table(aggs: list[dict], x_name: str | None = None, extra=None) -> str:
    """Per variant: test top-1 with its 95 % bootstrap interval over test images, final
    validation top-1, size, cost and images seen."""
    head = ["variant"] + ([x_name] if x_name else []) + ["test top-1 (%) [95% CI]", "val top-1 (%)",
                                                        "params (M)", "GMACs", "train img/s",
                                                        "images seen", "LR"]
    extra = extra or {}
    head += list(extra)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        cells = [a["label"]] + ([str(a["x"])] if x_name else []) + [
            _acc(a), _f(a.get("val_top1")), _f(a["params_m"], 3), _f(a["gmacs"], 4), _f(a["train_img_s"], 0),
            "–" if not a.get("images_seen") else f"{a['images_seen']:,}",
            "–" if a.get("lr") is None else f"{a['lr']:g}"] + [fn(a) for fn in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_test(criterion, a, b, c=None, d=None) -> dict:
    """The paired comparison behind one criterion: A - B (or (A - B) - (C - D)) in points with its
    bootstrap interval over the shared test images, McNemar's mid-p for two single-seed models,
    and the three-state verdict."""
    from .stats import INCONCLUSIVE, mcnemar, paired_bootstrap, verdict
    rec = dict(stat=criterion.stat, criterion=criterion.text(), why=criterion.why, diff=None, lo=None,
               hi=None, n=None, p_mid=None, verdict=INCONCLUSIVE, note=None)
    groups = [g for g in (a, b, c, d) if g is not None] if c is not None else [a, b]
    if any(g is None or g.get("correct") is None for g in groups):
        rec["note"] = "missing runs"
        return rec
    try:
        r = paired_bootstrap(*[g["correct"] for g in groups])
    except ValueError as e:
        rec["note"] = str(e)
        return rec
    rec.update(diff=r["diff"], lo=r["lo"], hi=r["hi"], n=r["n"], verdict=verdict(r["lo"], r["hi"], criterion))
    if c is None and a["seeds"] == 1 and b["seeds"] == 1:
        m = mcnemar(a["correct"], b["correct"])
        rec.update(p_mid=m["p_mid"], p_exact=m["p_exact"], discordant=[m["b"], m["c"]])
    return rec


def tests_table(tests: list[dict]) -> str:
    lines = ["| statistic | difference (points) [95% CI] | McNemar mid-p | criterion (fixed before the run) | verdict |",
             "|---|---|---|---|---|"]
    for t in tests:
        diff = "–" if t["diff"] is None else f"{t['diff']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"
        p = "–" if t.get("p_mid") is None else f"{t['p_mid']:.3g}"
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['stat']} | {diff} | {p} | {t['criterion']} | **{t['verdict']}**{note} |")
    return "\n".join(lines)


def verdict_sentence(word: str, tests: list[dict], claim: str) -> str:
    crit = "; ".join(f"{t['criterion']}: {t['verdict']}" for t in tests)
    lead = f"is **{word}** about" if word == "inconclusive" else f"**{word}** with"
    return (f"{lead} {claim} (criteria: {crit}; agrees when every 95 % interval lies on the "
            "claim's side, does not agree when one lies wholly on the other side, inconclusive otherwise).")


# -- plots --------------------------------------------------------------------------------------
def _yerr(aggs):
    """Asymmetric error bars: the 95 % bootstrap interval over test images (else the seed sd)."""
    lo = [a["top1"] - a["top1_lo"] if a.get("top1_lo") is not None else (a.get("top1_sd") or 0) for a in aggs]
    hi = [a["top1_hi"] - a["top1"] if a.get("top1_hi") is not None else (a.get("top1_sd") or 0) for a in aggs]
    return [lo, hi]


def _val_curves(aggs, title, path):
    """Validation top-1 against images seen, one line per run (first seed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    n = 0
    for a in aggs:
        c = a.get("curve") or []
        if c:
            name = a["label"] + (f" x={a['x']:g}" if a["x"] is not None else "")
            ax.plot([p[0] for p in c], [p[1] for p in c], marker="o", label=name)
            n += 1
    if not n:
        plt.close(fig)
        return None
    ax.set_xlabel("training images seen")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scatter(aggs, xkey, xlabel, title, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for a in aggs:
        if a["top1"] is None or a[xkey] is None:
            continue
        ax.errorbar(a[xkey], a["top1"], yerr=_yerr([a]), fmt="o", capsize=3)
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
                    yerr=_yerr(pts), marker="o", capsize=3, label=label)
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
    ax.bar([a["label"] for a in ok], [a["top1"] for a in ok], yerr=_yerr(ok),
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


def _setup(aggs: list[dict], preset, data: str) -> str:
    """What the experiment's runs trained on: data, images seen, steps, recipe, LR per model."""
    ok = [a for a in aggs if a.get("images_seen")]
    if not ok:
        return "Setup: no finished run."
    seen = sorted({a["images_seen"] for a in ok})
    steps = sorted({a["steps"] for a in ok})
    lrs = OrderedDict()
    for a in ok:
        lrs.setdefault(a["model"].removesuffix("_micro"), a["lr"])
    recipes = sorted({a["recipe"] or "?" for a in ok})
    test_n = sorted({a["test_images"] for a in ok if a.get("test_images")})
    return (f"Setup: {data}, {preset.val_images:,} training images held out for validation; images seen per run "
            f"{', '.join(f'{v:,}' for v in seen)} ({', '.join(str(v) for v in steps)} optimiser steps of "
            f"{preset.batch_size}); recipe {', '.join(recipes)}; LR " + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
            + f"; seeds {list(preset.seeds)}; {', '.join(f'{n:,}' for n in test_n)} test images, the same for every run.")


def _lr_section(lr_info: dict | None) -> list[str]:
    if not lr_info:
        return []
    lines = ["## Learning rates (chosen on the validation split)", "", f"Source: {lr_info.get('source', '?')}."]
    if lr_info.get("extend"):
        lines[-1] += (f" Where a model's best LR was the largest (smallest) it had tried, the next value of"
                      f" the grid above (below) was tried too, up to {lr_info['extend']} more round(s);"
                      f" – : not tried.")
    lines.append("")
    models = lr_info.get("models") or {}
    if models:
        lrs = sorted({k for rec in models.values() for k in rec.get("val_top1", {})}, key=float)
        lines += ["| model | " + " | ".join(f"val top-1 at LR {k}" for k in lrs) + " | chosen LR |",
                  "|---|" + "---|" * (len(lrs) + 1)]
        for m, rec in models.items():
            vals = [rec.get("val_top1", {}).get(k) for k in lrs]
            lines.append(f"| {m} | " + " | ".join(_f(v) for v in vals) + f" | {rec['lr']:g} |")
        lines.append("")
    return lines


def write_report(out: Path, preset, data: str, rows: list[dict], agg: list[dict], analyses: dict,
                 machine: dict, wall_s: float, experiments, lr_info: dict | None = None,
                 ) -> tuple[Path, dict]:
    """``report.md`` in ``out``: the summary of the verdicts, the header, failed / missing runs,
    the learning rates, then one section per experiment (``experiments``: ``Experiment`` objects,
    e.g. ``selected_experiments(preset)``, with its knobs) that has rows in ``agg``. Returns
    ``(path, sections)``: the experiments' sections (tests, verdicts) by experiment id."""
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    trained = {r["run_dir"]: r["train_wall_s"] or 0.0 for r in rows if r["status"] in ("done", "cached")}
    sections = []
    for exp in experiments:
        aggs = [a for a in agg if a["experiment"] == exp.id]
        if aggs:
            sections.append((exp, aggs, exp.section(aggs, analyses.get(exp.id, {}), fig_dir)))
    lines = [f"# mixerlab compare: preset `{preset.name}` on {data}", "",
             "## Verdicts", "",
             "| experiment | verdict | criteria (fixed before the run) | difference (points) [95% CI] |",
             "|---|---|---|---|"]
    for exp, _, sec in sections:
        crit = "; ".join(t["criterion"] for t in sec.tests) or "–"
        diffs = "; ".join("–" if t["diff"] is None else f"{t['diff']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"
                          for t in sec.tests) or "–"
        lines.append(f"| {exp.title.split(':')[0]} | **{sec.word}** | {crit} | {diffs} |")
    lines += ["",
              "Verdicts: **agrees** when every criterion's 95 % interval (paired bootstrap over the shared "
              "test images, seeds combined) lies on the claim's side of its threshold, **does not agree** "
              "when one lies wholly on the other side, **inconclusive** when an interval allows both.", "",
              f"Machine: {machine.get('desc', '?')}; torch {machine.get('torch', '?')}. Wall time of this "
              f"invocation {wall_s / 60:.1f} min (runs found in the cache cost nothing); the "
              f"{len(trained)} distinct runs took {sum(trained.values()) / 60:.1f} min of training "
              "in total (sum over runs; runs train side by side with `--jobs`). No GPU result exists: "
              "every number here comes from CPU runs until a `full` preset is run on a GPU.", "",
              f"Recipe for every run: `{preset.recipe}` (mixerlab.engine.recipes), {preset.epochs} epochs on "
              f"{preset.train_fraction:g} of the training pool (the training split minus a fixed, class-balanced "
              f"validation split of {preset.val_images:,} images), batch {preset.batch_size}, warm-up "
              f"{preset.warmup_epochs:g} epochs + cosine, seeds {list(preset.seeds)}; every choice "
              "(learning rate) made on the validation split; the test split "
              f"({'all' if preset.val_fraction >= 1 else f'{preset.val_fraction:g}'} of it) read once per run after training, for the reported numbers."
              + (" Model scale: the CPU scale of `mixerlab/compare/presets.py` (builder arguments of the "
                 "`*_micro` entries)." if preset.scale else " Models: the `*_micro` zoo entries as they are.")
              + " Overrides: " + (", ".join(f"{k}={v}" for k, v in preset.train_overrides.items()) or "none") + ".",
              "",
              "**Read this first.** These are small models trained for minutes on a small dataset. The "
              "papers' claims are about ImageNet-scale training; agreement or disagreement here is "
              "evidence at this scale, not a replication.", ""]
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
    lines += _lr_section(lr_info)
    for exp, aggs, (table, figs, finding, verdict, tests, word) in sections:
        lines += [f"## {exp.title}", "", f"**Paper's claim.** {exp.claim}", "", _setup(aggs, preset, data), "",
                  table, ""]
        lines += [f"**This run.** " + " ".join(finding), "", f"**Verdict.** This run {verdict}", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figs if p is not None] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path, {exp.id: sec for exp, _, sec in sections}
