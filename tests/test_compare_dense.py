"""compare's E6 (issue 30 item 6): the dense experiment's plan (its backbones are E1's runs, by
hash), the seed-aware interval of a dataset-level metric against independent computations, COCO AP
of weighted images against COCOeval on duplicated images, the report section on fabricated
results, bad knobs, a failing dense run, and the end-to-end dry run."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mixerlab.compare.dense_runs import DenseResult, DenseSpec, run_dense
from mixerlab.compare.experiments import RunSpec, dense_plan, get_experiment, plan
from mixerlab.compare.presets import PRESETS, get_preset
from mixerlab.compare.runner import RunResult, build_config, config_hash
from mixerlab.compare.stats import (INCONCLUSIVE, NONE, SEEDS, Criterion, bootstrap_weights, judge,
                                    metric_with_seeds, paired_with_seeds)
from mixerlab.dense.metrics import SegMetric, ap_from_matches, coco_evaluate, coco_matches, miou_from_counts


# ---- the plan ---------------------------------------------------------------------------------
def _hashes(p, exp):
    return {(s.model, seed): config_hash(build_config(s, p, seed, "fashion-mnist", None))
            for s in plan(p) if s.exp == exp for seed in p.seeds}


@pytest.mark.parametrize("name", ["standard", "full", "gpu"])
def test_e6_backbones_are_e1_runs_by_hash_and_each_gets_both_dense_tasks(name):
    p = get_preset(name)
    e1, e6 = _hashes(p, "E1"), _hashes(p, "E6")
    assert {m for m, _ in e6} == {"poolformer_micro", "lavit_micro", "timm:resnet18"}
    assert all(e6[k] == e1[k] for k in e6)  # the same runs: trained once, reused by hash
    dense = dense_plan(p)
    assert sorted((d.task, d.label) for d in dense) == sorted(
        (t, b) for t in ("retinanet", "semantic_fpn") for b in ("poolformer", "lavit", "resnet18"))
    for d in dense:
        assert d.exp == "E6" and d.backbone in plan(p)  # the backbone is a planned classification run
        assert d.dense_args["scenes"]["canvas"] % 32 == 0


def test_quick_leaves_e6_out_and_e6_alone_plans_its_own_backbone_runs():
    quick = get_preset("quick")
    assert quick.experiments == ("E1", "E2", "E3", "E4", "E5")
    assert not dense_plan(quick) and all(s.exp != "E6" for s in plan(quick))
    alone = dataclasses.replace(get_preset("standard"), experiments=("E6",))
    specs = plan(alone)
    assert [s.model for s in specs] == ["poolformer_micro", "lavit_micro", "timm:resnet18"]
    assert all(d.backbone in specs for d in dense_plan(alone))


@pytest.mark.parametrize("knobs,msg", [
    ({"backbones": ("poolformer", "convnext")}, r"unknown backbone\(s\) \['convnext'\]; allowed"),
    ({"anchor": "lavit", "backbones": ("poolformer",)}, "anchor 'lavit' is not among the backbones"),
    ({"tasks": ("mask_rcnn",)}, r"unknown task\(s\) \['mask_rcnn'\]; allowed: \['retinanet', 'semantic_fpn'\]"),
    ({"canvas": 80}, "canvas 80; allowed: a multiple of 32"),
    ({"iters": 0}, "iters=0; allowed: an integer >= 1"),
    ({"n_boot": 1}, "n_boot=1; allowed: an integer >= 2"),
    ({"depths": (2,)}, r"unknown knob\(s\) \['depths'\] for experiment E6"),
])
def test_bad_e6_knobs_are_one_clear_valueerror(knobs, msg):
    p = dataclasses.replace(get_preset("standard"), knobs={"E6": knobs})
    with pytest.raises(ValueError, match=msg):
        plan(p)


# ---- statistics -------------------------------------------------------------------------------
def _acc(run, w):
    return float(np.mean(run)) if w is None else float(w @ run / w.sum())


def test_metric_with_seeds_on_accuracy_matches_the_per_image_formulas():
    """For a metric that is a mean of per-image values, the bootstrap decomposition estimates what
    paired_with_seeds computes by moments: same estimate and seed term, image term within the
    bootstrap's error."""
    rng = np.random.default_rng(3)
    n, s = 400, 3
    easy = rng.random(n)
    a = {k: (rng.random(n) < 0.55 + 0.35 * easy + 0.04 * k).astype(float) for k in range(s)}
    b = {k: (rng.random(n) < 0.50 + 0.35 * easy - 0.03 * k).astype(float) for k in range(s)}
    ref = paired_with_seeds(a, b)
    got = metric_with_seeds(_acc, a, b, n_images=n, n_boot=4000)
    assert got["seed_source"] == ref["seed_source"] == SEEDS and got["seeds"] == 3
    assert got["diff"] == pytest.approx(ref["diff"], abs=1e-9)
    assert got["per_seed"] == pytest.approx(ref["per_seed"], abs=1e-9)
    per = np.array(got["per_seed"])
    assert got["seed_var"] == pytest.approx(per.var(ddof=1) / s, rel=1e-12)  # var(per-seed diffs) / S
    assert got["image_var"] == pytest.approx(ref["image_var"], rel=0.15)
    assert got["se"] == pytest.approx(ref["se"], rel=0.1)
    assert got["lo"] < got["diff"] < got["hi"]


