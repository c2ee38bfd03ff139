"""``mixerlab compare``: re-run the five papers' central experiments at small scale and write a
report (``report.md`` with plots, ``results.csv``, ``results.json``, one folder per run).

Usage: ``run_compare("quick", out="runs/compare-quick")``; see ``presets.py`` for the presets
(budgets and data) and ``experiments/`` for what each experiment trains and how its section reads
(one module per experiment, registered: ``register_experiment``, ``get_experiment``,
``list_experiments``).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .experiments import (Experiment, RunSpec, Section, get_experiment, list_experiments, plan,
                          register_experiment, selected_experiments, unregister_experiment)
from .presets import PRESETS, Preset, get_preset
from .report import aggregate, run_rows, write_report, write_tables
from .runner import Runner, RunResult, build_config, config_hash

__all__ = ["PRESETS", "Experiment", "Preset", "RunSpec", "Section", "config_hash", "get_experiment",
           "get_preset", "list_experiments", "register_experiment", "run_compare",
           "unregister_experiment"]


def _macs(results: list[RunResult]) -> dict:
    import torch

    from ..bench.complexity import count_macs
    from ..engine.factory import build_from_checkpoint
    out = {}
    for r in results:
        if str(r.run_dir) in out or r.status not in ("done", "cached"):
            continue
        with torch.device("meta"):  # the model as it was trained, from its checkpoint's header
            m, _ = build_from_checkpoint(r.run_dir, weights=None)
        out[str(r.run_dir)] = count_macs(m) / 1e9
    return out


def _analyses(results: list[RunResult], preset, data, data_dir, log) -> dict:
    """Diagnostics of the runs marked ``analyze`` (first seed), cached in the run folder."""
    from ..analysis.analyze import analyze_model
    from ..analysis.inputs import load_images, load_model
    out: dict = {}
    for r in results:
        if not r.spec.analyze or r.status not in ("done", "cached") or r.seed != preset.seeds[0]:
            continue
        name = f"{r.spec.label}" + (f" (x={r.spec.x:g})" if r.spec.x is not None else "")
        cache = r.run_dir / f"analysis-{preset.analysis_images}.json"
        if cache.exists():
            rec = json.loads(cache.read_text())
        else:
            log(f"analysing {r.spec.exp} {name}")
            lm = load_model(str(r.run_dir))
            m = lm.model.eval()
            images, _, _ = load_images(data, preset.analysis_images, in_chans=m.in_chans,
                                       img_size=m.img_size, data_dir=data_dir)
            rec, _ = analyze_model(m, images, batch_size=16)
            cache.write_text(json.dumps(rec))
        out.setdefault(r.spec.exp, {})[name] = rec
    return out


PACKAGE_DIR = Path(__file__).resolve().parent


def check_preset(p: Preset, data: str, data_dir: str | None, specs: list[RunSpec]) -> None:
    """Bad budgets before anything is written: a validation split larger than the preset's
    training subset, or a run whose training subset cannot fill one optimiser step."""
    import dataclasses as dc

    from ..data.datasets import build_sources
    over = p.train_overrides
    train_src, _ = build_sources(data, data_dir, size=over.get("synthetic_size", 512),
                                 num_classes=over.get("synthetic_classes", 10),
                                 in_chans=over.get("synthetic_chans", 1), img_size=32)
    n, k = len(train_src), len(set(train_src.targets.tolist()))
    pool = n - p.val_images
    base = round(p.train_fraction * pool)
    if p.val_images < 0 or p.val_images > base:
        raise ValueError(f"preset {p.name!r}: the validation split of {p.val_images} images is larger than "
                         f"the training subset of {base} images ({p.train_fraction:g} of the {pool} left of "
                         f"{n}); lower val_images or raise train_fraction")
    for spec in specs:
        cfg = build_config(spec, p, p.seeds[0], data, data_dir)
        m = max(k, round(cfg.train_fraction * pool))
        if m < cfg.batch_size:
            x = f" x={spec.x:g}" if spec.x is not None else ""
            raise ValueError(f"preset {p.name!r}: run {spec.exp} {spec.label}{x} has {m} training images, "
                             f"fewer than one batch of {cfg.batch_size}: the budget cannot fit one optimiser step")
    del dc


def _sweep_run(p: Preset, model: str, lr: float) -> RunSpec:
    return RunSpec("sweep", model.removesuffix("_micro"), model, x=lr,
                   train_args=dict(lr=lr, train_fraction=p.sweep_fraction, epochs=p.sweep_epochs,
                                   warmup_epochs=min(p.warmup_epochs, float(p.sweep_epochs))))


def sweep_plan(p: Preset, specs: list[RunSpec]) -> list[RunSpec]:
    """The LR sweep's first round: every zoo model the plan trains, at each of ``p.sweep_lrs``, on
    ``p.sweep_fraction`` of the training pool for ``p.sweep_epochs`` epochs, judged on the
    validation split (``p.sweep_extend`` further rounds: :func:`sweep_extension`)."""
    models = list(dict.fromkeys(s.model for s in specs))
    return [_sweep_run(p, m, lr) for m in models for lr in p.sweep_lrs]


def _val_by_lr(rec: dict) -> dict[float, float]:
    """A sweep record's finished runs: ``{lr: val top-1}`` (failed or missing runs left out)."""
    return {float(k): v for k, v in rec["val_top1"].items() if v is not None}


