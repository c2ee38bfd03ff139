"""Dense runs of ``mixerlab compare`` (E6): a detector or segmenter fine-tuned on the Fashion-MNIST
scenes from the weights of one of compare's classification runs, cached by its own hash.

A :class:`DenseSpec` names the classification run it starts from (its ``RunSpec``; the runner
trains it first, or finds it in the cache: E1's run of the same model and seed is the same run,
by hash) and the ``mixerlab.dense`` config overrides (``dense_config("small", **dense_args)``).
:func:`run_dense` runs after the classification runs:

* the run folder is ``OUT/runs/dense-<task>-<label>-<hash>``; the hash covers the dense config
  with the backbone named by its classification run's *hash* (not its path, so a moved compare
  folder keeps its cache) and without the fields that do not change what is trained (threads,
  progress, evaluation cadence: ``mixerlab.dense.train.RESUMABLE``);
* training is ``mixerlab.dense.train_dense`` (the run-folder lock and mark, atomic checkpoints,
  resume from ``last.safetensors``), then one evaluation of the final weights (``last``: the test
  split is never used to choose among checkpoints) on the scenes' test split (``val`` in the scenes
  folder: drawn from Fashion-MNIST's test images) with the per-image records the bootstrap needs,
  written atomically to ``test_eval.json``; a run with a readable ``test_eval.json`` is cached;
* a backbone run that failed or is missing makes its dense runs fail (named); a dense run that
  fails is recorded with one line (``error.txt`` holds the traceback) and the others go on.

Dense runs train as the classification runs do: ``jobs`` at once in spawned worker processes of
``threads_per_job`` threads each, or one at a time in this process (the dense engine trains on
the CPU only, also in the ``gpu`` preset).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .experiments.base import RunSpec

EVAL_FILE = "test_eval.json"
EVAL_FORMAT = "mixerlab-compare-dense-eval/1"
EXAMPLES = 3  # test scenes whose predictions are kept for the report's figure


@dataclass(frozen=True)
class DenseSpec:
    """One dense run of an experiment (per seed).

    Attributes:
        exp: experiment id.
        label: the backbone's row label (e.g. ``poolformer``).
        task: ``retinanet`` or ``semantic_fpn`` (``mixerlab.dense``).
        backbone: the classification run whose final weights it starts from.
        dense_args: ``mixerlab.dense.dense_config("small", ...)`` overrides.
    """

    exp: str
    label: str
    task: str
    backbone: RunSpec
    dense_args: dict = field(default_factory=dict)


@dataclass
class DenseResult:
    spec: DenseSpec
    seed: int
    run_dir: Path
    status: str  # done | cached | failed | missing
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    backbone_dir: Path | None = None


def dense_config_for(spec: DenseSpec, seed: int, backbone: str, *, data_dir=None, threads=None):
    """The run's ``DenseConfig``: the ``small`` recipe, the spec's overrides, the seed."""
    from ..dense.train import dense_config
    return dense_config("small", task=spec.task, backbone=str(backbone), seed=seed, data_dir=data_dir,
                        num_threads=threads, **spec.dense_args)


def dense_hash(cfg, backbone_hash: str) -> str:
    """The hash of a dense run: its config with the backbone named by its run's hash and without
    the fields a resume may change (module docstring)."""
    from ..dense.train import RESUMABLE, config_dict
    d = {k: v for k, v in config_dict(cfg).items() if k not in RESUMABLE}
    d["backbone"] = f"compare-run:{backbone_hash}"
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _backbone_hash(run_dir: Path) -> str:
    return run_dir.name.rsplit("-", 1)[-1]


def read_eval(run_dir: Path) -> dict | None:
    """A dense run's ``test_eval.json``, or None (absent, torn, another format)."""
    path = Path(run_dir) / EVAL_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == EVAL_FORMAT else None


def backbone_cost(run_dir: Path, canvas: int) -> dict:
    """Parameters and MACs (``mixerlab.bench.complexity.count_macs``, on the meta device) of the
    classification run's model as a dense backbone (``DenseBackbone``: its four stage maps, each
    through its level norm; head and final norm removed) on one ``canvas`` x ``canvas`` scene."""
    import torch

    from ..bench.complexity import count_macs
    from ..dense.backbone import DenseBackbone
    from ..dense.train import backbone_in_chans
    from ..engine.factory import open_model
    with torch.device("meta"):
        model, _ = open_model(run_dir, weights=None)
        in_chans = backbone_in_chans(model)
        body = DenseBackbone(model, (0, 1, 2, 3))
    params = sum(p.numel() for p in body.parameters())
    return dict(params=int(params), macs=int(count_macs(body, (in_chans, canvas, canvas))),
                strides=list(body.strides), channels=list(body.out_channels_list))


