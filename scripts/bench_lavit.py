"""LaViT vs its all-vanilla twin (same skeleton, every layer PVT attention): MACs and time (CPU or CUDA).

For each input size it builds ``MODEL`` and ``MODEL_vanilla`` at that size and measures, per stage
(downsampling + blocks) and in total:
* MACs per image, counted by ``FlopCounterMode`` on the explicit attention paths (mixerlab's
  counter, ``mixerlab.bench.flops.counted_macs``);
* inference time (eval, no grad, batch ``--batch``): per stage from forward hooks, and in total;
* training-step time (forward with the auxiliary terms in the loss, backward; batch
  ``--train-batch``), in total.
The two models are measured alternately in one process (each round runs both, back to back, the
order swapping every round) after ``--warmup`` rounds; the table reports medians over ``--reps``
rounds and the twin/LaViT ratio of the medians, and for the totals the median of the per-round
(paired) ratios with a bootstrap 95 % interval. CPU timings are wall-clock: on a shared machine report the load with the numbers.

Usage: python scripts/bench_lavit.py [--model lavit_tiny] [--sizes 224 448] [--batch 32]
       [--train-batch 16] [--reps 11] [--warmup 1] [--threads 2] [--sr-ratios R R R R] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections import defaultdict

import contextlib

import torch

import mixerlab
from mixerlab.bench.flops import counted_macs


def stage_macs(model, size) -> dict:
    total, per = counted_macs(model, (3, size, size))
    out = {}
    for i in range(len(model.stages)):  # the stage's downsampling and blocks
        pat = re.compile(rf"stages\.{i}\.(downsample|blocks\.\d+)$")
        out[f"stage{i + 1}"] = sum(v for k, v in per.items() if pat.match(k))
    out["total"] = total
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


class StageTimer:
    """Wall-clock per stage (its downsampling, position embedding and blocks) from block hooks."""

    def __init__(self, model, device: torch.device):
        self.model, self.acc, self.hooks, self.t0 = model, defaultdict(float), [], {}
        self.device = device
        for i, st in enumerate(model.stages):
            first, last = st.blocks[0], st.blocks[-1]
            mod = st.downsample if i > 0 else first
            self.hooks.append(mod.register_forward_pre_hook(self._start(i)))
            self.hooks.append(last.register_forward_hook(self._stop(i)))

    def _start(self, i):
        def f(m, a):
            sync(self.device)
            self.t0[i] = time.perf_counter()
        return f

    def _stop(self, i):
        def f(m, a, o):
            sync(self.device)
            self.acc[f"stage{i + 1}"] += time.perf_counter() - self.t0[i]
        return f

    def take(self) -> dict:
        out = dict(self.acc)
        self.acc.clear()
        return out

    def remove(self):
        for h in self.hooks:
            h.remove()


def infer_once(model, x, timer, dtype: str) -> dict:
    sync(x.device)
    t = time.perf_counter()
    with torch.no_grad(), autocast(x.device, dtype):
        model(x)
    sync(x.device)
    out = timer.take()
    out["total"] = time.perf_counter() - t
    return out


def train_once(model, x, dtype: str) -> float:
    sync(x.device)
    t = time.perf_counter()
    with autocast(x.device, dtype):
        logits, aux = model(x, return_aux=True)
        loss = logits.float().logsumexp(-1).mean() + sum(aux.values(), torch.zeros((), device=x.device))
    loss.backward()
    model.zero_grad(set_to_none=True)
    sync(x.device)
    return time.perf_counter() - t


def paired_ratio_ci(num: list[float], den: list[float], n_boot: int = 2000, seed: int = 0):
    """Median of the per-round ratios num_i / den_i (the two models of a round ran back to back,
    so slow spells of a shared machine hit both) and a bootstrap 95 % interval of that median."""
    import random
    r = [a / b for a, b in zip(num, den)]
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(r, k=len(r))) for _ in range(n_boot))
    return statistics.median(r), boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def med(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lavit_tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--sr-ratios", type=int, nargs=4, default=None, metavar="R",
                    help="per-stage key/value reduction ratios for both models (builder argument; "
                         "default the zoo's 8 4 2 1, keys on a 7 x 7 grid at 224 px)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="autocast dtype (float32: none)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {a.device}: CUDA is not available on this machine; allowed here: cpu")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = (a.model, f"{a.model}_vanilla")
    result = {"model": a.model, "batch": a.batch, "train_batch": a.train_batch, "reps": a.reps,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": a.dtype,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "sr_ratios": a.sr_ratios, "load_avg_start": os.getloadavg(), "sizes": {}}
    extra = {"sr_ratios": tuple(a.sr_ratios)} if a.sr_ratios else {}
    for size in a.sizes:
        models = {n: mixerlab.create_model(n, img_size=size, **extra) for n in names}
        rec = {n: {"macs": stage_macs(m, size), "infer": [], "train": []} for n, m in models.items()}
        models = {n: m.to(device) for n, m in models.items()}
        x = torch.randn(a.batch, 3, size, size, device=device)
        timers = {n: StageTimer(m.eval(), device) for n, m in models.items()}
        for r in range(a.warmup + a.reps):  # alternately: LaViT, twin, LaViT, twin, ...
            for n, m in (list(models.items()) if r % 2 == 0 else list(models.items())[::-1]):
                t = infer_once(m, x, timers[n], a.dtype)
                if r >= a.warmup:
                    rec[n]["infer"].append(t)
        for t in timers.values():
            t.remove()
        if not a.no_train:
            xt = x[:a.train_batch]
            for m in models.values():
                m.train()
            for r in range(a.warmup + a.reps):
                for n, m in (list(models.items()) if r % 2 == 0 else list(models.items())[::-1]):
                    t = train_once(m, xt, a.dtype)
                    if r >= a.warmup:
                        rec[n]["train"].append(t)
        for n in names:
            rec[n]["infer_median"] = med(rec[n]["infer"])
            rec[n]["train_median"] = statistics.median(rec[n]["train"]) if rec[n]["train"] else None
        la, tw = rec[names[0]], rec[names[1]]
        rec["paired"] = {"infer_total": paired_ratio_ci([t["total"] for t in tw["infer"]],
                                                        [t["total"] for t in la["infer"]])}
        if la["train"]:
            rec["paired"]["train"] = paired_ratio_ci(tw["train"], la["train"])
        result["sizes"][str(size)] = rec
        print_size(size, names, rec, a)
        for k, (m_, lo, hi) in rec["paired"].items():
            print(f"twin / LaViT, {k.replace('_', ' ')}: median of {a.reps} paired rounds "
                  f"{m_:.3f}x, bootstrap 95 % interval [{lo:.3f}, {hi:.3f}]")
    result["load_avg_end"] = os.getloadavg()
    print(f"load average at start {result['load_avg_start']}, at end {result['load_avg_end']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


def print_size(size, names, rec, a):
    stages = [k for k in rec[names[0]]["macs"] if k != "total"] + ["total"]
    where = f"{torch.get_num_threads()} threads" if a.device == "cpu" else f"{a.device}, {a.dtype}"
    print(f"\n{size} px; inference batch {a.batch}, training step batch {a.train_batch}; "
          f"{where}; medians of {a.reps} alternate rounds")
    print("| model | " + " | ".join(f"{s} GMACs" for s in stages) + " | "
          + " | ".join(f"{s} ms" for s in stages) + " | train step ms |")
    print("|" + "---|" * (2 * len(stages) + 2))
    for n in names:
        r = rec[n]
        tr = "–" if r["train_median"] is None else f"{r['train_median'] * 1e3:.0f}"
        print(f"| {n} | " + " | ".join(f"{r['macs'][s] / 1e9:.3f}" for s in stages) + " | "
              + " | ".join(f"{r['infer_median'][s] * 1e3:.0f}" for s in stages) + f" | {tr} |")
    la, tw = rec[names[0]], rec[names[1]]
    ratio_t = (tw["train_median"] / la["train_median"]) if la["train_median"] else None
    print("| twin / LaViT | " + " | ".join(f"{tw['macs'][s] / la['macs'][s]:.2f}x" for s in stages) + " | "
          + " | ".join(f"{tw['infer_median'][s] / la['infer_median'][s]:.2f}x" for s in stages)
          + (f" | {ratio_t:.2f}x |" if ratio_t else " | – |"))


if __name__ == "__main__":
    main()
