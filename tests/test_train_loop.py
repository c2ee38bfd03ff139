"""End-to-end training on synthetic data (and a Fashion-MNIST slice): learning, run folder,
exact resume, non-finite loss, DP loss logging, BN calibration, evaluation."""
import json

import pytest
import torch

from conftest_train import HAVE_FMNIST, TINY_DEEPVIT, tiny_config
from mixerlab.engine import NonFiniteLossError, evaluate, load_checkpoint, resume_config, train
from mixerlab.engine.checkpoint import CheckpointError


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_reduces_loss_and_writes_run_folder(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(epochs=3, ema_decay=0.9, synthetic_size=256), out_dir=run)
    m = _metrics(run)
    assert [r["epoch"] for r in m] == [1, 2, 3]
    assert m[-1]["train_loss"] < m[0]["train_loss"] - 0.3
    assert m[-1]["val_top1"] >= 30.0  # 10 classes: chance is 10%
    for key in ("val_loss", "val_top5", "ema_val_top1", "lr", "images_per_s", "epoch_time_s", "peak_mem_mb"):
        assert key in m[-1]
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "last.safetensors", "best.safetensors"}
    assert summary["best_top1"] == max(r["val_top1"] for r in m)
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.config["model"] == "deit_micro" and ckpt.state["step"] == 3 * 16 and ckpt.has_ema
    json.loads((run / "summary.json").read_text())["machine"]["cpu_count"]
    # summary.csv: one row per epoch with the scalar fields of metrics.jsonl, as timm's train.py
    import csv
    with open(run / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_top1"]) for r in rows] == [r["val_top1"] for r in m]
    assert float(rows[-1]["train_loss"]) == pytest.approx(m[-1]["train_loss"], rel=1e-12)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    cfg = tiny_config(epochs=2, randaugment=5, random_erasing=0.25, hflip=0.5, train_crop="pad-crop",
                      mixup=0.8, cutmix=1.0, drop_path_rate=0.1, ema_decay=0.9, accum_steps=2, batch_size=8)
    full = tmp_path / "full"
    train(cfg, out_dir=full)

    def interrupt(step):
        if step == 5:  # mid-epoch 1 (8 steps per epoch), like a Ctrl-C
            raise KeyboardInterrupt

    part = tmp_path / "part"
    out = train(cfg, out_dir=part, on_step=interrupt)
    assert out["interrupted"] and load_checkpoint(part / "last.safetensors").state["step"] == 5
    train(resume_config(part), out_dir=part, resume=True)
    a, b = _metrics(full), _metrics(part)
    keys = [k for k in a[-1] if k.startswith(("train_", "val_", "ema_val_")) or k in ("epoch", "step", "lr")]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    wa = load_checkpoint(full / "last.safetensors").part("model")
    wb = load_checkpoint(part / "last.safetensors").part("model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_rejects_other_config(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=1), out_dir=run)
    with pytest.raises(CheckpointError, match="another config: lr="):
        train(tiny_config(epochs=1, lr=1e-2), out_dir=run, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(epochs=1), out_dir=run)
    cfg = resume_config(run, {"epochs": "2"})  # extending a run is allowed
    assert train(cfg, out_dir=run, resume=True)["steps"] == 16


def test_non_finite_loss_stops_and_keeps_last_good(tmp_path, monkeypatch):
    import mixerlab.engine.loop as loop

    class PoisonedTask(loop.ClassificationTask):
        calls = 0

        def __call__(self, forward, x, y):
            out = super().__call__(forward, x, y)
            PoisonedTask.calls += 1
            if PoisonedTask.calls == 11:  # step 11 = third step of epoch 2 (8 steps per epoch)
                out["loss"] = out["loss"] * float("nan")
            return out

    monkeypatch.setattr(loop, "ClassificationTask", PoisonedTask)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 11 \(epoch 2\).*Last good checkpoint kept"):
        train(tiny_config(epochs=2), out_dir=run)
    assert load_checkpoint(run / "last.safetensors").state["step"] == 8  # epoch 1's state, untouched
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_dp_loss_is_added_and_logged_for_lavit(tmp_path):
    run = tmp_path / "run"
    weights = {"dp_sym": 0.5, "dp_diag": 0.25}  # each term its own weight
    train(tiny_config(model="lavit_micro", model_args={}, epochs=1, synthetic_size=32, batch_size=8,
                      aux_weights=weights), out_dir=run)
    m = _metrics(run)[0]
    assert "train_dp_sym" in m and "train_dp_diag" in m
    expected = m["train_ce"] + 0.5 * m["train_dp_sym"] + 0.25 * m["train_dp_diag"]
    assert m["train_loss"] == pytest.approx(expected, rel=1e-4)


def test_an_auxiliary_term_without_a_weight_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'dp_diag', which has no weight in aux_weights"):
        train(tiny_config(model="lavit_micro", model_args={}, epochs=1, synthetic_size=32, batch_size=8,
                          aux_weights={"dp_sym": 1.0}), out_dir=tmp_path / "run")


def test_old_configs_with_one_dp_weight_still_load():
    from mixerlab.engine.config import config_from_dict
    d = tiny_config(model="lavit_micro").to_dict()
    d.pop("aux_weights")
    d["dp_weight"] = 0.3
    assert config_from_dict(d).aux_weights == {"dp_sym": 0.3, "dp_diag": 0.3}


def test_bn_calibration_runs_for_deepvit_and_eval_reproduces_it(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(model="deepvit_micro", model_args=TINY_DEEPVIT, epochs=1, bn_calibration_batches=1)
    train(cfg, out_dir=run)
    m = _metrics(run)[0]
    # The stored statistics are the calibrated ones: evaluating with them reproduces the logged numbers.
    res = evaluate(run, bn_calibration="off")
    assert res["top1"] == pytest.approx(m["val_top1"]) and res["loss"] == pytest.approx(m["val_loss"], rel=1e-5)
    bn = [v for k, v in load_checkpoint(run / "best.safetensors").part("model").items() if k.endswith("num_batches_tracked")]
    assert bn and all(int(v) == 1 for v in bn)  # reset, then exactly one calibration batch
    res2 = evaluate(run, bn_calibration="on", out_dir=tmp_path / "ev")
    assert (tmp_path / "ev" / "eval_synthetic_best.json").is_file()
    assert (tmp_path / "ev" / "eval_synthetic_best_confusion.png").stat().st_size > 1000
    assert res2["bn_calibration_batches"] == 1 and len(res2["per_class_top1"]) == 10


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_slice_learns(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(data="fashion-mnist", train_fraction=0.01, epochs=2, batch_size=32, eval_every=2), out_dir=run)
    m = _metrics(run)
    assert m[-1]["train_loss"] < m[0]["train_loss"]
    assert m[-1]["val_top1"] > 20.0  # 600 images, 2 epochs; chance is 10%


def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    import os
    import signal

    def terminate(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a scheduler pre-empting the job

    run = tmp_path / "run"
    out = train(tiny_config(epochs=1), out_dir=run, on_step=terminate)
    assert out["interrupted"] and load_checkpoint(run / "last.safetensors").state["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert train(resume_config(run), out_dir=run, resume=True)["steps"] == 8


def test_mixerlab_train_is_callable(tmp_path):
    import mixerlab.engine

    assert callable(mixerlab.train)  # the package forwards calls to mixerlab.engine.train
    assert mixerlab.train(tiny_config(epochs=1, synthetic_size=32), out_dir=tmp_path / "run")["steps"] == 2


def test_evaluation_reports_progress_and_the_total():
    from torch.utils.data import DataLoader, TensorDataset

    from mixerlab.engine.evaluate import evaluate_model
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    calls = []
    res = evaluate_model(torch.nn.Linear(4, 3), loader, device=torch.device("cpu"), num_classes=3,
                         progress=lambda d, n: calls.append((d, n)), progress_every_s=0.0)
    assert calls == [(4, 10), (8, 10), (10, 10)] and res["n"] == 10
    calls.clear()
    evaluate_model(torch.nn.Linear(4, 3), loader, device=torch.device("cpu"), num_classes=3,
                   progress=lambda d, n: calls.append((d, n)))  # a short evaluation prints nothing
    assert calls == []
