"""Run the planned experiments: one training run per distinct resolved config, cached by its hash.

A run folder is ``OUT/runs/<model>-<hash>``; the hash covers the whole resolved ``TrainConfig``
(model, model overrides, data, recipe, seed), so runs shared by experiments train once, a finished
run (``summary.json``) is never retrained and an interrupted one resumes from ``last.safetensors``.
A failed run is recorded with its error and the others go on.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import RunSpec


def config_hash(cfg) -> str:
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass
class RunResult:
    spec: RunSpec
    seed: int
    run_dir: Path
    status: str  # done | cached | failed
    summary: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def build_config(spec: RunSpec, preset, seed: int, data: str, data_dir: str | None):
    from ..train.config import TrainConfig
    args = dict(model=spec.model, model_args=spec.model_args, data=data, data_dir=data_dir,
                train_fraction=preset.train_fraction, val_fraction=preset.val_fraction,
                epochs=preset.epochs, batch_size=preset.batch_size, lr=preset.lr,
                warmup_epochs=preset.warmup_epochs, seed=seed, progress="none")
    args.update(preset.train_overrides)
    args.update(spec.train_args)
    return TrainConfig(**args)


class Runner:
    """Trains what is not cached; reports progress with an overall ETA."""

    def __init__(self, out: Path, preset, *, data: str, data_dir: str | None, log=print):
        self.out, self.preset, self.data, self.data_dir, self.log = out, preset, data, data_dir, log
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def run_all(self, specs: list[RunSpec]) -> list[RunResult]:
        jobs, seen = [], {}
        for spec in specs:
            for seed in self.preset.seeds:
                cfg = build_config(spec, self.preset, seed, self.data, self.data_dir)
                jobs.append((spec, seed, cfg, config_hash(cfg)))
        distinct = list(dict.fromkeys(h for *_, h in jobs))
        todo = [h for h in distinct if not (self._dir(jobs, h) / "summary.json").exists()]
        self.log(f"compare: {len(jobs)} runs, {len(distinct)} distinct configs, "
                 f"{len(distinct) - len(todo)} cached, {len(todo)} to train")
        results, times, t0 = [], [], time.time()
        for spec, seed, cfg, h in jobs:
            if h in seen:
                r = seen[h]
                results.append(RunResult(spec, seed, r.run_dir, r.status, r.summary, r.error, 0.0))
                continue
            run_dir = self._dir(jobs, h)
            if (run_dir / "summary.json").exists():
                r = RunResult(spec, seed, run_dir, "cached", json.loads((run_dir / "summary.json").read_text()))
            else:
                i = len(times) + 1
                eta = ""
                if times:
                    left = (len(todo) - len(times)) * (sum(times) / len(times))
                    eta = f", ETA {left / 60:.1f} min"
                self.log(f"[{i}/{len(todo)}] {spec.exp} {spec.label}: {spec.model} seed {seed} "
                         f"-> {run_dir.name}{eta}")
                r = self._train(spec, seed, cfg, run_dir)
                times.append(r.seconds)
                msg = (f"top-1 {r.summary['final'].get('val_top1', float('nan')):.2f}%"
                       if r.status == "done" else f"FAILED: {r.error}")
                self.log(f"    {msg} ({r.seconds:.0f} s; {(time.time() - t0) / 60:.1f} min so far)")
            seen[h] = r
            results.append(r)
        return results

    def _dir(self, jobs, h) -> Path:
        model = next(spec.model for spec, _, _, hh in jobs if hh == h)
        return self.out / "runs" / f"{model}-{h}"

    def _train(self, spec: RunSpec, seed: int, cfg, run_dir: Path) -> RunResult:
        from ..train import train
        t = time.time()
        resume = (run_dir / "last.safetensors").exists()
        if run_dir.exists() and not resume:
            # A run that failed before its first checkpoint left only logs behind: start it afresh.
            shutil.rmtree(run_dir)
        try:
            summary = train(cfg, out_dir=run_dir, resume=resume)
            if summary.get("interrupted"):
                raise KeyboardInterrupt
            return RunResult(spec, seed, run_dir, "done", summary, seconds=time.time() - t)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a failed run is reported and does not stop the others
            (run_dir).mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            return RunResult(spec, seed, run_dir, "failed", error=f"{type(e).__name__}: {e}",
                             seconds=time.time() - t)
