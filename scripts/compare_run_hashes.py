"""Print the run hash of every configuration every compare preset builds (each experiment's runs,
each seed, with the preset's LR and with a fixed one), one line each: run it in two checkouts and
``diff`` the outputs to show that a refactor leaves compare's cached runs valid (equal hashes mean
``mixerlab compare`` reuses the runs it already trained). Also checks the committed reports: how
many of their run folders the current code would find again (the LRs as each report recorded).

Usage: python scripts/compare_run_hashes.py OUT.txt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mixerlab.compare.experiments.base import plan
from mixerlab.compare.presets import PRESETS, get_preset
from mixerlab.compare.runner import build_config, config_hash


def main(out: str) -> None:
    lines = []
    for name in sorted(PRESETS):
        p = get_preset(name)
        for spec in plan(p):
            for seed in p.seeds:
                for lrs in (None, {spec.model: 1e-3}):
                    cfg = build_config(spec, p, seed, "fashion-mnist", None, lrs)
                    lines.append(f"{name} {cfg.model}-{config_hash(cfg)}")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} configurations written to {out}")
    for name in ("quick", "standard"):
        path = Path(f"docs/results/compare-{name}/results.json")
        if not path.exists():
            continue
        runs = json.loads(path.read_text())["runs"]
        committed = {r["run_dir"].rsplit("/", 1)[-1] for r in runs if r.get("run_dir")}
        lrs = {r["model"]: r["lr"] for r in runs}
        p = get_preset(name)
        now = {f"{c.model}-{config_hash(c)}" for spec in plan(p) for seed in p.seeds
               for c in [build_config(spec, p, seed, "fashion-mnist", None, lrs)]}
        print(f"{name}: {len(committed & now)} of the committed report's {len(committed)} run folders rebuilt "
              f"with the same hash")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1])
