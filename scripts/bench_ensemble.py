"""Does a vmapped ensemble pay? Training images/s of N members as one ``Ensemble`` against the same
N runs trained one after the other (the plain loop: the same AdamW, schedule and objective).

    python scripts/bench_ensemble.py                          # deit_micro, poolformer_micro; N=4, batch 64
    python scripts/bench_ensemble.py --models deit_micro --members 8 --threads 2 --scale zoo --device cuda

Each measurement: ``--warmup`` untimed steps, then ``--steps`` timed steps, on random batches made
beforehand (the model step alone, no data path); repeated ``--repeats`` times, alternating the two
ways. ``--scale cpu`` (default) builds the models at ``mixerlab compare``'s CPU scale (28 px,
0.2-0.4 M parameters); ``zoo`` as the zoo defines them (32 px, ~1 M). Prints a Markdown table
(median and min-max of the repeats) and, with ``--json``, writes the raw times.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mixerlab  # noqa: E402
from mixerlab.compare.presets import CPU_SCALE  # noqa: E402
from mixerlab.engine.ensemble import Ensemble  # noqa: E402
from mixerlab.engine.optim import build_optimizer, lr_at  # noqa: E402
from mixerlab.engine.task import ClassificationTask  # noqa: E402

SCHED = dict(total_steps=1000, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)


def build(name: str, seed: int, scale: str, device) -> torch.nn.Module:
    size, args = (CPU_SCALE[name].img_size, CPU_SCALE[name].model_args) if scale == "cpu" else (32, {})
    torch.manual_seed(seed)
    return mixerlab.create_model(name, num_classes=10, in_chans=1, img_size=size, **args).to(device)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ensemble(models, batches, warmup: int, device) -> float:
    ens = Ensemble(models, lrs=[1e-3] * len(models), **SCHED)
    for x, y in batches[:warmup]:
        ens.train_step(x, y, check_finite=False)
    sync(device)
    t = time.perf_counter()
    for x, y in batches[warmup:]:
        ens.train_step(x, y, check_finite=False)
    sync(device)
    return time.perf_counter() - t


def time_alone(models, batches, warmup: int, device) -> float:
    """The members one after the other, each as the training loop steps it (fast paths on)."""
    task = ClassificationTask(mixup=None, label_smoothing=0.1, aux_weights={"dp_sym": 1.0, "dp_diag": 1.0})
    total = 0.0
    for i, model in enumerate(models):
        opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
        model.train()
        for step, (x, y) in enumerate(batches):
            if step == warmup:
                sync(device)
                t = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, base_lr=1e-3, **SCHED)
            out = task(model, x[i], y[i])
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        total += time.perf_counter() - t
    return total


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["deit_micro", "poolformer_micro"])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", choices=("cpu", "zoo"), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, b = args.members, args.batch_size
    rows, raw = [], []
    for name in args.models:
        size = CPU_SCALE[name].img_size if args.scale == "cpu" else 32
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(n, b, 1, size, size, generator=g).to(args.device),
                    torch.randint(0, 10, (n, b), generator=g).to(args.device))
                   for _ in range(args.warmup + args.steps)]
        images = n * b * args.steps
        ens_ips, alone_ips = [], []
        for _ in range(args.repeats):
            ens_ips.append(images / time_ensemble([build(name, s, args.scale, args.device) for s in range(n)],
                                                  batches, args.warmup, args.device))
            alone_ips.append(images / time_alone([build(name, s, args.scale, args.device) for s in range(n)],
                                                 batches, args.warmup, args.device))
        raw.append({"model": name, "ensemble_ips": ens_ips, "alone_ips": alone_ips})
        me, ma = statistics.median(ens_ips), statistics.median(alone_ips)
        rows.append(f"| {name} | {n} | {b} | {me:.0f} ({min(ens_ips):.0f}-{max(ens_ips):.0f}) | "
                    f"{ma:.0f} ({min(alone_ips):.0f}-{max(alone_ips):.0f}) | {me / ma:.2f} |")
    dev = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else cpu_name()
    print(f"{dev}; torch {torch.__version__}; {args.threads} thread(s); scale {args.scale}; "
          f"{args.steps} timed steps after {args.warmup}, {args.repeats} repeats")
    print("| model | members | batch | ensemble img/s, median (min-max) | one after another img/s | ratio |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "torch": torch.__version__, "threads": args.threads,
                                         "scale": args.scale, "args": vars(args) | {"json": str(args.json)},
                                         "results": raw}, indent=1))


if __name__ == "__main__":
    main()
