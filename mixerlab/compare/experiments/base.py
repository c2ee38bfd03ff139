"""What an experiment of ``mixerlab compare`` is, and the registry that names them.

An experiment is a frozen dataclass deriving from :class:`Experiment`: its class attributes
``id``, ``title`` and ``claim`` say what it tests, its dataclass fields are its *knobs* (e.g.
E3's ``depths``) with their defaults, ``plan(preset)`` lists the training runs it needs
(:class:`RunSpec`, variants expressed as zoo builder arguments or config fields, never as new
classes) and ``section(aggs, analyses, fig_dir)`` turns their results into its report section. An experiment may
also fine-tune dense models from its classification runs (``dense_plan``, E6).
A preset overrides knobs through ``Preset.knobs`` (``{"E3": {"depths": (4, 8, 12)}}``), applied
by :meth:`Experiment.for_preset`.

Registered like the token mixers (``mixerlab.mixers.register_mixer``): ``register_experiment``
(an instance, or a class as a decorator), ``get_experiment``, ``list_experiments`` (registration
order), ``unregister_experiment``.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple
from ...registry import Registry


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment.

    Attributes:
        exp: experiment id (E1..E5, or any registered id).
        label: row label in the report.
        model: zoo name.
        model_args: ``create_model`` overrides as plain data (zoo builder arguments such as
            ``depth`` or ``layout``, or config fields); stored in the run's config.
        train_args: ``TrainConfig`` overrides of this run (e.g. ``train_fraction``, ``aux_weights``).
        x: the experiment's x-axis value (fraction, depth, number of LA layers), if any.
        analyze: run the diagnostics on the trained model.
        subset_per_seed: each seed trains on its own class-balanced subset (``subset_seed`` = the
            run's seed) instead of the preset's fixed one.
    """

    exp: str
    label: str
    model: str
    model_args: dict = field(default_factory=dict)
    train_args: dict = field(default_factory=dict)
    x: float | None = None
    analyze: bool = False
    subset_per_seed: bool = False


class Section(NamedTuple):
    """An experiment's part of the report (the paper's claim and title come from the experiment)."""

    table: str  # Markdown table
    figures: list  # paths of the figures written (None entries are skipped)
    finding: list  # sentences: what this run measured
    verdict: str  # "**agrees** with ..." etc., completing "This run ..."
    tests: list = []  # the paired tests (report.paired_test records), one per criterion
    word: str = "inconclusive"  # agrees | does not agree | inconclusive (mixerlab.compare.stats)


class Experiment:
    """Base of the experiments; subclasses are frozen dataclasses whose fields are the knobs."""

    id: ClassVar[str]
    title: ClassVar[str]  # section heading, starting with the id ("E3: ...")
    claim: ClassVar[str]  # the paper's claim, as the report quotes it
    # The verdict's criteria (mixerlab.compare.stats.Criterion), fixed in the module before any run
    # and derived from the paper's effect (the derivation is in the module docstring).
    criteria: ClassVar[tuple] = ()
    # whether the criteria are on the test top-1 of the planned runs (so a preset's seed-calibration
    # table must hold its configurations); E6's are on dense metrics, with no calibration
    uses_accuracy_calibration: ClassVar[bool] = True

    def knobs(self) -> dict:
        """The knobs and their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} \
            if dataclasses.is_dataclass(self) else {}

    def for_preset(self, preset) -> "Experiment":
        """This experiment with the preset's knob overrides (``preset.knobs[self.id]``)."""
        over = dict((getattr(preset, "knobs", None) or {}).get(self.id, {}))
        if not over:
            return self
        unknown = sorted(set(over) - set(self.knobs()))
        if unknown:
            raise ValueError(f"preset {getattr(preset, 'name', '?')!r}: unknown knob(s) {unknown} for "
                             f"experiment {self.id}; allowed: {sorted(self.knobs())}")
        return dataclasses.replace(self, **over)

    def plan(self, preset) -> list[RunSpec]:
        raise NotImplementedError

    def dense_plan(self, preset) -> list:
        """The dense runs (``mixerlab.compare.dense_runs.DenseSpec``) this experiment fine-tunes
        from its classification runs, after them; none by default. Their results reach
        :meth:`section` as ``analyses["dense"]`` (a list of ``DenseResult``)."""
        return []

    def section(self, aggs: list[dict], analyses: dict, fig_dir: Path) -> Section:
        """The report section from this experiment's aggregated rows (``report.aggregate``) and
        the diagnostics of its analysed runs (name -> ``analyze_model`` record)."""
        raise NotImplementedError


_EXPERIMENTS: Registry[Experiment] = Registry(
    "experiment", allowed=lambda names: f"allowed: {names}")


def register_experiment(exp):
    """Register an experiment instance under ``exp.id``; a class is registered with its default
    knobs (so this works as a class decorator) and returned unchanged."""
    inst = exp() if isinstance(exp, type) else exp
    if not isinstance(inst, Experiment):
        raise TypeError(f"{exp!r} is not an Experiment")
    _EXPERIMENTS.add(inst.id, inst)
    return exp


def unregister_experiment(exp_id: str) -> Experiment:
    """Remove the experiment registered under ``exp_id`` (e.g. a test's own); returns it."""
    return _EXPERIMENTS.remove(exp_id)


def get_experiment(exp_id: str) -> Experiment:
    """The experiment registered under ``exp_id``; a ``ValueError`` lists the allowed ids."""
    return _EXPERIMENTS.get(exp_id)


def list_experiments() -> list[str]:
    """Registered experiment ids, in registration order."""
    return _EXPERIMENTS.names()


def selected_experiments(preset) -> list[Experiment]:
    """The experiments a preset runs (``preset.experiments``; None: every registered one), each
    with the preset's knob overrides; unknown ids (in either field) raise ``ValueError``."""
    ids = list_experiments() if preset.experiments is None else list(preset.experiments)
    for exp_id in (getattr(preset, "knobs", None) or {}):
        get_experiment(exp_id)
    return [get_experiment(i).for_preset(preset) for i in ids]


def plan(preset) -> list[RunSpec]:
    """Every run of the preset's experiments, in experiment order."""
    runs = []
    for exp in selected_experiments(preset):
        runs.extend(exp.plan(preset))
    return runs


def dense_plan(preset) -> list:
    """Every dense run of the preset's experiments, in experiment order."""
    runs = []
    for exp in selected_experiments(preset):
        runs.extend(exp.dense_plan(preset))
    return runs


def with_train_args(spec: RunSpec, **extra) -> RunSpec:
    return dataclasses.replace(spec, train_args={**spec.train_args, **extra})
