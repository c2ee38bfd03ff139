"""Print the timm <-> mixerlab parity table for every covered pair (issue 3).

    .venv/bin/python scripts/check_timm_parity.py [--batch 1] [--only deit_tiny_patch16_224 ...]

For each pair: a timm model with random weights (``pretrained=False``, every parameter
re-randomised by ``mixerlab.bench.parity.randomize_parameters``) is converted to mixerlab and
both are run in eval mode, fp32, on the same random 224x224 input. Columns: max |logit
difference| and max |forward_features difference| (timm -> mixerlab), max |logit difference|
after exporting re-randomised mixerlab weights into timm (mixerlab -> timm), and whether
mixerlab -> timm -> mixerlab reproduces every tensor bit for bit. Exit status 1 if a pair
exceeds the tolerance (1e-4) or the round trip is not exact.
"""
from __future__ import annotations

import argparse
import sys

import torch

from mixerlab import get_model_info
from mixerlab.convert import TIMM_PAIRS
from mixerlab.bench.parity import check_pair
from mixerlab.convert.timm import TIMM_OPTIONS, timm_family_of_config

TOL = 1e-4


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="timm model names to check")
    ap.add_argument("--img-size", type=int, default=224, help="input side (fixed-size models: 224)")
    ap.add_argument("--fp64", action="store_true", help="run both models in float64")
    args = ap.parse_args(argv)
    names = args.only or list(TIMM_PAIRS)
    unknown = [n for n in names if n not in TIMM_PAIRS]
    if unknown:
        ap.error(f"not covered: {unknown}; covered: {list(TIMM_PAIRS)}")
    import timm
    print(f"timm {timm.__version__}, torch {torch.__version__}, {'fp64' if args.fp64 else 'fp32'} "
          f"CPU, eval mode, batch {args.batch}, {args.img_size}x{args.img_size}, tolerance {TOL:g}\n")
    print("| timm model | mixerlab model | options | logits max abs diff | features max abs diff "
          "| export: logits max abs diff | round trip bit-exact | s |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name in names:
        r = check_pair(name, batch=args.batch, seed=args.seed, img_size=args.img_size,
                       dtype=torch.float64 if args.fp64 else torch.float32)
        mname = TIMM_PAIRS[name]
        fam = timm_family_of_config(get_model_info(mname).config, mname)
        opts = ", ".join(f"{k}={v}" for k, v in TIMM_OPTIONS[fam].items()) or "-"
        good = max(r["logits"], r["features"], r["export_logits"]) <= TOL and r["roundtrip_exact"]
        ok &= good
        print(f"| {name} | {r['mixerlab_name']} | {opts} | {r['logits']:.2e} | {r['features']:.2e} "
              f"| {r['export_logits']:.2e} | {'yes' if r['roundtrip_exact'] else 'NO'} "
              f"| {r['seconds']:.1f} |" + ("" if good else "  <-- FAIL"), flush=True)
    print("\nall pairs within tolerance" if ok else "\nSOME PAIRS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
