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
from .runner import Runner, RunResult, config_hash

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


def machine_desc() -> dict:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    desc = gpu or f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"
    return dict(desc=desc, torch=torch.__version__, platform=platform.platform())


def run_compare(preset: str | Preset = "quick", *, data: str | None = None, data_dir: str | None = None,
                out: str | os.PathLike = "runs/compare", experiments=None, log=print,
                jobs: int = 1, threads_per_job: int | None = None, report_only: bool = False) -> dict:
    """Train (or take from the cache) every run of the preset, analyse, and write the report.

    ``jobs`` distinct runs train at once in worker processes (``threads_per_job`` threads each;
    default: the CPU count divided by ``jobs``); the results do not depend on it. ``report_only``
    trains nothing: the report is written from the finished runs (e.g. while another process is
    still training), the others are listed as not trained.

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
    data = data or p.data
    out = Path(out)
    t0 = time.time()
    specs = plan(p)
    results = Runner(out, p, data=data, data_dir=data_dir, log=log, jobs=jobs,
                     threads_per_job=threads_per_job, report_only=report_only).run_all(specs)
    macs = _macs(results)
    analyses = _analyses(results, p, data, data_dir, log)
    rows = run_rows(results, macs)
    agg = aggregate(rows)
    write_tables(out, rows, agg)
    report = write_report(out, p, data, rows, agg, analyses, machine_desc(), time.time() - t0,
                          experiments=selected_experiments(p))
    log(f"report: {report}")
    return dict(report=report, rows=rows, aggregate=agg)