def evaluate_for_compare(run_dir: Path, data_dir=None, log=None) -> dict:
    """Evaluate a finished dense run's final weights on the scenes' test split, with per-image
    records and the first ``EXAMPLES`` scenes' predictions; written to ``test_eval.json``."""
    import torch

    from ..dense.scenes import SceneSpec, fashion_mnist_scenes, scene_paths
    from ..dense.train import (SEGMENTERS, build_dense_data, config_from_dict, evaluate_dense, normalize,
                               open_dense_run)
    from ..engine.checkpoint import atomic_write_text
    model, spec, cfg_d = open_dense_run(run_dir, prefer="last")
    cfg = config_from_dict(cfg_d)
    cfg.data_dir = data_dir
    data = build_dense_data(cfg, spec["options"]["in_chans"])
    r = evaluate_dense(model, spec, data.val, gt=data.gt, area_ranges=data.area_ranges, keep=True)
    per = r.pop("per_image")
    examples = []
    model.eval()
    with torch.no_grad():
        for i in range(min(EXAMPLES, len(data.val))):
            image, target = data.val[i]
            if cfg.task in SEGMENTERS:
                o = spec["options"]
                d = model.backbone.size_divisor
                h, w = image.shape[-2:]
                x = torch.nn.functional.pad(image, (0, -w % d, 0, -h % d))
                pred = model(normalize(x[None], o["mean"], o["std"]))[..., :h, :w].argmax(1)[0]
                examples.append({"index": i, "classes": pred.to(torch.uint8).tolist()})
            else:
                examples.append({"index": i, "image_id": int(target["image_id"])})
    root = fashion_mnist_scenes(SceneSpec(**cfg.scenes), data_dir=data_dir)
    rec = dict(format=EVAL_FORMAT, task=cfg.task, split="val (Fashion-MNIST test images)", scenes=cfg.scenes,
               scenes_root=str(root), ann_file=str(scene_paths(root, "val")["ann_file"]),
               classes=list(spec["classes"]), n_images=len(data.val),
               metrics={k: v for k, v in r.items() if k != "IoU"}, per_image=per, examples=examples)
    atomic_write_text(Path(run_dir) / EVAL_FILE, json.dumps(rec) + "\n")
    return rec


def run_dense(out: Path, preset, specs: list[DenseSpec], results, *, data_dir=None, log=print,
              threads: int | None = None, processes: int = 1, report_only: bool = False) -> list[DenseResult]:
    """Run (or take from the cache) every dense run of ``specs`` for each of the preset's seeds,
    after the classification runs ``results`` (``runner.RunResult``) that hold their backbones.
    ``threads``: intra-op threads of each run; ``processes`` > 1: that many runs at once in
    spawned worker processes (as the classification runner's ``jobs``; results do not depend on it)."""
    runs_dir = Path(out) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for spec in specs:
        for seed in preset.seeds:
            bb = next((r for r in results if r.spec == spec.backbone and r.seed == seed), None)
            jobs.append((spec, seed, bb))
    out_list: list = []
    pending = []  # (position in out_list, spec, seed, cfg, run_dir, backbone dir)
    for spec, seed, bb in jobs:
        what = f"{spec.exp} {spec.task} on {spec.label} seed {seed}"
        if bb is None:
            out_list.append(DenseResult(spec, seed, runs_dir / "dense-unplanned", "failed",
                                        error="its backbone run is not among the planned runs"))
            log(f"    {what}: FAILED: its backbone run is not among the planned runs")
            continue
        try:
            cfg = dense_config_for(spec, seed, bb.run_dir, data_dir=data_dir, threads=threads)
        except ValueError as e:
            out_list.append(DenseResult(spec, seed, runs_dir / "dense-invalid", "failed", error=str(e)))
            log(f"    {what}: FAILED: {e}")
            continue
        run_dir = runs_dir / f"dense-{spec.task}-{spec.label}-{dense_hash(cfg, _backbone_hash(bb.run_dir))}"
        rec = read_eval(run_dir)
        if rec is not None:
            out_list.append(DenseResult(spec, seed, run_dir, "cached", rec, backbone_dir=bb.run_dir))
            continue
        if bb.status not in ("done", "cached"):
            err = f"backbone run {bb.run_dir.name} {bb.status}" + (f": {bb.error}" if bb.error else "")
            out_list.append(DenseResult(spec, seed, run_dir, "failed" if bb.status == "failed" else "missing",
                                        error=err, backbone_dir=bb.run_dir))
            log(f"    {what}: {'FAILED' if bb.status == 'failed' else 'not run'}: {err}")
            continue
        if report_only:
            out_list.append(DenseResult(spec, seed, run_dir, "missing", error="not trained yet (report_only)",
                                        backbone_dir=bb.run_dir))
            continue
        out_list.append(None)
        pending.append((len(out_list) - 1, spec, seed, cfg, run_dir, bb.run_dir))
    log(f"compare: {len(jobs)} dense runs, {sum(r is not None and r.status == 'cached' for r in out_list)} cached, "
        f"{len(pending)} to train" + (f" ({processes} at once)" if processes > 1 and len(pending) > 1 else ""))
    t0 = time.time()

    def report(n, r):
        what = f"[dense {n}/{len(pending)}] {r.spec.exp} {r.spec.task} on {r.spec.label} seed {r.seed}"
        if r.status == "done":
            key = "box_AP" if r.spec.task == "retinanet" else "mIoU"
            log(f"{what}: {key} {r.metrics['metrics'].get(key, float('nan')):.4f} ({r.seconds:.0f} s; "
                f"{(time.time() - t0) / 60:.1f} min of dense runs so far) -> {r.run_dir.name}")
        else:
            log(f"{what}: FAILED: {r.error}")

    if processes > 1 and len(pending) > 1:
        _run_parallel(pending, out_list, processes, threads, data_dir, report)
    else:
        for n, (i, spec, seed, cfg, run_dir, bb_dir) in enumerate(pending, 1):
            out_list[i] = _train_eval(spec, seed, cfg, run_dir, bb_dir, data_dir)
            report(n, out_list[i])
    return out_list


