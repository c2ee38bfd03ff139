"""Profile one zoo model: which operators take the time, and what its fast paths buy.

Default: the operators of an inference forward or a training step (forward, backward, AdamW step)
sorted by self CPU time (CUDA time on a GPU), so a hot spot of a mixer, a norm or a layout copy
shows up by name; ``--json`` also writes them as records (name, calls, ms per step, share).

``--paths``: time the model with all its fast-path switches on (``mixerlab.fast_paths(model, True)``:
``fused_attn`` of the attention family, ``token_major`` of the token feed-forward, ``onednn_linear``
of the ``Linear`` layers) and off, alternately, ``--reps`` times, same weights and batch; prints the
medians and their ratio (the unit tests check that both paths give the same numbers; this measures
what the fast path buys inside the whole model). ``--only`` restricts it to one switch, or (as
before) to the modules of one class name.

Usage: python scripts/profile_model.py ffonly_tiny [--batch 16] [--mode infer|train] [--threads 1]
       [--steps 3] [--top 20] [--json FILE] [--paths --reps 6 [--only onednn_linear|Linear]]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import contextlib

import torch
from torch.profiler import ProfilerActivity, profile

import mixerlab
from mixerlab.bench.speed import Case, Runner
from mixerlab.layers.fast_paths import SWITCHES, switches_of


def profile_ops(run: Runner, steps: int) -> tuple[list[dict], float]:
    """Operator records sorted by self time, and the total self time per step in ms."""
    dev = run.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    run.timed(1)  # warm-up (caches, allocator)
    with profile(activities=acts) as prof:
        run.timed(steps)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    recs = [dict(name=e.key, calls=e.count // steps, self_ms=getattr(e, key) / 1e3 / steps,
                 share=getattr(e, key) / total) for e in events]
    return recs, total / 1e3 / steps


def compare_paths(run: Runner, reps: int, only: str | None = None) -> tuple[float, float]:
    """Median seconds per step on the fast paths and on the reference paths (interleaved);
    ``only``: just that switch (e.g. ``onednn_linear``) or just the own switches of the modules
    of that class name (e.g. ``Linear``, ``GPSA``)."""
    model = run.model
    if only is None or only in SWITCHES:
        kinds = None if only is None else (only,)
        targets = [(model, kinds)]
        found = [m for m in model.modules() if kinds is None and switches_of(m) or only in switches_of(m)]
    else:
        found = [m for m in model.modules() if type(m).__name__ == only and switches_of(m)]
        targets = [(m, switches_of(m)) for m in found]
    if not found:
        what = f"no {only} module" if only else "no module"
        raise ValueError(f"the model has {what} with a fast path (switches: {sorted(SWITCHES)})")
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps + 1):
        for fast in (True, False):
            with contextlib.ExitStack() as stack:
                for m, kinds in targets:
                    stack.enter_context(mixerlab.fast_paths(m, fast, kinds=kinds))
                t = run.timed(1)
            if rep:  # the first round is the warm-up
                times[fast].append(t)
    return statistics.median(times[True]), statistics.median(times[False])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--mode", choices=("infer", "train"), default="train")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--paths", action="store_true", help="time fast vs reference paths instead")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--only", default=None, metavar="SWITCH|CLASS",
                    help="with --paths: set only this switch (fused_attn, token_major, onednn_linear, fused_star_relu) "
                         "or only the modules of this class (e.g. Linear, GPSA)")
    args = ap.parse_args(argv)
    if min(args.batch, args.steps, args.reps) < 1:
        ap.error("--batch, --steps and --reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = mixerlab.create_model(args.model, **({"img_size": args.img_size} if args.img_size else {}))
    except (KeyError, ValueError) as e:
        print(f"profile_model: {e}", file=sys.stderr)
        return 2
    run = Runner(model, Case(mode=args.mode, batch_size=args.batch, device=dev), model.in_chans,
                 model.img_size, model.num_classes)
    where = (f"{args.model} {args.mode} batch {args.batch} on {dev} ({torch.get_num_threads()} threads, "
             f"torch {torch.__version__})")
    if args.paths:
        try:
            fast, ref = compare_paths(run, args.reps, args.only)
        except ValueError as e:
            print(f"profile_model: {args.model}: {e}", file=sys.stderr)
            return 2
        print(f"{where}: fast path {fast * 1e3:.1f} ms, reference path {ref * 1e3:.1f} ms, "
              f"speed-up {ref / fast:.2f}x")
        return 0
    recs, total_ms = profile_ops(run, args.steps)
    print(f"{where}: {total_ms:.1f} ms self time per step")
    print(f"{'operator':<44} {'calls':>6} {'ms/step':>9} {'share':>7}")
    for r in recs[:args.top]:
        print(f"{r['name'][:44]:<44} {r['calls']:>6} {r['self_ms']:>9.2f} {100 * r['share']:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, mode=args.mode, batch=args.batch, device=dev,
                           threads=torch.get_num_threads(), torch=torch.__version__, ops=recs), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
