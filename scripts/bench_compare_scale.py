"""Training throughput of every model a compare preset trains, at the preset's CPU scale.

    PYTHONPATH=. python scripts/bench_compare_scale.py [--preset quick] [--reps 3] [--steps 8]

One process, one thread (what each ``--jobs`` worker gets), one training step = forward, backward
and AdamW on a batch of the preset's size of random images. The models are measured *alternately*
(every model once per repetition) so that load from other processes on a shared machine hits all
of them alike; the ratios are then more trustworthy than the absolute numbers. Prints images/s
per repetition and the best, plus parameters and MACs. No data loading: a run's images/s is lower.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    from mixerlab.bench.complexity import count_macs
    from mixerlab.compare.experiments import plan
    from mixerlab.compare.presets import get_preset
    from mixerlab.compare.runner import build_config
    from mixerlab.engine.factory import model_for_run
    torch.set_num_threads(1)
    p = get_preset(args.preset)
    models, seen = {}, set()
    for s in plan(p):
        cfg = build_config(s, p, 0, p.data, None)
        key = (cfg.model, repr(sorted(cfg.model_args.items())), cfg.img_size)
        if key in seen:
            continue
        seen.add(key)
        name = f"{s.exp} {s.label}" + (f" x={s.x:g}" if s.x is not None else "")
        m = model_for_run(cfg, num_classes=10, in_chans=1)
        models[name] = (m, torch.optim.AdamW(m.parameters(), 1e-3), cfg.img_size, cfg.batch_size)
    res = {n: [] for n in models}
    for _ in range(args.reps):
        for n, (m, opt, size, bs) in models.items():
            x, y = torch.randn(bs, 1, size, size), torch.randint(0, 10, (bs,))
            m.train()
            for i in range(args.steps + 2):
                if i == 2:
                    t = time.perf_counter()
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
            res[n].append(bs * args.steps / (time.perf_counter() - t))
    print(f"preset {p.name}; 1 thread; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| run | params (k) | MACs (M) | img/s per repetition | best |\n|---|---|---|---|---|")
    for n, (m, _, size, _) in models.items():
        params = sum(q.numel() for q in m.parameters()) / 1e3
        print(f"| {n} | {params:.0f} | {count_macs(m) / 1e6:.2f} | "
              + " ".join(f"{v:.0f}" for v in res[n]) + f" | {max(res[n]):.0f} |")


if __name__ == "__main__":
    main()
