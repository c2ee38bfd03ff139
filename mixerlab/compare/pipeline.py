"""The ``mixerlab compare`` job from preset to report: check the budget, choose the learning rates
(:mod:`.sweep`), train the planned runs (:mod:`.runner`), count MACs, run the diagnostics, and
write the report (:mod:`.report`)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .experiments import RunSpec, get_experiment, list_experiments, plan, selected_experiments
from .experiments.base import dense_plan
from .presets import Preset, get_preset
from .report import aggregate, run_rows, write_report, write_tables
from .runner import Runner, RunResult, build_config
from .sweep import lr_table, run_sweep


def _macs(results: list[RunResult]) -> dict:
    import torch

    from ..bench.complexity import count_macs
    from ..engine.factory import open_model
    out, by_arch = {}, {}
    for r in results:
        if str(r.run_dir) in out or r.status not in ("done", "cached"):
            continue
        with torch.device("meta"):  # the model as it was trained, from its checkpoint's header
            m, _ = open_model(r.run_dir, weights=None)
        # seeds of one configuration share the architecture: counted once
        to_dict = getattr(getattr(m, "cfg", None), "to_dict", None)
        arch = json.dumps(to_dict(), sort_keys=True, default=str) if callable(to_dict) else None
        if arch is None or arch not in by_arch:
            macs = count_macs(m) / 1e9
            if arch is None:
                out[str(r.run_dir)] = macs
                continue
            by_arch[arch] = macs
        out[str(r.run_dir)] = by_arch[arch]
    return out


def _analyses(results: list[RunResult], preset, data, data_dir, log) -> dict:
    """Diagnostics of the runs marked ``analyze`` (first seed), cached in the run folder; a cache
    that cannot be read (torn write, not an analysis) is named in the log and computed again, and
    a new one is written atomically."""
    from ..analysis.analyze import analyze_model
    from ..analysis.inputs import load_images, load_model
    from ..analysis.report import read_cached_analysis
    from ..engine.checkpoint import atomic_write_text
    out: dict = {}
    for r in results:
        if not r.spec.analyze or r.status not in ("done", "cached") or r.seed != preset.seeds[0]:
            continue
        name = f"{r.spec.label}" + (f" (x={r.spec.x:g})" if r.spec.x is not None else "")
        cache = r.run_dir / f"analysis-{preset.analysis_images}.json"
        rec = read_cached_analysis(cache, log) if cache.exists() else None
        if rec is None:
            log(f"analysing {r.spec.exp} {name}")
            lm = load_model(str(r.run_dir))
            m = lm.model.eval()
            images, _, _ = load_images(data, preset.analysis_images, in_chans=m.in_chans,
                                       img_size=m.img_size, data_dir=data_dir)
            rec, _ = analyze_model(m, images, batch_size=16)
            atomic_write_text(cache, json.dumps(rec))
        out.setdefault(r.spec.exp, {})[name] = rec
    return out


def training_images(p: Preset, pool: int = 55_000) -> dict:
    """What a preset trains, counted before it runs: distinct runs (configurations x seeds, shared
    runs once), and the training images they see (``epochs x round(train_fraction x pool)``,
    ``pool`` the training split less the validation images: 55,000 for Fashion-MNIST), the LR
    sweep's included at its upper bound (every model extended ``sweep_extend`` times). The
    ``gpu`` preset's time budget is this divided by a measured throughput
    (``docs/compare_presets.md``)."""
    from .runner import config_hash
    from .sweep import sweep_plan
    specs = plan(p)
    seen, images = set(), 0
    for spec in specs:
        for seed in p.seeds:
            cfg = build_config(spec, p, seed, p.data, None)
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                images += cfg.epochs * round(cfg.train_fraction * pool)
    sweep_runs = sweep_plan(p, specs) if p.sweep_lrs and not p.lr_table else []
    per_sweep_run = p.sweep_epochs * round(p.sweep_fraction * pool)
    n_sweep = len(sweep_runs) + (p.sweep_extend * len({s.model for s in sweep_runs}) if sweep_runs else 0)
    return dict(runs=len(seen), images=images, sweep_runs=n_sweep, sweep_images=n_sweep * per_sweep_run,
                total_images=images + n_sweep * per_sweep_run)


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


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_desc(device: str = "auto") -> dict:
    """Where the runs of this invocation train: ``device`` is the runs' ``TrainConfig.device``
    (``auto``: CUDA when available). ``device`` in the record names it (the CUDA device's name, or
    the CPU with its core count), never one that was not used."""
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = f"{_cpu_model()}, {cores} cores"
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        name = torch.cuda.get_device_name(0)
        dev = f"CUDA device {name} (torch CUDA {torch.version.cuda})"
    else:
        name = None
        dev = f"CPU ({cpu}), no GPU used"
    return dict(desc=dev, device=dev, gpu=name, cpu=cpu, cores=cores, torch=torch.__version__,
                platform=platform.platform())


def check_seeds(seeds) -> tuple:
    """The seeds of a compare: at least one, each an integer >= 0, none repeated."""
    seeds = tuple(seeds) if seeds is not None else ()
    if not seeds:
        raise ValueError("--seeds needs at least one seed (an integer >= 0)")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"--seeds takes integers >= 0, got {', '.join(repr(b) for b in bad)}")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"--seeds repeats {', '.join(str(d) for d in dup)}: each seed once")
    return seeds


def _resolve_preset(preset, experiments, overrides, seeds, dry_run) -> Preset:
    import dataclasses
    p = get_preset(preset) if isinstance(preset, str) else preset
    if dry_run:
        from .presets import dry_run_preset
        p = dry_run_preset(p)
    if experiments:
        allowed = list_experiments()
        unknown = sorted(set(experiments) - set(allowed))
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; allowed: {', '.join(allowed)}")
        selected = allowed if p.experiments is None else p.experiments
        p = dataclasses.replace(p, experiments=tuple(e for e in selected if e in experiments))
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Preset)})
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}")
        p = dataclasses.replace(p, **overrides)
    if seeds is not None:
        p = dataclasses.replace(p, seeds=check_seeds(seeds))
    else:
        check_seeds(p.seeds)
    return p


def run_compare(preset: str | Preset = "quick", *, data: str | None = None, data_dir: str | None = None,
                out: str | os.PathLike = "runs/compare", experiments=None, log=print,
                jobs: int | None = None, threads_per_job: int | None = None, report_only: bool = False,
                sweep_only: bool = False, overrides: dict | None = None, seeds=None,
                calibration: str | os.PathLike | None = None, dry_run: bool = False,
                save_calibration: str | os.PathLike | None = None) -> dict:
    """Train (or take from the cache) every run of the preset, analyse, and write the report.

    ``jobs`` distinct runs train at once in worker processes (``threads_per_job`` threads each;
    default: the CPU count divided by ``jobs``); the results do not depend on it. None: the
    preset's ``jobs``, else 1. ``report_only``
    trains nothing: the report is written from the finished runs (e.g. while another process is
    still training), the others are listed as not trained. ``sweep_only`` runs the preset's LR
    sweep alone and writes ``lr_sweep.json`` (what ``scripts/sweep_lr.py`` commits as a preset's
    LR table). ``overrides``: preset fields (e.g. ``val_images``), checked like the preset's own.
    ``seeds``: the training seeds, replacing the preset's (integers >= 0, each once).
    ``calibration``: a seed-calibration table (``mixerlab.compare.calibration``; a file name in
    ``mixerlab/compare/`` or a path) replacing the preset's; it must hold every configuration the
    preset runs. ``save_calibration``: after the report, write the seed-calibration table of this
    run (>= 5 seeds: each configuration's pure seed SD, :func:`~mixerlab.compare.calibration.table_from_results`)
    to this path -- the committed command that makes a preset's table is
    ``mixerlab compare --preset P --seeds 0 1 2 3 4 --save-calibration mixerlab/compare/calibration_P.json``;
    where that file exists (same scale) the entries of the configurations this run does not train
    are kept, so ``--experiments E2`` remakes E2's entries alone. A run of >= 5 seeds takes every
    seed term from its own seeds and reads no table.
    ``dry_run``: the preset shrunk to toy sizes on the CPU
    (:func:`~mixerlab.compare.presets.dry_run_preset`), how a ``gpu`` preset is tried without one.

    Everything is checked before anything is written (bad input raises ``ValueError`` and leaves
    no folder behind): the options, the seeds, the calibration table, the device, the budget, and
    that ``out`` holds no other command's output (compare marks its folders,
    :mod:`mixerlab.engine.run_folder`).

    Returns ``dict(report=path, rows=..., aggregate=...)``.
    """
    from ..engine.run_folder import check_folder, claim_folder
    from .calibration import check_merge_target, check_table, fingerprints, resolve_table, scale_of
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if threads_per_job is not None and (not isinstance(threads_per_job, int) or threads_per_job < 1):
        raise ValueError(f"threads_per_job must be an integer >= 1 or None, got {threads_per_job!r}")
    p = _resolve_preset(preset, experiments, overrides, seeds, dry_run)
    jobs = jobs if jobs is not None else (p.jobs or 1)
    if save_calibration is not None and len(p.seeds) < 5:
        raise ValueError(f"--save-calibration needs >= 5 seeds (a calibration measures the seed spread), "
                         f"got {len(p.seeds)}: add --seeds 0 1 2 3 4")
    if p.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"preset {p.name!r} needs a CUDA device and this machine has none; on a CPU, "
                             f"`mixerlab compare --preset {p.name} --dry-run` runs it shrunk to toy sizes")
    data = data or p.data
    out = Path(out)
    t0 = time.time()
    specs = plan(p)
    cal_path = resolve_table(calibration or p.calibration) if (calibration or p.calibration) else None
    if len(p.seeds) >= 5:  # every seed term from this run's own seeds (stats): the table is not read
        cal_path = None
    if save_calibration is not None:
        check_merge_target(save_calibration, scale_of(p, data))
    dense_specs = dense_plan(p)  # E6: fine-tuned from the classification runs, after them
    # a calibration table covers the configurations whose criteria are on test top-1 (E6's are not)
    cal_specs = [s for s in specs if get_experiment(s.exp).uses_accuracy_calibration]
    calibrations = check_table(cal_path, cal_specs, p.name, scale_of(p, data),
                               fingerprints(cal_specs, p, data)) if cal_path else None
    check_preset(p, data, data_dir, specs)  # before anything is written
    check_folder(out, "compare")
    kw = dict(out=out, data=data, data_dir=data_dir, log=log, jobs=jobs, threads_per_job=threads_per_job)
    claim_folder(out, "compare")
    # One compare trains into a folder at a time; --report-only only reads (e.g. beside a running one).
    import contextlib
    from ..engine.checkpoint import atomic_write_text
    from ..engine.runlock import run_folder_lock
    with contextlib.nullcontext() if report_only else run_folder_lock(out, what="compare folder"):
        if sweep_only:
            if not p.sweep_lrs:
                raise ValueError(f"preset {p.name!r} defines no LR sweep (sweep_lrs)")
            table = run_sweep(p, specs, **kw)
            path = out / "lr_sweep.json"
            atomic_write_text(path, json.dumps(dict(preset=p.name, data=data, lrs=list(p.sweep_lrs),
                                                    sweep_fraction=p.sweep_fraction, sweep_epochs=p.sweep_epochs,
                                                    val_images=p.val_images, models=table), indent=1) + "\n")
            log(f"LR sweep: {path}")
            return dict(sweep=path, table=table)
        lrs, lr_info = lr_table(p, specs, report_only=report_only, **kw)
        results = Runner(out, p, data=data, data_dir=data_dir, log=log, jobs=jobs, lrs=lrs,
                         threads_per_job=threads_per_job, report_only=report_only).run_all(specs)
        dense = []
        if dense_specs:
            from .dense_runs import run_dense
            per_job = threads_per_job or max(1, (os.cpu_count() or 1) // jobs)
            dense = run_dense(out, p, dense_specs, results, data_dir=data_dir if data == "fashion-mnist" else None,
                              log=log, threads=per_job, processes=jobs, report_only=report_only)
        macs = _macs(results)
        analyses = _analyses(results, p, data, data_dir, log)
        for r in dense:
            analyses.setdefault(r.spec.exp, {}).setdefault("dense", []).append(r)
        rows = run_rows(results, macs)
        agg = aggregate(rows, calibrations)
        device = build_config(specs[0], p, p.seeds[0], data, data_dir).device if specs else "auto"
        machine = machine_desc(device)
        wall = time.time() - t0
        trained_wall = _trained_wall(out, p, data) if report_only else None
        report, sections = write_report(out, p, data, rows, agg, analyses, machine,
                                        wall if trained_wall is None else trained_wall,
                                        experiments=selected_experiments(p), lr_info=lr_info,
                                        rewritten_s=None if trained_wall is None else wall)
        tests = {k: dict(verdict=sec.word, tests=sec.tests) for k, sec in sections.items()}
        from .dense_runs import result_row as dense_row
        write_tables(out, rows, agg, extra=dict(
            preset=p.name, data=data, seeds=list(p.seeds), machine=machine,
            wall_s=wall if trained_wall is None else trained_wall,
            **({} if trained_wall is None else dict(report_only_wall_s=wall)), tests=tests, lr=lr_info,
            calibration=None if cal_path is None else str(cal_path),
            dense=[dense_row(r) for r in dense],
            statistics=dict(
                interval="seed-aware (mixerlab.compare.stats.paired_with_seeds): crossed seed x image "
                         "variance, per-seed paired differences plus the image term, t with guarded "
                         "Welch-Satterthwaite df; seed term from the seeds of this run (>= 2 seeds and no "
                         "calibration, or >= 5 seeds), else from the calibration table, else none "
                         "(image-only, verdict inconclusive)",
                multiplicity="Holm over the criteria of one experiment (mixerlab.compare.stats.holm)",
                p_flip="probability that a rerun with as many new seeds lands on the other side of the threshold",
                mcnemar="exact binomial, mid-p, first seed of each model (image noise only, for reference)")))
        log(f"report: {report}")
        if save_calibration is not None:
            from .calibration import SCALE_KEY, config_key, save_table, table_from_results
            table = table_from_results(out / "results.json")
            lacking = sorted({config_key(s.exp, s.label, s.x) for s in specs} - set(table))
            if lacking:
                log(f"calibration: {len(lacking)} configuration(s) without {len(p.seeds)} finished seeds left out: "
                    + ", ".join(lacking))
            raw = save_table(table, save_calibration, scale=scale_of(p, data), configs=fingerprints(specs, p, data),
                             merge=True)
            kept = len([k for k in raw if k != SCALE_KEY]) - len(table)
            log(f"calibration table ({len(table)} configurations, {len(p.seeds)} seeds"
                + (f"; {kept} kept from the table there" if kept else "") + f"): {save_calibration}")
        return dict(report=report, rows=rows, aggregate=agg)


def _trained_wall(out: Path, p: Preset, data: str) -> float | None:
    """The wall time of the compare that trained the runs of ``out`` (its ``results.json``, same
    preset, data and seeds), so that a report rewritten with ``report_only`` keeps it; ``None``
    when there is none to keep."""
    try:
        old = json.loads((Path(out) / "results.json").read_text())
        if old.get("preset") == p.name and old.get("data") == data and old.get("seeds") == list(p.seeds):
            return float(old["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def replicate(preset: str | Preset, seeds_a, seeds_b, *, out: str | os.PathLike, log=print, **kw) -> dict:
    """The replicate check (issue 28): the same compare twice with disjoint seeds, in
    ``out/seeds-<a>`` and ``out/seeds-<b>``, and its criteria side by side. Two verdicts
    *contradict* when one is "agrees" and the other "does not agree" (inconclusive contradicts
    nothing). ``kw``: further :func:`run_compare` arguments (``experiments``, ``jobs``, ...).

    Returns ``dict(rows=[{experiment, stat, a, b, contradict}], contradictions=n, table=Markdown,
    failed={sub-folder: [runs that did not finish]}, complete=bool)``: a check with failed runs is
    void (its inconclusive criteria contradict nothing) and its table says so first."""
    from .stats import AGREES, DISAGREES
    a, b = check_seeds(seeds_a), check_seeds(seeds_b)
    common = sorted(set(a) & set(b))
    if common:
        raise ValueError(f"a replicate needs disjoint seeds; both have {', '.join(str(s) for s in common)}")
    out = Path(out)
    res, failed = [], {}
    for seeds in (a, b):
        sub = out / ("seeds-" + "-".join(str(s) for s in seeds))
        run_compare(preset, out=sub, seeds=seeds, log=log, **kw)
        data = json.loads((sub / "results.json").read_text())
        res.append(data["tests"])
        # a run that failed leaves its criteria inconclusive, which contradicts nothing: the
        # check is void then, and says so instead of counting 0 contradictions
        bad = [f"{r.get('experiment')} {r.get('label')} seed {r.get('seed')}" for r in data.get("runs", [])
               if r.get("status") not in ("done", "cached")]
        if bad:
            failed[sub.name] = bad
    rows = []
    for exp, sec in res[0].items():
        other = {t["stat"]: t for t in res[1].get(exp, {}).get("tests", [])}
        for t in sec["tests"]:
            u = other.get(t["stat"], {})
            va, vb = t["verdict"], u.get("verdict")
            rows.append(dict(experiment=exp, stat=t["stat"], a=va, b=vb, diff_a=t.get("diff"), diff_b=u.get("diff"),
                             contradict={va, vb} == {AGREES, DISAGREES}))

    def cell(v):
        return "–" if v is None else f"{v:+.2f}"
    table = "\n".join(
        [f"| experiment | statistic | seeds {list(a)} | seeds {list(b)} | contradiction |", "|---|---|---|---|---|"]
        + [f"| {r['experiment']} | {r['stat']} | {cell(r['diff_a'])} **{r['a']}** | {cell(r['diff_b'])} **{r['b']}** "
           f"| {'**yes**' if r['contradict'] else 'no'} |" for r in rows])
    if failed:
        table = "\n".join(f"**Void check:** {len(v)} run(s) of {k} did not finish ({', '.join(v[:4])}"
                          f"{' ...' if len(v) > 4 else ''}); their criteria cannot contradict anything."
                          for k, v in failed.items()) + "\n\n" + table
    return dict(rows=rows, contradictions=sum(r["contradict"] for r in rows), table=table, failed=failed,
                complete=not failed)
