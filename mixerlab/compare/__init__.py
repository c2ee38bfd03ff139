"""``mixerlab compare``: re-run the five papers' central experiments at small scale and write a
report (``report.md`` with plots, ``results.csv``, ``results.json``, one folder per run).

Usage: ``run_compare("quick", out="runs/compare-quick")``. The modules, in the order a compare
runs: ``presets`` (budgets and data), ``experiments/`` (what each experiment trains and how its
section reads; registered: ``register_experiment``, ``get_experiment``, ``list_experiments``),
``pipeline`` (the job: check, LR choice, runs, MACs, analyses, report), ``sweep`` (the LR sweep
on the validation split), ``runner`` (one training run per distinct config, cached by its hash,
configs built by the engine's ``load_config``), ``predictions``, ``stats`` and ``report``.
"""
from .experiments import (Experiment, RunSpec, Section, get_experiment, list_experiments, plan,
                          register_experiment, selected_experiments, unregister_experiment)
from .pipeline import check_preset, check_seeds, machine_desc, replicate, run_compare, training_images
from .presets import PRESETS, Preset, get_preset
from .runner import Runner, RunResult, build_config, config_hash
from .sweep import PACKAGE_DIR, lr_table, run_sweep, sweep_extension, sweep_plan

__all__ = ["PACKAGE_DIR", "PRESETS", "Experiment", "Preset", "RunResult", "RunSpec", "Runner", "Section",
           "build_config", "check_preset", "check_seeds", "config_hash", "get_experiment", "get_preset", "list_experiments",
           "lr_table", "machine_desc", "plan", "register_experiment", "replicate", "run_compare", "run_sweep",
           "selected_experiments", "sweep_extension", "sweep_plan", "training_images", "unregister_experiment"]
