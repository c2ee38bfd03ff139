"""Fast path vs reference path of one model, same process, same weights, interleaved, medians.

Every mixer with a ``fused`` switch (attention family, token feed-forward) is set to its fast path
and then to its reference path, alternately, ``--reps`` times; the script prints the median time of
each and their ratio. It measures what the fast paths buy inside a whole model (the unit tests
check that both paths give the same numbers).

Usage: python scripts/bench_fast_path.py ffonly_tiny [--batch 16] [--mode infer|train]
       [--threads 1] [--reps 6] [--img-size 224]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mixerlab


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--mode", choices=("infer", "train"), default="infer")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.reps < 1:
        ap.error("--batch and --reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = mixerlab.create_model(args.model, **({"img_size": args.img_size} if args.img_size else {})).to(dev)
    switches = [mod for mod in m.modules() if hasattr(mod, "fused")]
    if not switches:
        ap.error(f"{args.model} has no mixer with a fast path")
    x = torch.randn(args.batch, m.in_chans, *m.img_size, device=dev)
    y = torch.randint(0, m.num_classes, (args.batch,), device=dev)

    def step():
        if args.mode == "infer":
            with torch.inference_mode():
                m.eval()(x)
        else:
            m.train()
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = {True: [], False: []}
    for rep in range(args.reps + 1):
        for fused in (True, False):
            for mod in switches:
                mod.fused = fused
            t = time.perf_counter()
            step()
            if rep:  # the first round is the warm-up
                times[fused].append(time.perf_counter() - t)
    fast, ref = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.model} {args.mode} batch {args.batch} on {dev} ({torch.get_num_threads()} threads, "
          f"torch {torch.__version__}): fast path {fast * 1e3:.1f} ms, reference path {ref * 1e3:.1f} ms, "
          f"speed-up {ref / fast:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
