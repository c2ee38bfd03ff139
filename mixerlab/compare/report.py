"""Tables, plots and the Markdown report of ``mixerlab compare``: the machinery the experiments share.

Records first (``rows``: one per run; ``aggregate``: mean and spread over seeds), plots second
(matplotlib, Agg), prose last: ``write_report`` writes the common header, then one section per
experiment the preset selects (``experiments/``: each states the paper's claim, what this run
measured and whether the two agree), with the caveat that these are tiny models on little data. Every interval is seed-aware
(``paired_test`` -> :func:`mixerlab.compare.stats.seed_test`; the seed term from the run's seeds or
a committed calibration, named in the tables), an experiment's criteria are Holm-corrected together
(``decide``), each verdict carries the probability that a rerun flips it, and every section shows
each seed's values (strip plots, ``seed_figures``) and whether its runs stopped on a flat
validation curve (``plateau_check``). The header names the device the runs trained on.
The helpers below (``markdown_table``, ``_scatter`` / ``_lines`` / ``_heatmaps`` / ``_curves`` /
``_bars``, ``_get`` / ``_diff`` / ``_verdict``) are what the experiments' ``section`` methods use.
"""
from __future__ import annotations

import csv
import dataclasses
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


def _trained_on(summary: dict | None) -> str | None:
    """The device a run trained on, from its summary (the GPU's name, or the CPU)."""
    m = (summary or {}).get("machine") or {}
    if m.get("gpu"):
        return m["gpu"]
    if m.get("device"):
        return f"{m['device']} ({m.get('processor') or '?'}, {m.get('cpu_count') or '?'} cores)"
    return None


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
        try:
            pred = load_predictions(r.run_dir) if ok else None
        except ValueError as e:  # corrupt predictions (report_only never rewrites them): the run fails
            pred, r = None, dataclasses.replace(r, error=str(e))
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
            train_images=None, epochs=cfg.get("epochs"), train_fraction=cfg.get("train_fraction"),
            recipe=cfg.get("recipe"), lr=cfg.get("lr"), img_size=cfg.get("img_size"),
            model_args=cfg.get("model_args"), curve=_curve(r.run_dir, batch) if ok else [],
            run_dir=str(r.run_dir), trained_on=_trained_on(r.summary) if ok else None,
            error=r.error or (None if pred is not None or not ok else "no test predictions"),
            correct=None if pred is None else pred["correct"]))
    return rows


