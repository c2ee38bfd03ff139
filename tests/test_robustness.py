"""A newcomer's first hour: LaViT's bounded diagonality term and its logging, progress by time
(training, evaluation, ablate), the throughput-collapse advice, the fx-tracing warning, a resumed
epoch's accounting, a full disk while checkpointing, pickled weight files, corrupt ablate caches.

Timing tests use a fake clock (``mixerlab.engine.report.clock``) advanced by the code under test,
so nothing sleeps."""
from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

import mixerlab
import mixerlab.engine.checkpoint as ck
import mixerlab.engine.report as rp
from conftest_train import tiny_config
from mixerlab.engine import load_checkpoint, resume_config, train
from mixerlab.engine.report import Reporter


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(rp, "clock", c)
    return c


def _lines(monkeypatch, clock) -> list[tuple[float, str]]:
    """Every progress line the Reporter prints, with the fake time it was printed at."""
    seen: list[tuple[float, str]] = []
    real = Reporter.log

    def log(self, msg):
        seen.append((clock.t, msg))
        real(self, msg)

    monkeypatch.setattr(Reporter, "log", log)
    return seen


def _max_gap(times: list[float]) -> float:
    return max(b - a for a, b in zip(times, times[1:]))


# ---------------------------------------------------------------------------------------- A
def test_lavit_diagonal_term_is_bounded_and_stops_at_dominance():
    from mixerlab.mixers.less_attention import LessAttention

    la = LessAttention(8, num_heads=1, num_tokens=4, mode="la")
    eye, uniform = torch.eye(4), torch.full((4, 4), 0.25)
    dominant = 0.4 * torch.eye(4) + 0.15  # diagonal 0.55, every other entry 0.15: rows sum to 1
    # identity, uniform and merely dominant maps all cost 0: nothing rewards collapsing to identity
    for p in (eye, uniform, dominant):
        assert LessAttention.dominance_term(p[None, None]).item() == pytest.approx(0.0, abs=1e-7)
    # a token out-attended by another key: row 0 puts .7 on key 1 and .1 on itself -> (.7 - .1) / 4 rows
    off = dominant.clone()
    off[0] = torch.tensor([0.1, 0.7, 0.1, 0.1])
    assert LessAttention.dominance_term(off[None, None]).item() == pytest.approx(0.6 / 4)
    # bounded: a permutation (all mass off the diagonal) gives the maximum, 1
    perm = torch.eye(4)[[1, 2, 3, 0]]
    assert LessAttention.dominance_term(perm[None, None]).item() == pytest.approx(1.0)
    # through the module on logits: >= 0 always, and no gradient once the diagonal dominates
    m = (3 * torch.eye(4) + 0.1 * torch.randn(4, 4))[None, None].requires_grad_(True)
    sym, diag = la.dp_terms(m)
    assert diag.item() == 0.0
    diag.backward()
    assert m.grad.abs().max().item() == 0.0
    for _ in range(5):
        _, d = la.dp_terms(torch.randn(2, 1, 4, 4) * 5)
        assert 0.0 <= d.item() <= 1.0


