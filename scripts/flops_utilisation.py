"""Achieved FLOP/s of benchmarked models as a fraction of the device's measured dense matmul rate.

1. Measures the dense matmul rate of this device: the median over ``--reps`` of an n x n x n
   matmul (2 n^3 FLOPs) in ``--dtype`` (bfloat16 on a GPU for the bf16 table, float32 on a CPU).
   On the CPU both GEMM kernels are timed, ``torch.mm`` and oneDNN's (the kernel of
   ``mixerlab.layers.Linear``'s fast path), and the faster one is the reference rate.
2. Reads rows written by ``mixerlab bench --out FILE.json`` and, for each mixerlab row, computes
   the achieved rate: inference = GFLOPs per image x images/s; training step = 3 x that (the
   backward costs about twice the forward, the usual convention).
3. Prints both and their ratio.

Usage: python scripts/flops_utilisation.py BENCH.json [--dtype bfloat16] [--n 8192] [--reps 10]
Example (GPU): mixerlab bench deit_small --device cuda --dtype bfloat16 --batch-size 256 --mode train
               --out b.json && python scripts/flops_utilisation.py b.json --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, reps: int, kernel: str = "mm") -> float:
    """Median FLOP/s of an n x n @ n x n matmul (``kernel``: ``mm``, or ``onednn`` on the CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if kernel == "onednn":
        from mixerlab.layers.linear import linear
        bt = b.t().contiguous()

        def mm(a, b):
            return linear(a, bt)
    else:
        def mm(a, b):
            return a @ b
    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench_json")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="matmul dtype (default: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--n", type=int, default=None, help="matrix size (default 8192 on CUDA, 2048 on CPU)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    try:
        rows = [r for r in json.load(open(args.bench_json))["rows"] if r.get("impl") == "mixerlab"]
    except (OSError, ValueError, KeyError) as e:
        print(f"flops_utilisation: cannot read {args.bench_json} as `mixerlab bench --out` JSON: {e}", file=sys.stderr)
        return 2
    if not rows or any("img_per_s" not in r for r in rows):
        print(f"flops_utilisation: {args.bench_json} holds no timed mixerlab rows", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if rows[0]["device"].startswith("cuda") else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("flops_utilisation: the rows were measured on CUDA but no CUDA device is available", file=sys.stderr)
        return 2
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    n = args.n or (8192 if dev.type == "cuda" else 2048)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kernels = ["mm"]
    if dev.type == "cpu" and dtype == "float32":
        from mixerlab.layers.linear import onednn_linear_available
        kernels += ["onednn"] if onednn_linear_available() else []
    rates = {k: matmul_rate(n, DTYPES[dtype], dev, args.reps, k) for k in kernels}
    peak = max(rates.values())
    shown = ", ".join(f"{k} {v / 1e12:.3f}" for k, v in rates.items())
    print(f"dense {dtype} matmul ({n}^3) on {name}: {shown} TFLOP/s; reference rate {peak / 1e12:.3f}")
    print("| model | mode | batch | dtype | img/s | achieved TFLOP/s | fraction of matmul rate |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        rate = r["gflops"] * 1e9 * r["img_per_s"] * (3 if r["mode"] == "train" else 1)
        print(f"| {r['model']} | {r['mode']} | {r['batch_size']} | {r.get('dtype', 'float32')} | "
              f"{r['img_per_s']:.1f} | {rate / 1e12:.4f} | {rate / peak:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
