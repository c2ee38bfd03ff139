"""LaViT: the factored less-attention path vs the N x N path vs vanilla attention everywhere.

For lavit_small (or another LaViT model) it measures, per stage and in total:
* MACs, counted by ``FlopCounterMode``: for the N x N path on the explicit attention paths; for the
  factored path with ``F.scaled_dot_product_attention`` replaced by its math form (q k^T, softmax,
  A v) during counting, so the fused calls are counted exactly instead of as 0 on the CPU;
* forward time per stage (median of ``--reps`` timed forwards after warm-up, eval mode, no grad,
  block forward hooks; CPU timings are wall-clock, CUDA synchronised).

Usage: python scripts/bench_lavit.py [--model lavit_small] [--batch 8] [--reps 5] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mixerlab
from mixerlab.zoo.lavit import lavit


def math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    s = q.shape[-1] ** -0.5 if scale is None else scale
    a = (q * s) @ k.transpose(-2, -1)
    if attn_mask is not None:
        a = a + attn_mask
    return a.softmax(-1) @ v


@contextlib.contextmanager
def counted_sdpa():
    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = math_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def stage_of(name: str) -> str:
    return name.split(".")[1] if name.startswith("stages.") else "stem/head"


def per_stage_macs(model, x, *, explicit: bool) -> dict:
    """MACs per stage of one image, from the counter's per-module breakdown."""
    ctx = mixerlab.explicit_attention(model) if explicit else counted_sdpa()
    with ctx, FlopCounterMode(display=False, depth=None) as c, torch.no_grad():
        model(x[:1])
    out = defaultdict(int)
    for mod, flops in c.get_flop_counts().items():
        parts = mod.split(".")  # 'HierarchicalModel.stages.i.blocks.j' / '...stages.i.downsample'
        if len(parts) >= 4 and parts[1] == "stages" and (
                (parts[3] == "blocks" and len(parts) == 5) or (parts[3] == "downsample" and len(parts) == 4)):
            out[f"stage{int(parts[2]) + 1}"] += sum(flops.values()) // 2
    out["total"] = c.get_total_flops() // 2
    return dict(out)


def per_stage_time(model, x, *, explicit: bool, reps: int, warmup: int = 2) -> dict:
    acc = defaultdict(list)
    starts = {}

    def pre(name):
        return lambda m, a: starts.__setitem__(name, time.perf_counter())

    def post(name):
        return lambda m, a, o: acc[name].append(time.perf_counter() - starts[name])

    hooks = []
    for i, st in enumerate(model.stages):
        for blk in st.blocks:
            hooks.append(blk.register_forward_pre_hook(pre(f"stage{i + 1}")))
            hooks.append(blk.register_forward_hook(post(f"stage{i + 1}")))
    ctx = mixerlab.explicit_attention(model) if explicit else contextlib.nullcontext()
    totals = []
    with ctx, torch.no_grad():
        for r in range(warmup + reps):
            if r == warmup:
                acc.clear()
            t = time.perf_counter()
            model(x)
            if r >= warmup:
                totals.append(time.perf_counter() - t)
    for h in hooks:
        h.remove()
    n_blocks = {f"stage{i + 1}": len(st.blocks) for i, st in enumerate(model.stages)}
    out = {k: statistics.median([sum(v[j:j + n_blocks[k]]) for j in range(0, len(v), n_blocks[k])])
           for k, v in acc.items()}
    out["total"] = statistics.median(totals)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lavit_small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = mixerlab.create_model(a.model).eval()
    cfg = mixerlab.get_model_info(a.model).config
    depths = tuple(len(st.mixers) for st in cfg.stages)
    n_va_all = tuple(None if st.mixers[0][0] == "attention" else len(st.mixers) for st in cfg.stages)
    vanilla = mixerlab.build_model(lavit(depths, n_va=n_va_all, sr_ratios=(8, 4, 1, 1)) if a.model != "lavit_tiny"
                                   else lavit(depths, n_va=n_va_all, sr_ratios=(4, 2, 1, 1))).eval()
    x = torch.randn(a.batch, 3, *model.img_size)
    rows = {
        "factored (default)": (model, False),
        "N x N (explicit)": (model, True),
        "vanilla attention everywhere": (vanilla, False),
    }
    result = {"model": a.model, "batch": a.batch, "device": "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": {}}
    for label, (m, explicit) in rows.items():
        result["rows"][label] = dict(macs=per_stage_macs(m, x, explicit=explicit),
                                     seconds=per_stage_time(m, x, explicit=explicit, reps=a.reps))
    stages = [f"stage{i + 1}" for i in range(len(depths))] + ["total"]
    print(f"{a.model}, batch {a.batch}, CPU threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| path | " + " | ".join(f"{s} GMACs" for s in stages) + " | " + " | ".join(f"{s} ms" for s in stages) + " |")
    print("|" + "---|" * (2 * len(stages) + 1))
    for label, r in result["rows"].items():
        print(f"| {label} | " + " | ".join(f"{r['macs'].get(s, 0) / 1e9:.3f}" for s in stages) + " | "
              + " | ".join(f"{r['seconds'].get(s, 0) * 1e3:.1f}" for s in stages) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
