"""Committed seed calibrations for ``mixerlab compare``, and the strip plot of per-seed values.

A preset that trains one or two seeds cannot measure how much its models move between training
seeds; :func:`mixerlab.compare.stats.paired_with_seeds` then takes the seed term from a
:class:`~mixerlab.compare.stats.Calibration` measured elsewhere with >= 5 seeds (module docstring
of ``stats``). This module keeps such measurements as a JSON table:

* :func:`table_from_results`: from the ``results.json`` of a compare run with >= 5 seeds, the
  pure seed SD (points, net of image noise) of every configuration's accuracy, keyed by
  :func:`config_key` (``"E2/convit@0.05"``);
* :func:`save_table` / :func:`load_table`: the JSON file (commit it beside the preset that uses it);
* :func:`for_statistic`: the calibration of A - B or (A - B) - (C - D) from the configurations'
  ones, assuming the seed effects of different configurations independent (variances add;
  degrees of freedom by Welch-Satterthwaite). Where the same seeds were run for all of them,
  measuring the statistic itself (:func:`mixerlab.compare.stats.calibrate`) is better: it keeps
  any correlation that pairing by seed induces.

The numbers must come from a measured run: ``calibration_quick.json`` (beside this module) is
the ``quick`` preset's, written by ``mixerlab compare --preset quick --seeds 0 1 2 3 4
--save-calibration mixerlab/compare/calibration_quick.json`` (2 CPU cores, 2026-12-05; the run's
report is ``docs/results/compare-quick-5seeds/``); ``quick`` reads it by default
(``Preset.calibration``). A table records the preset fields it was measured at (``"_scale"``,
:data:`SCALE_FIELDS`: data, pool fraction, epochs, batch, warm-up, recipe, LR table) and
:func:`check_table` refuses it for a preset at another scale: a seed SD holds at its own scale.

:func:`strip_plot` draws each statistic's per-seed values with its interval and threshold
(matplotlib, Agg); numbers are computed in ``stats``, never here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .stats import Calibration, calibrate


def config_key(experiment: str, label: str, x=None) -> str:
    """The table key of one configuration: ``"E2/convit@0.05"`` (``"E1/deit"`` without x)."""
    return f"{experiment}/{label}" + ("" if x is None else f"@{float(x):g}")


def table_from_results(path, min_seeds: int = 5) -> dict[str, Calibration]:
    """Pure seed SD of each configuration's test accuracy from a compare run's ``results.json``
    (runs with status done/cached and per-image ``correct`` bits); configurations with fewer than
    ``min_seeds`` seeds are left out."""
    data = json.loads(Path(path).read_text())
    groups: dict[str, dict] = {}
    for r in data.get("runs", []):
        if r.get("status") not in ("done", "cached") or not r.get("correct"):
            continue
        bits = np.frombuffer(r["correct"].encode(), dtype=np.uint8) - ord("0")
        groups.setdefault(config_key(r["experiment"], r["label"], r.get("x")), {})[r["seed"]] = bits
    out = {}
    for key, runs in groups.items():
        if len(runs) >= min_seeds:
            out[key] = calibrate(runs, min_seeds=min_seeds, what=f"{key}: {len(runs)} seeds, {Path(path).name}")
    return out


# The preset fields a calibration depends on: a seed SD measured at one scale (data, pool fraction,
# epochs, batch, warm-up, recipe, LR table) says little about another, so a table records them
# and :func:`check_table` refuses a preset that differs.
SCALE_FIELDS = ("data", "train_fraction", "val_images", "epochs", "batch_size", "warmup_epochs", "recipe",
                "lr_table")
SCALE_KEY = "_scale"


def scale_of(preset, data: str | None = None) -> dict:
    """The fields of ``preset`` (a ``Preset``) a calibration table is tied to (``SCALE_FIELDS``),
    as JSON stores them (tuples as lists); ``data``: the dataset the run uses, where it overrides
    the preset's."""
    out = {f: getattr(preset, f) for f in SCALE_FIELDS}
    if data is not None:
        out["data"] = data
    return {f: list(v) if isinstance(v, tuple) else v for f, v in out.items()}


def save_table(table: dict[str, Calibration], path, scale: dict | None = None) -> None:
    """Write the table as JSON: ``{key: {"sd": points, "seeds": n, "what": text}}``, plus
    ``"_scale"``: the preset fields it was measured at (:func:`scale_of`), when given."""
    from ..engine.checkpoint import atomic_write_text
    raw = {k: dict(sd=c.sd, seeds=c.seeds, what=c.what) for k, c in table.items()}
    if scale is not None:
        raw[SCALE_KEY] = dict(scale)
    atomic_write_text(path, json.dumps(raw, indent=1, sort_keys=True) + "\n")


def _raw(path) -> dict:
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a calibration table is a JSON object of key -> {{sd, seeds, what}}")
    return raw