def aggregate(rows: list[dict], calibrations: dict | None = None) -> list[dict]:
    """Rows grouped by (experiment, label, x) over seeds: mean test top-1 with its seed-aware 95 %
    interval (:func:`mixerlab.compare.stats.accuracy_with_seeds`: test images and training seeds;
    the seed term from the seeds of this run, or from ``calibrations`` -- a table of
    :func:`mixerlab.compare.calibration.load_table`, keyed by ``config_key`` -- when the run has
    fewer than 5 seeds), ``correct`` the (seeds, images) matrix, ``correct_by_seed`` the same by
    seed id, ``per_seed`` the test top-1 of each seed, ``curves`` the validation curve of each seed."""
    import numpy as np

    from .calibration import config_key
    from .stats import accuracy_with_seeds
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for row in rows:
        groups.setdefault((row["experiment"], row["label"], row["x"]), []).append(row)
    out = []
    for (exp, label, x), rs in groups.items():
        ok = [r for r in rs if r["status"] in ("done", "cached") and r["correct"] is not None]
        m, sd = _mean_sd([r["top1"] for r in ok])
        same = ok and len({len(r["correct"]) for r in ok}) == 1
        correct = np.stack([r["correct"] for r in ok]) if same else None
        by_seed = {r["seed"]: r["correct"] for r in ok} if same else None
        cal = (calibrations or {}).get(config_key(exp, label, x))
        ci = accuracy_with_seeds(by_seed, calibration=cal) if by_seed else None
        out.append(dict(experiment=exp, label=label, x=x, model=rs[0]["model"], seeds=len(ok),
                        failed=sum(r["status"] == "failed" for r in rs),
                        missing=sum(r["status"] == "missing" for r in rs), top1=m, top1_sd=sd,
                        top1_lo=ci and max(0.0, ci["lo"]), top1_hi=ci and min(100.0, ci["hi"]),
                        top1_source=ci and ci["seed_source"],
                        seed_ids=[r["seed"] for r in ok], per_seed=[r["top1"] for r in ok],
                        val_per_seed=[r["val_top1"] for r in ok],
                        val_top1=_mean_sd([r["val_top1"] for r in ok])[0],
                        params_m=_mean_sd([r["params_m"] for r in ok])[0],
                        gmacs=_mean_sd([r["gmacs"] for r in ok])[0],
                        train_img_s=_mean_sd([r["train_img_s"] for r in ok])[0],
                        peak_mem_mb=_mean_sd([r["peak_mem_mb"] for r in ok])[0],
                        images_seen=ok[0]["images_seen"] if ok else None, steps=ok[0]["steps"] if ok else None,
                        train_images=ok[0].get("train_images") if ok else None,
                        epochs=ok[0].get("epochs") if ok else None,
                        train_fraction=ok[0].get("train_fraction") if ok else None,
                        lr=ok[0]["lr"] if ok else None, recipe=ok[0]["recipe"] if ok else None,
                        test_images=ok[0]["test_images"] if ok else None,
                        curve=ok[0]["curve"] if ok else [], curves={r["seed"]: r["curve"] for r in ok},
                        correct=correct, correct_by_seed=by_seed, calibration=cal,
                        errors=[r["error"] for r in rs if r["error"]]))
    return out


def _bits(v) -> str | None:
    return None if v is None else "".join("1" if b else "0" for b in v.tolist())


