"""``mixerlab dense``: train + eval + resume on tiny scenes (fake Fashion-MNIST files written by the
test), the run folder, and bad input -> one line, exit status 2."""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from mixerlab.cli.main import main
from mixerlab.dense.scenes import SceneSpec, fashion_mnist_scenes, scene_paths
from mixerlab.dense.train import dense_config, open_dense_run, train_dense
from mixerlab.engine.checkpoint import load_checkpoint


def _write_idx(path, array: np.ndarray) -> None:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.fixture()
def fm(tmp_path, monkeypatch):
    """Fake Fashion-MNIST IDX files (squares, discs, bars) and a private scenes cache."""
    folder = tmp_path / "fm"
    folder.mkdir()
    yy, xx = np.mgrid[:28, :28]
    shapes = [(abs(yy - 14) < 10) & (abs(xx - 14) < 10), (yy - 14) ** 2 + (xx - 14) ** 2 < 110,
              (abs(yy - 14) < 12) & (abs(xx - 14) < 4)]
    for stem in ("train", "t10k"):
        labels = np.arange(30) % 3
        images = np.stack([np.where(shapes[k], 200, 0) for k in labels]).astype(np.uint8)
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    return str(folder)


TINY = ["--backbone", "poolformer_micro", "--img-size", "64", "--scenes-train", "6", "--scenes-val", "3",
        "--batch-size", "3", "--epochs", "1", "--threads", "1", "--set", "fpn_channels=32",
        "--set", "head_channels=32"]