def test_metric_with_seeds_image_term_is_the_brute_force_bootstrap_and_one_seed_is_inconclusive():
    rng = np.random.default_rng(0)
    n = 150
    a, b = {0: (rng.random(n) < 0.7).astype(float)}, {0: (rng.random(n) < 0.6).astype(float)}
    rec = metric_with_seeds(_acc, a, b, n_images=n, n_boot=300, boot_seed=5)
    # by hand: the same resamples as index lists, the metric recomputed on each
    w = bootstrap_weights(n, 300, 5)
    diffs = []
    for row in w:
        idx = np.repeat(np.arange(n), row.astype(int))
        diffs.append(100 * (a[0][idx].mean() - b[0][idx].mean()))
    assert rec["image_var"] == pytest.approx(np.var(diffs, ddof=1), rel=1e-9)
    assert rec["seed_source"] == NONE and rec["seed_var"] == 0 and "test images only" in rec["note"]
    assert judge(rec, Criterion("a - b", ">", -50.0))["verdict"] == INCONCLUSIVE  # never decisive on one seed


def test_metric_with_seeds_never_narrower_than_images_alone_and_pairs_by_seed():
    rng = np.random.default_rng(1)
    n = 200
    base = rng.random(n) < 0.6
    # the same model twice per seed, up to a few images: seed differences nearly equal
    a = {k: base.astype(float) for k in (0, 1, 7)}
    b = {k: np.where(rng.random(n) < 0.05, 1 - base, base).astype(float) for k in (0, 1)}
    rec = metric_with_seeds(_acc, a, b, n_images=n, n_boot=200)
    assert rec["seed_ids"] == [0, 1] and "seeds [7] not in every run" in rec["note"]
    # the floor: never below the variance of the seed-averaged difference over image resamples
    w = bootstrap_weights(n, 200, 0)
    image_only = np.var([100 * np.mean([_acc(a[k], r) - _acc(b[k], r) for k in (0, 1)]) for r in w], ddof=1)
    assert rec["se"] ** 2 >= image_only - 1e-9 and rec["se"] ** 2 == pytest.approx(rec["seed_var"] + rec["image_var"])
    with pytest.raises(ValueError, match="no seed common"):
        metric_with_seeds(_acc, {0: a[0]}, {1: b[1]}, n_images=n)
    with pytest.raises(ValueError, match="two .seed: run. mappings"):
        metric_with_seeds(_acc, [a[0]], [b[0]], n_images=n)


def _fake_coco(n_img=12, n_cat=3, seed=0, quality=0.7):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 64, "height": 64, "file_name": f"{i:06d}.png"} for i in range(n_img)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(5, 20), rng.uniform(5, 20)
            c = int(rng.integers(1, n_cat + 1))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):
                dets.append({"image_id": im["id"], "category_id": int(c if rng.random() < quality else rng.integers(1, n_cat + 1)),
                             "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(.8, 1.2),
                                      h * rng.uniform(.8, 1.2)], "score": float(rng.random())})
        dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, n_cat + 1)),
                     "bbox": [rng.uniform(0, 50), rng.uniform(0, 50), 8, 8], "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(n_cat)]}
    return gt, dets