def _finite(obj):
    """``obj`` with every NaN / infinite float replaced by None (strict JSON: e.g. the infinite
    degrees of freedom of an image-only interval)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _jsonable_agg(a: dict) -> dict:
    out = {k: v for k, v in a.items() if k not in ("correct", "correct_by_seed", "calibration")}
    cal = a.get("calibration")
    out["calibration"] = None if cal is None else dict(sd=cal.sd, seeds=cal.seeds, what=cal.what)
    return out


def write_tables(out: Path, rows: list[dict], agg: list[dict], extra: dict | None = None) -> None:
    """``results.csv`` (one line per run) and ``results.json``: every run with its per-image test
    correctness (``correct``: a string of 0/1, test image i at position i, the same test images for
    every run), the aggregates and ``extra`` (the experiments' paired tests, the LR table). Both
    written atomically (a killed compare leaves the old file or the new one, never part of it)."""
    import io

    from ..engine.checkpoint import atomic_write_text
    skip = ("correct", "curve", "model_args")
    buf = io.StringIO(newline="")
    keys = [k for k in rows[0].keys() if k not in skip] if rows else ["experiment"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    runs = [{**r, "correct": _bits(r["correct"])} for r in rows]
    aggs = [_jsonable_agg(a) for a in agg]
    atomic_write_text(out / "results.json", json.dumps(_finite(dict(runs=runs, aggregate=aggs, **(extra or {}))),
                                                       indent=1, default=str, allow_nan=False))
    atomic_write_text(out / "results.csv", buf.getvalue())


def _f(v, nd=2, suffix=""):
    return "–" if v is None else f"{v:.{nd}f}{suffix}"


def _acc(a):
    if a["top1"] is None:
        return "not run" if a.get("missing") and not a["failed"] else "failed"
    ci = f" [{a['top1_lo']:.1f}, {a['top1_hi']:.1f}]" if a.get("top1_lo") is not None else ""
    src = {"seeds": "", "calibration": " cal.", "none": " images only"}.get(a.get("top1_source") or "", "")
    seeds = ""
    if a["seeds"] > 1:
        seeds = (f" (seeds: {', '.join(f'{v:.2f}' for v in a.get('per_seed') or [])}; "
                 f"SD {a['top1_sd']:.2f})")
    return _f(a["top1"]) + ci + src + seeds


def markdown_table(aggs: list[dict], x_name: str | None = None, extra=None) -> str:
    """Per variant: test top-1 with its seed-aware 95 % interval (``cal.``: seed term from a
    committed calibration; ``images only``: one seed and no calibration) and, with several seeds,
    each seed's value and their SD; final validation top-1, size, cost and images seen."""
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


SOURCE_WORDS = {"seeds": "seeds of this run", "calibration": "committed calibration",
                "none": "none (one seed, no calibration: test images only)"}


def _source_text(t: dict) -> str:
    src = t.get("seed_source")
    if src is None:
        return "–"
    text = SOURCE_WORDS.get(src, src)
    if src == "calibration" and t.get("calibration_sd") is not None:
        text += f" (seed SD {t['calibration_sd']:.2f}, {t.get('calibration_seeds') or '?'} seeds)"
    return text


def paired_test(criterion, a, b, c=None, d=None) -> dict:
    """The paired comparison behind one criterion: A - B (or (A - B) - (C - D)) in points, models
    paired by seed, with the seed-aware 95 % interval of :func:`mixerlab.compare.stats.seed_test`
    (test images *and* training seeds; the seed term from this run's seeds, else from the
    configurations' committed calibrations combined by
    :func:`mixerlab.compare.calibration.for_statistic`, else absent and the verdict inconclusive),
    the rerun flip probability ``p_flip``, and McNemar's mid-p for two single-seed models (image
    noise only, for reference). ``a``..``d``: aggregates of :func:`aggregate`."""
    from .calibration import for_statistic
    from .stats import INCONCLUSIVE, mcnemar, seed_test
    rec = dict(stat=criterion.stat, criterion=criterion.text(), why=criterion.why, op=criterion.op,
               threshold=criterion.threshold, diff=None, lo=None, hi=None, se=None, n=None, p_mid=None,
               p_flip=None, seed_source=None, per_seed=[], seed_sd=None, verdict=INCONCLUSIVE, note=None)
    groups = [g for g in (a, b, c, d) if g is not None] if c is not None else [a, b]
    if any(g is None or not g.get("correct_by_seed") for g in groups):
        rec["note"] = "missing runs"
        return rec
    cals = [g.get("calibration") for g in groups]
    cal = for_statistic(cals) if all(x is not None for x in cals) else None
    try:
        r = seed_test(criterion, *[g["correct_by_seed"] for g in groups], calibration=cal)
    except ValueError as e:
        rec["note"] = str(e)
        return rec
    rec.update(r)
    if c is None and a["seeds"] == 1 and b["seeds"] == 1:
        m = mcnemar(a["correct"], b["correct"])
        rec.update(p_mid=m["p_mid"], p_exact=m["p_exact"], discordant=[m["b"], m["c"]])
    return rec


def decide(tests: list[dict]) -> tuple[list[dict], str]:
    """An experiment's criteria corrected together (Holm's step-down over its criteria,
    :func:`mixerlab.compare.stats.holm`: each interval widened to its Holm level) and the
    experiment's word (:func:`mixerlab.compare.stats.combine`)."""
    from .stats import combine, holm
    tests = holm(tests) if tests else []
    return tests, combine([t["verdict"] for t in tests])


def _per_seed_text(t: dict) -> str:
    vals = t.get("per_seed") or []
    if not vals:
        return "–"
    text = ", ".join(f"{v:+.2f}" for v in vals)
    return text + (f" (SD {t['seed_sd']:.2f})" if t.get("seed_sd") is not None else " (one seed)")


def tests_table(tests: list[dict]) -> str:
    """One row per criterion: the estimate with its seed-aware interval (Holm-adjusted when the
    experiment has several criteria), each seed's value and their SD, the source of the seed
    term, the probability that a rerun lands on the other side, the criterion and the verdict."""
    lines = ["| statistic | difference (points) [95% CI, seed-aware] | per seed (SD) | seed term from "
             "| P(rerun flips) | criterion (fixed before the run) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for t in tests:
        diff = "–" if t["diff"] is None else f"{t['diff']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"
        if t.get("m", 1) > 1 and t["diff"] is not None:
            diff += f" (Holm: {100 * t['holm_level']:.1f} %)"
        pf = "–" if t.get("p_flip") is None else f"{t['p_flip']:.2f}"
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['stat']} | {diff} | {_per_seed_text(t)} | {_source_text(t)} | {pf} | "
                     f"{t['criterion']} | **{t['verdict']}**{note} |")
    return "\n".join(lines)


