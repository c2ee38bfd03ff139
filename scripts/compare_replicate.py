"""The replicate check of ``mixerlab compare`` from the command line: the same preset twice with
disjoint seeds, its criteria side by side, contradictions (agrees vs does not agree) counted.

    python scripts/compare_replicate.py OUT --preset quick --seeds-a 0 --seeds-b 1   # ~16 min, 2 cores

Writes ``OUT/seeds-<a>/`` and ``OUT/seeds-<b>/`` (two compare folders) and ``OUT/replicate.md``
(the table); exit status 0 with no contradiction, 1 with one or a void check (runs that failed),
2 on bad input. ``mixerlab.compare.replicate`` is the Python form.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the replicate check of mixerlab compare")
    ap.add_argument("out", help="a new folder for the two compare folders and replicate.md")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds-a", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds-b", type=int, nargs="+", default=[1])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    from pathlib import Path

    from mixerlab.compare import replicate
    from mixerlab.engine.checkpoint import atomic_write_text
    try:
        r = replicate(args.preset, args.seeds_a, args.seeds_b, out=args.out, jobs=args.jobs)
    except ValueError as e:
        print(f"compare_replicate: {e}", file=sys.stderr)
        return 2
    atomic_write_text(Path(args.out) / "replicate.md", r["table"] + "\n")
    print(r["table"])
    print(f"contradictions: {r['contradictions']}" + ("" if r["complete"] else " (void: runs failed)"))
    return 0 if r["contradictions"] == 0 and r["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
