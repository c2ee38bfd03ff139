"""The learning-rate choice of ``mixerlab compare``: a sweep on the validation split (cached runs
like every other), its extension past the grid's edge, or a committed table; never the test split."""
from __future__ import annotations

import json
from pathlib import Path

from .experiments import RunSpec
from .presets import Preset
from .runner import Runner

PACKAGE_DIR = Path(__file__).resolve().parent


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
    """Train the sweep (cached like every run; the preset's first seed only) and pick per model the
    LR with the best final validation top-1; up to ``p.sweep_extend`` more rounds extend the grid of a model whose best
    LR is on an edge. Returns ``{model: {"lr": best, "val_top1": {lr: acc}}}``."""
    sweep = sweep_plan(p, specs)
    log(f"compare: LR sweep on the validation split: {len(sweep)} runs "
        f"({', '.join(f'{lr:g}' for lr in p.sweep_lrs)} per model"
        + (f", up to {p.sweep_extend} more where the best is on an edge)" if p.sweep_extend else ")"))
    # The sweep trains the preset's first seed only: with several seeds every seed was trained and
    # the last one's accuracy kept, tripling a 3-seed preset's sweep for nothing it used.
    import dataclasses
    runner = Runner(out / "sweep", dataclasses.replace(p, seeds=tuple(p.seeds[:1])), data=data, data_dir=data_dir,
                    log=log, jobs=jobs,
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