def verdict_sentence(word: str, tests: list[dict], claim: str) -> str:
    crit = "; ".join(f"{t['criterion']}: {t['verdict']}"
                     + ("" if t.get("p_flip") is None else f" (P(rerun flips) {t['p_flip']:.2f})")
                     for t in tests)
    lead = f"is **{word}** about" if word == "inconclusive" else f"**{word}** with"
    return (f"{lead} {claim} (criteria: {crit}; agrees when every interval -- test images and training "
            "seeds, Holm-corrected across the experiment's criteria -- lies on the claim's side, does not "
            "agree when one lies wholly on the other side, inconclusive otherwise).")


# -- plots --------------------------------------------------------------------------------------
def _yerr(aggs):
    """Asymmetric error bars: the 95 % bootstrap interval over test images (else the seed sd)."""
    lo = [a["top1"] - a["top1_lo"] if a.get("top1_lo") is not None else (a.get("top1_sd") or 0) for a in aggs]
    hi = [a["top1_hi"] - a["top1"] if a.get("top1_hi") is not None else (a.get("top1_sd") or 0) for a in aggs]
    return [lo, hi]


def _val_curves(aggs, title, path):
    """Validation top-1 against images seen, one line per configuration and seed (the first seed
    solid, the others thin in the same colour)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    n = 0
    for i, a in enumerate(aggs):
        curves = a.get("curves") or ({0: a["curve"]} if a.get("curve") else {})
        name = a["label"] + (f" x={a['x']:g}" if a["x"] is not None else "")
        for j, c in enumerate(v for v in curves.values() if v):
            ax.plot([p[0] for p in c], [p[1] for p in c], marker="o" if j == 0 else None, color=f"C{i % 10}",
                    lw=1.5 if j == 0 else 0.7, alpha=1.0 if j == 0 else 0.6, label=name if j == 0 else None)
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


def plateau_check(a: dict, epochs: int, val_images: int, train_fraction: float | None = None) -> dict:
    """Whether a configuration's runs stopped on a flat validation curve.

    The rise of each seed's validation top-1 between its last two validation points, in points
    per *epoch* -- the images of one epoch on the preset's ``train_fraction`` of the pool: the
    run's images seen / its own epochs x (its fraction / the preset's), so an E2 run on a fraction
    f whose epochs were scaled by 1/f is read per 1/f of its epochs and one trained on its own
    budget per epoch of the preset's fraction; a record without its epochs and fraction (an older
    results.json) is read per the preset's ``epochs`` -- is compared with the configuration's seed spread: the SD over seeds
    of the final validation top-1 (>= 2 seeds), else the committed calibration's seed SD of the
    test top-1, else (no seed spread known) the binomial SD of one validation accuracy,
    ``sqrt(p (1 - p) / val_images)``, which says so. A run rising by more than that per epoch is
    ``rising`` (still learning: its verdict compares unfinished training)."""
    curves = [c for c in (a.get("curves") or {}).values() if c]
    vals = [v for v in a.get("val_per_seed") or [] if v is not None]
    if len(vals) >= 2:
        spread, source = statistics.stdev(vals), "SD over seeds"
    elif a.get("calibration") is not None:
        spread, source = a["calibration"].sd, "calibration"
    elif vals and val_images:
        p = min(max(vals[0] / 100.0, 1e-3), 1 - 1e-3)
        spread, source = 100.0 * math.sqrt(p * (1 - p) / val_images), "no seed spread: validation image noise"
    else:
        spread, source = None, "unknown"
    seen = a.get("images_seen") or 0
    if a.get("epochs") and a.get("train_fraction") and train_fraction:
        unit = seen / a["epochs"] * train_fraction / a["train_fraction"]
    else:
        unit = seen / max(1, epochs)
    slopes = []
    for c in curves:
        if len(c) >= 2 and unit > 0 and c[-1][0] > c[-2][0]:
            slopes.append((c[-1][1] - c[-2][1]) / ((c[-1][0] - c[-2][0]) / unit))
    if not slopes or spread is None:
        state = "unknown (fewer than two validation points)" if not slopes else "unknown"
        return dict(slope=max(slopes) if slopes else None, spread=spread, source=source, rising=None, state=state)
    worst = max(slopes)
    rising = worst > spread
    return dict(slope=worst, spread=spread, source=source, rising=rising,
                state="**still rising**" if rising else "flat")


def plateau_table(aggs: list[dict], epochs: int, val_images: int,
                  train_fraction: float | None = None) -> tuple[str, list[str]]:
    """The plateau check of every configuration as a Markdown table, and the names of those still
    rising."""
    lines = ["| run | last rise of val top-1 (points / epoch, worst seed) | seed spread (points) | end of training |",
             "|---|---|---|---|"]
    rising = []
    for a in aggs:
        if a.get("top1") is None:
            continue
        name = a["label"] + (f" x={a['x']:g}" if a["x"] is not None else "")
        c = plateau_check(a, epochs, val_images, train_fraction)
        slope = "–" if c["slope"] is None else f"{c['slope']:+.2f}"
        spread = "–" if c["spread"] is None else f"{c['spread']:.2f} ({c['source']})"
        lines.append(f"| {name} | {slope} | {spread} | {c['state']} |")
        if c["rising"]:
            rising.append(name)
    return "\n".join(lines), rising


def seed_figures(exp_id: str, aggs: list[dict], tests: list[dict], fig_dir: Path) -> list:
    """Strip plots of one experiment: each configuration's per-seed test top-1 with its interval,
    and each criterion's per-seed statistic with its (Holm-adjusted) interval and threshold."""
    from .calibration import strip_plot
    accs = [dict(stat=a["label"] + (f" x={a['x']:g}" if a["x"] is not None else ""), per_seed=a["per_seed"],
                 diff=a["top1"], lo=a["top1_lo"], hi=a["top1_hi"], seed_source=a.get("top1_source"))
            for a in aggs if a.get("per_seed") and a.get("top1_lo") is not None]
    return [strip_plot(accs, fig_dir / f"{exp_id.lower()}_seed_accuracy.png",
                       f"{exp_id}: test top-1 per seed", xlabel="test top-1 (%)"),
            strip_plot([t for t in tests if t.get("diff") is not None], fig_dir / f"{exp_id.lower()}_seed_stats.png",
                       f"{exp_id}: criteria per seed (points)")]


