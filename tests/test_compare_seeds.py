"""compare's seed-aware verdicts (issue 28): the report's paired tests with a seed term from the
run's seeds or a committed calibration, Holm across an experiment's criteria, the plateau check,
where the report says it ran, and bad input refused before anything is written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mixerlab.compare.calibration import config_key, save_table
from mixerlab.compare import report
from mixerlab.compare.report import _source_text, decide, machine_line, paired_test, plateau_check, write_tables


from mixerlab.compare.stats import (AGREES, DISAGREES, INCONCLUSIVE, Calibration, Criterion,
                                    paired_bootstrap)


def _agg(label, bits_by_seed, cal=None, **kw):
    """An aggregate as ``report.aggregate`` makes it (only what ``paired_test`` reads)."""
    m = np.stack(list(bits_by_seed.values()))
    return dict(label=label, x=None, seeds=len(bits_by_seed), correct=m, correct_by_seed=bits_by_seed,
                calibration=cal, **kw)


def _seeded(rng, p_by_seed, n=2000, base=None):
    """Per-image correctness with a per-seed accuracy; ``base`` couples the images of two models."""
    base = rng.random(n) if base is None else base
    return {s: (base < p).astype(np.int8) for s, p in p_by_seed.items()}


def test_seed_term_widens_the_interval_and_blocks_a_verdict_the_images_alone_would_give():
    rng = np.random.default_rng(0)
    base = rng.random(4000)
    # B at 80 %; A at 81 % on average, but the seeds move A by +-1.5 points
    a = _agg("a", _seeded(rng, {0: 0.825, 1: 0.795, 2: 0.81}, base=base))
    b = _agg("b", _seeded(rng, {0: 0.80, 1: 0.80, 2: 0.80}, base=base))
    crit = Criterion("a - b", ">", 0.0)
    t = paired_test(crit, a, b)
    img = paired_bootstrap(a["correct"], b["correct"])
    assert t["seed_source"] == "seeds" and t["seeds"] == 3 and len(t["per_seed"]) == 3
    want = [100 * (a["correct_by_seed"][k].mean() - b["correct_by_seed"][k].mean()) for k in (0, 1, 2)]
    assert t["per_seed"] == pytest.approx(want, abs=1e-9) and want[0] > 2 and want[1] < 0
    assert img["lo"] > 0  # the image-only interval would say "agrees" ...
    assert t["lo"] < 0 < t["hi"] and t["verdict"] == INCONCLUSIVE  # ... the seeds do not allow it
    assert t["hi"] - t["lo"] > 3 * (img["hi"] - img["lo"])
    assert 0.0 < t["p_flip"] < 0.5
    row = report.tests_table([t]).splitlines()[-1]
    assert "seeds of this run" in row and ", ".join(f"{v:+.2f}" for v in t["per_seed"]) in row and "**inconclusive**" in row


def test_consistent_seeds_give_a_decisive_verdict_and_a_small_flip_probability():
    rng = np.random.default_rng(1)
    base = rng.random(4000)
    a = _agg("a", _seeded(rng, {0: 0.85, 1: 0.851, 2: 0.849}, base=base))
    b = _agg("b", _seeded(rng, {0: 0.80, 1: 0.80, 2: 0.80}, base=base))
    t = paired_test(Criterion("a - b", ">", 0.0), a, b)
    assert t["verdict"] == AGREES and t["lo"] > 0 and t["p_flip"] < 1e-3
    t = paired_test(Criterion("a - b", "<", 0.0), a, b)
    assert t["verdict"] == DISAGREES


def test_one_seed_uses_the_committed_calibration_and_names_it():
    rng = np.random.default_rng(2)
    base = rng.random(10000)
    a = _agg("a", _seeded(rng, {0: 0.83}, base=base), cal=Calibration(0.4, 5, "E1/a: 5 seeds"))
    b = _agg("b", _seeded(rng, {0: 0.80}, base=base), cal=Calibration(0.3, 5, "E1/b: 5 seeds"))
    t = paired_test(Criterion("a - b", ">", 0.0), a, b)
    assert t["seed_source"] == "calibration" and t["calibration_sd"] == pytest.approx(0.5)
    assert t["seed_var"] == pytest.approx(0.25)  # sd 0.5 points, one seed
    assert t["verdict"] == AGREES
    assert "committed calibration (seed SD 0.50" in _source_text(t)
    # no calibration for one of the two: no seed term, no decisive verdict
    t = paired_test(Criterion("a - b", ">", 0.0), a, dict(b, calibration=None))
    assert t["seed_source"] == "none" and t["verdict"] == INCONCLUSIVE and t["lo"] > 0


def test_holm_across_an_experiments_criteria():
    rng = np.random.default_rng(3)
    base = rng.random(3000)
    # two criteria, each just decisive alone at 95 %: Holm tests the larger p at 95 %, the smaller
    # one at 97.5 %
    g = {k: _agg(k, _seeded(rng, {0: p0, 1: p1, 2: p2}, base=base)) for k, (p0, p1, p2) in
         {"a": (0.80, 0.80, 0.80), "b": (0.78, 0.788, 0.772), "c": (0.79, 0.795, 0.785)}.items()}
    tests = [paired_test(Criterion("a - b", ">", 0.0), g["a"], g["b"]),
             paired_test(Criterion("a - c", ">", 0.0), g["a"], g["c"])]
    adjusted, word = decide(tests)
    assert [t["m"] for t in adjusted] == [2, 2]
    assert sorted(t["holm_level"] for t in adjusted)[1] >= 0.975 - 1e-12
    for before, after in zip(tests, adjusted):
        assert after["hi"] - after["lo"] >= before["hi"] - before["lo"] - 1e-12
        assert after["verdict_unadjusted"] == before["verdict"]
    assert word in (AGREES, INCONCLUSIVE, DISAGREES)
    assert "Holm" in report.tests_table(adjusted)
    # missing runs count towards m and stay inconclusive
    adjusted, word = decide(tests + [paired_test(Criterion("x", ">", 0.0), None, g["a"])])
    assert adjusted[-1]["verdict"] == INCONCLUSIVE and word != AGREES and adjusted[0]["m"] == 3


def test_plateau_check_marks_a_run_that_still_rises_by_more_than_its_seed_spread():
    # two validation points one epoch apart (images seen / epochs = 1000 images per epoch)
    flat = {0: [[1000, 80.0], [2000, 80.2]], 1: [[1000, 79.7], [2000, 79.8]]}
    rising = {0: [[1000, 70.0], [2000, 75.0]], 1: [[1000, 71.0], [2000, 75.5]]}
    a = dict(curves=flat, val_per_seed=[80.2, 79.8], images_seen=2000)
    c = plateau_check(a, epochs=2, val_images=5000)
    assert c["rising"] is False and c["spread"] == pytest.approx(np.std([80.2, 79.8], ddof=1))
    assert c["slope"] == pytest.approx(0.2)  # the worst seed
    c = plateau_check(dict(curves=rising, val_per_seed=[75.0, 75.5], images_seen=2000), epochs=2, val_images=5000)
    assert c["rising"] is True and c["slope"] == pytest.approx(5.0) and "still rising" in c["state"]
    # a run whose epochs were scaled by 1/f (E2): read per epoch of the preset's budget
    scaled = dict(curves={0: [[1000, 70.0], [2000, 70.5]]}, val_per_seed=[70.5], images_seen=2000,
                  calibration=Calibration(0.3, 5))
    c = plateau_check(scaled, epochs=2, val_images=5000)
    assert c["source"] == "calibration" and c["rising"] is True
    one = dict(curves={0: [[2000, 70.5]]}, val_per_seed=[70.5], images_seen=2000)
    assert plateau_check(one, epochs=1, val_images=5000)["rising"] is None
    # an E2 run on its own budget (8 epochs of the preset's fraction 0.5, 1000 images per epoch):
    # read per epoch of its own, not per images seen / the preset's 2 epochs
    own = dict(curves={0: [[7000, 80.0], [8000, 80.3]], 1: [[7000, 80.1], [8000, 80.2]]},
               val_per_seed=[80.3, 80.2], images_seen=8000, epochs=8, train_fraction=0.5)
    c = plateau_check(own, epochs=2, val_images=5000, train_fraction=0.5)
    assert c["slope"] == pytest.approx(0.3) and c["rising"] is True  # 0.3 > SD 0.07
    assert plateau_check(own, epochs=2, val_images=5000)["slope"] == pytest.approx(1.2)  # the old reading
    # and at 5 % with epochs x 10: 80 epochs of 100 images, one point per 10 of them
    small = dict(own, epochs=80, train_fraction=0.05)
    assert plateau_check(small, epochs=2, val_images=5000, train_fraction=0.5)["slope"] == pytest.approx(0.3)


def test_report_names_the_device_it_ran_on(monkeypatch):
    import torch

    from mixerlab.compare.pipeline import machine_desc
    from mixerlab.compare.presets import get_preset
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    m = machine_desc("auto")
    assert m["gpu"] is None and m["device"].startswith("CPU (") and "cores" in m["device"]
    line = machine_line(m, get_preset("quick"), 125.0)
    assert "no GPU used" in line and f"torch {torch.__version__}" in line and "1 seed per run (0)" in line
    assert "2.1 min" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    assert "NVIDIA H200" in machine_desc("auto")["device"]
    assert machine_desc("cpu")["gpu"] is None  # runs forced to the CPU do not claim the GPU


def test_results_are_written_atomically(tmp_path, monkeypatch):
    import csv
    rows = [dict(experiment="E1", label="deit", x=None, seed=0, status="done", top1=80.0, curve=[],
                 model_args={}, correct=np.ones(4, np.int8))]
    agg = [dict(experiment="E1", label="deit", correct=np.ones((1, 4)), correct_by_seed={0: np.ones(4)},
                calibration=Calibration(0.2, 5, "x"))]
    write_tables(tmp_path, rows, agg)
    before = {n: (tmp_path / n).read_text() for n in ("results.csv", "results.json")}
    assert json.loads(before["results.json"])["aggregate"][0]["calibration"]["sd"] == 0.2

    def boom(self, rows):
        raise OSError("disk full")
    monkeypatch.setattr(csv.DictWriter, "writerows", boom)
    with pytest.raises(OSError):
        write_tables(tmp_path, rows + rows, agg)
    assert {n: (tmp_path / n).read_text() for n in before} == before  # the old files, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- bad input: one line, exit 2, nothing written
def _cli(capsys, *argv):
    from mixerlab.cli.main import main
    rc = main(["compare", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("argv,msg", [
    (["--seeds"], "--seeds needs at least one seed"),
    (["--seeds", "0", "-1"], "--seeds takes integers >= 0, got -1"),
    (["--seeds", "0", "x"], "--seeds takes integers >= 0, got 'x'"),
    (["--seeds", "1", "2", "1"], "--seeds repeats 1"),
    (["--jobs", "0"], "jobs must be an integer >= 1, got 0"),
    (["--threads-per-job", "0"], "threads_per_job must be an integer >= 1"),
    (["--threads", "0"], "threads_per_job must be an integer >= 1"),  # one name per idea across commands
    (["--calibration", "no-such-table.json"], "calibration table no-such-table.json not found"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "o"
    rc, err = _cli(capsys, "--preset", "smoke", "--out", str(out), *argv)
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not out.exists()


def test_a_calibration_table_lacking_a_configuration_is_refused(tmp_path, capsys):
    from mixerlab.compare.experiments import plan
    from mixerlab.compare.presets import get_preset
    keys = [config_key(s.exp, s.label, s.x) for s in plan(get_preset("smoke"))]
    table = {k: Calibration(0.3, 5, k) for k in keys}
    save_table(table, tmp_path / "full.json")
    del table["E2/convit@0.5"]
    save_table(table, tmp_path / "partial.json")
    out = tmp_path / "o"
    rc, err = _cli(capsys, "--preset", "smoke", "--out", str(out), "--calibration", str(tmp_path / "partial.json"))
    assert rc == 2 and len(err) == 1 and "lacks 1 configuration(s) preset 'smoke' runs: E2/convit@0.5" in err[0]
    assert not out.exists()
    (tmp_path / "broken.json").write_text("{")
    rc, err = _cli(capsys, "--preset", "smoke", "--out", str(out), "--calibration", str(tmp_path / "broken.json"))
    assert rc == 2 and len(err) == 1 and "cannot be read" in err[0] and not out.exists()
    # the full table passes the check (nothing trained here: check_table alone)
    from mixerlab.compare.calibration import check_table
    assert set(check_table(tmp_path / "full.json", plan(get_preset("smoke")), "smoke")) == set(keys)


@pytest.mark.parametrize("kind,files", [
    ("train", ("config.yaml", "last.safetensors", "metrics.jsonl")),
    ("ablate", ("settings.json", "results.json", "report.md")),
])
def test_out_refuses_another_commands_folder(tmp_path, capsys, kind, files):
    out = tmp_path / kind
    out.mkdir()
    for f in files:
        (out / f).write_text("x")
    before = sorted(p.name for p in out.iterdir())
    rc, err = _cli(capsys, "--preset", "smoke", "--out", str(out))
    assert rc == 2 and len(err) == 1 and f"is a {kind} folder" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == before  # no .lock, no mark, no report


def test_gpu_preset_without_cuda_points_to_the_dry_run(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    rc, err = _cli(capsys, "--preset", "gpu", "--out", str(out))
    assert rc == 2 and len(err) == 1 and "needs a CUDA device" in err[0] and "--dry-run" in err[0], err
    assert not out.exists()


# ---- the gpu preset (issue 29 item 4) and E2's protocol (issue 28 item 3)
def test_gpu_preset_is_micro_models_three_seeds_a_sweep_and_fits_eight_minutes():
    from mixerlab.compare.pipeline import training_images
    from mixerlab.compare.presets import get_preset
    p = get_preset("gpu")
    assert p.scale is None and p.device == "cuda" and len(p.seeds) >= 3 and len(set(p.seeds)) == len(p.seeds)
    assert len(p.sweep_lrs) >= 3 and not p.lr_table and p.train_fraction == 1.0
    n = training_images(p)
    # docs/compare_presets.md: ~50,000 images/s in all (8 processes at batch 512: 67,000 measured
    # for deit_micro, the other families taken at 3/4 of it) plus ~90 s of start-up, evaluation,
    # predictions, analyses and report, against 8 minutes
    assert n["total_images"] / 50_000 + 90 <= 8 * 60, n
    assert n["runs"] % len(p.seeds) == 0  # every configuration at every seed


def test_e2_small_fractions_train_as_many_images_on_a_subset_per_seed():
    from mixerlab.compare.experiments import get_experiment
    from mixerlab.compare.presets import get_preset
    from mixerlab.compare.runner import build_config
    for name in ("quick", "standard", "gpu"):
        p = get_preset(name)
        specs = get_experiment("E2").for_preset(p).plan(p)
        cfgs = {(s.label, s.x): build_config(s, p, 1, p.data, None) for s in specs}
        base = cfgs[("deit", max(s.x for s in specs))]
        for (label, x), c in cfgs.items():
            seen = c.epochs * c.train_fraction
            assert seen == pytest.approx(base.epochs * base.train_fraction, rel=0.05), (name, label, x)
            if x < p.train_fraction:
                assert c.subset_seed == 1 and c.eval_every > 1 and c.warmup_epochs > p.warmup_epochs
    from mixerlab.data import build_data
    from mixerlab.engine.config import recipe_config
    b = [build_data(recipe_config("small", data="synthetic", synthetic_size=400, val_images=40, train_fraction=0.2,
                                  subset_seed=s)) for s in (0, 1)]
    t0, t1 = (set(x.train.indices.tolist()) for x in b)
    assert len(t0) == len(t1) and t0 != t1  # a new class-balanced subset per seed


def test_gpu_preset_dry_run_on_the_cpu(tmp_path):
    import time
    from mixerlab.compare import run_compare
    t = time.time()
    logs = []
    # E1-E5 (E6's dry run has its own test: tests/test_compare_dense.py)
    res = run_compare("gpu", dry_run=True, out=tmp_path / "o", log=logs.append,
                      experiments=["E1", "E2", "E3", "E4", "E5"])
    took = time.time() - t
    report = (tmp_path / "o" / "report.md").read_text()
    assert "preset `gpu-dry-run`" in report and "Ran on: CPU (" in report and "2 seeds per run (0, 1)" in report
    assert "sweep inside this preset run" in report
    tests = json.loads((tmp_path / "o" / "results.json").read_text())["tests"]
    assert sorted(tests) == ["E1", "E2", "E3", "E4", "E5"]
    judged = [t for sec in tests.values() for t in sec["tests"] if t.get("diff") is not None]
    assert judged and all(t["seed_source"] == "seeds" and len(t["per_seed"]) == 2 for t in judged)
    assert all("p_flip" in t and "holm_level" in t for t in judged)
    for exp in ("e1", "e2", "e3", "e4", "e5"):
        assert (tmp_path / "o" / "figures" / f"{exp}_seed_accuracy.png").is_file()
    assert "**Trained to a plateau?**" in report
    # E2's 50 % runs saw as many images as the 100 % ones (epochs x 2), to within the batch a
    # 24-image toy subset leaves out per epoch
    seen = {r["images_seen"] for r in res["rows"] if r["experiment"] == "E2"}
    assert max(seen) - min(seen) <= 16 and len(seen) <= 2
    assert took < 120, took  # ~40 s of CPU on an idle 2-core machine


@pytest.mark.parametrize("argv,msg", [(["--preset", "smoke"], "invalid choice: 'smoke'"),
                                      (["--preset", "quick", "--jobs", "0"], "jobs must be an integer >= 1")])
def test_sweep_lr_script_refuses_bad_input_without_a_traceback(tmp_path, capsys, argv, msg):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "sweep_lr.py"
    spec = importlib.util.spec_from_file_location("sweep_lr_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        rc = mod.main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own refusal
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and msg in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_calibration_made_with_five_seeds_gives_the_seed_term_of_a_one_seed_run(tmp_path, capsys):
    """``--save-calibration`` after a 5-seed compare writes the table; a 1-seed compare with
    ``--calibration`` takes its seed term from it and says so."""
    import dataclasses

    from mixerlab.compare import run_compare
    from mixerlab.compare.calibration import load_table
    from mixerlab.compare.presets import get_preset
    smoke = get_preset("smoke")
    from mixerlab.compare.presets import CPU_SCALE
    p = dataclasses.replace(smoke, experiments=("E1",), scale=CPU_SCALE,
                            knobs={**smoke.knobs, "E1": {"families": ("deit_micro", "ffonly_micro"), "anchors": ()}})
    out, cal = tmp_path / "o", tmp_path / "cal.json"
    with pytest.raises(ValueError, match="needs >= 5 seeds"):
        run_compare(p, out=out, save_calibration=cal, seeds=[0, 1])
    assert not out.exists()
    run_compare(p, out=out, seeds=[0, 1, 2, 3, 4], save_calibration=cal, log=lambda s: None)
    table = load_table(cal)
    assert set(table) == {"E1/deit", "E1/ffonly"} and all(c.seeds == 5 for c in table.values())
    run_compare(p, out=out, seeds=[0], calibration=cal, log=lambda s: None)  # seed 0 is cached
    (t,) = json.loads((out / "results.json").read_text())["tests"]["E1"]["tests"]
    assert t["seed_source"] == "calibration" and t["seeds"] == 1
    want = (table["E1/deit"].sd ** 2 + table["E1/ffonly"].sd ** 2) ** 0.5
    assert t["calibration_sd"] == pytest.approx(want)
    assert "committed calibration" in (out / "report.md").read_text()


def test_a_calibration_entry_records_its_configuration_and_is_remade_alone(tmp_path, capsys):
    """Each entry records the fingerprint of the configuration it measured: a knob that changes a
    configuration (E2's ``epochs``) makes the table refuse that entry, by name, before anything is
    written; ``--experiments E2 --seeds 0 1 2 3 4 --save-calibration`` into the same file remakes
    E2's entries and keeps the others, and the table then passes."""
    import dataclasses

    from mixerlab.compare import run_compare
    from mixerlab.compare.calibration import SCALE_KEY, check_table, fingerprints, scale_of
    from mixerlab.compare.pipeline import plan
    from mixerlab.compare.presets import get_preset
    smoke = get_preset("smoke")
    p = dataclasses.replace(smoke, name="tiny", experiments=("E1", "E2"), knobs={
        **smoke.knobs, "E1": {"families": ("deit_micro", "convit_micro"), "anchors": ()}})
    specs = plan(p)
    keys = {config_key(s.exp, s.label, s.x) for s in specs}
    cal = tmp_path / "cal.json"
    save_table({k: Calibration(0.4, 5, k) for k in keys}, cal, scale=scale_of(p, p.data),
               configs=fingerprints(specs, p, p.data))
    assert set(check_table(cal, specs, "tiny", scale_of(p, p.data), fingerprints(specs, p, p.data))) == keys
    longer = dataclasses.replace(p, knobs={**p.knobs, "E2": {**p.knobs["E2"], "epochs": 2}})
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"measured on other configurations than preset 'tiny' trains now: "
                                         r"E2/deit@0.5, E2/convit@0.5, E2/deit@1, E2/convit@1 \(changed since"):
        run_compare(longer, out=out, calibration=cal, log=lambda s: None)
    assert not out.exists()
    # the fingerprint ignores the seed
    assert fingerprints(specs, p, p.data) == fingerprints(specs, dataclasses.replace(p, seeds=(7,)), p.data)
    logs = []
    run_compare(longer, out=out, experiments=["E2"], seeds=[0, 1, 2, 3, 4], save_calibration=cal, log=logs.append)
    raw = json.loads(cal.read_text())
    assert set(raw) - {SCALE_KEY} == keys and raw["E1/deit"]["sd"] == 0.4  # E1's entries kept
    assert raw["E2/deit@0.5"]["seeds"] == 5 and raw["E2/deit@0.5"]["sd"] != 0.4
    assert any("kept from the table there" in line for line in logs), logs
    assert set(check_table(cal, plan(longer), "tiny", scale_of(longer, p.data),
                           fingerprints(plan(longer), longer, p.data))) == keys
    # a file measured at another scale is not merged into: refused before the run
    other = dataclasses.replace(longer, epochs=3)
    with pytest.raises(ValueError, match=r"--save-calibration .*another scale \(epochs differ\)"):
        run_compare(other, out=tmp_path / "o2", experiments=["E2"], seeds=[0, 1, 2, 3, 4], save_calibration=cal)
    assert not (tmp_path / "o2").exists()