def sweep_extension(p: Preset, table: dict) -> list[RunSpec]:
    """The next round of the sweep: for every model whose best validation LR is the largest
    (smallest) it tried, the next LR of the preset's geometric grid above (below). ``table``: as
    :func:`run_sweep` returns it. Empty when no best LR sits on an edge."""
    lrs = sorted(p.sweep_lrs)
    if len(lrs) < 2:
        return []  # no grid step to extend by
    up, down = lrs[-1] / lrs[-2], lrs[1] / lrs[0]
    runs = []
    for model, rec in table.items():
        ok = _val_by_lr(rec)
        if len(ok) < 2:
            continue  # nothing to compare (failed runs): no extension
        best = max(ok, key=ok.get)
        if best == max(ok):
            runs.append(_sweep_run(p, model, float(f"{best * up:.6g}")))
        elif best == min(ok):
            runs.append(_sweep_run(p, model, float(f"{best / down:.6g}")))
    return runs


def run_sweep(p: Preset, specs, *, out: Path, data, data_dir, log, jobs, threads_per_job,
              report_only: bool = False) -> dict:
    """Train the sweep (cached like every run) and pick per model the LR with the best final
    validation top-1; up to ``p.sweep_extend`` more rounds extend the grid of a model whose best
    LR is on an edge. Returns ``{model: {"lr": best, "val_top1": {lr: acc}}}``."""
    sweep = sweep_plan(p, specs)
    log(f"compare: LR sweep on the validation split: {len(sweep)} runs "
        f"({', '.join(f'{lr:g}' for lr in p.sweep_lrs)} per model"
        + (f", up to {p.sweep_extend} more where the best is on an edge)" if p.sweep_extend else ")"))
    runner = Runner(out / "sweep", p, data=data, data_dir=data_dir, log=log, jobs=jobs,
                    threads_per_job=threads_per_job, predict=False, report_only=report_only)
    table: dict = {}
    for round_ in range(1 + max(0, p.sweep_extend)):
        if round_:
            sweep = sweep_extension(p, table)
            if not sweep:
                break
            log(f"compare: LR sweep, round {round_ + 1}: "
                + ", ".join(f"{s.model} {s.x:g}" for s in sweep))
        for r in runner.run_all(sweep):
            acc = (r.summary.get("final") or {}).get("val_top1") if r.status in ("done", "cached") else None
            table.setdefault(r.spec.model, {"val_top1": {}})["val_top1"][f"{r.spec.x:g}"] = acc
        for rec in table.values():
            ok = _val_by_lr(rec)
            rec["lr"] = max(ok, key=ok.get) if ok else p.lr
    return table


def lr_table(p: Preset, specs, **kw) -> tuple[dict, dict]:
    """``(lrs, table)``: the LR per zoo name and the record the report shows: from the committed
    table (``p.lr_table``), else from the sweep inside the preset (``p.sweep_lrs``), else ``p.lr``."""
    if p.lr_table:
        path = PACKAGE_DIR / p.lr_table
        table = json.loads(path.read_text())["models"]
        source = f"committed table mixerlab/compare/{p.lr_table} (made by `python scripts/sweep_lr.py --preset {p.name}`)"
    elif p.sweep_lrs:
        table = run_sweep(p, specs, **kw)
        source = "sweep inside this preset run"
    else:
        return {}, dict(source=f"one LR for every model ({p.lr:g})", models={})
    info = dict(source=source, models=table)
    if p.sweep_extend and not p.lr_table:
        info["extend"] = p.sweep_extend
    return {m: rec["lr"] for m, rec in table.items()}, info


