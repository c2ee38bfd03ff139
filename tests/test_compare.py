"""``mixerlab compare --preset smoke``: every experiment end to end on synthetic data, caching,
failure isolation; the experiments' plans (variants as zoo builder arguments), knobs and registry."""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixerlab.compare import run_compare
from mixerlab.compare.experiments import (Experiment, RunSpec, Section, get_experiment, list_experiments,
                                          plan, register_experiment, unregister_experiment)
from mixerlab.compare.presets import PRESETS, get_preset
from mixerlab.compare.report import markdown_table
from mixerlab.compare.runner import build_config
from mixerlab.zoo.registry import get_model_info

BAD = RunSpec("E1", "broken", "deit_micro", model_args={"mixers": [["attention", {"num_heads": 7}]]})


def _patch_e1_plan(monkeypatch, edit):
    """Make the registered E1 plan ``edit(its normal plan)`` for one test."""
    cls = type(get_experiment("E1"))
    orig = cls.plan
    monkeypatch.setattr(cls, "plan", lambda self, p: edit(orig(self, p)))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    logs = []
    res = run_compare("smoke", out=out, log=logs.append)
    return out, res, logs


def test_smoke_writes_report_with_every_experiment(smoke):
    out, res, logs = smoke
    report = (out / "report.md").read_text()
    for exp in ("E1", "E2", "E3", "E4", "E5", "E6"):
        assert f"## {exp}:" in report
    assert report.count("**Verdict.**") == 6
    for fig in ("e1_acc_vs_macs", "e2_acc_vs_fraction", "e2_gates", "e3_acc_vs_depth", "e3_similarity",
                "e4_mixers", "e5_acc_vs_macs", "e5_token_similarity", "e1_val_curves", "e2_val_curves",
                "e3_val_curves", "e4_val_curves", "e5_val_curves"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
        assert f"figures/{fig}.png" in report
    agg = json.loads((out / "results.json").read_text())["aggregate"]
    labels = {(a["experiment"], a["label"]) for a in agg}
    assert {("E1", n) for n in ("deit", "ffonly", "convit", "deepvit", "poolformer", "identityformer",
                                 "lavit")} <= labels
    assert {("E4", n) for n in ("attention", "pooling", "random", "identity", "hybrid")} <= labels
    assert {("E4", f"v2 {n}") for n in ("identity", "random", "caformer")} <= labels  # smoke's v2 rows
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
    _patch_e1_plan(monkeypatch, lambda runs: runs + [BAD])
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
    _patch_e1_plan(monkeypatch, lambda runs: runs[:3] + [BAD])
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
    import torch

    from mixerlab import create_model
    from mixerlab.bench.complexity import count_macs
    smoke = get_preset("smoke")
    p = dataclasses.replace(smoke, experiments=("E1",), train_overrides={
        **smoke.train_overrides, "synthetic_chans": 3, "synthetic_classes": 4},
        knobs={"E1": {"families": ("poolformer_micro",), "anchors": ()}})  # poolformer only
    res = run_compare(p, out=tmp_path, log=lambda s: None)
    (row,) = res["rows"]
    with torch.device("meta"):
        m = create_model("poolformer_micro", num_classes=4, in_chans=3, img_size=32, drop_path_rate=0.0)
        m1 = create_model("poolformer_micro", num_classes=10, in_chans=1, img_size=32, drop_path_rate=0.0)
    assert row["gmacs"] == pytest.approx(count_macs(m) / 1e9, rel=1e-9)
    assert count_macs(m) != count_macs(m1)


def test_a_corrupt_analysis_cache_is_named_and_recomputed(smoke):
    out, res, _ = smoke
    caches = sorted(out.glob("runs/*/analysis-8.json"))
    assert caches
    caches[0].write_text('{"layers": \n')  # a torn write
    logs = []
    run_compare("smoke", out=out, log=logs.append, report_only=True)
    assert any(str(caches[0]) in line and "unreadable" in line for line in logs), logs
    assert "layers" in json.loads(caches[0].read_text())  # computed again, written whole
    mark = json.loads((out / ".mixerlab-folder.json").read_text())
    assert mark["kind"] == "compare" and mark["version"] >= 1


def test_corrupt_summary_and_predictions_are_named_and_rewritten(smoke):
    out, res, _ = smoke
    rows = {(r["experiment"], r["label"], r["x"]): r for r in res["rows"]}
    deit, ffonly = Path(rows[("E1", "deit", None)]["run_dir"]), Path(rows[("E1", "ffonly", None)]["run_dir"])
    (deit / "summary.json").write_text('{"model": \n')  # a torn write
    npz = ffonly / "test_predictions.npz"
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])  # truncated
    # report_only rewrites nothing: the run with unreadable predictions is reported as failed, by file
    logs = []
    ro = run_compare("smoke", out=out, log=logs.append, report_only=True, experiments=["E1"])
    bad = next(r for r in ro["rows"] if r["label"] == "ffonly")
    assert bad["status"] == "failed" and str(npz) in bad["error"]
    # a normal compare resumes the deit run (its summary written again) and predicts ffonly again
    logs = []
    again = run_compare("smoke", out=out, log=logs.append, experiments=["E1"])
    assert any(str(deit / "summary.json") in line and "unreadable" in line for line in logs), logs
    assert any(str(npz) in line for line in logs), logs
    got = {r["label"]: r for r in again["rows"]}
    assert got["deit"]["top1"] == rows[("E1", "deit", None)]["top1"]
    assert got["ffonly"]["status"] in ("done", "cached") and got["ffonly"]["top1"] == rows[("E1", "ffonly", None)]["top1"]
    assert json.loads((deit / "summary.json").read_text())["final"]


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
    assert "wall time of this invocation" in report  # no compare trained there: nothing to keep
    # The trained folder: nothing missing, the same numbers as the run that trained them, and the
    # wall time of the compare that trained them (not the seconds the rewrite took), named as such.
    trained_wall = json.loads((out / "results.json").read_text())["wall_s"]
    again = run_compare("smoke", out=out, log=lambda s: None, report_only=True)
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in res["rows"]]
    report = (out / "report.md").read_text()
    assert "## Runs not trained yet" not in report
    assert f"that trained these runs {trained_wall / 60:.1f} min" in report and "by `--report-only` in" in report
    kept = json.loads((out / "results.json").read_text())
    assert kept["wall_s"] == trained_wall and kept["report_only_wall_s"] >= 0


