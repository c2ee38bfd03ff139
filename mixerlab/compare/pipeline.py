"""The ``mixerlab compare`` job from preset to report: check the budget, choose the learning rates
(:mod:`.sweep`), train the planned runs (:mod:`.runner`), count MACs, run the diagnostics, and
write the report (:mod:`.report`)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .experiments import RunSpec, list_experiments, plan, selected_experiments
from .presets import Preset, get_preset
from .report import aggregate, run_rows, write_report, write_tables
from .runner import Runner, RunResult, build_config
from .sweep import lr_table, run_sweep


def _macs(results: list[RunResult]) -> dict:
    import torch

    from ..bench.complexity import count_macs
    from ..engine.factory import open_model
    out = {}
    for r in results:
        if str(r.run_dir) in out or r.status not in ("done", "cached"):
            continue
        with torch.device("meta"):  # the model as it was trained, from its checkpoint's header
            m, _ = open_model(r.run_dir, weights=None)
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


def check_preset(p: Preset, data: str, data_dir: str | None, specs: list[RunSpec]) -> None:
    """Bad budgets before anything is written: a validation split larger than the preset's
    training subset, or a run whose training subset cannot fill one optimiser step."""
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
        report, sections = write_report(out, p, data, rows, agg, analyses, machine_desc(), time.time() - t0,
                                        experiments=selected_experiments(p), lr_info=lr_info)
        tests = {k: dict(verdict=sec.word, tests=sec.tests) for k, sec in sections.items()}
        write_tables(out, rows, agg, extra=dict(
            preset=p.name, data=data, tests=tests, lr=lr_info,
            statistics=dict(bootstrap="paired, over test images, seeds averaged per image; 2000 resamples, "
                                      "numpy default_rng(0), percentile 95 % interval (mixerlab.compare.stats)",
                            mcnemar="exact binomial, mid-p, first seed of each model")))
        log(f"report: {report}")
        return dict(report=report, rows=rows, aggregate=agg)