def test_the_lr_sweep_trains_the_first_seed_only(tmp_path):
    import dataclasses

    from mixerlab.compare import run_compare
    from mixerlab.compare.presets import CPU_SCALE, get_preset
    smoke = get_preset("smoke")
    p = dataclasses.replace(smoke, experiments=("E1",), scale=CPU_SCALE, sweep_lrs=(1e-3, 2e-3), sweep_fraction=1.0,
                            knobs={**smoke.knobs, "E1": {"families": ("deit_micro",), "anchors": ()}})
    logs = []
    res = run_compare(p, out=tmp_path / "o", seeds=[0, 1], sweep_only=True, log=logs.append)
    assert set(res["table"]) == {"deit_micro"} and len(list((tmp_path / "o" / "sweep" / "runs").iterdir())) == 2
    assert any("2 runs, 2 distinct configs" in line for line in logs), logs


# ---- where each committed preset's seed term comes from (issue 28 item 1) ---------------------
def test_quick_ships_a_calibration_of_every_configuration_it_trains_made_with_five_seeds():
    """quick trains one seed: its seed term is the committed table, which must name every
    configuration whose criteria read test top-1 and rest on >= 5 seeds."""
    from mixerlab.compare.calibration import check_table, resolve_table
    from mixerlab.compare.experiments import get_experiment
    from mixerlab.compare.pipeline import plan
    from mixerlab.compare.presets import get_preset
    p = get_preset("quick")
    assert len(p.seeds) < 5 and p.calibration
    specs = [s for s in plan(p) if get_experiment(s.exp).uses_accuracy_calibration]
    from mixerlab.compare.calibration import scale_of
    from mixerlab.compare.calibration import fingerprints
    table = check_table(resolve_table(p.calibration), specs, p.name, scale_of(p), fingerprints(specs, p, p.data))
    keys = {config_key(s.exp, s.label, s.x) for s in specs}
    assert keys <= set(table) and all(table[k].seeds >= 5 and table[k].sd > 0 for k in keys)
    # every entry names the configuration it measured, and it is the one quick trains now
    raw = json.loads(resolve_table(p.calibration).read_text())
    assert {k: raw[k].get("config") for k in keys} == fingerprints(specs, p, p.data)


