"""Run the planned experiments: one training run per distinct resolved config, cached by its hash.

A run folder is ``OUT/runs/<model>-<hash>``; the hash covers the whole resolved ``TrainConfig``
(model, model overrides, data, recipe, seed), so runs shared by experiments train once, a finished
run (``summary.json``) is never retrained and an interrupted one resumes from ``last.safetensors``.
A failed run is recorded with its error and the others go on.

With ``jobs > 1`` distinct runs train concurrently in spawned worker processes, each with
``threads_per_job`` intra-op threads (default: the CPU count divided by ``jobs``); see
``docs/benchmarks.md`` for what it buys on a small CPU. The thread count is set outside the
config, so it does not change the run hashes: a compare started with one job resumes with several
and vice versa. Runs start seed-major; Ctrl-C stops the workers, which save resumable checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .experiments.base import RunSpec


def config_hash(cfg) -> str:
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass
class RunResult:
    spec: RunSpec
    seed: int
    run_dir: Path
    status: str  # done | cached | failed | missing (not trained: report_only)
    summary: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def build_config(spec: RunSpec, preset, seed: int, data: str, data_dir: str | None, lrs: dict | None = None):
    """The run's ``TrainConfig``, resolved by the engine's :func:`~mixerlab.engine.config.load_config`
    (so compare and ``mixerlab train`` share one recipe and one LR rule): the preset's recipe <- the
    preset's budget and data <- the model's learning rate from ``lrs`` (zoo name -> LR; the LR table
    or sweep, else ``preset.lr``) <- ``preset.train_overrides`` <- the run's own ``train_args``. The
    preset's CPU scale of the model (``preset.scale[model]``, a :class:`~.presets.ModelScale`) gives
    the run's ``img_size`` and the builder arguments under the run's own ``model_args``."""
    from ..engine.config import load_config
    scale = (preset.scale or {}).get(spec.model)
    values = dict(recipe=preset.recipe, model=spec.model,
                  model_args={**(scale.model_args if scale else {}), **spec.model_args},
                  data=data, data_dir=data_dir, train_fraction=preset.train_fraction,
                  val_fraction=preset.val_fraction, val_images=preset.val_images, epochs=preset.epochs,
                  batch_size=preset.batch_size, lr=(lrs or {}).get(spec.model, preset.lr),
                  warmup_epochs=preset.warmup_epochs, seed=seed, progress="none")
    if scale is not None:
        values["img_size"] = scale.img_size
    if getattr(preset, "device", None):
        values["device"] = preset.device
    values.update(preset.train_overrides)
    values.update(spec.train_args)
    if getattr(spec, "subset_per_seed", False):
        values["subset_seed"] = seed
    return load_config(overrides=values)


class Runner:
    """Trains what is not cached; reports progress with an overall ETA."""

    def __init__(self, out: Path, preset, *, data: str, data_dir: str | None, log=print,
                 jobs: int = 1, threads_per_job: int | None = None, report_only: bool = False,
                 lrs: dict | None = None, predict: bool = True):
        if not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        if threads_per_job is not None and (not isinstance(threads_per_job, int) or threads_per_job < 1):
            raise ValueError(f"threads_per_job must be an integer >= 1 or None, got {threads_per_job!r}")
        self.out, self.preset, self.data, self.data_dir, self.log = out, preset, data, data_dir, log
        self.jobs = jobs
        self.lrs = dict(lrs or {})
        self.predict = predict  # write each run's test predictions (not for the LR sweep)
        self.report_only = report_only
        self._parallel: dict[str, RunResult] = {}
        self.threads_per_job = threads_per_job or max(1, (os.cpu_count() or 1) // jobs)
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def run_all(self, specs: list[RunSpec]) -> list[RunResult]:
        jobs, seen = [], {}
        for spec in specs:
            for seed in self.preset.seeds:
                cfg = build_config(spec, self.preset, seed, self.data, self.data_dir, self.lrs)
                jobs.append((spec, seed, cfg, config_hash(cfg)))
        first: dict[str, tuple] = {}  # hash -> (spec, seed, cfg) of its first job
        for spec, seed, cfg, h in jobs:
            first.setdefault(h, (spec, seed, cfg))
        summaries = {h: _read_summary(self._dir(first, h), self.log) for h in first}
        todo = [h for h in first if summaries[h] is None]
        self.log(f"compare: {len(jobs)} runs, {len(first)} distinct configs, "
                 f"{len(first) - len(todo)} cached, {len(todo)} to train")
        if self.report_only:
            self.log(f"compare: report only: {len(todo)} run(s) not trained are marked missing")
        elif self.jobs > 1 and len(todo) > 1:
            self._train_parallel(first, todo)
        results, times, t0 = [], [], time.time()
        for spec, seed, cfg, h in jobs:
            if h in seen:
                r = seen[h]
                results.append(RunResult(spec, seed, r.run_dir, r.status, r.summary, r.error, 0.0))
                continue
            run_dir = self._dir(first, h)
            if h in self._parallel:
                r = self._parallel[h]
            elif summaries[h] is not None:
                r = RunResult(spec, seed, run_dir, "cached", summaries[h])
                if self.predict and not self.report_only:
                    _ensure_predictions(r, cfg, self.log)
            elif self.report_only:
                r = RunResult(spec, seed, run_dir, "missing", error="not trained yet (report written with report_only)")
            else:
                i = len(times) + 1
                eta = ""
                if times:
                    left = (len(todo) - len(times)) * (sum(times) / len(times))
                    eta = f", ETA {left / 60:.1f} min"
                self.log(f"[{i}/{len(todo)}] {spec.exp} {spec.label}: {spec.model} seed {seed} "
                         f"-> {run_dir.name}{eta}")
                r = _train_one(spec, seed, cfg, run_dir, self.predict)
                times.append(r.seconds)
                self.log(f"    {self._outcome(r)} ({r.seconds:.0f} s; {(time.time() - t0) / 60:.1f} min so far)")
            seen[h] = r
            results.append(r)
        return results

    @staticmethod
    def _outcome(r: RunResult) -> str:
        if r.status == "done":
            return f"val top-1 {r.summary['final'].get('val_top1', float('nan')):.2f}%"
        return f"FAILED: {r.error}"

    def _train_parallel(self, first: dict, todo: list[str]) -> None:
        """Train the runs ``todo`` (hashes) in ``self.jobs`` worker processes; log as each ends."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        # Seed-major order: every configuration's first seed trains before any second seed, so a
        # compare stopped early (and reported with report_only) covers every experiment.
        seeds = list(self.preset.seeds)
        todo = sorted(todo, key=lambda h: seeds.index(first[h][1]))  # stable: plan order within a seed
        self._parallel = {}
        self.log(f"compare: training {len(todo)} runs in {self.jobs} processes x "
                 f"{self.threads_per_job} thread(s)")
        t0 = time.time()
        pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads_per_job,))
        # SIGTERM to this process alone (kill PID, a scheduler's pre-emption) takes the Ctrl-C path
        # below; by default it would end this process and leave the workers training.
        previous = (signal.signal(signal.SIGTERM, _raise_interrupt)
                    if threading.current_thread() is threading.main_thread() else None)
        try:
            futures = {}
            for h in todo:
                spec, seed, cfg = first[h]
                futures[pool.submit(_train_one, spec, seed, cfg, self._dir(first, h), self.predict)] = h
            time.sleep(0.5)  # let the pool hand out the first runs
            self._log_running(futures, first)
            self._collect(futures, first, todo, t0)
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM: no new run starts; each worker saves a resumable checkpoint of the
            # run it is training (SIGTERM -> the training loop's interrupt path) and exits.
            self.log("compare: interrupted; the workers save resumable checkpoints and stop")
            stop_workers(pool)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True)

    def _collect(self, futures, first, todo, t0) -> None:
        from concurrent.futures import as_completed
        for n, fut in enumerate(as_completed(futures), 1):
            h = futures[fut]
            spec, seed, _ = first[h]
            try:
                r = fut.result()
            except Exception as e:  # the worker itself died (e.g. killed for memory)
                r = RunResult(spec, seed, self._dir(first, h), "failed",
                              error=f"worker process failed: {type(e).__name__}: {e}")
            self._parallel[h] = r
            elapsed = time.time() - t0
            eta = elapsed / n * (len(todo) - n)
            self.log(f"[{n}/{len(todo)}] {spec.exp} {spec.label}: {spec.model} seed {seed}: "
                     f"{self._outcome(r)} ({r.seconds:.0f} s; {elapsed / 60:.1f} min so far, "
                     f"ETA {eta / 60:.1f} min)")
            self._log_running(futures, first)

    def _log_running(self, futures, first) -> None:
        """The runs handed to workers and not finished (at most ``jobs`` + 1 queued)."""
        running = [first[h] for f, h in futures.items() if f.running()]
        if running:
            self.log("    training: " + "; ".join(f"{s.exp} {s.label}" + (f" x={s.x:g}" if s.x is not None else "")
                                             + f" seed {seed}" for s, seed, _ in running))

    def _dir(self, first: dict, h: str) -> Path:
        return self.out / "runs" / f"{first[h][0].model.replace(':', '-')}-{h}"


