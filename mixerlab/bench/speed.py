"""Throughput and peak memory of inference and training steps, optionally side by side with timm.

Method (as timm ``benchmark.py`` and nanoGPT's bench, re-implemented):

* A *step* is one forward (``infer``: eval mode, ``torch.no_grad``) or one training step
  (``train``: train mode, forward, cross-entropy on random labels, backward, AdamW step).
* Warm-up steps first (allocator, kernels, ``torch.compile``). Then ``reps`` repetitions, each
  timing ``iters`` back-to-back steps with ``time.perf_counter`` between device synchronisations
  (``torch.cuda.synchronize`` on CUDA); ``iters`` is chosen from the warm-up so one repetition
  lasts at least ``min_time`` seconds. The median repetition gives ms/step and images/s.
* ``--vs-timm`` interleaves the implementations repetition by repetition in one process (A, B,
  A, B, ...), so drifts of clock, temperature or background load hit both alike.

Peak memory (what is measured differs by device; the row says which in ``mem_kind``):

* CUDA: ``torch.cuda.max_memory_allocated()`` during one step minus the allocated memory before
  it (model, optimizer state and input already resident): the step's activation/workspace peak.
* CPU: the process's resident set size (``/proc/self/statm``) sampled every 0.5 ms by a thread
  during one step, peak minus the RSS just before the step, after ``gc.collect()`` and glibc
  ``malloc_trim(0)`` (so memory freed by the previous model is returned to the OS first). The
  sampler can miss a very short peak, and RSS counts pages, not tensor bytes: treat it as an
  estimate of the step's working memory; tracemalloc does not see PyTorch's allocator at all.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

# --------------------------------------------------------------------------------- memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager sampling RSS in a thread; ``.peak_delta`` = max RSS - RSS at entry."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.peak_delta = 0

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_bytes())
                time.sleep(self.interval)
        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.peak_delta = self.peak - self.base
        return False


# --------------------------------------------------------------------------------- steps
@dataclass
class Case:
    """One configuration to time."""

    mode: str = "infer"  # infer | train
    batch_size: int = 1
    img_size: tuple | None = None  # None: the model's own
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16: autocast dtype of forward (and loss)


# Mixed precision as in training: fp32 weights and optimizer, autocast forward. float16 would also
# need a GradScaler for training; benchmarks take it as is (one step's speed does not need it).
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """A model prepared for one ``Case``: ``step()`` runs one inference or training step."""

    def __init__(self, model: nn.Module, case: Case, in_chans: int, img_size: tuple, num_classes: int):
        if case.mode not in ("infer", "train"):
            raise ValueError(f"mode {case.mode!r}; allowed: ['infer', 'train']")
        self.device = torch.device(case.device)
        self.model = model.to(self.device)
        fmt = torch.channels_last if case.channels_last else torch.contiguous_format
        if case.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(case.batch_size, in_chans, *img_size, generator=g).to(self.device, memory_format=fmt)
        self.y = torch.randint(0, max(num_classes, 1), (case.batch_size,), generator=g).to(self.device)
        self.fn = torch.compile(self.model) if case.compile else self.model
        self.mode = case.mode
        if case.dtype not in AUTOCAST:
            raise ValueError(f"dtype {case.dtype!r}; allowed: {sorted(AUTOCAST)}")
        self.autocast_dtype = AUTOCAST[case.dtype]
        if case.mode == "train":
            self.model.train()
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        else:
            self.model.eval()

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self) -> None:
        if self.mode == "infer":
            # no_grad, not inference_mode: GPSA caches its position table, and a cache created
            # as an inference tensor would break a later training step on the same model.
            with torch.no_grad(), self._autocast():
                self.fn(self.x)
            return
        with self._autocast():
            out = self.fn(self.x)
            loss = nn.functional.cross_entropy(out, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, iters: int) -> float:
        """Seconds per step over ``iters`` back-to-back steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        _sync(self.device)
        return (time.perf_counter() - t0) / iters

    def peak_memory(self) -> tuple[int, str]:
        """(bytes, what was measured) of one step."""
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.step()
            _sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base, "cuda max_memory_allocated delta"
        _trim()
        with PeakRSS() as p:
            self.step()
        return p.peak_delta, "cpu RSS peak delta (sampled)"


def benchmark_interleaved(runners: dict[str, Runner], *, reps: int = 5, warmup: int = 2,
                          min_time: float = 0.2) -> dict[str, dict]:
    """Time several runners of one case, alternating them repetition by repetition.

    Returns name -> record with ``ms_per_step`` (median), ``img_per_s``, ``ms_all`` (every
    repetition), ``iters``, ``peak_mem_mb`` and ``mem_kind``.
    """
    if reps < 1 or warmup < 0:
        raise ValueError("reps must be >= 1 and warmup >= 0")
    iters = {}
    for name, r in runners.items():
        t = None
        for _ in range(max(warmup, 1)):
            t = r.timed(1)
        iters[name] = max(1, int(min_time / max(t, 1e-6)))
    times = {n: [] for n in runners}
    for _ in range(reps):
        for name, r in runners.items():
            times[name].append(r.timed(iters[name]))
    out = {}
    for name, r in runners.items():
        mem, kind = r.peak_memory()
        med = statistics.median(times[name])
        out[name] = dict(ms_per_step=med * 1e3, img_per_s=r.x.shape[0] / med,
                         ms_all=[round(t * 1e3, 3) for t in times[name]], iters=iters[name], reps=reps,
                         warmup=warmup, peak_mem_mb=mem / 2 ** 20, mem_kind=kind)
    return out