def _duplicated(gt, dets, counts):
    images, anns, out = [], [], []
    for i, k in zip(sorted(im["id"] for im in gt["images"]), counts):
        for _ in range(int(k)):
            nid = len(images) + 1
            images.append({"id": nid, "width": 64, "height": 64})
            anns += [{**a, "id": len(anns) + 1 + j, "image_id": nid}
                     for j, a in enumerate(x for x in gt["annotations"] if x["image_id"] == i)]
            out += [{**d, "image_id": nid} for d in dets if d["image_id"] == i]
    return {**gt, "images": images, "annotations": anns}, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_of_weighted_images_is_cocoeval_on_the_duplicated_images(seed):
    gt, dets = _fake_coco(seed=seed)
    m = coco_matches(gt, dets)
    ref = coco_evaluate(gt, dets)
    assert ap_from_matches(m) == pytest.approx(ref["AP"], abs=1e-12)
    assert ap_from_matches(m, iou=0.5) == pytest.approx(ref["AP50"], abs=1e-12)
    counts = np.random.default_rng(seed).multinomial(12, np.full(12, 1 / 12))  # one bootstrap resample
    g2, d2 = _duplicated(gt, dets, counts)
    assert ap_from_matches(m, counts) == pytest.approx(coco_evaluate(g2, d2)["AP"], abs=1e-12)
    with pytest.raises(ValueError, match="expected 12 values"):
        ap_from_matches(m, np.ones(3))


def test_miou_of_weighted_images_is_segmetric_on_the_repeated_images():
    import torch
    rng = np.random.default_rng(0)
    preds = [torch.from_numpy(rng.integers(0, 4, (8, 8))) for _ in range(5)]
    labels = [torch.from_numpy(np.where(rng.random((8, 8)) < 0.6, p.numpy(), rng.integers(0, 4, (8, 8))))
              for p in preds]
    inter, union = [], []
    for p, lab in zip(preds, labels):
        one = SegMetric(4)
        one.update(p, lab)
        inter.append(one.intersect.numpy())
        union.append(one.union.numpy())
    counts = np.array([2, 0, 1, 3, 1])
    ref = SegMetric(4)
    for p, lab, k in zip(preds, labels, counts):
        for _ in range(k):
            ref.update(p, lab)
    assert miou_from_counts(inter, union, counts) == pytest.approx(ref.compute()["mIoU"], abs=1e-12)


# ---- the section on fabricated results ----------------------------------------------------------
def _fabricated(tmp_path, seeds=(0, 1), det_quality=None):
    gt, _ = _fake_coco(n_img=20, seed=9)
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps(gt))
    exp = get_experiment("E6")
    out = []
    for label, q in (det_quality or {"poolformer": 0.8, "lavit": 0.75, "resnet18": 0.7}).items():
        for seed in seeds:
            _, dets = _fake_coco(n_img=20, seed=9, quality=q)
            rng = np.random.default_rng([seed, len(label)])
            for d in dets:
                d["score"] = float(np.clip(d["score"] + rng.normal(0, 0.1), 0, 1))
            det = dict(format="x", task="retinanet", n_images=20, ann_file=str(ann), scenes_root=str(tmp_path),
                       metrics={"box_AP": coco_evaluate(gt, dets)["AP"], "box_AP50": coco_evaluate(gt, dets)["AP50"]},
                       per_image={"detections": dets, "image_ids": list(range(1, 21))}, examples=[])
            inter = rng.integers(50, 100, (20, 4)).astype(float) * q
            union = np.full((20, 4), 110.0)
            seg = dict(format="x", task="semantic_fpn", n_images=20, ann_file=str(ann), scenes_root=str(tmp_path),
                       metrics={"mIoU": miou_from_counts(inter, union)},
                       per_image={"intersect": inter.tolist(), "union": union.tolist()}, examples=[])
            for task, rec in (("retinanet", det), ("semantic_fpn", seg)):
                spec = DenseSpec("E6", label, task, RunSpec("E6", label, exp.models[label]))
                out.append(DenseResult(spec, seed, tmp_path / f"{task}-{label}-{seed}", "done", rec))
    return exp, out


