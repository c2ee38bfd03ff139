"""Committed seed calibrations for ``mixerlab compare``, and the strip plot of per-seed values.

A preset that trains one or two seeds cannot measure how much its models move between training
seeds; :func:`mixerlab.compare.stats.paired_with_seeds` then takes the seed term from a
:class:`~mixerlab.compare.stats.Calibration` measured elsewhere with >= 5 seeds (module docstring
of ``stats``). This module keeps such measurements as a JSON table:

* :func:`table_from_results`: from the ``results.json`` of a compare run with >= 5 seeds, the
  pure seed SD (points, net of image noise) of every configuration's accuracy, keyed by
  :func:`config_key` (``"E2/convit@0.05"``);
* :func:`save_table` / :func:`load_table`: the JSON file (commit it beside the preset that uses it);
  each entry records the fingerprint of the configuration it measured (:func:`config_fingerprint`),
  and :func:`record_configs` adds it to a table made before, where the measuring run proves it;
* :func:`for_statistic`: the calibration of A - B or (A - B) - (C - D) from the configurations'
  ones, assuming the seed effects of different configurations independent (variances add;
  degrees of freedom by Welch-Satterthwaite). Where the same seeds were run for all of them,
  measuring the statistic itself (:func:`mixerlab.compare.stats.calibrate`) is better: it keeps
  any correlation that pairing by seed induces.

The numbers must come from a measured run: ``calibration_quick.json`` (beside this module) is
the ``quick`` preset's, written by ``mixerlab compare --preset quick --seeds 0 1 2 3 4
--save-calibration mixerlab/compare/calibration_quick.json`` (2 CPU cores, 2026-12-05; the run's
report is ``docs/results/compare-quick-5seeds/``), its E2 entries remade when E2 got its own budget
by the same command with ``--experiments E2`` (2026-12-06, 22.7 min; report
``docs/results/compare-quick-5seeds-e2/``); ``quick`` reads it by default
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


# TrainConfig fields that say where and how verbosely a run trains, or which seed it draws, not
# what it trains: left out of a configuration's fingerprint. So is the LR: it comes from the
# preset's LR table (or its sweep, known only after the runs), which ``"_scale"`` records.
_NOT_CONFIG = ("seed", "subset_seed", "data_dir", "num_workers", "num_threads", "progress", "log_every",
               "tensorboard", "eval_batch_size", "lr")


def config_fingerprint(cfg) -> str:
    """What a configuration trains, seed aside: a hash of its resolved ``TrainConfig`` without the
    fields of ``_NOT_CONFIG``. A table entry records it (``"config"``) so that :func:`check_table`
    refuses an entry whose configuration has changed since it was measured (e.g. an experiment's
    knob such as E2's ``epochs``), which its key alone (``"E2/deit@0.05"``) cannot tell."""
    import hashlib
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_CONFIG}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fingerprints(specs, preset, data: str) -> dict[str, str]:
    """:func:`config_fingerprint` of each configuration ``specs`` (``RunSpec``) plan under
    ``preset`` on ``data``, keyed by :func:`config_key`."""
    from .runner import build_config
    seed = preset.seeds[0] if preset.seeds else 0
    return {config_key(s.exp, s.label, s.x): config_fingerprint(build_config(s, preset, seed, data, None))
            for s in specs}


def record_configs(table_path, results_path, preset, data: str | None = None) -> dict:
    """Give the entries of a table made before entries recorded their configuration (no
    ``"config"``) the fingerprint of the configuration the preset trains now -- only where that is
    provably the one measured: every seed's run folder in the measuring run's ``results.json``
    (``<model>-<hash>``) carries the hash :func:`~mixerlab.compare.runner.config_hash` gives
    today's configuration at that seed and LR. Entries that differ (or have no runs there) are
    left without one and listed. Returns ``dict(recorded=[keys], differ=[keys])``; writes the
    table atomically when anything was recorded."""
    from ..engine.checkpoint import atomic_write_text
    from .experiments.base import plan
    from .runner import build_config, config_hash
    data = data or preset.data
    raw = _raw(table_path)
    runs: dict[str, dict] = {}
    for r in json.loads(Path(results_path).read_text()).get("runs", []):
        if r.get("status") in ("done", "cached") and r.get("run_dir"):
            runs.setdefault(config_key(r["experiment"], r["label"], r.get("x")), {})[r["seed"]] = r
    recorded, differ = [], []
    for spec in plan(preset):
        key = config_key(spec.exp, spec.label, spec.x)
        if key not in raw or not isinstance(raw[key], dict) or raw[key].get("config") or key in recorded:
            continue
        by_seed = runs.get(key, {})
        same = bool(by_seed) and all(
            str(r["run_dir"]).rsplit("-", 1)[-1]
            == config_hash(build_config(spec, preset, seed, data, None, {spec.model: r.get("lr")}))
            for seed, r in by_seed.items())
        if same:
            raw[key]["config"] = config_fingerprint(build_config(spec, preset, min(by_seed), data, None))
            recorded.append(key)
        else:
            differ.append(key)
    if recorded:
        atomic_write_text(table_path, json.dumps(raw, indent=1, sort_keys=True) + "\n")
    return dict(recorded=recorded, differ=differ)


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