def machine_line(machine: dict, preset, wall_s: float, rows: list[dict] | None = None,
                 rewritten_s: float | None = None) -> str:
    """Where and how this report was made: the device this invocation's runs train on (named),
    the CPU, torch, the seeds and the wall time; with ``rows``, where each finished run says it
    trained (its summary), so runs found in the cache from another machine are not claimed.
    ``rewritten_s``: the report was rewritten by ``report_only`` in that many seconds, and
    ``wall_s`` is the wall time of the invocation that trained the runs (its ``results.json``)."""
    seeds = list(preset.seeds)
    devices: dict = {}
    for r in rows or []:
        if r.get("trained_on") and r["run_dir"] not in devices.get(r["trained_on"], set()):
            devices.setdefault(r["trained_on"], set()).add(r["run_dir"])
    trained = ("" if not devices else " Runs trained on (from their summaries): "
               + "; ".join(f"{k}: {len(v)} run{'s' if len(v) != 1 else ''}" for k, v in devices.items()) + ".")
    where = machine.get("device", "?") + (f"; CPU {machine['cpu']}" if machine.get("gpu") and machine.get("cpu") else "")
    return (f"Ran on: {where}; torch "
            f"{machine.get('torch', '?')}; {len(seeds)} seed{'s' if len(seeds) != 1 else ''} per run "
            f"({', '.join(str(x) for x in seeds)}); "
            + (f"wall time of this invocation {wall_s / 60:.1f} min." if rewritten_s is None else
               f"wall time of the invocation that trained these runs {wall_s / 60:.1f} min (this report "
               f"rewritten from them by `--report-only` in {rewritten_s:.0f} s).") + trained)


