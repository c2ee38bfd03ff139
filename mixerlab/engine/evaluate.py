"""Evaluation: top-1/top-5/loss and the confusion matrix, for the loop and for ``mixerlab eval``.

Metrics are exact under DDP: every rank evaluates an unpadded shard and the sums (loss, top-5
hits, confusion matrix) are all-reduced. Top-1 and per-class accuracy come from the confusion
matrix (rows: true class, columns: prediction).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import build_data, eval_loader
from . import distributed
from .bn import batchnorms, calibrate_batchnorm
from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import config_from_dict
from .distributed import all_reduce_sum
from .factory import build_from_checkpoint, identify
from .run_folder import claim_folder


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, *, device: torch.device, num_classes: int,
                   autocast=contextlib.nullcontext, channels_last: bool = False,
                   progress=None, progress_every_s: float = 5.0) -> dict[str, Any]:
    """Loss (plain cross-entropy), top-1, top-5 and the (K, K) confusion matrix on ``loader``.

    ``progress(images_done, images_total)`` (optional) is called at most every
    ``progress_every_s`` seconds, and at the end when it was called before: long evaluations are
    never silent, short ones print nothing."""
    from .report import now
    was_training = model.training
    total = len(getattr(loader, "sampler", None) or []) or None
    done, reported, last = 0, 0, now()
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, top-k hits
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x).float()  # (B, K)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        topk = logits.topk(k, dim=1).indices  # (B, k)
        sums[1] += (topk == y[:, None]).any(dim=1).sum()
        confusion += torch.bincount(y * num_classes + topk[:, 0], minlength=num_classes * num_classes)
        done += len(y)
        if progress is not None and now() - last >= progress_every_s:
            progress(done, total)
            last, reported = now(), done
    if progress is not None and 0 < reported < done:
        progress(done, total)
    model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()  # (true, predicted)
    n = int(confusion.sum())
    if n == 0:
        raise ValueError("the evaluation split is empty")
    per_class_n = confusion.sum(1).clamp(min=1)
    return {
        "loss": float(sums[0]) / n,
        "top1": 100.0 * float(confusion.diag().sum()) / n,
        "top5": 100.0 * float(sums[1]) / n,
        "n": n,
        "per_class_top1": (100.0 * confusion.diag() / per_class_n).tolist(),
        "confusion": confusion,
    }


def plot_confusion(confusion: torch.Tensor, classes, path: Path, title: str) -> Path:
    """Save a row-normalised confusion-matrix heat map (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = confusion.shape[0]
    norm = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.45 * k)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 30:
        ax.set_xticks(range(k), labels=classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels=classes, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    v = norm[i, j].item()
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], classes, out_dir: Path, stem: str, title: str) -> dict[str, Path]:
    """Write ``<stem>.json`` (metrics, per-class accuracy, confusion) and ``<stem>_confusion.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in result.items() if k != "confusion"}
    data["per_class_top1"] = dict(zip(classes, result["per_class_top1"]))
    data["confusion"] = result["confusion"].tolist()
    data["classes"] = list(classes)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    png = plot_confusion(result["confusion"], classes, out_dir / f"{stem}_confusion.png", title)
    return {"json": json_path, "png": png}


def evaluate(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    ema: bool = False,
    bn_calibration: str = "auto",
    out_dir: str | Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    progress=None,
) -> dict[str, Any]:
    """Evaluate a checkpoint: top-1/top-5/loss, per-class accuracy, confusion-matrix PNG.
    ``progress(images_done, images_total)``: called every few seconds (``mixerlab eval`` prints it).

    Args:
        checkpoint: a ``.safetensors`` checkpoint or a run folder (its ``best``, else ``last``).
        data, data_dir: dataset to evaluate on (default: the one it was trained on).
        batch_size: evaluation batch size.
        ema: evaluate the EMA weights instead of the raw model.
        bn_calibration: ``'auto'`` (recalibrate BatchNorm statistics when the model has BN),
            ``'on'`` or ``'off'`` (use the stored statistics).
        out_dir: where to write ``eval_*.json`` and ``eval_*_confusion.png`` (default: the
            checkpoint's folder + ``/eval``).
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        num_workers: DataLoader workers.

    Returns:
        Metrics (``top1``, ``top5``, ``loss``, ``n``, ``per_class_top1``) plus ``files``.
    """
    if bn_calibration not in ("auto", "on", "off"):
        raise ValueError(f"bn_calibration must be auto, on or off, got {bn_calibration!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)  # CheckpointError naming a corrupt or foreign file
    identify(path)  # names a checkpoint of no classifier (a `mixerlab dense` run)
    if ema and not ckpt.has_ema:  # before any data is read
        raise CheckpointError(f"checkpoint {path} holds no EMA weights (trained with ema_decay=null)")
    changes = {k: v for k, v in (("data", data), ("data_dir", data_dir)) if v is not None}
    if data is not None and data != ckpt.config["data"] and data_dir is None:
        changes["data_dir"] = None  # the stored folder belongs to the other dataset
    cfg = dataclasses.replace(config_from_dict(ckpt.config), **changes, num_workers=num_workers)
    out = Path(out_dir) if out_dir is not None else path.parent / "eval"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; eval writes a folder (eval_*.json and a confusion PNG): "
                         "give a folder name")
    claim_folder(out, "eval")  # a run, compare, ablate or analysis folder is refused; an unwritable place fails here
    di = distributed.setup(device)
    try:
        bundle = build_data(cfg)
        trained = ckpt.state.get("data_info", {})
        if trained and (trained["num_classes"], trained["in_chans"]) != (bundle.num_classes, bundle.in_chans):
            raise CheckpointError(
                f"checkpoint {path} was trained on {ckpt.config['data']} ({trained['num_classes']} classes, "
                f"{trained['in_chans']} channel(s)); {cfg.data} has {bundle.num_classes} classes, {bundle.in_chans} channel(s)"
            )
        model, _ = build_from_checkpoint(ckpt, weights="ema" if ema else "model")
        model.to(di.device)
        pin = di.device.type == "cuda"
        calibrated = 0
        if bn_calibration == "on" or (bn_calibration == "auto" and batchnorms(model)):
            torch.manual_seed(cfg.seed)
            calib = eval_loader(bundle.train_plain, batch_size=batch_size, rank=di.rank, world=di.world, workers=num_workers,
                                pin=pin, limit=cfg.bn_calibration_batches * batch_size * di.world, shuffle_seed=cfg.seed)
            calibrated = calibrate_batchnorm(model, calib, device=di.device, max_batches=cfg.bn_calibration_batches)
        # the test split, also for runs that held a validation split out of the training set
        test = bundle.test if bundle.test is not None else bundle.val
        loader = eval_loader(test, batch_size=batch_size, rank=di.rank, world=di.world, workers=num_workers, pin=pin)
        result = evaluate_model(model, loader, device=di.device, num_classes=bundle.num_classes,
                                progress=progress if di.is_main else None)
        result["bn_calibration_batches"] = calibrated
        result.update(checkpoint=str(path), model=cfg.model, data=cfg.data, weights="ema" if ema else "model",
                      epoch=ckpt.state.get("epoch"), step=ckpt.state.get("step"))
        if di.is_main:
            stem = f"eval_{cfg.data}_{path.stem}{'_ema' if ema else ''}"
            title = f"{cfg.model} on {cfg.data} ({path.name}{', EMA' if ema else ''}): top-1 {result['top1']:.2f}%"
            result["files"] = {k: str(v) for k, v in write_report(result, bundle.classes, out, stem, title).items()}
        return result
    finally:
        distributed.cleanup()
