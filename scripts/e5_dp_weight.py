"""E5 with a lighter diagonality-preserving loss: quick's E5 (``lavit_micro`` at the CPU scale,
half the pool x 2 epochs) with a fourth variant, lambda_DP = 0.1 on both DP terms, beside the
zoo default (1.0), no DP loss and the vanilla twin; two seeds, seed term from them.

Why: with lambda_DP = 1 the bounded DP term drives most less-attention maps to the uniform map
(both of its terms are 0 there; ``mixerlab/mixers/less_attention.py``, item 8), and E5 finds the
DP loss costing accuracy. LaViT (arXiv 2406.00427) gives no weight; sweeping {0.1, 1} is the
documented proposal.

    python scripts/e5_dp_weight.py OUT      # ~4.5 min on 2 CPU cores; OUT/report.md

Results of 2026-12-06 (2 idle cores): ``docs/results/e5-dp-weight/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a new compare folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    from mixerlab.compare.experiments.e5_less_attention import VARIANTS
    from mixerlab.compare.pipeline import run_compare
    from mixerlab.compare.presets import get_preset
    table = dict(VARIANTS)
    table["la_all_dp0.1"] = (None, {"aux_weights": {"dp_sym": 0.1, "dp_diag": 0.1}})
    # quick's calibration table has no row for the new variant: the seed term comes from --seeds
    p = dataclasses.replace(get_preset("quick"), name="quick-e5-dp-weight", experiments=("E5",), calibration=None,
                            knobs={"E5": {"variants": ("vanilla", "la_all", "la_all_no_dp", "la_all_dp0.1"),
                                          "table": table}})
    try:
        run_compare(p, out=args.out, seeds=args.seeds, jobs=args.jobs)
    except ValueError as e:
        print(f"e5_dp_weight: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