def test_a_calibration_measured_at_another_scale_is_refused(tmp_path):
    """A seed SD holds at the scale it was measured at: quick's table given to a preset that
    trains 5 % of the pool for one epoch (or on another dataset) is refused, naming the fields,
    before anything is written."""
    import dataclasses
    from mixerlab.compare.pipeline import run_compare
    from mixerlab.compare.presets import get_preset
    q = get_preset("quick")
    small = dataclasses.replace(q, name="small-e1", train_fraction=0.05, epochs=1)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"another scale than preset 'small-e1': train_fraction=0.05 "
                                         r"\(table: 0.5\), epochs=1 \(table: 2\)"):
        run_compare(small, out=out, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"data='cifar10' \(table: 'fashion-mnist'\)"):
        run_compare(q, out=out, data="cifar10", data_dir=str(tmp_path), log=lambda *a: None)
    assert not out.exists()


def test_standard_trains_three_seeds_of_every_run_and_needs_no_table():
    from pathlib import Path

    from mixerlab.compare.pipeline import plan, training_images
    from mixerlab.compare.presets import get_preset
    from mixerlab.compare.runner import build_config, config_hash
    p = get_preset("standard")
    assert len(p.seeds) >= 3 and len(set(p.seeds)) == len(p.seeds) and p.calibration is None
    assert p.knobs["E4"]["v2_variants"] == () and p.knobs["E6"]["iters"] >= 1
    n = training_images(p)
    assert n["runs"] % len(p.seeds) == 0
    # Its time, from the throughput its committed report measured (docs/results/compare-standard,
    # images seen / training wall time of each model at its CPU scale, evaluation included; the
    # slowest seed): the distinct runs on two workers within 75 of the 90 minutes, the rest for the
    # sweep (3.0 min measured), E6 (8.6 min) and the report (docs/compare_presets.md).
    res = json.loads((Path(__file__).parents[1] / "docs/results/compare-standard/results.json").read_text())
    rate = {}
    for r in res["runs"]:
        if r["experiment"] != "E6" and r.get("train_wall_s"):
            key = (r["model"], json.dumps(r["model_args"], sort_keys=True))
            rate[key] = min(rate.get(key, float("inf")), r["images_seen"] / r["train_wall_s"])
    seen, seconds = set(), 0.0
    for spec in plan(p):
        for seed in p.seeds:
            cfg = build_config(spec, p, seed, p.data, None)
            if config_hash(cfg) in seen:
                continue
            seen.add(config_hash(cfg))
            seconds += cfg.epochs * round(cfg.train_fraction * 55_000) / rate[
                (cfg.model, json.dumps(cfg.model_args, sort_keys=True))]
    assert len(seen) == n["runs"] and seconds / 2 <= 75 * 60, seconds / 2 / 60




