"""``mixerlab bench MODEL [MODEL ...]``: params, MACs/FLOPs, throughput and peak memory."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "bench", help="params, MACs/FLOPs per mixer, throughput and peak memory (optionally vs timm)",
        description="Benchmark zoo models: analytic MACs/FLOPs (per token mixer), inference and "
                    "training-step throughput (median of interleaved repetitions) and peak memory. "
                    "CPU peak memory is the sampled RSS increase during one step; CUDA's is "
                    "max_memory_allocated over one step.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="zoo names (see `mixerlab list`), run folders, checkpoints or weight files")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1], help="one or more batch sizes")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: each model's own)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (auto: cuda when available, else cpu)")
    p.add_argument("--mode", nargs="+", default=["infer"], choices=["infer", "train"],
                   help="inference and/or training steps")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per model and case")
    p.add_argument("--min-time", type=float, default=0.2, help="minimum seconds per repetition")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    from ..bench.speed import AUTOCAST
    p.add_argument("--dtype", default="float32", choices=sorted(AUTOCAST),
                   help="autocast dtype of the forward (fp32 weights/optimizer, as in mixed-precision training)")
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and weights")
    p.add_argument("--vs-timm", action="store_true",
                   help="time timm's implementation of the same architecture side by side (deit, convit, poolformer)")
    p.add_argument("--flops-only", action="store_true", help="params and MACs/FLOPs only, no timing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write rows to FILE.csv or FILE.json")
    return p


FIELDS = ["model", "impl", "timm_model", "mode", "batch_size", "img_size", "device", "dtype", "channels_last",
          "compile", "params_m", "gmacs", "gflops", "mixer_gmacs", "mixer_share", "ms_per_step", "img_per_s",
          "peak_mem_mb", "mem_kind", "ratio_throughput", "ratio_mem", "timm_img_per_s", "timm_peak_mem_mb",
          "timm_weights", "reps", "iters", "warmup", "ms_all", "by_mixer"]


def _fmt(v, nd=2):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_table(rows: list[dict], env: dict) -> None:
    cols = [("model", "model", 0), ("impl", "impl", 0), ("mode", "mode", 0), ("batch_size", "batch", 0),
            ("img_size", "input", 0), ("params_m", "params (M)", 2), ("gmacs", "GMACs", 3),
            ("mixer_share", "mixer MAC share", 2), ("img_per_s", "img/s", 1), ("ms_per_step", "ms/step", 1),
            ("peak_mem_mb", "peak mem (MB)", 1), ("ratio_throughput", "speed ratio ml/timm", 2),
            ("ratio_mem", "mem ratio ml/timm", 2)]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    title = (f"mixerlab bench: torch {env['torch']}, timm {env['timm']}, {env['cpu']}, "
             f"{env['torch_threads']} threads")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        t = Table(title=title)
        for _, h, _ in cols:
            t.add_column(h, overflow="fold")
        for r in rows:
            t.add_row(*(_fmt(r.get(k), nd) for k, _, nd in cols))
        Console().print(t)
        return
    print(title)
    cells = [[_fmt(r.get(k), nd) for k, _, nd in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths)).rstrip())
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


def check_out(path: str) -> Path:
    """``--out``'s file name, checked before any benchmark runs."""
    out = Path(path)
    if out.suffix not in (".csv", ".json"):
        raise ValueError(f"--out {path}: expected a .csv or .json file name")
    if out.is_dir():
        raise ValueError(f"--out {path} is a folder; give a .csv or .json file name")
    return out


def write_rows(rows: list[dict], env: dict, path: str) -> Path:
    out = check_out(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(dict(environment=env, rows=rows), indent=1))
        return out
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS + [k for k in env], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()}, **env})
    return out


def run(args) -> int:
    import torch

    from ..bench.runner import bench_rows, environment
    from ..engine.factory import identify

    if any(b < 1 for b in args.batch_size) or args.reps < 1 or args.warmup < 0:
        raise ValueError("--batch-size and --reps must be >= 1, --warmup >= 0")
    if args.out:
        check_out(args.out)  # a wrong extension is refused before minutes of timing, not after
    for name in args.models:
        identify(name)  # a typo (close matches) or a missing file: one line, before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..engine.distributed import resolve_device
    device = str(resolve_device(args.device))
    rows = bench_rows(args.models, batch_sizes=args.batch_size, modes=args.mode, img_size=args.img_size,
                      device=device, channels_last=args.channels_last, compile=args.compile,
                      dtype=args.dtype, vs_timm=args.vs_timm, reps=args.reps, warmup=args.warmup, min_time=args.min_time,
                      speed=not args.flops_only, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    env = environment()
    env["command"] = "mixerlab bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""
    print_table(rows, env)
    weights = {r.get("timm_weights") for r in rows if r.get("timm_weights")}
    for w in weights:
        print(f"timm weights: {w}")
    if args.out:
        print(f"wrote {write_rows(rows, env, args.out)}")
    return 0