_stopping = False  # in a worker: set once interrupted; no further run starts


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_worker(signum, frame):
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def stop_workers(pool) -> None:
    """Ctrl-C / SIGTERM path of a worker pool: start nothing new, SIGTERM each live worker (its
    training loop saves a resumable checkpoint) and wait for them (at most 120 s each)."""
    procs = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(timeout=120)


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the parent decides, and stops workers by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)


def _train_one(spec: RunSpec, seed: int, cfg, run_dir: Path, predict: bool = True) -> RunResult:
    """Train one run (resuming from its last checkpoint if there is one); never raises but for
    KeyboardInterrupt."""
    global _stopping
    from ..engine import train
    if _stopping:
        raise KeyboardInterrupt
    from ..engine.runlock import RunFolderBusyError, run_folder_lock
    t = time.time()
    try:
        # One writer per run folder; a folder a run left without a checkpoint (a failure before
        # the first epoch end) is accepted by train() as new, so nothing is deleted here.
        with run_folder_lock(run_dir, what="compare run folder"):
            try:
                resume = (run_dir / "last.safetensors").exists()
                summary = train(cfg, out_dir=run_dir, resume=resume)
                if summary.get("interrupted"):
                    raise KeyboardInterrupt
                if predict:
                    from .predictions import write_predictions
                    write_predictions(run_dir, cfg)  # the test split, read once, after training
                return RunResult(spec, seed, run_dir, "done", summary, seconds=time.time() - t)
            except KeyboardInterrupt:
                _stopping = True
                raise
            except Exception as e:  # a failed run is reported and does not stop the others
                (run_dir / "error.txt").write_text(traceback.format_exc())
                return RunResult(spec, seed, run_dir, "failed", error=f"{type(e).__name__}: {e}",
                                 seconds=time.time() - t)
    except RunFolderBusyError as e:  # another process trains this run: not a failure of the run
        return RunResult(spec, seed, run_dir, "failed", error=f"busy: {e}", seconds=time.time() - t)


def _read_summary(run_dir: Path, log=None) -> dict | None:
    """A finished run's ``summary.json``, or None: not finished, or a file that cannot be read
    (torn write, disk error), which is named in the log -- the run is then resumed from its last
    checkpoint, and the training loop writes the summary again."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "final" in rec:
            return rec
        problem = "not a run summary"
    except (OSError, ValueError, UnicodeDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if log is not None:
        log(f"compare: {path} is unreadable ({problem}); the run is resumed from its last checkpoint")
    return None


def _ensure_predictions(r: RunResult, cfg, log=None) -> None:
    """A cached run finished before its test predictions were written, or they cannot be read:
    write them now (from the run's weights)."""
    from .predictions import FILE, CorruptPredictions, load_predictions, write_predictions
    if (r.run_dir / FILE).exists():
        try:
            load_predictions(r.run_dir)
            return
        except CorruptPredictions as e:
            if log is not None:
                log(f"compare: {e}")
    try:
        write_predictions(r.run_dir, cfg)
    except Exception as e:  # reported as a failed run, the others go on
        r.status, r.error = "failed", f"test predictions: {type(e).__name__}: {e}"
