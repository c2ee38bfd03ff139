"""The replicate check of ``mixerlab compare`` (issue 28 item 4): one experiment twice with
disjoint seeds at a small scale on Fashion-MNIST; the two verdicts never contradict (agrees vs
does not agree). Slow: 12 short trainings (~2 min on 2 CPU cores)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from mixerlab.compare import replicate
from mixerlab.compare.presets import get_preset
from mixerlab.compare.stats import WORDS


def _small_e1():
    """quick's CPU scale and LR table, E1's DeiT and FF-only only (its criterion), 5 % of the pool
    for one epoch, 3,000 test images. No calibration table: quick's is measured at quick's own
    scale, and the seed term here must come from the three seeds of each replicate."""
    q = get_preset("quick")
    return dataclasses.replace(
        q, name="replicate-e1", experiments=("E1",), calibration=None, train_fraction=0.05, epochs=1, val_images=1000,
        val_fraction=0.3, warmup_epochs=0.1, analysis_images=8,
        train_overrides=dict(eval_every=1, bn_calibration_batches=5, num_threads=1),
        knobs={"E1": {"families": ("deit_micro", "ffonly_micro"), "anchors": ()}})


def test_replicate_needs_disjoint_seeds(tmp_path):
    with pytest.raises(ValueError, match="disjoint seeds; both have 1"):
        replicate("smoke", [0, 1], [1, 2], out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_replicates_with_disjoint_seeds_never_contradict(tmp_path):
    r = replicate(_small_e1(), [0, 1, 2], [3, 4, 5], out=tmp_path, log=print, threads_per_job=1)
    assert [row["stat"] for row in r["rows"]] == ["ffonly - deit"]
    assert all(row["a"] in WORDS and row["b"] in WORDS for row in r["rows"])
    assert r["contradictions"] == 0 and r["complete"], r["table"]
    for sub in ("seeds-0-1-2", "seeds-3-4-5"):
        (t,) = json.loads((tmp_path / sub / "results.json").read_text())["tests"]["E1"]["tests"]
        assert t["seed_source"] == "seeds" and len(t["per_seed"]) == 3 and t["p_flip"] is not None
        assert t["lo"] < t["diff"] < t["hi"]
    print(r["table"])


def test_a_replicate_whose_runs_failed_is_void_not_a_pass(tmp_path, monkeypatch):
    """Failed runs leave every criterion inconclusive, which contradicts nothing: the check must
    say it is void instead of reporting 0 contradictions as a pass."""
    from mixerlab.compare import pipeline

    def fake_run_compare(preset, *, out, seeds, log, **kw):
        out.mkdir(parents=True)
        status = "done" if list(seeds) == [0] else "failed"
        (out / "results.json").write_text(json.dumps(dict(
            runs=[dict(experiment="E1", label="deit", seed=seeds[0], status=status)],
            tests={"E1": dict(verdict="inconclusive", tests=[dict(stat="ffonly - deit", verdict="inconclusive",
                                                                  diff=None)])})))

    monkeypatch.setattr(pipeline, "run_compare", fake_run_compare)
    r = replicate("smoke", [0], [1], out=tmp_path, log=lambda *a: None)
    assert r["contradictions"] == 0 and not r["complete"]
    assert r["failed"] == {"seeds-1": ["E1 deit seed 1"]}
    assert r["table"].startswith("**Void check:** 1 run(s) of seeds-1 did not finish (E1 deit seed 1)")


def _script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_replicate.py"
    spec = importlib.util.spec_from_file_location("compare_replicate_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replicate_script_refuses_bad_input_in_one_line(tmp_path, capsys):
    main = _script().main
    assert main([str(tmp_path / "r"), "--seeds-a", "0", "1", "--seeds-b", "1"]) == 2
    assert main([str(tmp_path / "r"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["compare_replicate: a replicate needs disjoint seeds; both have 1",
                   "compare_replicate: unknown preset 'nope'; allowed: ['full', 'gpu', 'quick', 'smoke', 'standard']"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_replicate_script_on_the_smoke_preset_writes_its_table(tmp_path, capsys):
    rc = _script().main([str(tmp_path / "r"), "--preset", "smoke", "--seeds-a", "0", "--seeds-b", "1", "--jobs", "1"])
    table = (tmp_path / "r" / "replicate.md").read_text()
    assert table.startswith("| experiment | statistic | seeds [0] | seeds [1] | contradiction |")
    assert rc == (0 if "**yes**" not in table and "Void" not in table else 1)
    assert (tmp_path / "r" / "seeds-0" / "report.md").is_file() and (tmp_path / "r" / "seeds-1" / "report.md").is_file()
