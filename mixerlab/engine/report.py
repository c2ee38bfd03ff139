"""Run-folder outputs and console progress for the training loop (rank 0 only).

``metrics.jsonl`` gets one JSON line per epoch; the console shows a rich progress bar
(throughput + ETA) on a terminal and plain log lines otherwise; TensorBoard is optional.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Reporter:
    """Writes metrics and shows progress.

    Args:
        run_dir: the run folder (``None``: write nothing, e.g. on ranks > 0).
        mode: ``'auto'`` (rich on a terminal, plain otherwise), ``'rich'``, ``'plain'`` or ``'none'``.
        total_steps: optimiser steps of the whole run (for the ETA).
        log_every: steps between plain log lines.
        tensorboard: also write TensorBoard scalars to ``run_dir/tb``.
    """

    def __init__(self, run_dir: Path | None, *, mode: str, total_steps: int, log_every: int, tensorboard: bool):
        self.run_dir = run_dir
        self.enabled = run_dir is not None
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode if self.enabled else "none"
        self.total_steps = total_steps
        self.log_every = log_every
        self.progress = self.task = None
        self.tb = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, info="")

    def log(self, msg: str) -> None:
        if self.mode == "rich":
            self.progress.console.print(msg)
        elif self.mode == "plain":
            print(msg, file=sys.stderr, flush=True)

    def step(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        info = f"epoch {epoch} loss {loss:.4f} lr {lr:.2e} {images_per_s:.0f} img/s"
        if self.mode == "rich":
            self.progress.update(self.task, completed=step, info=info)
        elif self.mode == "plain" and (step % self.log_every == 0 or step == self.total_steps):
            self.log(f"step {step}/{self.total_steps} {info}")
        if self.tb is not None:
            self.tb.add_scalar("train/loss_step", loss, step)
            self.tb.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Print a summary of the epoch (the loop writes ``metrics.jsonl`` as part of the epoch end)."""
        if not self.enabled:
            return
        shown = {k: v for k, v in record.items() if k in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "ema_val_top1", "images_per_s", "epoch_time_s")}
        self.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"epoch/{k}", v, record["epoch"])

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.enabled:
            from .checkpoint import atomic_write_text

            atomic_write_text(self.run_dir / name, json.dumps(data, indent=2) + "\n", pause=("summary", data.get("epochs", -1)))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class Throughput:
    """Images per second over the current epoch (training time only)."""

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self._t = None

    def start(self) -> None:
        self._t = time.perf_counter()

    def add(self, images: int) -> float:
        now = time.perf_counter()
        self.seconds += now - self._t
        self._t = now
        self.images += images
        return self.images / max(self.seconds, 1e-9)