def _cli(capsys, *argv):
    rc = main(["dense", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_eval_retinanet_and_the_run_folder(tmp_path, fm, capsys):
    run = tmp_path / "det"
    rc, out, err = _cli(capsys, "train", "--task", "retinanet", "--data-dir", fm, "--out", str(run), *TINY,
                        "--set", "progress_every_s=0")
    assert rc == 0, err
    assert "done: retinanet on poolformer_micro, 2 iterations" in out
    assert "iter 1/2 epoch 1 loss" in err and "iter 2/2" in err  # progress lines (here: every iteration)
    for name in ("config.yaml", "last.safetensors", "best.safetensors", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == summary["total_iters"] == 2 and summary["metric"] == "box_AP"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # the untrained baseline, then the epoch end
    assert summary["initial"] == records[0]["box_AP"] and summary["final"] == records[1]["box_AP"]
    rc, out, err = _cli(capsys, "eval", str(run), "--json", str(tmp_path / "m.json"))
    assert rc == 0, err
    metrics = json.loads(out)
    assert set(metrics) >= {"box_AP", "box_AP50", "box_AP_s", "detections"}
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    # a new run into a finished run folder: refused, one line, exit 2
    rc, out, err = _cli(capsys, "train", "--task", "retinanet", "--data-dir", fm, "--out", str(run), *TINY)
    assert rc == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the folder is marked dense: a classification run or an eval refuses it, and dense refuses theirs
    from mixerlab.engine.run_folder import claim_folder, folder_kind
    assert folder_kind(run) == "dense"
    rc = main(["train", "--model", "deit_micro", "--data", "synthetic", "--out", str(run), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "is a dense folder (written by mixerlab dense)" in err, err
    other = claim_folder(tmp_path / "cls", "train")
    rc, out, err = _cli(capsys, "train", "--task", "retinanet", "--data-dir", fm, "--out", str(other), *TINY)
    assert rc == 2 and "is a train folder (written by mixerlab train)" in err and not (other / "config.yaml").exists()


def test_resume_continues_exactly(tmp_path, fm, capsys):
    """Interrupted after 1 of 4 iterations and resumed from the CLI = the run never interrupted
    (data order, flips, dropout RNG, optimiser state)."""
    opts = dict(task="semantic_fpn", backbone="poolformer_micro", data_dir=fm, img_size=64, batch_size=3,
                epochs=2, num_threads=1, fpn_channels=32, head_channels=32, eval_at_start=False,
                scenes={"num_train": 6, "num_val": 3})
    quiet = lambda msg: None
    full = train_dense(dense_config(**opts), tmp_path / "full", log=quiet)
    part = train_dense(dense_config(**opts), tmp_path / "part", log=quiet, stop_after=1)
    assert part["interrupted"] and part["iters"] == 1 and not (tmp_path / "part" / "summary.json").exists()
    assert load_checkpoint(tmp_path / "part" / "last.safetensors").state["iter"] == 1
    rc, out, err = _cli(capsys, "train", "--resume", str(tmp_path / "part"), "--num-threads", "1")
    assert rc == 0, err
    assert "resumed" in err and "at iteration 1/4" in err
    resumed = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert resumed["iters"] == full["iters"] == 4
    a = load_checkpoint(tmp_path / "full" / "last.safetensors").part("model")
    b = load_checkpoint(tmp_path / "part" / "last.safetensors").part("model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"] == pytest.approx(full["final"])
    model, spec, _ = open_dense_run(tmp_path / "part")
    assert spec["task"] == "semantic_fpn" and spec["num_classes"] == 11  # background + the 10 Fashion-MNIST classes
    # changing what was trained on resume is refused
    rc, out, err = _cli(capsys, "train", "--resume", str(tmp_path / "part"), "--lr", "0.1")
    assert rc == 2 and "lr cannot change on resume" in err


def test_bad_input_is_one_line_and_exit_2(tmp_path, fm, capsys):
    # an input size the backbone cannot divide (80 px scenes; poolformer_micro needs multiples of 32)
    rc, out, err = _cli(capsys, "train", "--task", "semantic_fpn", "--data-dir", fm, "--out", str(tmp_path / "s"),
                        *TINY[:2], "--img-size", "80", "--scenes-train", "2", "--scenes-val", "1")
    assert rc == 2 and "input size 80 is not divisible by 32" in err and "--img-size" in err
    assert len(err.strip().splitlines()) == 2 and err.startswith("scenes: writing")  # the scenes line, then the error
    assert not (tmp_path / "s").exists()  # a run that never started leaves no folder
    # unknown task / recipe option
    rc, out, err = _cli(capsys, "train", "--task", "yolo", "--out", str(tmp_path / "y"))
    assert rc == 2 and "task='yolo'; allowed" in err
    rc, out, err = _cli(capsys, "train", "--out", str(tmp_path / "y"), "--set", "colour=red")
    assert rc == 2 and "unknown option(s) ['colour']" in err
    # a run to evaluate on other jsons
    run = tmp_path / "det"
    opts = dict(task="retinanet", backbone="poolformer_micro", data_dir=fm, img_size=64, batch_size=3, epochs=1,
                num_threads=1, fpn_channels=32, eval_at_start=False, scenes={"num_train": 3, "num_val": 2})
    train_dense(dense_config(**opts), run, log=lambda m: None)
    root = fashion_mnist_scenes(SceneSpec(num_train=3, num_val=2, canvas=64), data_dir=fm)
    p = scene_paths(root, "val")
    gt = json.loads(p["ann_file"].read_text())
    rc, out, err = _cli(capsys, "eval", str(run), "--ann-file", str(p["ann_file"]), "--images", str(p["images"]))
    assert rc == 0, err
    cases = {
        "missing image": lambda d: d["images"].append({"id": 99, "file_name": "nope.png", "width": 64, "height": 64}),
        "mask outside": lambda d: d["annotations"][0].update(segmentation=[[0, 0, 90, 0, 90, 10]]),
        "box outside": lambda d: d["annotations"][0].update(bbox=[60, 0, 20, 10]),
        "category": lambda d: d["categories"].append({"id": 42, "name": "hat"}),
    }
    wants = {"missing image": "image 'nope.png' (id 99) not found", "mask outside": "polygon mask lies outside",
             "box outside": "lies outside its image", "category": "category id(s) [42] are not among the model's"}
    for case, edit in cases.items():
        bad = json.loads(json.dumps(gt))
        edit(bad)
        path = tmp_path / f"{case.replace(' ', '_')}.json"
        path.write_text(json.dumps(bad))
        rc, out, err = _cli(capsys, "eval", str(run), "--ann-file", str(path), "--images", str(p["images"]))
        assert rc == 2, case
        assert wants[case] in err and str(path) in err, (case, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # not a dense run
    rc, out, err = _cli(capsys, "eval", str(tmp_path / "nothing"))
    assert rc == 2 and "Traceback" not in err


def test_mask_rcnn_trains_and_reports_box_and_mask_ap(tmp_path, fm):
    opts = dict(task="mask_rcnn", backbone="poolformer_micro", data_dir=fm, img_size=64, batch_size=2, epochs=1,
                num_threads=1, fpn_channels=32, eval_at_start=False, max_eval_images=1,
                scenes={"num_train": 2, "num_val": 2})
    summary = train_dense(dense_config(**opts), tmp_path / "mrcnn", log=lambda m: None)
    assert summary["iters"] == 1 and summary["metric"] == "box_AP"
    final = summary["final_metrics"]
    assert {"box_AP", "mask_AP", "mask_AP50"} <= set(final) and 0.0 <= final["mask_AP"] <= 1.0
    model, spec, _ = open_dense_run(tmp_path / "mrcnn")
    assert spec["num_classes"] == 10 and model.roi_heads.box_predictor.cls_score.out_features == 11


@pytest.mark.slow
@pytest.mark.parametrize("task,metric,floor", [("retinanet", "box_AP", 0.1), ("semantic_fpn", "mIoU", 0.3)])
def test_models_learn_the_fake_garments(tmp_path, fm, task, metric, floor):
    """Training works end to end: on scenes of three easy shapes, a randomly initialised
    poolformer_micro learns to find them (the untrained model scores about 0)."""
    opts = dict(task=task, backbone="poolformer_micro", data_dir=fm, img_size=64, batch_size=4, epochs=10,
                num_threads=1, fpn_channels=32, head_channels=32, lr=2e-3, warmup_iters=10, eval_every=10,
                scenes={"num_train": 32, "num_val": 8, "max_objects": 4, "min_size": 0.25})
    s = train_dense(dense_config(**opts), tmp_path / task, log=lambda m: None)
    assert s["initial"] < 0.05 and s["final"] > floor, s