def machine_desc() -> dict:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    desc = gpu or f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"
    return dict(desc=desc, torch=torch.__version__, platform=platform.platform())


def run_compare(preset: str | Preset = "quick", *, data: str | None = None, data_dir: str | None = None,
                out: str | os.PathLike = "runs/compare", experiments=None, log=print,
                jobs: int = 1, threads_per_job: int | None = None, report_only: bool = False,
                sweep_only: bool = False, overrides: dict | None = None) -> dict:
    """Train (or take from the cache) every run of the preset, analyse, and write the report.

    ``jobs`` distinct runs train at once in worker processes (``threads_per_job`` threads each;
    default: the CPU count divided by ``jobs``); the results do not depend on it. ``report_only``
    trains nothing: the report is written from the finished runs (e.g. while another process is
    still training), the others are listed as not trained. ``sweep_only`` runs the preset's LR
    sweep alone and writes ``lr_sweep.json`` (what ``scripts/sweep_lr.py`` commits as a preset's
    LR table). ``overrides``: preset fields (e.g. ``val_images``), checked like the preset's own.

    Returns ``dict(report=path, rows=..., aggregate=...)``.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    if experiments:
        allowed = list_experiments()
        unknown = sorted(set(experiments) - set(allowed))
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; allowed: {', '.join(allowed)}")
        import dataclasses
        selected = allowed if p.experiments is None else p.experiments
        p = dataclasses.replace(p, experiments=tuple(e for e in selected if e in experiments))
    if overrides:
        import dataclasses
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Preset)})
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}")
        p = dataclasses.replace(p, **overrides)
    data = data or p.data
    out = Path(out)
    t0 = time.time()
    specs = plan(p)
    check_preset(p, data, data_dir, specs)  # before anything is written
    kw = dict(out=out, data=data, data_dir=data_dir, log=log, jobs=jobs, threads_per_job=threads_per_job)
    # One compare trains into a folder at a time; --report-only only reads (e.g. beside a running one).
    import contextlib
    from ..engine.runlock import run_folder_lock
    with contextlib.nullcontext() if report_only else run_folder_lock(out, what="compare folder"):
        if sweep_only:
            if not p.sweep_lrs:
                raise ValueError(f"preset {p.name!r} defines no LR sweep (sweep_lrs)")
            table = run_sweep(p, specs, **kw)
            path = out / "lr_sweep.json"
            path.write_text(json.dumps(dict(preset=p.name, data=data, lrs=list(p.sweep_lrs),
                                            sweep_fraction=p.sweep_fraction, sweep_epochs=p.sweep_epochs,
                                            val_images=p.val_images, models=table), indent=1) + "\n")
            log(f"LR sweep: {path}")
            return dict(sweep=path, table=table)
        lrs, lr_info = lr_table(p, specs, report_only=report_only, **kw)
        results = Runner(out, p, data=data, data_dir=data_dir, log=log, jobs=jobs, lrs=lrs,
                         threads_per_job=threads_per_job, report_only=report_only).run_all(specs)
        macs = _macs(results)
        analyses = _analyses(results, p, data, data_dir, log)
        rows = run_rows(results, macs)
        agg = aggregate(rows)
        report = write_report(out, p, data, rows, agg, analyses, machine_desc(), time.time() - t0,
                              experiments=selected_experiments(p), lr_info=lr_info)
        tests = {k: dict(verdict=sec.word, tests=sec.tests) for k, sec in write_report.sections.items()}
        write_tables(out, rows, agg, extra=dict(
            preset=p.name, data=data, tests=tests, lr=lr_info,
            statistics=dict(bootstrap="paired, over test images, seeds averaged per image; 2000 resamples, "
                                      "numpy default_rng(0), percentile 95 % interval (mixerlab.compare.stats)",
                            mcnemar="exact binomial, mid-p, first seed of each model")))
        log(f"report: {report}")
        return dict(report=report, rows=rows, aggregate=agg)
