"""The training loop: ``train(config, out_dir=..., resume=...) -> summary``.

Reads top to bottom: set-up (process group, seeds, data, model, optimiser, EMA, task) ->
optional resume -> epochs of optimiser steps (warm-up + cosine LR per step, AMP, gradient
accumulation, clipping, EMA) -> BN calibration + evaluation -> metrics line + checkpoints.
The recipe is DeiT's (arXiv:2012.12877, facebookresearch/deit ``engine.py``/``main.py``),
scaled by :class:`~mixerlab.engine.config.TrainConfig`; DeepViT's BN calibration and LaViT's
DP loss come in through :mod:`.bn` and :mod:`.task`. The engine never sees the CLI namespace.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
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
from torch.nn.parallel import DistributedDataParallel

from ..data import build_data, build_mixup, eval_loader, train_loader
from . import distributed
from .bn import batchnorms, calibrate_batchnorm
from .checkpoint import CheckpointError, capture_rng, load_checkpoint, read_config, restore_rng, save_checkpoint
from .config import TrainConfig, config_from_dict, config_to_yaml
from .ema import ModelEma
from .evaluate import evaluate_model
from .factory import build_from_checkpoint, model_for_run
from .optim import build_optimizer, lr_at
from .report import Reporter, Throughput
from .task import ClassificationTask

# Keys that may change when resuming (they do not alter what has been trained so far).
RESUMABLE_CHANGES = ("epochs", "data_dir", "num_workers", "eval_every", "eval_batch_size", "log_every", "progress", "tensorboard")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model}-{cfg.data}-{datetime.now():%Y%m%d-%H%M%S}"


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


def _check_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> dict | None:
    """New runs never overwrite; resumed runs return the checkpoint to continue from."""
    last = run_dir / "last.safetensors"
    if not resume:
        if (run_dir / "config.yaml").exists() or last.exists():
            raise ValueError(f"run folder {run_dir} already holds a run; pass --resume {run_dir} to continue it, or choose another --out")
        return None
    ckpt = load_checkpoint(last)  # CheckpointError (a ValueError) if missing/corrupt
    stored = config_from_dict(ckpt.config)
    changed = [f.name for f in dataclasses.fields(TrainConfig) if getattr(stored, f.name) != getattr(cfg, f.name)]
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        raise CheckpointError(
            f"checkpoint {last} was written for another config: {', '.join(f'{k}={getattr(stored, k)!r} (now {getattr(cfg, k)!r})' for k in bad)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change on resume"
        )
    return ckpt


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The config stored in ``run_dir/last.safetensors`` with (resume-safe) ``overrides`` applied."""
    from .config import load_config

    stored = read_config(Path(run_dir) / "last.safetensors")  # header only; train() verifies the file
    return load_config(overrides=overrides, base=config_from_dict(stored))


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
    dist_info = distributed.setup(cfg.device)
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    # SIGTERM (kill, job-scheduler pre-emption) is handled like Ctrl-C: save a resumable checkpoint.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if on_main_thread else None
    try:
        return _train(cfg, dist_info, Path(out_dir) if out_dir else default_run_dir(cfg), resume, on_step)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads)
        distributed.cleanup()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _train(cfg: TrainConfig, di: distributed.DistInfo, run_dir: Path, resume: bool, on_step) -> dict:
    t_start = time.time()
    device = di.device
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    ckpt = _check_run_dir(run_dir, cfg, resume)
    _seed_all(cfg.seed + di.rank)  # model init differs per rank, but DDP broadcasts rank 0's weights

    # ---- data, model, optimiser, EMA, objective
    data = build_data(cfg)
    if ckpt is not None:  # the model it was trained with, from its stored config
        model = build_from_checkpoint(ckpt, weights="model")[0].to(device)
    else:
        model = model_for_run(cfg, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None
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
    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best_top1": None, "best_epoch": None,
             "sums": {}, "images": 0, "wall_s": 0.0}
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
    reporter = Reporter(run_dir if di.is_main else None, mode=cfg.progress, total_steps=total_steps,
                        log_every=cfg.log_every, tensorboard=cfg.tensorboard)
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        n_params = sum(p.numel() for p in model.parameters())
        reporter.log(f"{'resuming' if resume else 'training'} {cfg.model} ({n_params / 1e6:.2f}M params) on {cfg.data} "
                     f"({len(data.train)} train / {len(data.val)} val images), {di.world} process(es) on {device}, "
                     f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs -> {run_dir}")

    def save(name: str, rng=None) -> None:
        if di.is_main:
            info = {"data_info": {"num_classes": data.num_classes, "in_chans": data.in_chans, "classes": list(data.classes)}}
            save_checkpoint(run_dir / f"{name}.safetensors", model=model, config=cfg.to_dict(),
                            model_config=model.cfg.to_dict(), state={**state, **info},
                            optimizer=optimizer, ema=ema.module if ema else None, scaler=scaler, rng=rng)

    boundary_rng = capture_rng()
    record: dict = {}
    lr = lr_at(state["step"], **schedule)
    try:
        for epoch in range(state["epoch"], cfg.epochs):
            # ---- one epoch of optimiser steps
            sampler.set_epoch(epoch)
            sampler.set_start(state["step_in_epoch"] * cfg.accum_steps * cfg.batch_size)
            model.train()
            meter = Throughput()
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
                    raise NonFiniteLossError(
                        f"loss became {step_loss} at step {state['step'] + 1} (epoch {epoch + 1}); run stopped. "
                        f"Last good checkpoint kept: {run_dir / 'last.safetensors'} "
                        "(try a lower --lr, --clip-grad 1.0 or --amp none)"
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
                boundary_rng = capture_rng()  # what a Ctrl-C during the next step saves
                for k, v in zip(keys, values.tolist()):
                    state["sums"][k] = state["sums"].get(k, 0.0) + v
                state["images"] += cfg.batch_size * cfg.accum_steps * di.world
                ips = meter.add(cfg.batch_size * cfg.accum_steps * di.world)
                reporter.step(state["step"], epoch + 1, step_loss, lr, ips)
                if on_step is not None:
                    on_step(state["step"])
            epoch_time = time.perf_counter() - t_epoch
            state["wall_s"] += epoch_time

            # ---- epoch record: train means, then (BN calibration +) evaluation
            n_steps = max(state["step_in_epoch"], 1)
            record = {"epoch": epoch + 1, "step": state["step"], "lr": lr}
            record.update({f"train_{k}": v / n_steps for k, v in state["sums"].items()})
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                for prefix, net in (("val", model), ("ema_val", ema.module if ema else None)):
                    if net is None:
                        continue
                    if calibrate:
                        calibrate_batchnorm(net, calib_loader, device=device, max_batches=cfg.bn_calibration_batches,
                                            autocast=autocast, channels_last=cfg.channels_last)
                    res = evaluate_model(net, val_loader, device=device, num_classes=data.num_classes,
                                         autocast=autocast, channels_last=cfg.channels_last)
                    record.update({f"{prefix}_loss": res["loss"], f"{prefix}_top1": res["top1"], f"{prefix}_top5": res["top5"]})
            record.update({"images_per_s": meter.images / max(meter.seconds, 1e-9), "epoch_time_s": epoch_time,
                           "peak_mem_mb": _peak_memory_mb(device)})
            is_best = "val_top1" in record and (state["best_top1"] is None or record["val_top1"] > state["best_top1"])
            if is_best:
                state["best_top1"], state["best_epoch"] = record["val_top1"], epoch + 1
            state.update(epoch=epoch + 1, step_in_epoch=0, sums={})
            boundary_rng = capture_rng()  # evaluation consumed randomness (BN calibration in train mode)
            reporter.epoch(record)
            save("last")
            if is_best:
                save("best")
    except KeyboardInterrupt:
        # Ctrl-C: save the state at the last completed optimiser step (resumable exactly).
        save("last", rng=boundary_rng)
        reporter.log(f"interrupted at step {state['step']}; resumable checkpoint saved: {run_dir / 'last.safetensors'}")
        reporter.close()
        return {"interrupted": True, "run_dir": str(run_dir), "step": state["step"], "epoch": state["epoch"]}
    finally:
        reporter.close()

    summary = {
        "model": cfg.model, "data": cfg.data, "recipe": cfg.recipe, "run_dir": str(run_dir), "interrupted": False,
        "params": sum(p.numel() for p in model.parameters()), "epochs": cfg.epochs, "steps": state["step"],
        "best_top1": state["best_top1"], "best_epoch": state["best_epoch"], "final": record,
        "train_wall_s": state["wall_s"], "wall_s": time.time() - t_start, "world_size": di.world,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__},
    }
    reporter.write_json("summary.json", summary)
    distributed.barrier()
    return summary
