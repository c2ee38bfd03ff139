"""Run-folder outputs and console progress for the training loop (rank 0 only).

``metrics.jsonl`` gets one JSON line per epoch; the console shows a rich progress bar
(throughput + ETA) on a terminal and plain log lines otherwise -- every ``log_every`` steps and
at least every ``PROGRESS_EVERY_S`` seconds, so a slow run is never silent; TensorBoard is
optional. The loss is shown with its parts (cross-entropy and each auxiliary term).
:class:`Heartbeat` gives other long jobs (evaluation, ablate) the same time-based progress, and
:class:`ThroughputWatch` notices a collapse of images/s within an epoch (CPU oversubscription).
All timing reads :data:`clock` (tests replace it with a fake clock).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Seconds; a module attribute so that tests can substitute a fake clock.
clock: Callable[[], float] = time.monotonic
# Plain progress lines: at least this often (seconds), besides every ``log_every`` steps.
PROGRESS_EVERY_S = 10.0


def now() -> float:
    return clock()


def format_terms(loss: float, terms: dict[str, float] | None) -> str:
    """``loss 0.8123 (ce 0.7012 dp_sym 0.0031 dp_diag 0.1080)``: the loss and its parts (the
    unweighted terms; the loss is ce + sum of weight x term)."""
    parts = {k: v for k, v in (terms or {}).items() if k != "loss"}
    if not parts or list(parts) == ["ce"]:
        return f"loss {loss:.4f}"
    order = ["ce"] + sorted(k for k in parts if k != "ce")
    return f"loss {loss:.4f} (" + " ".join(f"{k} {parts[k]:.4f}" for k in order if k in parts) + ")"


class Reporter:
    """Writes metrics and shows progress.

    Args:
        run_dir: the run folder (``None``: write nothing, e.g. on ranks > 0).
        mode: ``'auto'`` (rich on a terminal, plain otherwise), ``'rich'``, ``'plain'`` or ``'none'``.
        total_steps: optimiser steps of the whole run (for the ETA).
        log_every: steps between plain log lines.
        tensorboard: also write TensorBoard scalars to ``run_dir/tb``.
    """

    def __init__(self, run_dir: Path | None, *, mode: str, total_steps: int, log_every: int, tensorboard: bool,
                 eval_split: str = "val"):
        self.run_dir = run_dir
        # the split the loop evaluates, as the epoch lines name it: "val" (held out of the training
        # set) or "test" (no validation split: the record's val_* keys are then the test split's)
        self.eval_split = eval_split
        self.enabled = run_dir is not None
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode if self.enabled else "none"
        self.total_steps = total_steps
        self.log_every = log_every
        self.every_s = PROGRESS_EVERY_S
        self.last_line = now()
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
        self.last_line = now()

    def step(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float,
             terms: dict[str, float] | None = None) -> None:
        """One optimiser step; ``terms``: the loss's parts (``ce``, auxiliary terms), shown next to it."""
        info = f"epoch {epoch} {format_terms(loss, terms)} lr {lr:.2e} {images_per_s:.0f} img/s"
        if self.mode == "rich":
            self.progress.update(self.task, completed=step, info=info)
        elif self.mode == "plain" and (step % self.log_every == 0 or step == self.total_steps
                                       or now() - self.last_line >= self.every_s):
            self.log(f"step {step}/{self.total_steps} {info}")
        if self.tb is not None:
            self.tb.add_scalar("train/loss_step", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            for k, v in (terms or {}).items():
                if k != "loss":
                    self.tb.add_scalar(f"train/{k}_step", v, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Print a summary of the epoch (the loop writes ``metrics.jsonl`` as part of the epoch end):
        the training loss with each of its parts (``train_ce``, ``train_dp_sym``, ...)."""
        if not self.enabled:
            return
        parts = sorted(k for k in record if k.startswith("train_") and k != "train_loss")
        parts = (["train_ce"] if "train_ce" in parts else []) + [k for k in parts if k != "train_ce"]
        keys = ["epoch", "train_loss", *parts, "val_loss", "val_top1", "val_top5", "ema_val_top1",
                "images_per_s", "epoch_time_s"]
        shown = {k.replace("val_", f"{self.eval_split}_"): record[k] for k in keys if record.get(k) is not None}
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
    """Images per second over the current epoch (training time only).

    ``images`` / ``seconds`` may start from the part of the epoch done before a resume."""

    def __init__(self, images: int = 0, seconds: float = 0.0):
        self.images = images
        self.seconds = seconds
        self._t = None

    def start(self) -> None:
        self._t = now()

    def add(self, images: int) -> float:
        t = now()
        self.seconds += t - self._t
        self._t = t
        self.images += images
        return self.images / max(self.seconds, 1e-9)


class Heartbeat:
    """Time-based progress for long loops: :meth:`beat` logs ``what`` when nothing was logged for
    ``every_s`` seconds; :meth:`say` logs and restarts the interval (use it for the job's own
    lines, so that a heartbeat only fills silences)."""

    def __init__(self, log: Callable[[str], None], every_s: float = PROGRESS_EVERY_S):
        self._log, self.every_s, self.last = log, every_s, now()

    def say(self, msg: str) -> None:
        self._log(msg)
        self.last = now()

    def beat(self, what: str | Callable[[], str]) -> bool:
        if now() - self.last < self.every_s:
            return False
        self.say(what() if callable(what) else what)
        return True


class ThroughputWatch:
    """Notices training throughput collapsing within an epoch, as when another job shares the CPU
    cores and the intra-op threads wait on each other (2 threads on 2 busy cores: 28 images/s
    against 387 with 1 thread).

    The epoch's reference rate is measured over its first ``window_s`` seconds (after
    ``skip_steps`` warm-up steps); later windows of ``window_s`` seconds are compared with it, and
    when ``sustained`` consecutive windows run below ``ratio`` x the reference, :meth:`add`
    returns one advice line (once per run; :meth:`new_epoch` measures a new reference)."""

    def __init__(self, *, threads: int, device: str = "cpu", window_s: float = 15.0, ratio: float = 0.25,
                 sustained: int = 2, skip_steps: int = 2, resume_cmd: str | None = None):
        self.threads, self.device, self.resume_cmd = threads, device, resume_cmd
        self.window_s, self.ratio, self.sustained, self.skip_steps = window_s, ratio, sustained, skip_steps
        self.warned = False
        self.new_epoch()

    def new_epoch(self) -> None:
        self.reference: float | None = None
        self.steps, self.slow = 0, 0
        self._t0, self._images = None, 0

    def add(self, images: int) -> str | None:
        """Count one step of ``images``; returns the advice line when the collapse is detected."""
        t = now()
        self.steps += 1
        if self.steps <= self.skip_steps or self._t0 is None:
            self._t0, self._images = t, 0  # warm-up steps (allocation, caches) are not the reference
            return None
        self._images += images
        if t - self._t0 < self.window_s:
            return None
        rate = self._images / (t - self._t0)
        self._t0, self._images = t, 0
        if self.reference is None:
            self.reference = rate
            return None
        self.slow = self.slow + 1 if rate < self.ratio * self.reference else 0
        if self.slow < self.sustained or self.warned:
            return None
        self.warned = True
        span = self.slow * self.window_s
        msg = (f"warning: training throughput fell to {rate:.0f} images/s from {self.reference:.0f} at the start "
               f"of the epoch (below {self.ratio:.0%} for {span:.0f} s)")
        if self.device == "cpu":
            msg += (f"; another process is probably competing for the CPU cores and the {self.threads} torch "
                    f"threads wait on each other: train with --threads 1 (or OMP_NUM_THREADS=1)"
                    + (f"; Ctrl-C saves a checkpoint, then `{self.resume_cmd}` continues this run"
                       if self.resume_cmd else "") + ", or stop the other job")
        else:
            msg += "; another process may be using the device or the CPU that feeds it"
        return msg