def _run_parallel(pending, out_list, processes, threads, data_dir, report) -> None:
    """The pending runs in ``processes`` spawned workers (the classification runner's worker set-up:
    Ctrl-C / SIGTERM stops them, each saving a resumable checkpoint)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .runner import _init_worker, stop_workers
    pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads or 1,))
    try:
        futures = {pool.submit(_train_eval, spec, seed, cfg, run_dir, bb_dir, data_dir): (i, spec, seed, run_dir, bb_dir)
                   for i, spec, seed, cfg, run_dir, bb_dir in pending}
        for n, fut in enumerate(as_completed(futures), 1):
            i, spec, seed, run_dir, bb_dir = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # the worker itself died (e.g. killed for memory)
                r = DenseResult(spec, seed, run_dir, "failed", error=f"worker process failed: {type(e).__name__}: {e}",
                                backbone_dir=bb_dir)
            out_list[i] = r
            report(n, r)
    except KeyboardInterrupt:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def _train_eval(spec, seed, cfg, run_dir: Path, backbone_dir: Path, data_dir) -> DenseResult:
    """Train (or resume) and evaluate one dense run; never raises but for KeyboardInterrupt."""
    import torch

    from ..dense.train import train_dense
    t = time.time()
    before = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # the evaluation too (train_dense restores the caller's)
    try:
        if not (run_dir / "summary.json").exists():
            resume = (run_dir / "last.safetensors").exists()
            summary = train_dense(cfg, run_dir, resume=resume, log=lambda s: None)
            if summary.get("interrupted"):
                raise KeyboardInterrupt
        rec = evaluate_for_compare(run_dir, data_dir)
        return DenseResult(spec, seed, run_dir, "done", rec, seconds=time.time() - t, backbone_dir=backbone_dir)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recorded; the other runs go on
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass
        msg = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        return DenseResult(spec, seed, run_dir, "failed", error=msg, seconds=time.time() - t,
                           backbone_dir=backbone_dir)
    finally:
        torch.set_num_threads(before)


def result_row(r: DenseResult) -> dict:
    """A dense run for ``results.json`` (no per-image records)."""
    m = (r.metrics or {}).get("metrics", {})
    return dict(experiment=r.spec.exp, label=r.spec.label, task=r.spec.task, seed=r.seed, status=r.status,
                run_dir=str(r.run_dir), backbone_dir=None if r.backbone_dir is None else str(r.backbone_dir),
                metrics=m, error=r.error, seconds=round(r.seconds, 1),
                dense_args=json.loads(json.dumps(dataclasses.asdict(r.spec)["dense_args"], default=str)))