def test_lavit_training_loss_stays_at_least_the_cross_entropy_and_terms_are_shown(tmp_path, monkeypatch, clock):
    """With the old (linear) diagonal term the total loss went negative within 60 steps; now each
    aux term is >= 0, and the progress line and epoch line show ce and every aux term."""
    seen = _lines(monkeypatch, clock)
    cfg = tiny_config(model="lavit_micro", model_args={}, synthetic_size=64, synthetic_chans=1, batch_size=16,
                      epochs=1, progress="plain", log_every=1, aux_weights={"dp_sym": 1.0, "dp_diag": 1.0})
    train(cfg, out_dir=tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["train_dp_diag"] >= 0 and m["train_dp_sym"] >= 0 and m["train_loss"] >= m["train_ce"] - 1e-6
    steps = [s for _, s in seen if s.startswith("step ")]
    assert steps and all("(ce " in s and "dp_sym " in s and "dp_diag " in s for s in steps), steps
    epoch = [s for _, s in seen if s.startswith("epoch 1 train_loss")]
    assert epoch and "train_ce" in epoch[0] and "train_dp_sym" in epoch[0] and "train_dp_diag" in epoch[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"train_ce", "train_dp_sym", "train_dp_diag"} <= set(summary["final"])


def test_analysis_dp_diag_matches_the_training_term():
    from mixerlab.analysis import metrics as M
    from mixerlab.mixers.less_attention import LessAttention

    p = torch.randn(2, 3, 5, 5).softmax(-1)
    assert M.diagonality_terms(p)["dp_diag"] == pytest.approx(LessAttention.dominance_term(p).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------- B
def test_training_progress_every_few_seconds_when_steps_are_slow(tmp_path, monkeypatch, clock):
    """log_every 50 with 8 s steps would leave 400 s between lines; by time, no gap exceeds 20 s,
    evaluation included."""
    import mixerlab.engine.loop as loop

    seen = _lines(monkeypatch, clock)
    real_task = loop.ClassificationTask

    class SlowTask(real_task):
        def __call__(self, *a, **k):
            clock.t += 8.0  # an 8-second step
            return super().__call__(*a, **k)

    monkeypatch.setattr(loop, "ClassificationTask", SlowTask)
    real_eval = loop.evaluate_model

    def slow_eval(model, loader, **kw):  # 3 s per evaluation batch
        class Slow:
            sampler = loader.sampler

            def __iter__(self):
                for b in loader:
                    clock.t += 3.0
                    yield b
        return real_eval(model, Slow(), **kw)

    monkeypatch.setattr(loop, "evaluate_model", slow_eval)
    cfg = tiny_config(epochs=1, synthetic_size=128, eval_batch_size=8, progress="plain", log_every=50)
    train(cfg, out_dir=tmp_path / "run")
    times = [t for t, s in seen if not s.startswith("training ")]
    assert len(times) >= 5 and _max_gap([1000.0, *times]) <= 20.0, seen
    assert any("evaluated" in s for _, s in seen)


def test_evaluate_model_reports_by_time(clock):
    from mixerlab.engine.evaluate import evaluate_model

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(20)]

    class Loader:
        sampler = range(40)

        def __iter__(self):
            for b in data:
                clock.t += 4.0
                yield b

    calls = []
    evaluate_model(model, Loader(), device=torch.device("cpu"), num_classes=3,
                   progress=lambda d, n: calls.append((clock.t, d)))
    assert calls[-1][1] == 40 and _max_gap([1000.0, *[t for t, _ in calls]]) <= 20.0


def test_ablate_search_reports_by_time(tmp_path, monkeypatch, clock):
    import sys

    from mixerlab.surgery import ablate
    from mixerlab.weights import save_weights, weights_metadata
    ab = sys.modules["mixerlab.surgery.ablate"]  # the package exports the function under the same name

    torch.manual_seed(0)
    m = mixerlab.create_model("deit_micro", depth=2, dim=32, num_heads=2, img_size=16, in_chans=1,
                              num_classes=4, patch_size=4)
    path = tmp_path / "w.safetensors"
    save_weights(m.state_dict(), path, metadata=weights_metadata(m))
    real_ft = ab.finetune

    def slow_model_calls(model, *a, **k):
        model.register_forward_pre_hook(lambda *_: setattr(clock, "t", clock.t + 2.0))  # 2 s a forward
        return real_ft(model, *a, **k)

    monkeypatch.setattr(ab, "finetune", slow_model_calls)
    logs = []
    ablate(path, data="synthetic", out=tmp_path / "abl", val_size=32, finetune_steps=30, batch_size=16,
           synthetic_size=256, tolerance=100.0, replace=["identity"], time_reps=1,
           log=lambda s: logs.append((clock.t, s)))
    assert any("fine-tuning step" in s for _, s in logs), logs
    assert _max_gap([1000.0, *[t for t, _ in logs]]) <= 20.0, logs


# ---------------------------------------------------------------------------------------- C
def _feed(watch, clock, rate: float, seconds: float, batch: int = 64):
    out = []
    for _ in range(int(seconds * rate / batch)):
        clock.t += batch / rate
        msg = watch.add(batch)
        if msg:
            out.append(msg)
    return out


def test_throughput_collapse_prints_one_advice_line(clock):
    from mixerlab.engine.report import ThroughputWatch

    w = ThroughputWatch(threads=2, resume_cmd="mixerlab train --resume runs/x --threads 1")
    assert _feed(w, clock, 387, 40) == []
    assert _feed(w, clock, 300, 40) == []  # a mild slowdown is not a collapse
    msgs = _feed(w, clock, 28, 120)
    assert len(msgs) == 1, msgs
    assert "--threads 1" in msgs[0] and "OMP_NUM_THREADS=1" in msgs[0] and "28 images/s" in msgs[0]
    assert _feed(w, clock, 28, 120) == []  # once per run
    # a short dip (one window) does not trigger it
    w2 = ThroughputWatch(threads=2)
    assert _feed(w2, clock, 387, 40) + _feed(w2, clock, 28, 20) + _feed(w2, clock, 387, 60) == []


def test_throughput_collapse_in_the_training_loop(tmp_path, monkeypatch, clock):
    import mixerlab.engine.loop as loop

    seen = _lines(monkeypatch, clock)
    calls = {"n": 0}

    class Task(loop.ClassificationTask):
        def __call__(self, *a, **k):
            calls["n"] += 1
            clock.t += 1.0 if calls["n"] <= 40 else 15.0  # 16 img/s, then about 1
            return super().__call__(*a, **k)

    monkeypatch.setattr(loop, "ClassificationTask", Task)
    train(tiny_config(epochs=1, synthetic_size=16 * 60, progress="plain", log_every=1000), out_dir=tmp_path / "r")
    advice = [s for _, s in seen if "--threads 1" in s]
    assert len(advice) == 1 and f"--resume {tmp_path / 'r'}" in advice[0]


# ---------------------------------------------------------------------------------------- D
def test_convit_forward_does_not_call_the_deprecated_fx_check(monkeypatch, capfd):
    import torch.fx._symbolic_trace as st

    called = []
    monkeypatch.setattr(st, "is_fx_tracing_warning", lambda: called.append(1), raising=False)
    model = mixerlab.create_model("convit_micro")
    model(torch.randn(1, 3, 32, 32))
    assert not called
    assert "is_fx_tracing will return true" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------- E
def test_resume_right_after_the_epochs_last_step_logs_the_whole_epoch(tmp_path, monkeypatch, clock):
    import mixerlab.engine.loop as loop

    class Task(loop.ClassificationTask):
        def __call__(self, *a, **k):
            clock.t += 0.5
            return super().__call__(*a, **k)

    monkeypatch.setattr(loop, "ClassificationTask", Task)
    cfg = tiny_config(epochs=1, synthetic_size=128)  # 8 steps of 16 images

    def stop(step):
        if step == 8:
            raise KeyboardInterrupt

    run = tmp_path / "r"
    assert train(cfg, out_dir=run, on_step=stop)["interrupted"]
    train(resume_config(run), out_dir=run, resume=True)
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["images_per_s"] == pytest.approx(128 / 4.0, rel=0.01)  # 8 steps x 0.5 s
    assert rec["epoch_time_s"] >= 0.0 and rec["images_per_s"] > 0
    # mid-epoch: the part before the interrupt counts too
    def stop3(step):
        if step == 3:
            raise KeyboardInterrupt

    run2 = tmp_path / "r2"
    train(cfg, out_dir=run2, on_step=stop3)
    train(resume_config(run2), out_dir=run2, resume=True)
    rec2 = json.loads((run2 / "metrics.jsonl").read_text().splitlines()[0])
    assert rec2["images_per_s"] == pytest.approx(128 / 4.0, rel=0.01)


# ---------------------------------------------------------------------------------------- F
def _safetensors_enospc(tensors, path, metadata=None):
    from safetensors import SafetensorError
    with open(path, "wb") as f:
        f.write(b"partial")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _plain_enospc(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize("writer", [_safetensors_enospc, _plain_enospc])
def test_disk_full_in_save_checkpoint_is_one_clear_oserror(tmp_path, monkeypatch, writer):
    model = torch.nn.Linear(2, 2)
    target = tmp_path / "last.safetensors"
    ck.save_checkpoint(target, model=model, config={}, state={"epoch": 1})
    before = target.read_bytes()
    monkeypatch.setattr(ck, "save_file", writer)
    with pytest.raises(ck.CheckpointWriteError) as info:
        ck.save_checkpoint(target, model=model, config={}, state={"epoch": 2})
    e = info.value
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and "disk full" in e.strerror
    assert e.filename == str(target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


@pytest.mark.parametrize("first", [True, False])
def test_disk_full_during_training_is_one_line_exit_2(tmp_path, monkeypatch, capsys, first):
    from mixerlab.cli.main import main

    real = ck.save_file

    def writer(tensors, path, metadata=None):
        if first or json.loads(metadata["state"])["epoch"] == 2:
            return _safetensors_enospc(tensors, path, metadata)
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", writer)
    run = tmp_path / "run"
    code = main(["train", "--model", "deit_micro", "--set", "model_args={dim: 32, patch_size: 8}", "--data",
                 "synthetic", "--synthetic-size", "64", "--batch-size", "16", "--epochs", "2", "--progress",
                 "none", "--num-threads", "1", "--ema-decay", "null", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "disk full" in err and "SafetensorError" not in err
    if first:
        assert "no checkpoint was written yet" in err
    else:
        assert "intact" in err and load_checkpoint(run / "last.safetensors").state["epoch"] == 1
        assert not [p for p in run.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------- G
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


@pytest.mark.parametrize("kind", ["zip", "old-pickle", "model"])
def test_pickled_pth_is_refused_with_safe_conversion_advice(tmp_path, recwarn, kind):
    from mixerlab.weights import read_weights

    path = tmp_path / "w.pth"
    if kind == "zip":
        torch.save({"model": {"a": torch.zeros(2)}, "x": _Evil()}, path)
    elif kind == "old-pickle":
        with open(path, "wb") as f:
            pickle.dump({"a": torch.zeros(2), "b": _Evil()}, f, protocol=2)
    else:
        torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError) as info:
        read_weights(path)
    msg = str(info.value)
    assert str(path) in msg and "pickled" in msg and "safetensors" in msg and "state dict" in msg
    assert "weights_only" not in msg and "will likely succeed" not in msg
    assert not [w for w in recwarn if "pickle" in str(w.message).lower() or "weights_only" in str(w.message)]


# ---------------------------------------------------------------------------------------- H
def test_corrupt_ablate_cache_is_named_and_recomputed(tmp_path):
    from mixerlab.surgery import ablate
    from mixerlab.weights import save_weights, weights_metadata

    torch.manual_seed(0)
    m = mixerlab.create_model("deit_micro", depth=1, dim=16, num_heads=2, img_size=16, in_chans=1,
                              num_classes=4, patch_size=4)
    path = tmp_path / "w.safetensors"
    save_weights(m.state_dict(), path, metadata=weights_metadata(m))
    out = tmp_path / "abl"
    kw = dict(data="synthetic", out=out, val_size=16, finetune_steps=1, batch_size=16, synthetic_size=128,
              replace=["identity"], time_reps=1, search=False)
    first = ablate(path, log=lambda s: None, **kw)
    cell = out / "cells" / "block0__identity.json"
    cell.write_text('{"group": "block 0",\n')  # torn write: "Expecting value: line 2 column 1"
    logs = []
    again = ablate(path, log=logs.append, **kw)
    assert any(str(cell) in s and "computing it again" in s for s in logs), logs
    assert again["cells"][0]["finetuned_acc"] == first["cells"][0]["finetuned_acc"]
    assert json.loads(cell.read_text())["status"] == "ok"
    (out / "settings.json").write_text("{\n")
    with pytest.raises(ValueError, match="settings.json"):
        ablate(path, log=lambda s: None, **kw)


def test_convert_leaves_no_temporary_file_after_a_kill(tmp_path, capsys):
    """Issue 31 (16): a ``kill -9`` while convert writes OUT leaves ``.OUT.tmp-<pid>``; the next
    write of OUT removes it (a live writer's temporary file is left alone)."""
    import subprocess
    import sys

    import timm
    from safetensors.torch import save_file

    from mixerlab.cli.main import main
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(timm.create_model("deit_tiny_patch16_224").state_dict(), str(src))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale, live = tmp_path / f".out.safetensors.tmp-{dead}", tmp_path / ".out.safetensors.tmp-1"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"someone else writing")
    assert main(["convert", "--from", "timm", str(src), str(dst)]) == 0
    assert dst.is_file() and not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.safetensors.tmp-1", "in.safetensors", "out.safetensors"]


def test_a_timm_run_converts_to_timms_own_state_dict(tmp_path, capsys):
    """Issue 31 (17): ``convert --from mixerlab`` takes a ``train --model timm:NAME`` run folder
    (it is a timm model): the output loads strictly into ``timm.create_model(NAME)``."""
    import timm
    from safetensors.torch import load_file

    from mixerlab.cli.main import main
    run = tmp_path / "run"
    train(tiny_config(epochs=1, model="timm:resnet18", model_args={}, synthetic_size=32), out_dir=run)
    out = tmp_path / "resnet18.safetensors"
    assert main(["convert", "--from", "mixerlab", str(run), str(out)]) == 0
    assert "timm resnet18 state dict" in capsys.readouterr().out
    net = timm.create_model("resnet18", num_classes=10, in_chans=1)
    net.load_state_dict(load_file(str(out)))  # strict
    trained, _ = mixerlab.open_model(run)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(net.eval()(x), trained.eval()(x))