def check_merge_target(path, scale: dict | None) -> dict:
    """Before a run that will write its table to ``path`` (:func:`save_table` with ``merge``): a
    ``ValueError`` if a file there cannot be read as a table or was measured at another scale.
    Returns the table there as read (``{}`` where there is none)."""
    if not Path(path).exists():
        return {}
    try:
        raw = _raw(path)
        measured = raw.get(SCALE_KEY)
    except (OSError, ValueError) as e:
        raise ValueError(f"--save-calibration {path}: the file there is not a calibration table "
                         f"({type(e).__name__}: {e}); name a new file") from None
    if scale is not None and isinstance(measured, dict) and measured != dict(scale):
        differ = [f for f in SCALE_FIELDS if measured.get(f) != scale.get(f)]
        raise ValueError(f"--save-calibration {path}: the table there was measured at another scale "
                         f"({', '.join(differ)} differ); this run's entries would mix two scales: name a new file")
    return raw


def save_table(table: dict[str, Calibration], path, scale: dict | None = None,
               configs: dict[str, str] | None = None, merge: bool = False) -> dict:
    """Write the table as JSON: ``{key: {"sd": points, "seeds": n, "what": text, "config":
    fingerprint}}`` (``configs``: key -> :func:`config_fingerprint`), plus ``"_scale"``: the preset
    fields it was measured at (:func:`scale_of`), when given. ``merge``: where ``path`` holds a
    table of the same scale, its entries for other configurations are kept (a calibration remade
    for the configurations one experiment changed, e.g. ``--experiments E2``); one of another
    scale is a ``ValueError`` and is left as it is. Returns the raw table written."""
    from ..engine.checkpoint import atomic_write_text
    old = check_merge_target(path, scale) if merge else {}
    raw = {k: v for k, v in old.items() if k != SCALE_KEY and k not in table}
    for k, c in table.items():
        raw[k] = dict(sd=c.sd, seeds=c.seeds, what=c.what)
        if configs and k in configs:
            raw[k]["config"] = configs[k]
    if scale is not None:
        raw[SCALE_KEY] = dict(scale)
    atomic_write_text(path, json.dumps(raw, indent=1, sort_keys=True) + "\n")
    return raw


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


def check_table(path, specs, preset_name: str, scale: dict | None = None,
                configs: dict[str, str] | None = None) -> dict[str, Calibration]:
    """Load the table at ``path`` and check that it holds every configuration of ``specs`` (the
    runs a preset plans, ``RunSpec``), given the preset's ``scale`` (:func:`scale_of`) that the
    table was measured at it (a table without a scale record is taken as it is), and given
    ``configs`` (key -> :func:`config_fingerprint` of the configuration the preset trains now) that
    every entry records the configuration it measured (``"config"``; :func:`record_configs` adds
    it to an older table) and that it is that one; a ``ValueError`` names the missing, unnamed or
    changed configurations, the fields that differ, or a table that cannot be read, before
    anything is written."""
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
    unnamed = [k for k in keys if configs and k in configs and not raw[k].get("config")]
    if unnamed:
        more = f" and {len(unnamed) - 6} more" if len(unnamed) > 6 else ""
        raise ValueError(f"calibration table {path} does not record which configuration it measured for "
                         f"{', '.join(unnamed[:6])}{more} (a table made before entries did: "
                         f"python scripts/calibration_configs.py TABLE RESULTS_OF_THE_RUN_THAT_MADE_IT)")
    changed = [k for k in keys if configs and k in configs and raw[k].get("config") != configs[k]]
    if changed:
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ValueError(f"calibration table {path} was measured on other configurations than preset "
                         f"{preset_name!r} trains now: {', '.join(changed[:6])}{more} (changed since; remake "
                         f"their entries with --experiments ... --seeds 0 1 2 3 4 --save-calibration FILE)")
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
