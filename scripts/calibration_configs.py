"""Record in a seed-calibration table made before its entries named their configuration which
configuration each entry measured (``mixerlab.compare.calibration.record_configs``): an entry gets
the fingerprint of the configuration the preset trains now only where every seed's run folder in
the measuring run's ``results.json`` carries today's config hash. Entries whose configuration has
changed since are listed and left without one, and ``mixerlab compare`` then refuses them.

    python scripts/calibration_configs.py mixerlab/compare/calibration_quick.json \\
        docs/results/compare-quick-5seeds/results.json --preset quick

Exit status 0 when no entry differs, 1 when some do, 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="record the configuration each calibration entry measured")
    ap.add_argument("table", help="the calibration table (JSON) to update in place")
    ap.add_argument("results", help="results.json of the compare run that measured it")
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args(argv)
    from mixerlab.compare.calibration import record_configs
    from mixerlab.compare.presets import get_preset
    try:
        r = record_configs(args.table, args.results, get_preset(args.preset))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"calibration_configs: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"recorded: {len(r['recorded'])} ({', '.join(r['recorded']) or 'none'})")
    print(f"differ from today's configuration (left without): {', '.join(r['differ']) or 'none'}")
    return 1 if r["differ"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
