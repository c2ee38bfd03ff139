"""The training loop: ``train(config, out_dir=..., resume=...) -> summary``.

Reads top to bottom: set-up (process group, seeds, data, model, optimiser, EMA, task) ->
optional resume -> epochs of optimiser steps (warm-up + cosine LR per step, AMP, gradient
accumulation, clipping, EMA) -> BN calibration + evaluation -> the epoch end.
The recipe is DeiT's (arXiv:2012.12877, facebookresearch/deit ``engine.py``/``main.py``),
scaled by :class:`~mixerlab.engine.config.TrainConfig`; DeepViT's BN calibration and LaViT's
DP loss come in through :mod:`.bn` and :mod:`.task`. The engine never sees the CLI namespace.

Run folder (one writer: :func:`~.runlock.run_folder_lock`). The epoch end is one transition:
``last.safetensors`` is written first and is the commit point (its state carries the epoch's
metrics record and the best epoch); then ``best.safetensors`` (a copy of that very
file), ``metrics.jsonl`` (rewritten atomically: the earlier lines plus this record; its CSV view
``summary.csv``, one row per epoch as timm's ``train.py`` writes, follows it) and, after
the final epoch, ``summary.json``. SIGINT/SIGTERM arriving during the transition wait until it is
complete; after ``kill -9`` or a full disk in the middle of it, resume first completes it from
``last`` (:func:`_complete_epoch_end`), so the folder is always before or after an epoch end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import platform
import random
import resource
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from ..data import build_data, build_mixup, eval_loader, train_loader
from . import distributed
from .bn import batchnorms, calibrate_batchnorm
from .checkpoint import (CheckpointError, atomic_write_text, best_is_stale, capture_rng, clean_stale_temps, copy_atomic,
                         load_checkpoint, pause_for_tests, read_config, read_state, restore_rng, save_checkpoint)
from .config import TrainConfig, config_from_dict, config_to_yaml
from .evaluate import evaluate_model
from .factory import build_from_checkpoint, model_for_run
from .optim import build_optimizer, lr_at
from .report import Reporter, Throughput, ThroughputWatch
from .run_folder import check_folder, claim_folder, unmark_folder
from .runlock import run_folder_lock
from .task import ClassificationTask

# Keys that may change when resuming (they do not alter what has been trained so far).
# num_threads: the advice for an oversubscribed CPU (ThroughputWatch) is to continue with one thread.
RESUMABLE_CHANGES = ("epochs", "data_dir", "num_workers", "eval_every", "eval_batch_size", "log_every", "progress",
                     "tensorboard", "num_threads")


# Files that make a folder a run (config.yaml alone does not: a run that failed before its first
# checkpoint left nothing to continue, and may be started again in the same folder).
RUN_FILES = ("last.safetensors", "best.safetensors", "metrics.jsonl", "summary.csv", "summary.json")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


class RunFolderWriteError(OSError):
    """Writing the run folder failed (disk full, read-only, ...); what was there is intact."""


class _Interrupts:
    """SIGINT/SIGTERM -> KeyboardInterrupt, held back while a :meth:`deferred` block runs.

    SIGTERM (kill, job-scheduler pre-emption) is handled like Ctrl-C. A SIGINT that the caller
    ignores (``SIG_IGN``, e.g. compare's worker processes) stays ignored. Off the main thread
    nothing is installed and :meth:`deferred` is a no-op.
    """

    def __init__(self, install: bool):
        self.depth = 0
        self.pending: int | None = None
        self.previous: dict[int, object] = {}
        if install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self.previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            self.pending = None
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model.replace(':', '-')}-{cfg.data}-{datetime.now():%Y%m%d-%H%M%S}"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(amp: str, device: torch.device) -> Callable:
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 (or none) on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak)


def _check_out_path(run_dir: Path) -> None:
    """A run folder must be (or be creatable as) a folder: refuse a file, or a path inside one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} is a file, not a folder; choose another --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"run folder {run_dir} lies inside {parent}, which is a file, not a folder")
            break


