"""Training times of two ``mixerlab compare`` results.json files side by side: for the run
folders both hold (the same config hash: the same run), the ratio of their ``train_wall_s``
(new / old: the machine's run-to-run spread of timings) and whether their test top-1 is equal;
and the training time summed over each experiment's distinct runs of the new file.

    git show 5b2110a:docs/results/compare-standard/results.json > /tmp/old.json
    python scripts/compare_run_times.py /tmp/old.json docs/results/compare-standard/results.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _runs(path) -> dict:
    """Distinct classification runs of a results.json by run folder name."""
    runs = json.loads(Path(path).read_text())["runs"]
    return {Path(r["run_dir"]).name: r for r in runs if r.get("train_wall_s") and r["experiment"] != "E6"}


def main(old: str, new: str) -> None:
    a, b = _runs(old), _runs(new)
    shared = sorted(set(a) & set(b))
    if shared:
        ratios = [b[k]["train_wall_s"] / a[k]["train_wall_s"] for k in shared]
        same = sum(a[k]["top1"] == b[k]["top1"] for k in shared)
        print(f"{len(shared)} runs in both: train time new/old {min(ratios):.2f}-{max(ratios):.2f} "
              f"(median {statistics.median(ratios):.2f}); test top-1 equal in {same}")
    by_exp: dict[str, list] = {}
    for r in json.loads(Path(new).read_text())["runs"]:
        if r.get("train_wall_s") and r["experiment"] != "E6":
            by_exp.setdefault(r["experiment"], {})[Path(r["run_dir"]).name] = r["train_wall_s"]
    for exp, t in by_exp.items():
        print(f"{exp}: {len(t)} distinct runs, {sum(t.values()):.0f} s of training summed ({sum(t.values()) / 60:.1f} min)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    main(sys.argv[1], sys.argv[2])