def test_section_on_fabricated_results(tmp_path):
    exp, dense = _fabricated(tmp_path)
    aggs = [dict(experiment="E6", label=b, x=None, top1=80.0) for b in ("poolformer", "lavit", "resnet18")]
    sec = exp.section(aggs, {"dense": dense}, tmp_path)
    assert [t["stat"] for t in sec.tests] == [c.stat for c in exp.criteria]  # no backbone cost: no MAC fact
    for t in sec.tests:
        assert t["seed_source"] == SEEDS and len(t["per_seed"]) == 2 and t["m"] == 4 and "p_flip" in t
        assert t["lo"] < t["diff"] < t["hi"] and t["n_boot"] == exp.n_boot
    assert sec.word in ("agrees", "does not agree", "inconclusive")
    assert "| poolformer | 80.00 |" in sec.table and "box AP per seed" in sec.table
    assert "(Holm:" in sec.table  # four criteria corrected together
    # one seed: image-only intervals, every verdict inconclusive
    exp1, dense1 = _fabricated(tmp_path, seeds=(0,))
    sec1 = exp1.section(aggs, {"dense": dense1}, tmp_path)
    assert sec1.word == INCONCLUSIVE and all(t["seed_source"] == NONE for t in sec1.tests)
    # a backbone without runs: its criteria say so
    sec2 = exp.section(aggs, {"dense": [r for r in dense if r.spec.label != "lavit"]}, tmp_path)
    assert [t["note"] for t in sec2.tests if t["stat"].startswith("lavit")] == ["missing runs"] * 2


def test_mac_fact_joins_the_verdict():
    from mixerlab.compare.experiments.e6_dense import _mac_fact
    assert _mac_fact({"lavit": {"macs": 3}, "resnet18": {"macs": 5}}, "lavit", "resnet18")["verdict"] == "agrees"
    bad = _mac_fact({"lavit": {"macs": 300e6}, "resnet18": {"macs": 52e6}}, "lavit", "resnet18")
    assert bad["verdict"] == "does not agree" and "300.0 M vs 52.0 M" in bad["note"]
    assert _mac_fact({"lavit": {"macs": 3}}, "lavit", "resnet18") is None


# ---- the runner ---------------------------------------------------------------------------------
def test_a_dense_run_fails_in_one_line_and_the_others_go_on(tmp_path):
    p = dataclasses.replace(PRESETS["smoke"], seeds=(0,))
    bb = RunSpec("E6", "poolformer", "poolformer_micro")
    ok_dir = tmp_path / "runs" / "poolformer_micro-0123456789"
    ok_dir.mkdir(parents=True)  # "done" but holds no model: the dense run cannot open it
    specs = [DenseSpec("E6", "poolformer", "retinanet", bb, {"iters": 1}),
             DenseSpec("E6", "lavit", "retinanet", RunSpec("E6", "lavit", "lavit_micro"), {"iters": 1}),
             DenseSpec("E6", "resnet18", "retinanet", RunSpec("E6", "resnet18", "timm:resnet18"), {"iters": 1})]
    results = [RunResult(bb, 0, ok_dir, "done"),
               RunResult(specs[1].backbone, 0, tmp_path / "runs" / "lavit_micro-abcdefabcd", "failed", error="boom")]
    logs = []
    out = run_dense(tmp_path, p, specs, results, log=logs.append, threads=1)
    assert [r.status for r in out] == ["failed", "failed", "failed"]
    assert out[1].error == "backbone run lavit_micro-abcdefabcd failed: boom"
    assert out[2].error == "its backbone run is not among the planned runs"
    assert "\n" not in out[0].error and (out[0].run_dir / "error.txt").is_file()
    failed = [line for line in logs if "FAILED" in line]
    assert len(failed) == 3 and all("\n" not in line for line in failed)


def _has_fashion_mnist() -> bool:
    try:
        from mixerlab.data.datasets import fashion_mnist
        fashion_mnist(None, "val")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _has_fashion_mnist(), reason="the scenes are made from the Fashion-MNIST files")
