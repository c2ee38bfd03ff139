"""Markdown table from a ``mixerlab bench --out FILE.json`` file (for docs/benchmarks.md).

    python scripts/bench_table.py docs/benchmarks_cpu.json
"""
from __future__ import annotations

import json
import sys


def fmt(v, nd=2) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def main(path: str) -> int:
    data = json.loads(open(path).read())
    env, rows = data["environment"], data["rows"]
    print(f"Machine: {env['cpu']}, {env['cpu_cores']} cores, {env['torch_threads']} torch threads; "
          f"torch {env['torch']}, timm {env['timm']}, Python {env['python']}; "
          f"1-min load average at the end: {env.get('load_avg_1m', '?')}.")
    print(f"Command: `{env.get('command', '')}`\n")
    print("| model | timm model | mode | batch | params (M) | GMACs | mixerlab img/s | timm img/s | "
          "speed ratio | mixerlab peak MB | timm peak MB | memory ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["impl"] != "mixerlab":
            continue
        print(f"| {r['model']} | {r.get('timm_model', '-')} | {r['mode']} | {r['batch_size']} | "
              f"{fmt(r['params_m'])} | {fmt(r['gmacs'], 3)} | {fmt(r['img_per_s'], 1)} | "
              f"{fmt(r.get('timm_img_per_s'), 1)} | {fmt(r.get('ratio_throughput'))} | "
              f"{fmt(r['peak_mem_mb'], 1)} | {fmt(r.get('timm_peak_mem_mb'), 1)} | {fmt(r.get('ratio_mem'))} |")
    weights = sorted({f"{r['model']}: {r['timm_weights']}" for r in rows if r.get("timm_weights")})
    if weights:
        print("\ntimm weights: " + "; ".join(weights))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks_cpu.json"))
