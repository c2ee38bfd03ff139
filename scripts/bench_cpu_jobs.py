"""CPU training throughput: one process using every core vs one single-thread process per core.

This is the choice ``mixerlab compare --jobs`` makes: small models do not keep several intra-op
threads busy, so running independent trainings side by side may give more images per second in
total. For each model: training steps (forward, backward, AdamW) at ``--batch`` on random
32 x 32 inputs for ``--seconds`` seconds, (a) in one process with ``--cores`` threads, (b) in
``--cores`` processes with one thread each, started together; prints images/s in total for both.

Usage: python scripts/bench_cpu_jobs.py [deit_micro poolformer_micro ...] [--batch 64]
       [--seconds 20] [--cores N]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _worker(name: str, batch: int, seconds: float, threads: int, start, out) -> None:
    import torch

    import mixerlab
    from mixerlab.bench.speed import Case, Runner
    torch.set_num_threads(threads)
    m = mixerlab.create_model(name, num_classes=10, in_chans=1)
    run = Runner(m, Case(mode="train", batch_size=batch), 1, m.img_size, 10)
    run.timed(2)  # warm-up
    start.wait()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        run.step()
        steps += 1
    out.put(steps * batch / (time.perf_counter() - t0))


def throughput(name: str, *, procs: int, threads: int, batch: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(name, batch, seconds, threads, start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["deit_micro", "ffonly_micro", "poolformer_micro",
                                                  "lavit_micro"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.cores < 1 or args.seconds <= 0:
        ap.error("--batch and --cores must be >= 1, --seconds > 0")
    print(f"training img/s at batch {args.batch}, {args.cores} cores, {args.seconds:g} s per measurement")
    print(f"| model | 1 process x {args.cores} threads | {args.cores} processes x 1 thread | ratio |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        one = throughput(name, procs=1, threads=args.cores, batch=args.batch, seconds=args.seconds)
        many = throughput(name, procs=args.cores, threads=1, batch=args.batch, seconds=args.seconds)
        print(f"| {name} | {one:.0f} | {many:.0f} | {many / one:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