def _run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def _check_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> dict | None:
    """New runs never overwrite; resumed runs return the checkpoint to continue from (None: the
    folder holds no checkpoint and nothing else of a run, so it starts afresh)."""
    last = run_dir / "last.safetensors"
    present = _run_files(run_dir)
    if not resume:
        if present:
            hint = (f"pass --resume {run_dir} to continue it" if last.exists() else
                    "it has no last.safetensors to resume from; move it away")
            raise ValueError(f"run folder {run_dir} already holds a run ({', '.join(present)}); {hint}, or choose another --out")
        return None
    if not last.exists():
        if not present:
            return None  # stopped before its first checkpoint: nothing to continue, start again
        raise CheckpointError(f"cannot resume {run_dir}: it holds {', '.join(present)} but no last.safetensors; "
                              "move it away and start a new run")
    ckpt = load_checkpoint(last)  # CheckpointError (a ValueError) if corrupt
    stored = config_from_dict(ckpt.config)
    _check_same_run(run_dir, stored)
    changed = [f.name for f in dataclasses.fields(TrainConfig) if getattr(stored, f.name) != getattr(cfg, f.name)]
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        raise CheckpointError(
            f"checkpoint {last} was written for another config: {', '.join(f'{k}={getattr(stored, k)!r} (now {getattr(cfg, k)!r})' for k in bad)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change on resume"
        )
    return ckpt


