"""Time ``mixerlab.layers.Linear``'s oneDNN CPU path against ``F.linear`` at a model's linear shapes.

For each (in -> out) shape: the forward (bias inside the GEMM vs ``addmm``'s broadcast-then-GEMM),
the exact-GELU forward of an MLP's first layer (fused into the GEMM vs ``F.gelu(F.linear(...))``),
and the forward + backward of the layer (input gradient by oneDNN vs ``mm``). Both paths run
alternately, ``--reps`` times each after a warm-up; medians in ms. Default shapes: DeiT-Ti's
(width 192, MLP 768, 197 tokens) at batch 64.

Usage: python scripts/bench_linear.py [--tokens 12608] [--dim 192] [--threads 2] [--reps 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mixerlab.layers import Linear, fast_paths
from mixerlab.layers.linear import linear, onednn_linear_available


def timed(fn, reps: int) -> dict[bool, float]:
    """{fast: median ms} for fn(fast), the two paths alternating."""
    out: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps + 1):
        for fast in (True, False):
            t = time.perf_counter()
            fn(fast)
            if rep:  # the first round is the warm-up
                out[fast].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64 * 197, help="rows of the input (batch x tokens)")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    if min(args.tokens, args.dim, args.mlp_ratio, args.reps) < 1:
        ap.error("--tokens, --dim, --mlp-ratio and --reps must be >= 1")
    if not onednn_linear_available():
        print("bench_linear: this PyTorch build has no oneDNN linear kernel", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    d, h = args.dim, args.dim * args.mlp_ratio
    shapes = [("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, h), ("fc2", h, d)]
    print(f"bench_linear: {args.tokens} rows, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"medians of {args.reps} (ms); fast = oneDNN, ref = F.linear / mm")
    print(f"{'layer':6s} {'shape':>10s} {'fwd fast':>9s} {'fwd ref':>8s} {'ratio':>6s} "
          f"{'fwd+bwd fast':>13s} {'fwd+bwd ref':>12s} {'ratio':>6s}")
    torch.manual_seed(0)
    tot = {k: [0.0, 0.0] for k in ("fwd", "step")}
    for name, i, o in shapes:
        lin = Linear(i, o)
        x = torch.randn(args.tokens, i)
        xg = x.clone().requires_grad_(True)
        g = torch.randn(args.tokens, o)

        def fwd(fast):
            with torch.no_grad():
                linear(x, lin.weight, lin.bias, fast=fast)

        def step(fast):
            with fast_paths(lin, fast):
                lin(xg).backward(g)
            xg.grad = None
            lin.zero_grad(set_to_none=True)

        f, s = timed(fwd, args.reps), timed(step, args.reps)
        tot["fwd"][0] += f[True]; tot["fwd"][1] += f[False]
        tot["step"][0] += s[True]; tot["step"][1] += s[False]
        print(f"{name:6s} {f'{i}->{o}':>10s} {f[True]:9.2f} {f[False]:8.2f} {f[False] / f[True]:6.2f} "
              f"{s[True]:13.2f} {s[False]:12.2f} {s[False] / s[True]:6.2f}")
    fc1 = Linear(d, h)
    x = torch.randn(args.tokens, d)

    def gelu_fwd(fast):
        with torch.no_grad():
            linear(x, fc1.weight, fc1.bias, act="gelu", fast=fast)

    gf = timed(gelu_fwd, args.reps)
    print(f"{'fc1+gelu':8s} {f'{d}->{h}':>8s} {gf[True]:9.2f} {gf[False]:8.2f} {gf[False] / gf[True]:6.2f}   "
          "(inference: exact GELU inside the GEMM)")
    print(f"{'sum':6s} {'':>10s} {tot['fwd'][0]:9.2f} {tot['fwd'][1]:8.2f} {tot['fwd'][1] / tot['fwd'][0]:6.2f} "
          f"{tot['step'][0]:13.2f} {tot['step'][1]:12.2f} {tot['step'][1] / tot['step'][0]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
