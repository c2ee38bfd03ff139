"""Produce a preset's committed learning-rate table: the LR sweep of ``mixerlab compare`` on the
validation split (never the test split), copied to ``mixerlab/compare/lr_table_<preset>.json``.

    PYTHONPATH=. python scripts/sweep_lr.py --preset quick [--jobs 2] [--out runs/sweep-quick]

Equivalent to ``mixerlab compare --preset quick --sweep-only --out DIR`` followed by the copy. The
preset's ``sweep_lrs``, ``sweep_fraction`` and ``sweep_epochs`` say what is tried; the table keeps
every LR's final validation top-1 next to the one chosen (the best).
"""
from __future__ import annotations

import argparse
import json
import platform
import os
import sys
import time
from pathlib import Path

from mixerlab.compare import PACKAGE_DIR, run_compare


def main(argv=None) -> int:
    from mixerlab.compare.presets import PRESETS
    from mixerlab.engine.checkpoint import atomic_write_text
    sweepable = sorted(n for n, p in PRESETS.items() if p.sweep_lrs)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", choices=sweepable,
                    help="a preset that defines an LR sweep (sweep_lrs)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or f"runs/sweep-{args.preset}")
    t0 = time.time()
    try:
        res = run_compare(args.preset, out=out, jobs=args.jobs, sweep_only=True, log=lambda s: print(s, flush=True))
    except (ValueError, OSError) as e:  # bad input: one line, exit 2, as the CLI does
        print(f"sweep_lr.py: {e}", file=sys.stderr)
        return 2
    rec = json.loads(Path(res["sweep"]).read_text())
    rec["command"] = f"PYTHONPATH=. python scripts/sweep_lr.py --preset {args.preset} --jobs {args.jobs}"
    rec["wall_s"] = round(time.time() - t0, 1)
    rec["machine"] = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other jobs"
    dest = PACKAGE_DIR / f"lr_table_{args.preset}.json"
    atomic_write_text(dest, json.dumps(rec, indent=1) + "\n")
    print(f"wrote {dest}")
    for m, r in rec["models"].items():
        print(f"  {m}: lr {r['lr']:g}  (val top-1: " + ", ".join(f"{k}: {v if v is None else round(v, 2)}" for k, v in r["val_top1"].items()) + ")")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
