"""Profile one zoo model with ``torch.profiler``: which operators take the time.

Prints the operators sorted by self CPU time (or CUDA time on a GPU) for an inference forward or a
training step (forward + backward + AdamW step), so a hot spot of a mixer, a norm or a layout copy
shows up by name. With ``--json`` the table is also written as records (name, calls, self time
in ms, share of the total) to compare before and after a change.

Usage: python scripts/profile_model.py ffonly_tiny [--batch 16] [--mode infer|train] [--threads 1]
       [--steps 3] [--top 20] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import mixerlab


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
    args = ap.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        ap.error("--batch and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = mixerlab.create_model(args.model, **({"img_size": args.img_size} if args.img_size else {}))
    except (KeyError, ValueError) as e:
        print(f"profile_model: {e}", file=sys.stderr)
        return 2
    model.to(dev)
    x = torch.randn(args.batch, model.in_chans, *model.img_size, device=dev)
    y = torch.randint(0, model.num_classes, (args.batch,), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if args.mode == "infer":
            with torch.inference_mode():
                model.eval()(x)
            return
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (caches, allocator)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    recs = [dict(name=e.key, calls=e.count, self_ms=getattr(e, key) / 1e3 / args.steps,
                 share=getattr(e, key) / total) for e in events]
    print(f"{args.model} {args.mode} batch {args.batch} on {dev} ({torch.get_num_threads()} threads), "
          f"{total / 1e3 / args.steps:.1f} ms self time per step")
    print(f"{'operator':<44} {'calls':>6} {'ms/step':>9} {'share':>7}")
    for r in recs[:args.top]:
        print(f"{r['name'][:44]:<44} {r['calls'] // args.steps:>6} {r['self_ms']:>9.2f} {100 * r['share']:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, mode=args.mode, batch=args.batch, device=str(dev),
                           threads=torch.get_num_threads(), torch=torch.__version__, ops=recs), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