def test_e6_dry_run_end_to_end_and_cached(tmp_path, monkeypatch):
    """full's E6 at toy size (--dry-run, its first two seeds): backbone runs, 12 dense runs over two seeds, the
    statistics, the section and its figure; a second call finds every run in the cache (~40 s on
    2 busy cores)."""
    import time

    from mixerlab.compare import run_compare
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    t = time.time()
    logs = []
    run_compare("full", dry_run=True, experiments=["E6"], out=tmp_path / "o", jobs=1, threads_per_job=1,
                log=logs.append)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    dense = res["dense"]
    assert len(dense) == 12 and all(r["status"] == "done" for r in dense), [r["error"] for r in dense]
    assert any("12 to train" in line for line in logs)
    assert {(r["task"], r["label"]) for r in dense} == {(t, b) for t in ("retinanet", "semantic_fpn")
                                                       for b in ("poolformer", "lavit", "resnet18")}
    tests = res["tests"]["E6"]["tests"]
    assert len(tests) == 5 and tests[-1]["stat"] == "lavit vs resnet18 backbone MACs"
    assert all(t["seed_source"] in (SEEDS, None) for t in tests)
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## E6:" in report and "backbone MACs at 64 px (M)" in report
    assert (tmp_path / "o" / "figures" / "e6_predictions.png").stat().st_size > 5000
    took = time.time() - t
    again = []
    run_compare("full", dry_run=True, experiments=["E6"], out=tmp_path / "o", jobs=1, threads_per_job=1,
                log=again.append)
    assert not any(line.startswith("[dense") for line in again)  # every dense run cached
    assert json.loads((tmp_path / "o" / "results.json").read_text())["tests"]["E6"]["tests"][0]["diff"] == \
        tests[0]["diff"]
    assert took < 120, took


@pytest.mark.slow
@pytest.mark.skipif(not _has_fashion_mnist(), reason="the scenes are made from the Fashion-MNIST files")
def test_e6_dense_runs_in_worker_processes_match_one_process(tmp_path, monkeypatch):
    """--jobs 2: the dense runs train in two spawned workers; the same hashes and metrics as one
    process (the results do not depend on it)."""
    from mixerlab.compare import run_compare
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    logs = []
    for out, jobs in (("one", 1), ("two", 2)):
        run_compare("full", dry_run=True, experiments=["E6"], out=tmp_path / out, jobs=jobs, threads_per_job=1,
                    log=logs.append)
    assert any("12 to train (2 at once)" in line for line in logs)
    one, two = ({Path(r["run_dir"]).name: r["metrics"] for r in json.loads((tmp_path / o / "results.json")
                 .read_text())["dense"]} for o in ("one", "two"))
    assert one.keys() == two.keys() and len(one) == 12
    for k in one:
        for m in ("box_AP", "mIoU"):
            if m in one[k]:
                assert one[k][m] == pytest.approx(two[k][m], abs=1e-6), k


@pytest.mark.slow
def test_metric_with_seeds_covers_the_truth_in_a_crossed_seed_x_image_simulation():
    """Coverage of the 95 % interval of a dataset-level statistic (here a mean, so the truth is
    known): per-image correctness from a seed effect, an image effect and their interaction, three
    seeds, 300 images, 300 repetitions. The interval must cover the expected difference over seeds
    and images about 95 % of the time (>= 90 % allowed for the simulation's own noise)."""
    truth = _truth()
    rng = np.random.default_rng(11)
    n, s, reps, hits = 300, 3, 300, 0
    for _ in range(reps):
        img = rng.normal(0, 1.0, n)
        a, b = {}, {}
        for k in range(s):
            sa, sb = rng.normal(0, 0.25, 2)  # seed effects of each model
            pa = 1 / (1 + np.exp(-(0.6 + img + sa + rng.normal(0, 0.3, n))))
            pb = 1 / (1 + np.exp(-(0.4 + img + sb + rng.normal(0, 0.3, n))))
            a[k], b[k] = (rng.random(n) < pa).astype(float), (rng.random(n) < pb).astype(float)
        rec = metric_with_seeds(_acc, a, b, n_images=n, n_boot=200, boot_seed=int(rng.integers(1 << 30)))
        hits += rec["lo"] <= truth <= rec["hi"]
    assert hits / reps >= 0.90, hits / reps


def _truth(m=400_000, seed=123):
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1.0, m)
    sa, sb = rng.normal(0, 0.25, (2, m))
    pa = 1 / (1 + np.exp(-(0.6 + img + sa + rng.normal(0, 0.3, m))))
    pb = 1 / (1 + np.exp(-(0.4 + img + sb + rng.normal(0, 0.3, m))))
    return 100 * float(np.mean(pa - pb))