_INTERRUPT_SCRIPT = """
import dataclasses, sys
from mixerlab.compare import get_preset, run_compare
p = dataclasses.replace(get_preset("smoke"), epochs=400, experiments=("E1",))
run_compare(p, out=sys.argv[1], jobs=2, log=lambda s: print(s, flush=True))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint_group", "sigterm_parent"])
def test_parallel_compare_interrupt_saves_resumable_runs(tmp_path, how):
    """Ctrl-C (SIGINT to the process group) or SIGTERM to the parent alone (``kill PID``) stops a
    ``jobs=2`` compare: the two runs in training save resumable checkpoints, no further run
    starts, no worker is left behind."""
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
    if how == "sigint_group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
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


# -- plans: variants as builder arguments, the same runs as before the move -----------------------
def _resolved(spec):
    if spec.model.startswith("timm:"):  # E1's CNN anchor: timm's config, checked by timm on build
        from mixerlab.models.timm_model import timm_model_config
        return timm_model_config(spec.model, num_classes=10, in_chans=1, img_size=None, drop_path_rate=0.0,
                                 model_args=spec.model_args)
    return get_model_info(spec.model).resolve(**spec.model_args)


def _plan_of(preset_name, exp):
    return [s for s in plan(get_preset(preset_name)) if s.exp == exp]


# lavit_micro at 32 px: grids, reduction ratios and heads per stage
_G, _SR, _H = [(16, 16), (8, 8), (4, 4), (2, 2)], [4, 2, 1, 1], [1, 2, 3, 5]


def _lavit_common(i):
    return {"num_heads": _H[i], "la_source": "logits", "sr_ratio": _SR[i], "grid": _G[i]}


def _carry(i):
    return {"prev_heads": _H[i - 1], "prev_grid": _G[i - 1], "prev_sr_ratio": _SR[i - 1]}


def _va(i, residual=False):
    return ("less_attention", {**_lavit_common(i), "mode": "va",
                               **({"attn_residual": True, **_carry(i)} if residual else {})})


def _la(i, inherit=False):
    return ("less_attention", {**_lavit_common(i), "mode": "la", "psi": "auto", "out_proj": False,
                               **({"inherit": True, **_carry(i)} if inherit else {})})


def test_e3_variants_are_depth_and_reattn_last():
    zoo = get_model_info("deepvit_micro").config
    specs = _plan_of("smoke", "E3")
    assert [(s.label, s.x, s.model_args) for s in specs] == [
        ("vit", 2, {"depth": 2, "reattn_last": 0}), ("deepvit", 2, {"depth": 2}),
        ("vit", 3, {"depth": 3, "reattn_last": 0}), ("deepvit", 3, {"depth": 3})]
    attn = ("attention", {"num_heads": 6, "qkv_bias": True})
    re = ("reattention", {"num_heads": 6, "qkv_bias": True, "transform_scale": False})
    for s in specs:
        cfg = _resolved(s)
        assert cfg.mixers == ((attn if s.label == "vit" else re),) * int(s.x)
        assert dataclasses.replace(cfg, mixers=zoo.mixers) == zoo  # width 96, MLP ratio 3, ...: unchanged
    assert [s.analyze for s in specs] == [False, False, True, True]  # the deepest pair


def test_e4_variants_are_one_mixer_spec_per_stage():
    zoo = get_model_info("poolformer_micro").config
    depths = (2, 2, 4, 2)
    att = lambda h: ("attention", {"num_heads": h})  # noqa: E731
    expected = {
        "attention": [att(1), att(2), att(4), att(4)],
        "pooling": [("pooling", {})] * 4,
        "random": [("random", {})] * 4,
        "identity": [("identity", {})] * 4,
        "hybrid": [("pooling", {}), ("pooling", {}), att(4), att(4)],
    }
    specs = [s for s in _plan_of("smoke", "E4") if not s.label.startswith("v2 ")]
    assert [s.label for s in specs] == list(expected)
    for s in specs:
        cfg = _resolved(s)
        assert [st.mixers for st in cfg.stages] == [(m,) * n for m, n in zip(expected[s.label], depths)], s.label
        same_mixers = tuple(dataclasses.replace(st, mixers=z.mixers) for st, z in zip(cfg.stages, zoo.stages))
        assert dataclasses.replace(cfg, stages=same_mixers) == zoo  # only the mixers differ
    by = {s.label: s for s in specs}
    assert (by["pooling"].model, by["pooling"].model_args) == ("poolformer_micro", {})  # the zoo model (E1's)
    assert (by["identity"].model, by["identity"].model_args) == ("identityformer_micro", {})
    assert by["hybrid"].model_args == {"mixers": ["pooling", "pooling", ["attention", {"num_heads": 4}],
                                                  ["attention", {"num_heads": 4}]]}


def test_e4_v2_rows_change_only_the_mixers_of_the_v2_backbone():
    zoo = get_model_info("poolformerv2_micro").config
    att = ("attention", {"head_dim": 16, "qkv_bias": False, "proj_bias": False})
    rnd = ("random", {"as_parameter": True})
    expected = {
        "v2 identity": [("identity", {})] * 4,
        "v2 random": [("identity", {}), ("identity", {}), rnd, rnd],
        "v2 pooling": [("pooling", {})] * 4,
        "v2 sepconv": [("sepconv", {})] * 4,
        "v2 caformer": [("sepconv", {}), ("sepconv", {}), att, att],
    }
    specs = [s for s in _plan_of("full", "E4") if s.label.startswith("v2 ")]
    assert [s.label for s in specs] == list(expected)
    for s in specs:
        cfg = _resolved(s)
        assert [st.mixers for st in cfg.stages] == [(m,) * len(z.mixers)
                                                    for m, z in zip(expected[s.label], zoo.stages)], s.label
        same_mixers = tuple(dataclasses.replace(st, mixers=z.mixers) for st, z in zip(cfg.stages, zoo.stages))
        assert dataclasses.replace(cfg, stages=same_mixers) == zoo, s.label
    with pytest.raises(ValueError, match="unknown v2 variant"):
        dataclasses.replace(get_experiment("E4"), v2_variants=("gpsa",)).plan(get_preset("full"))


def test_e5_variants_are_layouts_and_aux_weights():
    p = get_preset("full")  # every E5 variant
    zoo = get_model_info("lavit_micro").config
    a = [("attention", {"num_heads": h, "sr_ratio": r}) for h, r in zip(_H, _SR)]
    la_all = [(_va(0),), (_va(1, True), _la(1)), (_va(2, True), _la(2)), (_la(3, True), _la(3))]
    expected = {  # label: (mixers per stage, x = number of LA layers, DP-loss weight)
        "vanilla": ([(a[0],), (a[1],) * 2, (a[2],) * 2, (a[3],) * 2], 0, 0.0),  # the vanilla twin
        "la_last": ([(_va(0),), (_va(1, True), _va(1)), (_va(2, True), _va(2)), (_va(3, True), _la(3))], 1, 1.0),
        "la_all": (la_all, 4, 1.0),
        "la_all_no_dp": (la_all, 4, 0.0),
    }
    specs = _plan_of("full", "E5")
    assert [s.label for s in specs] == list(expected)
    for s in specs:
        mixers, n_la, w = expected[s.label]
        cfg = _resolved(s)
        assert [st.mixers for st in cfg.stages] == mixers, s.label
        assert s.x == n_la and s.analyze
        same_mixers = tuple(dataclasses.replace(st, mixers=z.mixers) for st, z in zip(cfg.stages, zoo.stages))
        assert dataclasses.replace(cfg, stages=same_mixers) == zoo
        assert build_config(s, p, 0, "synthetic", None).aux_weights == {"dp_sym": w, "dp_diag": w}
    assert specs[2].model_args == {} and specs[2].train_args == {}  # la_all: the zoo model as it is
    assert specs[0].model_args == {"layout": ("A", "AA", "AA", "AA")}


# E4's v2 rows per preset (added after the knobs moved; quick leaves them out for its budget)
_V2_ROWS = {"smoke": ("identity", "random", "caformer"), "quick": (),
            "standard": (),  # issue 28: moved to full to pay for standard's three seeds
            "full": ("identity", "random", "pooling", "sepconv", "caformer"), "gpu": ()}
# Each preset's values before the knobs moved into the experiment modules.
_OLD_PRESET_KNOBS = {  # E2 fractions, E3 depths, E5 variants
    "smoke": ((0.5, 1.0), (2, 3), ("vanilla", "la_all", "la_all_no_dp")),
    "quick": ((0.05, 0.5), (4, 8), ("vanilla", "la_all", "la_all_no_dp")),
    "standard": ((0.05, 0.5), (4, 8), ("vanilla", "la_all", "la_all_no_dp")),  # issue 28: E2's epochs x 1/f, half the pool
    "gpu": ((0.1, 1.0), (4, 8), ("vanilla", "la_all", "la_all_no_dp")),  # issue 29: the gpu preset
    "full": ((0.05, 0.1, 0.25, 0.5, 1.0), (4, 8, 12, 16), ("vanilla", "la_last", "la_all", "la_all_no_dp")),
}
_LA_LAYERS = {"vanilla": 0, "la_last": 1, "la_all": 4, "la_all_no_dp": 4}
# E2's own budget in epochs of the preset's fraction (issue 28: E2 at a plateau)
_E2_EPOCHS = {"quick": 10, "standard": 12}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_plan_the_runs_they_planned_before(name):
    p = get_preset(name)
    fractions, depths, variants = _OLD_PRESET_KNOBS[name]
    specs = plan(p)
    got = [(s.exp, s.label, s.model, s.x) for s in specs]
    assert got == (
        [("E1", m.removesuffix("_micro"), m, None) for m in (
            "deit_micro", "ffonly_micro", "convit_micro", "deepvit_micro", "poolformer_micro",
            "identityformer_micro", "lavit_micro")]
        + [("E1", "resnet18", "timm:resnet18", None)]  # the CNN anchor (issue: baselines on the same recipe)
        + [("E2", m.removesuffix("_micro"), m, f) for f in fractions for m in ("deit_micro", "convit_micro")]
        + [("E3", label, "deepvit_micro", d) for d in depths for label in ("vit", "deepvit")]
        + [("E4", k, "identityformer_micro" if k == "identity" else "poolformer_micro", None)
           for k in ("attention", "pooling", "random", "identity", "hybrid")]
        + [("E4", f"v2 {k}", "poolformerv2_micro", None) for k in _V2_ROWS[name]]
        + [("E5", v, "lavit_micro", _LA_LAYERS[v]) for v in variants]
        # E6's backbones: E1's runs by hash (tests/test_compare_dense.py); quick leaves E6 out
        + ([] if name == "quick" else [("E6", "poolformer", "poolformer_micro", None),
                                       ("E6", "lavit", "lavit_micro", None), ("E6", "resnet18", "timm:resnet18", None)]))
    for s in specs:  # every run resolves to a valid model config and training config
        _resolved(s)
        cfg = build_config(s, p, p.seeds[0], p.data, None)
        if s.exp == "E2":
            assert cfg.train_fraction == s.x
            budget = _E2_EPOCHS.get(name) or p.epochs  # E2's own budget (issue 28: trained to a plateau)
            if s.x >= p.train_fraction:
                assert cfg.epochs == budget and cfg.warmup_epochs == p.warmup_epochs
                if s.x == p.train_fraction and budget == p.epochs:
                    assert s.train_args == {}  # E1's run itself
            else:  # ConViT's protocol: epochs x 1/f (relative to the preset's fraction), a subset per seed
                k = p.train_fraction / s.x
                assert cfg.epochs == max(1, round(budget * k)) and cfg.warmup_epochs == pytest.approx(p.warmup_epochs * k)
                assert s.subset_per_seed and build_config(s, p, 3, p.data, None).subset_seed == 3
            # as many images at every fraction (to the rounding of the epochs)
            assert cfg.epochs * cfg.train_fraction == pytest.approx(budget * max(s.x, p.train_fraction), rel=0.05)
    # The runs E1 shares with E2 (base fraction, when E2 trains the preset's epochs) and E4 (pooling,
    # identity) are the same configs.
    cfgs = {(s.exp, s.label, s.x): build_config(s, p, 0, p.data, None) for s in specs}
    assert cfgs[("E1", "poolformer", None)] == cfgs[("E4", "pooling", None)]
    assert cfgs[("E1", "identityformer", None)] == cfgs[("E4", "identity", None)]
    if p.train_fraction in fractions:
        shared = cfgs[("E1", "deit", None)] == cfgs[("E2", "deit", p.train_fraction)]
        assert shared == (name not in _E2_EPOCHS)


def test_preset_knobs_override_an_experiment():
    smoke = get_preset("smoke")
    p = dataclasses.replace(smoke, experiments=("E3",), knobs={"E3": {"depths": (5,)}})
    assert [(s.label, s.x, s.model_args) for s in plan(p)] == [
        ("vit", 5, {"depth": 5, "reattn_last": 0}), ("deepvit", 5, {"depth": 5})]
    assert get_experiment("E3").depths == (4, 8)  # the registered default is untouched
    with pytest.raises(ValueError, match=r"unknown knob\(s\) \['depth'\] for experiment E3.*depths"):
        plan(dataclasses.replace(smoke, knobs={"E3": {"depth": (5,)}}))
    with pytest.raises(ValueError, match="unknown experiment 'E33'"):
        plan(dataclasses.replace(smoke, knobs={"E33": {}}))
    with pytest.raises(ValueError, match="unknown variant"):
        plan(dataclasses.replace(smoke, experiments=("E5",), knobs={"E5": {"variants": ("none",)}}))


def test_experiment_registry():
    assert list_experiments()[:6] == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert get_experiment("E2").fractions == (0.01, 0.025, 0.05)
    with pytest.raises(ValueError, match="registered twice"):
        register_experiment(get_experiment("E1"))
    with pytest.raises(ValueError, match=r"unknown experiment 'E7'.*allowed: \['E1'"):
        get_experiment("E7")
    with pytest.raises(ValueError, match="no experiment 'E7' is registered"):
        unregister_experiment("E7")
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) \['E7'\]"):
        run_compare("smoke", out="/nonexistent", experiments=["E7"])


@dataclass(frozen=True)
class _Toy(Experiment):
    id = "E9"
    title = "E9: a toy experiment (registered by the test)"
    claim = "A toy claim."
    depth: int = 2

    def plan(self, preset):
        return [RunSpec(self.id, "toy", "deit_micro", model_args={"depth": self.depth}, x=self.depth)]

    def section(self, aggs, analyses, fig_dir):
        return Section(markdown_table(aggs, "depth"), [], [f"toy top-1 {aggs[0]['top1']:.2f}%."],
                       "**cannot tell** (a toy).")


def test_a_new_experiment_is_one_registration(tmp_path):
    smoke = get_preset("smoke")
    before = plan(smoke)
    register_experiment(_Toy)
    try:
        assert list_experiments()[-1] == "E9"
        after = plan(smoke)  # presets run every registered experiment
        assert after[:-1] == before
        assert after[-1] == RunSpec("E9", "toy", "deit_micro", model_args={"depth": 2}, x=2)
        assert plan(dataclasses.replace(smoke, knobs={"E9": {"depth": 3}}))[-1].model_args == {"depth": 3}
        res = run_compare("smoke", out=tmp_path, log=lambda s: None, experiments=["E9"])
        (row,) = res["rows"]
        assert row["experiment"] == "E9" and row["status"] == "done"
        report = Path(res["report"]).read_text()
        assert "## E9: a toy experiment (registered by the test)" in report
        assert "**Paper's claim.** A toy claim." in report
        assert f"toy top-1 {row['top1']:.2f}%." in report and "This run **cannot tell** (a toy)." in report
        assert "## E1:" not in report
    finally:
        unregister_experiment("E9")
    assert "E9" not in list_experiments() and plan(smoke) == before


def test_compare_sources_cite_no_files_outside_the_repository():
    import mixerlab.compare
    root = Path(mixerlab.compare.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 10  # the package and its experiment modules
    for f in files:
        assert "shared/" not in f.read_text(), f


# ---- issue 13: validation split, paired statistics in the report, budgets, recipes, CPU scale
def test_report_sections_have_intervals_and_a_verdict_word(smoke):
    import re

    import numpy as np

    from mixerlab.compare.stats import WORDS, paired_with_seeds
    out, res, _ = smoke
    report = (out / "report.md").read_text()
    summary = report.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| E")]
    assert [r.split("|")[1].strip() for r in rows] == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert all(any(f"**{w}**" in r for w in WORDS) for r in rows)
    assert "No GPU result exists" not in report and "Ran on: CPU (" in report
    sections = re.split(r"\n## (?=E\d:)", report)[1:]
    assert len(sections) == 6
    for sec in sections:
        verdict = next(line for line in sec.splitlines() if line.startswith("**Verdict.**"))
        assert sum(f"**{w}**" in verdict for w in WORDS) == 1, verdict
        assert re.search(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", sec)  # a difference with its CI
        assert "criterion" in sec and "Setup:" in sec and "images seen" in sec
    # results.json holds what recomputes every interval: the per-image correctness of every run
    def strict(name):  # NaN / Infinity are not JSON (the image-only df is infinite)
        raise AssertionError(f"results.json holds {name}")
    res_json = json.loads((out / "results.json").read_text(), parse_constant=strict)
    runs = {(r["experiment"], r["label"], r["x"]): r for r in res_json["runs"]}
    n = {len(r["correct"]) for r in res_json["runs"]}
    assert len(n) == 1  # the same test images for every run
    bits = lambda key: np.array([int(c) for c in runs[key]["correct"]])  # noqa: E731
    t = res_json["tests"]["E1"]["tests"][0]
    again = paired_with_seeds(bits(("E1", "ffonly", None)), bits(("E1", "deit", None)))
    assert (again["diff"], again["lo"], again["hi"]) == pytest.approx((t["diff"], t["lo"], t["hi"]))
    # smoke trains one seed and has no calibration: the interval covers test images only, says so,
    # and its verdict stays inconclusive
    assert t["seed_source"] == "none" and t["verdict"] == "inconclusive" and "p_flip" in t
    assert "none (one seed, no calibration" in report
    assert runs[("E1", "deit", None)]["top1"] == pytest.approx(100 * bits(("E1", "deit", None)).mean())
    # the run folders keep the predicted classes
    from mixerlab.compare.predictions import load_predictions
    pred = load_predictions(runs[("E1", "deit", None)]["run_dir"])
    assert pred["pred"].shape == pred["target"].shape == (next(iter(n)),)


def test_validation_split_is_fixed_balanced_and_disjoint():
    import numpy as np

    from mixerlab.data import validation_split
    targets = np.repeat(np.arange(10), 600)
    np.random.default_rng(0).shuffle(targets)
    tr, va = validation_split(targets, 503, seed=0)
    assert len(va) == 503 and len(tr) + len(va) == len(targets) and not set(tr) & set(va)
    counts = np.bincount(targets[va], minlength=10)
    assert counts.max() - counts.min() <= 1  # class-balanced
    tr2, va2 = validation_split(targets, 503, seed=0)
    assert (va2 == va).all() and not (validation_split(targets, 503, seed=1)[1] == va).all()
    with pytest.raises(ValueError, match="has only 600 training images"):
        validation_split(targets, 6000)


def test_training_never_sees_the_validation_images():
    from mixerlab.data import build_data
    from mixerlab.engine.config import recipe_config
    cfg = recipe_config("small", data="synthetic", synthetic_size=80, val_images=20, train_fraction=0.5)
    b = build_data(cfg)
    assert len(b.val) == 20 and len(b.train) == 30 and b.test is not b.val
    assert not set(b.train.indices.tolist()) & set(b.val.indices.tolist())
    assert b.test.source is not b.train.source  # the test split is another split
    with pytest.raises(ValueError, match="validation split of 50 images is larger than the training subset"):
        build_data(recipe_config("small", data="synthetic", synthetic_size=80, val_images=50))


def test_bad_budgets_fail_before_anything_is_written(tmp_path):
    smoke = get_preset("smoke")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="validation split of 60 images is larger than the training subset of 4"):
        run_compare(smoke, out=out, overrides={"val_images": 60})
    tiny = dataclasses.replace(smoke, experiments=("E2",), knobs={"E2": {"fractions": (0.05, 1.0)}})
    with pytest.raises(ValueError, match=r"run E2 deit x=0.05 has \d+ training images, fewer than one batch of 16"):
        run_compare(tiny, out=out)
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) \['E9'\]"):
        run_compare(smoke, out=out, experiments=["E9"])
    assert not out.exists()


@pytest.mark.parametrize("argv,msg", [
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--preset", "smoke", "--experiments", "E9"], "unknown experiment(s) ['E9']"),
    (["--preset", "smoke", "--val-images", "100"], "validation split of 100 images is larger"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, msg):
    from mixerlab.cli.main import main
    out = tmp_path / "o"
    with pytest.raises(SystemExit) if argv[1] == "nope" else _nullcontext() as e:
        rc = main(["compare", *argv, "--out", str(out)])
    rc = e.value.code if argv[1] == "nope" else rc
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and msg in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


def test_cpu_scale_is_builder_arguments_and_shared_runs_stay_shared():
    from mixerlab.compare.presets import CPU_SCALE
    p = get_preset("quick")
    specs = plan(p)
    cfgs = {(s.exp, s.label, s.x): build_config(s, p, 0, p.data, None, {"deit_micro": 4e-3}) for s in specs}
    deit = cfgs[("E1", "deit", None)]
    assert deit.img_size == 28 and deit.model_args == CPU_SCALE["deit_micro"].model_args
    assert deit.lr == 4e-3 and deit.recipe == "small" and deit.val_images == 5000 and deit.mixup == 0.0
    assert cfgs[("E1", "convit", None)].lr == p.lr  # no table entry: the preset's LR
    e3 = cfgs[("E3", "vit", 8)]
    assert e3.model_args["depth"] == 8 and e3.model_args["dim"] == 64  # the experiment's knob over the scale
    assert cfgs[("E1", "deepvit", None)] == cfgs[("E3", "deepvit", 4)]  # shared between E1 and E3
    # E2 trains its own runs (5x the images: to a plateau), E1's otherwise
    e2 = cfgs[("E2", "deit", 0.5)]
    assert e2.epochs == 5 * deit.epochs and e2.model_args == deit.model_args and e2.lr == deit.lr
    for name, scale in CPU_SCALE.items():  # every scaled model builds, at the tokens the docstring says
        kw = scale.model_args
        if name.startswith("timm:"):  # the CNN anchor: timm's model with timm's keywords
            from mixerlab.models.timm_model import TimmModel, timm_model_config
            m = TimmModel(timm_model_config(name, num_classes=10, in_chans=1, img_size=scale.img_size,
                                            drop_path_rate=0.0, model_args=kw))
            assert 0.3e6 < sum(p.numel() for p in m.parameters()) < 0.7e6  # the hierarchical families' size
            continue
        entry = get_model_info(name)
        cfg = entry.resolve(img_size=scale.img_size, in_chans=1, **kw)
        if "patch_size" in kw:
            assert (scale.img_size // cfg.patch_size) ** 2 == 16
    # the committed LR table of quick names every model quick trains, with >= 3 LRs tried
    from mixerlab.compare import PACKAGE_DIR
    table = json.loads((PACKAGE_DIR / p.lr_table).read_text())
    assert {s.model for s in specs} <= set(table["models"])
    assert all(len(r["val_top1"]) >= 3 and r["lr"] in [float(k) for k in r["val_top1"]]
               for r in table["models"].values())


def test_sweep_extension_steps_past_an_edge_on_the_grid():
    """A best LR on the grid's top (bottom) edge gets the next grid value above (below); an
    interior best, a single finished run or a grid of one value gets none."""
    from mixerlab.compare import sweep_extension
    p = dataclasses.replace(get_preset("standard"), sweep_lrs=(1e-3, 2e-3, 4e-3))
    table = {"a": {"val_top1": {"0.001": 70.0, "0.002": 71.0, "0.004": 72.0}},   # top edge
             "b": {"val_top1": {"0.001": 75.0, "0.002": 71.0, "0.004": 70.0}},   # bottom edge
             "c": {"val_top1": {"0.001": 70.0, "0.002": 73.0, "0.004": 72.0}},   # interior
             "d": {"val_top1": {"0.001": 70.0, "0.002": None, "0.004": None}},   # one finished
             "e": {"val_top1": {"0.001": 1.0, "0.002": 2.0, "0.004": 3.0, "0.008": 2.5}}}  # extended
    runs = {r.model: r for r in sweep_extension(p, table)}
    assert set(runs) == {"a", "b"}
    assert runs["a"].x == pytest.approx(8e-3) and runs["a"].train_args["lr"] == pytest.approx(8e-3)
    assert runs["b"].x == pytest.approx(5e-4)
    assert runs["a"].train_args["epochs"] == p.sweep_epochs
    assert runs["a"].train_args["train_fraction"] == p.sweep_fraction
    assert sweep_extension(dataclasses.replace(p, sweep_lrs=(1e-3,)), table) == []


@pytest.mark.slow  # eight tiny trainings
def test_lr_sweep_picks_the_best_validation_lr_and_the_runs_use_it(tmp_path, monkeypatch):
    _patch_e1_plan(monkeypatch, lambda runs: runs[:2])
    p = dataclasses.replace(get_preset("smoke"), experiments=("E1",), sweep_lrs=(3e-4, 1e-3, 3e-3),
                            sweep_fraction=1.0, sweep_extend=1)
    res = run_compare(p, out=tmp_path, log=lambda s: None)
    info = json.loads((tmp_path / "results.json").read_text())["lr"]
    assert info["source"] == "sweep inside this preset run"
    for model, rec in info["models"].items():
        best = max(rec["val_top1"], key=lambda k: rec["val_top1"][k])
        assert rec["lr"] == pytest.approx(float(best))
        tried = sorted(float(k) for k in rec["val_top1"])
        assert tried[1:4] == pytest.approx([3e-4, 1e-3, 3e-3]) or tried[:3] == pytest.approx([3e-4, 1e-3, 3e-3])
        assert len(tried) in (3, 4)  # one more round: the edge's neighbour, where the best was on it
        first = {k: v for k, v in rec["val_top1"].items() if float(k) in (3e-4, 1e-3, 3e-3)}
        first_best = float(max(first, key=first.get))
        assert (len(tried) == 4) == (first_best in (3e-4, 3e-3))
        row = next(r for r in res["rows"] if r["model"] == model)
        assert row["lr"] == pytest.approx(rec["lr"])  # the run trained with the chosen LR
    assert all(not (d / "test_predictions.npz").exists() for d in (tmp_path / "sweep" / "runs").iterdir())


def test_e5_reads_each_lavit_map_as_identity_uniform_or_attending():
    """Issue 31 (12): E5 reports the diagonal mass of every LaViT map against 1/N_k, so a loss that
    collapses the maps to the identity, or flattens them to uniform attention, shows in the report."""
    from mixerlab.compare.experiments.e5_less_attention import diagonality_table
    from mixerlab.analysis.metrics import diagonality_terms
    import torch
    n = 16
    maps = {"eye": torch.eye(n), "flat": torch.full((n, n), 1.0 / n),
            "peaked": torch.softmax(torch.randn(n, n, generator=torch.Generator().manual_seed(0)) * 3, -1)}
    rec = dict(layers=[dict(label=k, tokens=4 * n, sr_ratio=2) for k in maps],  # 64 tokens, 16 key cells
               diagonality={k: dict(diagonality_terms(p[None, None]), mode="la") for k, p in maps.items()})
    md, finding = diagonality_table({"la_all (x=4)": rec, "vanilla (x=0)": dict(diagonality={})})
    rows = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| la_all")}
    assert "**identity**" in rows["eye"] and "**uniform**" in rows["flat"] and rows["peaked"].endswith("| attends |")
    assert "| 16 | 1.000 | 0.062 |" in rows["eye"]  # N_k = 64 tokens / 2^2, 1/N_k
    assert finding == ["Attention maps: 1 of 3 collapsed to the identity (diagonal mass > 0.95), 1 uniform over their keys."]
    assert diagonality_table({"vanilla (x=0)": dict(diagonality={})}) == ("", [])