def _entries(raw: dict) -> dict[str, Calibration]:
    return {k: Calibration(float(v["sd"]), v.get("seeds"), v.get("what", "")) for k, v in raw.items() if k != SCALE_KEY}


def load_table(path) -> dict[str, Calibration]:
    """Read a table written by :func:`save_table` (values are validated by ``Calibration``; the
    ``"_scale"`` record is checked by :func:`check_table`)."""
    return _entries(_raw(path))


def resolve_table(name) -> Path:
    """The path of a calibration table: a file name in ``mixerlab/compare/`` (committed beside the
    presets) or a path; a ``ValueError`` when it does not exist."""
    p = Path(name)
    here = Path(__file__).resolve().parent / p
    if not p.is_absolute() and here.is_file():
        return here
    if p.is_file():
        return p
    raise ValueError(f"calibration table {name} not found (a file name in mixerlab/compare/ or a path)")


def check_table(path, specs, preset_name: str, scale: dict | None = None) -> dict[str, Calibration]:
    """Load the table at ``path`` and check that it holds every configuration of ``specs`` (the
    runs a preset plans, ``RunSpec``) and, given the preset's ``scale`` (:func:`scale_of`), that
    the table was measured at it (a table without a scale record is taken as it is); a
    ``ValueError`` names the missing configurations, the fields that differ, or a table that
    cannot be read, before anything is written."""
    try:
        raw = _raw(path)
        table, measured = _entries(raw), raw.get(SCALE_KEY)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"calibration table {path} cannot be read: {type(e).__name__}: {e}") from None
    if scale is not None and isinstance(measured, dict):
        differ = [f"{f}={scale[f]!r} (table: {measured[f]!r})" for f in SCALE_FIELDS
                  if f in measured and f in scale and measured[f] != scale[f]]
        if differ:
            raise ValueError(f"calibration table {path} was measured at another scale than preset "
                             f"{preset_name!r}: {', '.join(differ)}; a seed SD holds at its own scale "
                             f"(make one with --seeds 0 1 2 3 4 --save-calibration FILE, or pass no table)")
    keys = list(dict.fromkeys(config_key(s.exp, s.label, s.x) for s in specs))
    missing = [k for k in keys if k not in table]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise ValueError(f"calibration table {path} lacks {len(missing)} configuration(s) preset "
                         f"{preset_name!r} runs: {', '.join(missing[:6])}{more}")
    return table


def for_statistic(cals: list[Calibration]) -> Calibration:
    """Calibration of a difference (two configurations) or a difference of differences (four)
    from the configurations' own: SD = sqrt(sum of SD^2) (independent seed effects; the signs do
    not matter), degrees of freedom by Welch-Satterthwaite, rounded down."""
    if len(cals) not in (1, 2, 4):
        raise ValueError(f"for_statistic takes 1, 2 or 4 calibrations, got {len(cals)}")
    var = sum(c.sd ** 2 for c in cals)
    finite = all(c.seeds is not None for c in cals)
    if not finite or var == 0:
        seeds = None if not finite else min(c.seeds for c in cals)
    else:
        df = var ** 2 / sum(c.sd ** 4 / c.df for c in cals if c.sd > 0)
        seeds = max(2, int(math.floor(df + 1e-9)) + 1)
    return Calibration(math.sqrt(var), seeds, " + ".join(c.what for c in cals if c.what))


def strip_plot(records: list[dict], path, title: str = "per-seed values", xlabel: str = "points"):
    """One row per statistic: its per-seed values (dots), the estimate with its interval (bar)
    and the criterion's threshold (tick), from records of ``stats.paired_with_seeds`` /
    ``stats.judge`` (``per_seed``, ``diff``, ``lo``, ``hi``; ``stat`` and ``threshold`` if
    judged). Returns ``path``, or None when no record has values."""
    recs = [r for r in records if r.get("per_seed")]
    if not recs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(recs) + 1.4))
    for row, r in enumerate(recs):
        y = len(recs) - 1 - row
        vals = np.asarray(r["per_seed"], dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.plot(vals, y + jitter, "o", ms=4, alpha=0.8, color="tab:blue",
                label="one seed" if row == 0 else None)
        ax.plot([r["lo"], r["hi"]], [y + 0.3, y + 0.3], "-", lw=2, color="black",
                label=f"{100 * r.get('level', 0.95):g} % interval" if row == 0 else None)
        ax.plot([r["diff"]], [y + 0.3], "s", ms=5, color="black")
        if r.get("threshold") is not None:
            ax.plot([r["threshold"]] * 2, [y - 0.35, y + 0.45], "--", color="tab:red",
                    label="threshold" if row == 0 else None)
    ax.set_yticks(range(len(recs)))
    ax.set_yticklabels([f"{r.get('stat', '?')} ({r.get('seed_source', '?')})" for r in reversed(recs)], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
