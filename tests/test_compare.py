"""``mixerlab compare --preset smoke``: every experiment end to end on synthetic data, caching,
failure isolation."""
from __future__ import annotations

import csv
import json

import pytest

from mixerlab.compare import experiments, run_compare
from mixerlab.compare.experiments import RunSpec


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    logs = []
    res = run_compare("smoke", out=out, log=logs.append)
    return out, res, logs


def test_smoke_writes_report_with_every_experiment(smoke):
    out, res, logs = smoke
    report = (out / "report.md").read_text()
    for exp in ("E1", "E2", "E3", "E4", "E5"):
        assert f"## {exp}:" in report
    assert report.count("**Verdict.**") == 5
    for fig in ("e1_acc_vs_macs", "e2_acc_vs_fraction", "e2_gates", "e3_acc_vs_depth", "e3_similarity",
                "e4_mixers", "e5_acc_vs_macs", "e5_token_similarity"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
        assert f"figures/{fig}.png" in report
    agg = json.loads((out / "results.json").read_text())["aggregate"]
    labels = {(a["experiment"], a["label"]) for a in agg}
    assert {("E1", n) for n in ("deit", "ffonly", "convit", "deepvit", "poolformer", "identityformer",
                                 "lavit")} <= labels
    assert {("E4", n) for n in ("attention", "pooling", "random", "identity", "hybrid")} <= labels
    assert sum(a["experiment"] == "E2" for a in agg) == 4  # 2 models x 2 fractions
    assert sum(a["experiment"] == "E3" for a in agg) == 4  # 2 mixers x 2 depths
    assert all(a["top1"] is not None and 0 <= a["top1"] <= 100 for a in agg)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res["rows"]) and all(r["status"] in ("done", "cached") for r in rows)


def test_shared_runs_train_once(smoke):
    out, res, logs = smoke
    # E1's deit/convit runs are E2's largest fraction, E1's poolformer is E4's pooling: one folder each.
    dirs = {(r["experiment"], r["label"], r["x"]): r["run_dir"] for r in res["rows"]}
    assert dirs[("E1", "deit", None)] == dirs[("E2", "deit", 1.0)]
    assert dirs[("E1", "poolformer", None)] == dirs[("E4", "pooling", None)]
    assert len({r["run_dir"] for r in res["rows"]}) < len(res["rows"])


def test_cache_skips_finished_runs(smoke):
    out, res, _ = smoke
    logs = []
    again = run_compare("smoke", out=out, log=logs.append)
    assert "0 to train" in logs[0]
    assert not any(line.startswith("[") for line in logs)  # no training progress line
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in res["rows"]]


def test_failed_run_is_reported_and_others_go_on(smoke, monkeypatch):
    out, _, _ = smoke
    bad = RunSpec("E1", "broken", "deit_micro", model_args={"mixers": [["attention", {"num_heads": 7}]]})
    orig = experiments.PLANS["E1"]
    monkeypatch.setitem(experiments.PLANS, "E1", lambda p: orig(p) + [bad])
    logs = []
    res = run_compare("smoke", out=out, log=logs.append, experiments=["E1"])
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["broken"]["status"] == "failed" and "num_heads" in rows["broken"]["error"]
    assert all(r["status"] == "cached" for k, r in rows.items() if k != "broken")
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "broken" in report


def test_parallel_jobs_match_the_cache_and_isolate_failures(tmp_path, monkeypatch):
    """``jobs=2`` trains in worker processes; the hashes are the same as a one-process compare
    (a rerun with one job trains nothing) and a failing run does not stop the others."""
    bad = RunSpec("E1", "broken", "deit_micro", model_args={"mixers": [["attention", {"num_heads": 7}]]})
    orig = experiments.PLANS["E1"]
    monkeypatch.setitem(experiments.PLANS, "E1", lambda p: orig(p)[:3] + [bad])
    logs = []
    res = run_compare("smoke", out=tmp_path, log=logs.append, experiments=["E1"], jobs=2)
    assert any("in 2 processes" in line for line in logs)
    assert any(line.strip().startswith("training: E1") for line in logs)  # progress: what is training
    rows = {r["label"]: r for r in res["rows"]}
    assert set(rows) == {"deit", "ffonly", "convit", "broken"}
    assert rows["broken"]["status"] == "failed" and "num_heads" in rows["broken"]["error"]
    assert all(rows[k]["status"] == "done" and 0 <= rows[k]["top1"] <= 100 for k in ("deit", "ffonly", "convit"))
    logs2 = []
    again = run_compare("smoke", out=tmp_path, log=logs2.append, experiments=["E1"])
    assert "3 cached, 1 to train" in logs2[0]  # only the broken run is retried
    assert {r["label"]: r["top1"] for r in again["rows"] if r["status"] == "cached"} == \
        {k: rows[k]["top1"] for k in ("deit", "ffonly", "convit")}


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_compare("smoke", out=tmp_path, experiments=["E1"], jobs=0)