def test_recording_configurations_in_an_older_table_checks_the_run_that_measured_it(tmp_path):
    """``record_configs`` on quick's table without its ``"config"`` records, against the run that
    measured it (docs/results/compare-quick-5seeds): the configurations whose run folders carry
    today's hashes get today's fingerprint back (the committed one), E2's (changed since by its
    ``epochs`` knob) are listed and left without; the script says so with exit status 1."""
    import subprocess
    import sys
    from pathlib import Path

    from mixerlab.compare.calibration import fingerprints, record_configs, resolve_table
    from mixerlab.compare.pipeline import plan
    from mixerlab.compare.presets import get_preset
    root = Path(__file__).parents[1]
    p = get_preset("quick")
    committed = json.loads(resolve_table(p.calibration).read_text())
    stripped = {k: {f: v for f, v in e.items() if f != "config"} if k != "_scale" else e for k, e in committed.items()}
    table = tmp_path / "t.json"
    table.write_text(json.dumps(stripped))
    r = record_configs(table, root / "docs/results/compare-quick-5seeds/results.json", p)
    e2 = ["E2/deit@0.05", "E2/convit@0.05", "E2/deit@0.5", "E2/convit@0.5"]
    assert r["differ"] == e2 and len(r["recorded"]) == 20 and not set(e2) & set(r["recorded"])
    got = json.loads(table.read_text())
    fp = fingerprints(plan(p), p, p.data)
    assert all(got[k]["config"] == fp[k] == committed[k]["config"] for k in r["recorded"])
    table.write_text(json.dumps(stripped))
    proc = subprocess.run([sys.executable, str(root / "scripts/calibration_configs.py"), str(table),
                           str(root / "docs/results/compare-quick-5seeds/results.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "E2/deit@0.05" in proc.stdout.splitlines()[-1]
    proc = subprocess.run([sys.executable, str(root / "scripts/calibration_configs.py"), str(tmp_path / "none.json"),
                           str(table)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