def _check_same_run(run_dir: Path, stored: TrainConfig) -> None:
    """Refuse a ``last.safetensors`` that another run wrote (copied in from another folder or
    dataset): its config must agree with the folder's ``config.yaml`` on everything a resume may
    not change. Checked before anything in the folder is written."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return  # a folder of an older mixerlab, or one whose config.yaml was lost: the checkpoint decides
    try:
        folder = config_from_dict(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"cannot resume {run_dir}: its config.yaml is unreadable ({error_text(e)}); "
                              "the checkpoint cannot be checked against it") from None
    bad = [f.name for f in dataclasses.fields(TrainConfig)
           if f.name not in RESUMABLE_CHANGES and getattr(stored, f.name) != getattr(folder, f.name)]
    if bad:
        diffs = ", ".join(f"{k}={getattr(stored, k)!r} (folder: {getattr(folder, k)!r})" for k in bad[:4])
        raise CheckpointError(
            f"cannot resume {run_dir}: its last.safetensors was written by another run ({diffs}"
            f"{', ...' if len(bad) > 4 else ''}) than the folder's config.yaml; nothing was changed. "
            "Put that run's own checkpoint back, or start a new run with --out")


def _check_same_data(run_dir: Path, trained: dict, data) -> None:
    """Refuse to resume on data of another shape than the checkpoint was trained on (the folder
    given by ``data_dir`` now holds another dataset): classes and channels must agree."""
    now = {"num_classes": data.num_classes, "in_chans": data.in_chans, "classes": list(data.classes)}
    bad = [k for k in ("num_classes", "in_chans", "classes") if k in trained and trained[k] != now[k]]
    if bad:
        k = bad[0]
        raise CheckpointError(f"cannot resume {run_dir}: its checkpoint was trained on data with {k} {trained[k]!r}, "
                              f"the data now gives {now[k]!r}; point --data-dir at the run's own dataset. "
                              "Nothing was changed")


def error_text(e: BaseException) -> str:
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The config stored in ``run_dir/last.safetensors`` with (resume-safe) ``overrides`` applied.

    A folder whose run stopped before its first checkpoint (``config.yaml`` and no other run
    file) gives its ``config.yaml``: resuming it starts the run again."""
    import yaml

    from .config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    present = _run_files(run_dir)
    if not (run_dir / "last.safetensors").exists() and present:
        raise CheckpointError(f"cannot resume {run_dir}: it holds {', '.join(present)} but no last.safetensors; "
                              "move it away and start a new run")
    if not (run_dir / "last.safetensors").exists() and not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"run folder {run_dir} holds no run to resume (no last.safetensors, no config.yaml)")
    if not (run_dir / "last.safetensors").exists():
        try:
            stored = yaml.safe_load((run_dir / "config.yaml").read_text())
            base = config_from_dict(stored)
        except (yaml.YAMLError, UnicodeDecodeError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot resume {run_dir}: it has no checkpoint and its config.yaml is unreadable ({e})") from None
    else:
        base = config_from_dict(read_config(run_dir / "last.safetensors"))  # header only; train() verifies the file
    return load_config(overrides=overrides, base=base)


def train(config: TrainConfig, *, out_dir: str | Path | None = None, resume: bool = False,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train ``config.model`` on ``config.data``; returns the run summary (also in ``summary.json``).

    Args:
        config: the resolved configuration.
        out_dir: run folder (default ``runs/<model>-<data>-<time>``); must be new unless ``resume``.
        resume: continue the run in ``out_dir`` from ``last.safetensors`` exactly.
        on_step: called with the optimiser step count after every step (tests, custom hooks).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (``last`` keeps the previous good state).
        ValueError / FileNotFoundError: bad config, data or checkpoint.
    """
    cfg = config
    run_dir = Path(out_dir) if out_dir else default_run_dir(cfg)
    _check_out_path(run_dir)
    check_folder(run_dir, "train")  # a compare, ablate or analysis folder is refused before anything is written
    dist_info = distributed.setup(cfg.device)
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    # SIGINT/SIGTERM: save a resumable checkpoint; never in the middle of an epoch end.
    guard = _Interrupts(install=threading.current_thread() is threading.main_thread())
    try:
        created = not run_dir.exists()
        lock = run_folder_lock(run_dir) if dist_info.is_main else contextlib.nullcontext()
        with lock as lock_path:
            try:
                return _train(cfg, dist_info, run_dir, resume, on_step, guard)
            except BaseException:
                if dist_info.is_main and not (run_dir / "last.safetensors").exists() and not _run_files(run_dir):
                    _discard_unstarted(run_dir, lock_path, created)
                raise
    finally:
        guard.restore()
        torch.set_num_threads(threads)
        distributed.cleanup()


def _discard_unstarted(run_dir: Path, lock_path: Path | None, created: bool) -> None:
    """A run that stopped before its first checkpoint: remove what it wrote (config.yaml; the
    folder itself if this run created it), so nothing half-written stays behind."""
    with contextlib.suppress(OSError):
        (run_dir / "config.yaml").unlink(missing_ok=True)
        unmark_folder(run_dir)
        if created:
            if lock_path is not None:
                lock_path.unlink(missing_ok=True)
            clean_stale_temps(run_dir)
            run_dir.rmdir()  # only if empty


def make_ema(model: torch.nn.Module, decay: float) -> ModelEmaV3:
    """The run's weight EMA (DeiT / DeepViT keep one): timm's ``ModelEmaV3`` with parameters
    averaged and buffers copied (``exclude_buffers``: BN statistics are recalibrated before
    evaluation anyway), deterministic (no stochastic rounding), so a resumed run is bit-identical;
    a frozen copy (no gradients)."""
    ema = ModelEmaV3(model, decay=decay, exclude_buffers=True, stochastic_rounding=False)
    ema.module.requires_grad_(False)
    return ema


def _write_metrics(run_dir: Path, record: dict | None, epoch: int, pause: int | None = None) -> None:
    """``metrics.jsonl`` := the lines of epochs before ``epoch`` (torn or later lines dropped) +
    ``record`` (the epoch-``epoch`` line), written atomically; unchanged files are not rewritten."""
    path = run_dir / "metrics.jsonl"
    old = path.read_text() if path.exists() else ""
    kept = []
    for line in old.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("epoch"), int) and (
                r["epoch"] < epoch or (record is None and r["epoch"] == epoch)):
            kept.append(r)
    if record is not None:
        kept.append(record)
    seen, records = set(), []
    for r in kept:  # one line per epoch (an older mixerlab could append an epoch twice)
        if r["epoch"] not in seen:
            seen.add(r["epoch"])
            records.append(r)
    lines = [json.dumps(r) for r in records]
    text = "".join(line + "\n" for line in lines)
    if text != old:
        atomic_write_text(path, text, pause=("metrics", pause) if pause is not None else None)
    _write_summary_csv(run_dir, records)


def summary_csv_text(records: list[dict]) -> str:
    """``summary.csv`` (timm's ``train.py`` convention): one row per epoch, the scalar fields of
    the ``metrics.jsonl`` records as columns (in first-seen order; a field an epoch lacks is empty)."""
    import csv
    import io
    cols: list[str] = []
    for r in records:
        cols += [k for k, v in r.items() if k not in cols and (v is None or isinstance(v, (int, float, str, bool)))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: r.get(k) for k in cols})
    return buf.getvalue()


def _write_summary_csv(run_dir: Path, records: list[dict]) -> None:
    """``summary.csv`` from the records of ``metrics.jsonl`` (derived from it, so always consistent
    with it; written atomically, unchanged files are not rewritten)."""
    path = run_dir / "summary.csv"
    text = summary_csv_text(records)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


def _complete_epoch_end(run_dir: Path, state: dict) -> list[str]:
    """Finish an epoch end that ``kill -9`` or a write error cut short after ``last`` was written:
    ``best`` from ``last`` when it holds the best epoch, and ``metrics.jsonl`` up to its record."""
    done = []
    if best_is_stale(run_dir):
        copy_atomic(run_dir / "last.safetensors", run_dir / "best.safetensors")
        done.append(f"best.safetensors (epoch {state['best_epoch']})")
    before = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").exists() else None
    _write_metrics(run_dir, state.get("record"), state["epoch"])
    after = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").exists() else None
    if before != after:
        done.append(f"metrics.jsonl (up to epoch {state['epoch']})")
    return done


def _where(last: Path) -> str:
    try:
        st = read_state(last)
    except CheckpointError:
        return "unreadable"
    return f"epoch {st.get('epoch')}, step {st.get('step')}"


def _write_failed(e: OSError, run_dir: Path, what: str) -> RunFolderWriteError:
    last = run_dir / "last.safetensors"
    kept = (f"the last good checkpoint {last} ({_where(last)}) is intact; resume with "
            f"--resume {run_dir} once the problem is fixed" if last.exists() else "no checkpoint was written yet")
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and "disk full" not in reason:
        reason += " (disk full)"
    where = f" {e.filename}" if e.filename else ""
    return RunFolderWriteError(f"cannot write {what} in {run_dir} ({reason}{':' + where if where else ''}); {kept}")


def _train(cfg: TrainConfig, di: distributed.DistInfo, run_dir: Path, resume: bool, on_step, guard: _Interrupts) -> dict:
    t_start = time.time()
    device = di.device
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if di.is_main:
        clean_stale_temps(run_dir)  # a killed writer's temporary files (we hold the lock)
    ckpt = _check_run_dir(run_dir, cfg, resume)
    _seed_all(cfg.seed + di.rank)  # model init differs per rank, but DDP broadcasts rank 0's weights

    # ---- data, model, optimiser, EMA, objective
    data = build_data(cfg)
    if ckpt is not None:
        _check_same_data(run_dir, ckpt.state.get("data_info") or {}, data)
    if ckpt is not None:  # the model it was trained with, from its stored config
        model = build_from_checkpoint(ckpt, weights="model")[0].to(device)
    else:
        model = model_for_run(cfg, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    autocast = _autocast(cfg.amp, device)
    mixup = build_mixup(mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                        label_smoothing=cfg.label_smoothing, num_classes=data.num_classes)
    task = ClassificationTask(mixup=mixup, label_smoothing=cfg.label_smoothing, aux_weights=cfg.aux_weights)
    pin = device.type == "cuda"
    loader = train_loader(data.train, batch_size=cfg.batch_size, seed=cfg.seed, rank=di.rank, world=di.world,
                          workers=cfg.num_workers, pin=pin)
    sampler = loader.batch_sampler.sampler
    val_loader = eval_loader(data.val, batch_size=cfg.eval_batch_size, rank=di.rank, world=di.world, workers=cfg.num_workers, pin=pin)
    calib_loader = eval_loader(data.train_plain, batch_size=cfg.eval_batch_size, rank=di.rank, world=di.world,
                               workers=cfg.num_workers, pin=pin, limit=cfg.bn_calibration_batches * cfg.eval_batch_size * di.world,
                               shuffle_seed=cfg.seed)
    calibrate = cfg.bn_calibration == "on" or (cfg.bn_calibration == "auto" and bool(batchnorms(model)))
    steps_per_epoch = len(loader) // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"accum_steps={cfg.accum_steps} exceeds the {len(loader)} batches of one epoch")
    total_steps = cfg.epochs * steps_per_epoch
    schedule = dict(base_lr=cfg.lr, total_steps=total_steps, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                    warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)

    # ---- loop state (everything needed to continue exactly), restored on resume
    # epoch_images / epoch_train_s / epoch_time_s: the current epoch's training images and time so
    # far, kept across an interrupt so that a resumed epoch reports the whole epoch's throughput
    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best_top1": None, "best_epoch": None,
             "sums": {}, "images": 0, "wall_s": 0.0, "record": None,
             "epoch_images": 0, "epoch_train_s": 0.0, "epoch_time_s": 0.0}
    if ckpt is not None:
        if ema is not None:
            ckpt.load_model(ema.module, prefix="ema")
        ckpt.load_optimizer(optimizer)
        if scaler.is_enabled() and "scaler" in ckpt.state:
            scaler.load_state_dict(ckpt.state["scaler"])
        state.update({k: ckpt.state[k] for k in state if k in ckpt.state})
        restore_rng(ckpt.rng())
        if di.rank > 0:  # each rank has its own RNG stream; the checkpoint holds rank 0's
            _seed_all(cfg.seed + di.rank + 7919 * state["step"])

    fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if di.world > 1 else model
    fwd = torch.compile(fwd) if cfg.compile else fwd
    # the split evaluated each epoch (and that picks best.safetensors): the validation split held out
    # of the training set (val_images > 0), else the test split, named so in every line and summary
    eval_split = "val" if cfg.val_images else "test"
    reporter = Reporter(run_dir if di.is_main else None, mode=cfg.progress, total_steps=total_steps,
                        log_every=cfg.log_every, tensorboard=cfg.tensorboard, eval_split=eval_split)
    watch = ThroughputWatch(threads=torch.get_num_threads(), device=device.type,
                            resume_cmd=f"mixerlab train --resume {run_dir} --threads 1")
    if di.is_main:
        try:
            if ckpt is not None:  # finish an epoch end that a kill or a write error cut short
                done = _complete_epoch_end(run_dir, ckpt.state)
                if done:
                    reporter.log(f"completed the interrupted end of epoch {ckpt.state['epoch']}: {', '.join(done)}")
            claim_folder(run_dir, "train")  # after every check: a refused run leaves the folder as it was
            atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        except OSError as e:
            raise _write_failed(e, run_dir, "config.yaml / metrics.jsonl") from None
        n_params = sum(p.numel() for p in model.parameters())
        reporter.log(f"{'resuming' if ckpt is not None else 'training'} {cfg.model} ({n_params / 1e6:.2f}M params) on {cfg.data} "
                     f"({len(data.train)} train / {len(data.val)} {'validation' if cfg.val_images else 'test'} images), "
                     f"{di.world} process(es) on {device}, "
                     f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs -> {run_dir}")
        if not cfg.val_images:
            reporter.log("no validation split (val_images 0): every evaluation, and the choice of best.safetensors, "
                         "is on the test split; --val-images N holds N training images out to choose on instead")

    def save(name: str, rng) -> None:
        if di.is_main:
            info = {"data_info": {"num_classes": data.num_classes, "in_chans": data.in_chans, "classes": list(data.classes)}}
            save_checkpoint(run_dir / f"{name}.safetensors", model=model, config=cfg.to_dict(),
                            model_config=model.cfg.to_dict(), state={**state, **info},
                            optimizer=optimizer, ema=ema.module if ema else None, scaler=scaler, rng=rng)

    def summarize() -> dict:
        return {
            "model": cfg.model, "data": cfg.data, "recipe": cfg.recipe, "run_dir": str(run_dir), "interrupted": False,
            "params": sum(p.numel() for p in model.parameters()), "epochs": cfg.epochs, "steps": state["step"],
            "best_top1": state["best_top1"], "best_epoch": state["best_epoch"], "final": state["record"] or {},
            "eval_split": "validation" if cfg.val_images else "test",
            "train_wall_s": state["wall_s"], "wall_s": time.time() - t_start, "world_size": di.world,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        "torch": torch.__version__},
        }

    def epoch_end(is_best: bool, rng) -> None:
        """The epoch-end transition (module docstring): last (commit), best, metrics, summary."""
        if not di.is_main:
            return
        what = "last.safetensors"
        try:
            save("last", rng)  # the commit point
            pause_for_tests("committed", state["epoch"])
            if is_best:
                what = "best.safetensors"
                copy_atomic(run_dir / "last.safetensors", run_dir / "best.safetensors")
            what = "metrics.jsonl"
            _write_metrics(run_dir, state["record"], state["epoch"], pause=state["epoch"])
            if state["epoch"] == cfg.epochs:
                what = "summary.json"
                reporter.write_json("summary.json", summarize())
        except OSError as e:
            raise _write_failed(e, run_dir, what) from None

    boundary_rng = capture_rng()
    committed = ckpt is not None and not ckpt.state.get("step_in_epoch")  # last.safetensors == this state
    lr = lr_at(state["step"], **schedule)
    try:
        for epoch in range(state["epoch"], cfg.epochs):
            # ---- one epoch of optimiser steps
            sampler.set_epoch(epoch)
            sampler.set_start(state["step_in_epoch"] * cfg.accum_steps * cfg.batch_size)
            model.train()
            resumed_part = state["step_in_epoch"] > 0  # continuing an epoch: count its earlier part
            if not resumed_part:
                state.update(epoch_images=0, epoch_train_s=0.0, epoch_time_s=0.0)
            meter = Throughput(images=state["epoch_images"], seconds=state["epoch_train_s"])
            watch.new_epoch()
            time_before = state["epoch_time_s"]
            t_epoch = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            meter.start()
            step_sums: dict[str, torch.Tensor] = {}
            # only whole accumulation groups: a partial group would leak gradients into the next epoch
            batches = itertools.islice(loader, (steps_per_epoch - state["step_in_epoch"]) * cfg.accum_steps)
            for i, (x, y) in enumerate(batches):
                micro = i % cfg.accum_steps
                if micro == 0:
                    lr = lr_at(state["step"], **schedule)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                last_micro = micro == cfg.accum_steps - 1
                sync = contextlib.nullcontext() if last_micro or di.world == 1 else fwd.no_sync()
                with sync:
                    with autocast():
                        out = task(fwd, x, y)
                    scaler.scale(out["loss"] / cfg.accum_steps).backward()
                for k, v in {"loss": out["loss"].detach().float(), **out["terms"]}.items():
                    step_sums[k] = step_sums.get(k, 0.0) + v / cfg.accum_steps
                if not last_micro:
                    continue
                # ---- optimiser step: check the loss on every rank, clip, step, EMA
                keys = sorted(step_sums)  # "loss", "ce", aux terms
                values = distributed.all_reduce_sum(torch.stack([step_sums[k] for k in keys])) / di.world
                step_sums = {}
                step_loss = values[keys.index("loss")].item()
                if not torch.isfinite(values).all():
                    last = run_dir / "last.safetensors"
                    kept = (f"Last good checkpoint kept: {last} ({_where(last)})" if last.exists() else "No checkpoint had been written yet (nothing to resume; the run "
                            "folder can be started again)")
                    raise NonFiniteLossError(
                        f"loss became {step_loss} at step {state['step'] + 1} (epoch {epoch + 1}); run stopped. "
                        f"{kept} (try a lower --lr, --clip-grad 1.0 or --amp none)"
                    )
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                state["step"] += 1
                state["step_in_epoch"] += 1
                committed = False
                boundary_rng = capture_rng()  # what a Ctrl-C during the next step saves
                for k, v in zip(keys, values.tolist()):
                    state["sums"][k] = state["sums"].get(k, 0.0) + v
                n_img = cfg.batch_size * cfg.accum_steps * di.world
                state["images"] += n_img
                ips = meter.add(n_img)
                state.update(epoch_images=meter.images, epoch_train_s=meter.seconds,
                             epoch_time_s=time_before + time.perf_counter() - t_epoch)
                reporter.step(state["step"], epoch + 1, step_loss, lr, ips,
                              terms={k: v for k, v in zip(keys, values.tolist()) if k != "loss"})
                advice = watch.add(n_img)
                if advice:
                    reporter.log(advice)
                if on_step is not None:
                    on_step(state["step"])
                pause_for_tests("step", state["step"])
            epoch_time = time.perf_counter() - t_epoch  # this session's part of the epoch
            state["wall_s"] += epoch_time
            state["epoch_time_s"] = time_before + epoch_time

            # ---- epoch record: train means, then (BN calibration +) evaluation
            n_steps = max(state["step_in_epoch"], 1)
            # the LR of the epoch's last step (from the schedule: also right when a resume starts here)
            record = {"epoch": epoch + 1, "step": state["step"], "lr": lr_at(max(state["step"] - 1, 0), **schedule)}
            record.update({f"train_{k}": v / n_steps for k, v in state["sums"].items()})
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                for prefix, net in (("val", model), ("ema_val", ema.module if ema else None)):
                    if net is None:
                        continue
                    if calibrate:
                        calibrate_batchnorm(net, calib_loader, device=device, max_batches=cfg.bn_calibration_batches,
                                            autocast=autocast, channels_last=cfg.channels_last)
                    res = evaluate_model(net, val_loader, device=device, num_classes=data.num_classes,
                                         autocast=autocast, channels_last=cfg.channels_last,
                                         progress=lambda d, n, p=prefix: reporter.log(
                                             f"epoch {epoch + 1} {p}: evaluated {d}/{n or '?'} images"))
                    record.update({f"{prefix}_loss": res["loss"], f"{prefix}_top1": res["top1"], f"{prefix}_top5": res["top5"]})
            # the whole epoch's throughput and time, also when it was resumed part-way (or right after
            # its last step: then this session ran no step and adds only the time to get here);
            # None for an epoch resumed from a checkpoint of an older mixerlab, which lacks them
            known = meter.images > 0 and meter.seconds > 0
            record.update({"images_per_s": meter.images / meter.seconds if known else None,
                           "epoch_time_s": state["epoch_time_s"] if known else None,
                           "peak_mem_mb": _peak_memory_mb(device)})
            is_best = "val_top1" in record and (state["best_top1"] is None or record["val_top1"] > state["best_top1"])
            with guard.deferred():  # from here a signal waits until the folder is consistent again
                # the state moves to the epoch end only here: an interrupt before saves the state
                # after the last step, and resume repeats the evaluation with the old best
                if is_best:
                    state["best_top1"], state["best_epoch"] = record["val_top1"], epoch + 1
                state.update(epoch=epoch + 1, step_in_epoch=0, sums={}, record=record,
                             epoch_images=0, epoch_train_s=0.0, epoch_time_s=0.0)
                boundary_rng = capture_rng()  # evaluation consumed randomness (BN calibration in train mode)
                epoch_end(is_best, boundary_rng)
                committed = True
                reporter.epoch(record)
        summary = summarize()
        if di.is_main and state["epoch"] == cfg.epochs and not _summary_matches(run_dir, state):
            with guard.deferred():  # a resume of a finished run whose summary was never written
                try:
                    reporter.write_json("summary.json", summary)
                except OSError as e:
                    raise _write_failed(e, run_dir, "summary.json") from None
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: save the state at the last completed optimiser step (resumable exactly).
        if not committed:
            try:
                with guard.deferred():
                    save("last", rng=boundary_rng)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C while saving: the save has completed, stop now
            except OSError as e:
                raise _write_failed(e, run_dir, "last.safetensors") from None
        reporter.log(f"interrupted at step {state['step']}; resumable checkpoint: {run_dir / 'last.safetensors'}")
        reporter.close()
        return {"interrupted": True, "run_dir": str(run_dir), "step": state["step"], "epoch": state["epoch"]}
    finally:
        reporter.close()
    distributed.barrier()
    return summary


def _summary_matches(run_dir: Path, state: dict) -> bool:
    try:
        old = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return old.get("steps") == state["step"] and old.get("final") == (state["record"] or {}) \
        and old.get("best_epoch") == state["best_epoch"]