def test_macs_follow_the_trained_data(tmp_path):
    """MACs are counted on the model as trained: 3 input channels and 4 classes here, not the
    Fashion-MNIST 1 x 10 defaults."""
    import dataclasses

    import torch

    from mixerlab.bench.complexity import count_macs
    from mixerlab.compare.presets import get_preset
    from mixerlab import create_model
    smoke = get_preset("smoke")
    p = dataclasses.replace(smoke, experiments=("E1",), train_overrides={
        **smoke.train_overrides, "synthetic_chans": 3, "synthetic_classes": 4})
    monkey_plan = experiments.PLANS["E1"]
    try:
        experiments.PLANS["E1"] = lambda pr: monkey_plan(pr)[4:5]  # poolformer only
        res = run_compare(p, out=tmp_path, log=lambda s: None)
    finally:
        experiments.PLANS["E1"] = monkey_plan
    (row,) = res["rows"]
    with torch.device("meta"):
        m = create_model("poolformer_micro", num_classes=4, in_chans=3, img_size=32, drop_path_rate=0.0)
        m1 = create_model("poolformer_micro", num_classes=10, in_chans=1, img_size=32, drop_path_rate=0.0)
    assert row["gmacs"] == pytest.approx(count_macs(m) / 1e9, rel=1e-9)
    assert count_macs(m) != count_macs(m1)


def test_report_only_trains_nothing_and_lists_missing_runs(smoke, tmp_path):
    out, res, _ = smoke
    # An empty folder: every run is missing, the report is still written.
    logs = []
    empty = run_compare("smoke", out=tmp_path, log=logs.append, report_only=True)
    assert all(r["status"] == "missing" for r in empty["rows"])
    assert not any(line.startswith("[") for line in logs)
    assert not list((tmp_path / "runs").iterdir())
    report = (tmp_path / "report.md").read_text()
    assert "## Runs not trained yet" in report and "not run" in report
    # The trained folder: nothing missing, the same numbers as the run that trained them.
    again = run_compare("smoke", out=out, log=lambda s: None, report_only=True)
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in res["rows"]]
    assert "## Runs not trained yet" not in (out / "report.md").read_text()


_INTERRUPT_SCRIPT = """
import dataclasses, sys
from mixerlab.compare import get_preset, run_compare
p = dataclasses.replace(get_preset("smoke"), epochs=400, experiments=("E1",))
run_compare(p, out=sys.argv[1], jobs=2, log=lambda s: print(s, flush=True))
"""


@pytest.mark.slow
def test_parallel_compare_interrupt_saves_resumable_runs(tmp_path):
    """Ctrl-C (SIGINT to the process group) stops a ``jobs=2`` compare: the two runs in training
    save resumable checkpoints, no further run starts, no worker is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPT_SCRIPT, str(tmp_path)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(runs.glob("*/last.safetensors"))) < 2:
        time.sleep(0.5)
    assert len(list(runs.glob("*/last.safetensors"))) == 2, "two runs should have reached a checkpoint"
    started = {p.name for p in runs.iterdir()}
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert {p.name for p in runs.iterdir()} == started  # nothing new started
    for d in runs.iterdir():
        assert (d / "last.safetensors").exists() and not (d / "summary.json").exists()
    # The whole group (workers, multiprocessing's resource tracker) is gone within a few seconds.
    left = ""
    for _ in range(60):
        left = subprocess.run(["pgrep", "-a", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}"
    logs = []
    res = run_compare(dataclasses_replace_smoke(epochs=400), out=tmp_path, log=logs.append, report_only=True)
    assert "0 cached" in logs[0] and all(r["status"] == "missing" for r in res["rows"])


def dataclasses_replace_smoke(**kw):
    import dataclasses

    from mixerlab.compare.presets import get_preset
    return dataclasses.replace(get_preset("smoke"), experiments=("E1",), **kw)