def write_report(out: Path, preset, data: str, rows: list[dict], agg: list[dict], analyses: dict,
                 machine: dict, wall_s: float, experiments, lr_info: dict | None = None,
                 rewritten_s: float | None = None) -> tuple[Path, dict]:
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
             "| experiment | verdict | criteria (fixed before the run) | difference (points) [95% CI] "
             "| seed term from | P(rerun flips) |",
             "|---|---|---|---|---|---|"]
    for exp, _, sec in sections:
        crit = "; ".join(t["criterion"] for t in sec.tests) or "–"
        diffs = "; ".join("–" if t["diff"] is None else f"{t['diff']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"
                          for t in sec.tests) or "–"
        srcs = "; ".join(_source_text(t) for t in sec.tests) or "–"
        flips = "; ".join("–" if t.get("p_flip") is None else f"{t['p_flip']:.2f}" for t in sec.tests) or "–"
        lines.append(f"| {exp.title.split(':')[0]} | **{sec.word}** | {crit} | {diffs} | {srcs} | {flips} |")
    lines += ["",
              "Verdicts: **agrees** when every criterion's 95 % interval lies on the claim's side of its "
              "threshold, **does not agree** when one lies wholly on the other side, **inconclusive** when an "
              "interval allows both. Each interval holds the test images *and* the training seeds (the crossed "
              "random-effects variance of `mixerlab.compare.stats`, per-seed paired differences plus the "
              "image term, t with guarded Welch-Satterthwaite degrees of freedom; Bouthillier et al., MLSys "
              "2021); the seed term comes from the seeds of this run, or from a committed calibration table "
              "when the run has fewer than 5 seeds; with one seed and no calibration the interval covers the "
              "test images only and its verdict stays inconclusive. The criteria of one experiment are "
              "corrected together (Holm, 1979). P(rerun flips): the probability that a rerun with as many new "
              "seeds puts its estimate on the other side of the threshold.", "",
              machine_line(machine, preset, wall_s, rows, rewritten_s) + f" The {len(trained)} distinct runs took "
              f"{sum(trained.values()) / 60:.1f} min of training in total (sum over runs; runs train side by "
              "side with `--jobs`; runs found in the cache cost nothing).", "",
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
        ptable, rising = plateau_table(aggs, preset.epochs, preset.val_images, preset.train_fraction)
        lines += ["**Trained to a plateau?** The rise of the validation top-1 over the last epoch of each "
                  "run (worst seed) against the configuration's seed spread; a run still rising by more "
                  "than that was stopped while learning, and a verdict that uses it compares unfinished "
                  "training (validation curves below).", "", ptable, ""]
        if rising:
            lines += [f"Still rising at the end: {', '.join(rising)}.", ""]
        figs = list(figs) + seed_figures(exp.id, aggs, tests, fig_dir)
        lines += [f"![{p.stem}](figures/{p.name})" for p in figs if p is not None] + [""]
    from ..engine.checkpoint import atomic_write_text
    path = atomic_write_text(out / "report.md", "\n".join(lines))
    return path, {exp.id: sec for exp, _, sec in sections}
