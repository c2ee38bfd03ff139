"""Run folders that never lie (issue 15): one writer per folder, the epoch end as one transition
that an interrupt leaves before or after (and resume completes), a clear line and exit status 2
for every bad input and file-system fault.

The interrupt tests run ``mixerlab train`` in a child process that stops at a named moment
(``MIXERLAB_TEST_PAUSE=POINT@N``, see ``mixerlab.engine.checkpoint.pause_for_tests``) and signal
or kill it there."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest_train import ROOT, tiny_config
from mixerlab.cli.main import main
from mixerlab.engine import load_checkpoint, resume_config, train
from mixerlab.engine.checkpoint import read_state, resolve_checkpoint
from mixerlab.engine.loop import _write_metrics
from mixerlab.engine.runlock import RunFolderBusyError, run_folder_lock

# 4 steps per epoch of a 66k-parameter deit on 64 synthetic images: ~0.1 s per epoch.
TINY = ["--model", "deit_micro", "--set", "model_args={dim: 32, patch_size: 8}", "--data", "synthetic",
        "--synthetic-size", "64", "--batch-size", "16", "--lr", "3e-3", "--warmup-epochs", "0",
        "--randaugment", "null", "--mixup", "0", "--cutmix", "0", "--ema-decay", "null", "--num-threads", "1",
        "--progress", "none", "--deterministic", "--eval-batch-size", "64"]


def _main(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str, code: int, expect: int = 2) -> str:
    assert code == expect, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_consistent(run: Path, epochs: int) -> dict:
    """A finished run folder: one metrics line per epoch, the summary's final record is the last
    line, best.safetensors holds the best epoch the summary names, no temporary files."""
    m = _metrics(run)
    assert [r["epoch"] for r in m] == list(range(1, epochs + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"] == m[-1] and summary["steps"] == m[-1]["step"]
    evaluated = [r for r in m if "val_top1" in r]
    best = max(evaluated, key=lambda r: r["val_top1"])  # first of equals, as the loop keeps it
    assert summary["best_epoch"] == best["epoch"] and summary["best_top1"] == best["val_top1"]
    assert read_state(run / "best.safetensors")["epoch"] == best["epoch"]
    last = read_state(run / "last.safetensors")
    assert last["epoch"] == epochs and last["step_in_epoch"] == 0
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    return summary


class Paused:
    """``mixerlab train ARGS`` in a child process, stopped at ``MIXERLAB_TEST_PAUSE=point``."""

    def __init__(self, tmp: Path, point: str, *args: str):
        self.release = tmp / f"release-{point.replace(':', '-').replace('@', '-')}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": str(ROOT), "MIXERLAB_TEST_PAUSE": point, "MIXERLAB_TEST_RELEASE": str(self.release)}
        self.proc = subprocess.Popen([sys.executable, "-m", "mixerlab", "train", *args], cwd=ROOT, env=env,
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.seen = []
        for line in self.proc.stderr:
            self.seen.append(line)
            if line.startswith(f"mixerlab-test-pause {point}"):
                break
        else:
            raise AssertionError(f"child never reached {point}: {''.join(self.seen)[-2000:]}")

    def signal(self, sig: int, *, release: bool = True) -> tuple[int, str]:
        self.proc.send_signal(sig)
        time.sleep(0.2)  # let the handler run before the child resumes
        if release:
            self.release.touch()
        err = self.proc.stderr.read()
        return self.proc.wait(60), err


# ----------------------------------------------------------------------------- case 1: the epoch end
# one child process each (~5 s, 30 s on a busy 2-core box): kill -9 runs by default, SIGINT with -m slow
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGKILL])
def test_interrupt_during_final_epoch_end_then_resume_is_consistent(tmp_path, capsys, sig):
    """Case 1: a signal (or kill -9) between the final epoch's last and best checkpoints. The
    folder is before or after the epoch end (SIGINT waits for it to finish; kill -9 is completed
    by resume), and the summary's best is the one best.safetensors holds (eval agrees)."""
    run = tmp_path / "run"
    # epoch 1 is not evaluated, so the final epoch is the (first) best: best.safetensors is new there
    child = Paused(tmp_path, "committed@2", *TINY, "--epochs", "2", "--eval-every", "2", "--out", run)
    code, err = child.signal(sig)
    if sig == signal.SIGINT:
        assert code == 130 and "Traceback" not in err, err
        _assert_consistent(run, 2)  # the deferred signal let the epoch end complete
    else:
        assert code == -signal.SIGKILL
        assert read_state(run / "last.safetensors")["epoch"] == 2 and not (run / "best.safetensors").exists()
        assert resolve_checkpoint(run) == run / "last.safetensors"  # readers get the best weights meanwhile
    code, out, err = _main(capsys, "train", "--resume", run)
    assert code == 0, err
    summary = _assert_consistent(run, 2)
    code, out, err = _main(capsys, "eval", "--checkpoint", run, "--json")
    assert code == 0 and json.loads(out)["top1"] == pytest.approx(summary["best_top1"])


def test_resume_of_a_finished_run_keeps_its_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)[0] == 0
    (run / "summary.json").unlink()  # e.g. killed while writing it
    assert _main(capsys, "train", "--resume", run)[0] == 0
    assert _assert_consistent(run, 1)["final"]["epoch"] == 1


# ----------------------------------------------------------------------------- case 2: kill -9 mid-run
@pytest.mark.slow  # one child process + two in-process trainings (~15 s on 2 shared cores)
def test_kill_9_inside_a_checkpoint_write_resumes_bit_identically(tmp_path, capsys):
    """Case 2: kill -9 while epoch 1's last.safetensors is being written (temporary file complete,
    not yet renamed): resume removes the temporary file, logs each epoch once and ends with the
    weights of an uninterrupted run."""
    run, full = tmp_path / "run", tmp_path / "full"
    child = Paused(tmp_path, "save:last@1", *TINY, "--epochs", "2", "--out", run)
    code, _ = child.signal(signal.SIGKILL, release=False)
    assert code == -signal.SIGKILL
    assert [p.name for p in run.iterdir() if p.name.startswith(".last.safetensors.tmp-")]
    assert not (run / "metrics.jsonl").exists()  # the metrics line comes after the commit
    assert _main(capsys, "train", "--resume", run)[0] == 0
    assert _main(capsys, "train", *TINY, "--epochs", "2", "--out", full)[0] == 0
    _assert_consistent(run, 2)
    a, b = load_checkpoint(full / "last.safetensors").part("model"), load_checkpoint(run / "last.safetensors").part("model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s", "peak_mem_mb")} for r in rows]  # noqa: E731
    assert strip(_metrics(full)) == strip(_metrics(run))


def test_metrics_are_one_line_per_epoch_up_to_the_checkpoint(tmp_path):
    """Case 2 (older folders): duplicated, torn and later lines are dropped on resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n{"epoch": 2, "a": 2}\n{"epoch": 3, "a": 3}\n{"epo')
    _write_metrics(tmp_path, None, 2)
    assert path.read_text() == '{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n'
    _write_metrics(tmp_path, {"epoch": 2, "a": 9}, 2)  # the checkpoint's own record wins
    assert path.read_text() == '{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 9}\n'


# ----------------------------------------------------------------------------- case 3: one writer
@pytest.mark.slow  # one child process
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    """Case 3: while a training holds its folder, a second training into it (new or --resume) gets
    one line naming the holder's pid and exits 2; the first run finishes untouched."""
    run = tmp_path / "run"
    child = Paused(tmp_path, "step@2", *TINY, "--epochs", "1", "--seed", "5", "--out", run)
    try:
        code, _, err = _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)
        assert f"pid {child.proc.pid} on " in _one_line(err, code) and "mixerlab train" in err
        code, _, err = _main(capsys, "train", "--resume", run)
        assert f"pid {child.proc.pid}" in _one_line(err, code)
    finally:
        child.release.touch()
    assert child.proc.wait(60) == 0
    assert load_checkpoint(run / "last.safetensors").config["seed"] == 5
    assert len(_metrics(run)) == 1


def test_run_folder_lock_is_exclusive_and_reentrant(tmp_path, monkeypatch):
    """flock conflicts between open files even within one process, so forgetting that this process
    holds the folder (what another process sees) makes the second request fail, naming us."""
    import mixerlab.engine.runlock as runlock

    folder = tmp_path / "f"
    with run_folder_lock(folder):
        with run_folder_lock(folder):  # the same process may nest it (compare -> train)
            pass
        monkeypatch.setattr(runlock, "_HELD", {})
        with pytest.raises(RunFolderBusyError, match=rf"run folder {folder} is in use by pid {os.getpid()} on "):
            with run_folder_lock(folder):
                pass
    with run_folder_lock(folder):  # released
        pass


# ----------------------------------------------------------------------------- cases 4, 5, 7
def test_folder_with_run_files_but_no_config_is_not_new(tmp_path, capsys):
    """Case 4: best/summary/metrics without config.yaml: --out refuses and overwrites nothing."""
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("best.safetensors", "good best"), ("summary.json", "{}"), ("metrics.jsonl", '{"epoch": 1}\n')):
        (run / name).write_text(text)
    code, _, err = _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)
    assert "already holds a run (best.safetensors, metrics.jsonl, summary.json)" in _one_line(err, code)
    code, _, err = _main(capsys, "train", "--resume", run)
    assert "no last.safetensors" in _one_line(err, code)
    assert (run / "best.safetensors").read_text() == "good best" and (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_failure_before_the_first_checkpoint_leaves_a_restartable_folder(tmp_path, capsys):
    """Cases 5 and 7: NaN in the first epoch names no checkpoint that does not exist and leaves
    nothing behind; a folder holding only config.yaml starts again with --out or --resume."""
    run = tmp_path / "run"
    code, _, err = _main(capsys, "train", *TINY, "--epochs", "1", "--lr", "1e30", "--min-lr", "1e30", "--out", run)
    assert "No checkpoint had been written yet" in _one_line(err, code, expect=1) and "Last good" not in err
    assert not run.exists()
    run.mkdir()
    code, out, _ = _main(capsys, "train", *TINY, "--epochs", "1", "--dry-run")
    (run / "config.yaml").write_text(out)  # what a run killed before its first checkpoint leaves
    code, _, err = _main(capsys, "train", "--resume", run)
    assert code == 0, err
    shutil.rmtree(run)
    run.mkdir()
    (run / "config.yaml").write_text(out)
    assert _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)[0] == 0
    _assert_consistent(run, 1)


# ----------------------------------------------------------------------------- case 6: file-system faults
def test_out_that_is_a_file_or_inside_one(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _main(capsys, "train", *TINY, "--out", f)
    assert "is a file, not a folder" in _one_line(err, code)
    code, _, err = _main(capsys, "train", *TINY, "--out", f / "run")
    assert "inside" in _one_line(err, code) and f.read_text() == "x"


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """Case 6: ENOSPC while writing epoch 2's checkpoint: one line, exit 2, epoch 1 intact, and
    the folder resumes to the end."""
    import mixerlab.engine.checkpoint as ck

    real = ck.save_file

    def full(tensors, path, metadata=None):
        if json.loads(metadata["state"])["epoch"] == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", full)
    run = tmp_path / "run"
    code, _, err = _main(capsys, "train", *TINY, "--epochs", "2", "--out", run)
    assert "No space left on device" in _one_line(err, code) and "(epoch 1, step 4) is intact" in err
    assert read_state(run / "last.safetensors")["epoch"] == 1 and len(_metrics(run)) == 1
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(ck, "save_file", real)
    assert _main(capsys, "train", "--resume", run)[0] == 0
    _assert_consistent(run, 2)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written into: chmod for a normal user; a read-only tmpfs for root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                                                       capture_output=True).returncode:
        pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


@pytest.mark.parametrize("command", ["train", "eval", pytest.param("convert", marks=pytest.mark.slow),
                                     pytest.param("analyze", marks=pytest.mark.slow),
                                     pytest.param("bench", marks=pytest.mark.slow)])
def test_read_only_output_is_one_line_for_every_command(tmp_path, capsys, readonly_dir, command):
    """Case 6: train, eval, analyze, bench and convert into a read-only place: one line, exit 2."""
    from mixerlab import create_model
    from mixerlab.weights import save_weights, weights_metadata

    run = tmp_path / "run"
    if command == "eval":
        assert _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)[0] == 0
    if command == "convert":
        model = create_model("deit_micro", num_classes=10)
        src = save_weights(model.state_dict(), tmp_path / "w.safetensors", metadata=weights_metadata(model))
    make = {"train": lambda: ["train", *TINY, "--epochs", "1", "--out", readonly_dir / "run"],
            "eval": lambda: ["eval", "--checkpoint", run, "--out", readonly_dir / "eval"],
            "analyze": lambda: ["analyze", "deit_micro", "--data", "synthetic", "--num-images", "2", "--no-plots",
                                "--out", readonly_dir / "a"],
            "bench": lambda: ["bench", "deit_micro", "--flops-only", "--out", readonly_dir / "b.csv"],
            "convert": lambda: ["convert", "--from", "mixerlab", "--model", "deit_micro", src, readonly_dir / "t.safetensors"]}
    code, _, err = _main(capsys, *make[command]())
    assert ("Read-only file system" in err or "Permission denied" in err), err
    _one_line(err, code)


# ----------------------------------------------------------------------------- case 8: the logged lr
def test_lr_logged_after_an_interrupt_right_after_the_epochs_last_step(tmp_path):
    """Case 8: interrupted after the last step of epoch 1 (before its evaluation), the resumed run
    logs the LR of that step, as the uninterrupted run does (warm-up: the LR moves every step)."""
    cfg = tiny_config(epochs=2, warmup_epochs=1.0, synthetic_size=64)  # 4 steps per epoch

    def stop(step):
        if step == 4:
            raise KeyboardInterrupt  # what the SIGINT handler raises at that moment

    part, full = tmp_path / "part", tmp_path / "full"
    assert train(cfg, out_dir=part, on_step=stop)["interrupted"]
    assert read_state(part / "last.safetensors")["step_in_epoch"] == 4
    train(resume_config(part), out_dir=part, resume=True)
    train(cfg, out_dir=full)
    assert [r["lr"] for r in _metrics(part)] == [r["lr"] for r in _metrics(full)]
    assert _metrics(part)[0]["lr"] != _metrics(part)[1]["lr"]


@pytest.mark.slow  # one child process
def test_sigint_right_after_the_epochs_last_step_logs_the_right_lr(tmp_path, capsys):
    """Case 8 with a real SIGINT, delivered while the child stands just after step 4 (epoch 1's last)."""
    run, full = tmp_path / "run", tmp_path / "full"
    args = [*TINY, "--epochs", "2", "--warmup-epochs", "1"]
    code, err = Paused(tmp_path, "step@4", *args, "--out", run).signal(signal.SIGINT)
    assert code == 130 and "resume with: mixerlab train --resume" in err, err
    assert read_state(run / "last.safetensors")["step_in_epoch"] == 4
    assert _main(capsys, "train", "--resume", run)[0] == 0
    assert _main(capsys, "train", *args, "--out", full)[0] == 0
    assert [r["lr"] for r in _metrics(run)] == [r["lr"] for r in _metrics(full)]


# ----------------------------------------------------------------------------- cases 9, 10: data and config
def _image_folder(root: Path, classes: dict[str, list[str]], corrupt: str | None = None) -> Path:
    from PIL import Image

    for split, names in classes.items():
        for c in names:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / split / c / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"\x89PNG not really")
    return root


def test_imagefolder_splits_with_different_classes_are_refused(tmp_path):
    from mixerlab.data import build_sources

    root = _image_folder(tmp_path / "d", {"train": ["a", "b", "c"], "val": ["a", "c"]})
    with pytest.raises(ValueError, match=r"only in train/: \['b'\]; only in val/: none"):
        build_sources("imagefolder", str(root))


def test_worker_errors_are_one_line(tmp_path, capsys):
    root = _image_folder(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, corrupt="train/a/1.png")
    args = [*TINY, "--data", "imagefolder", "--data-dir", root, "--img-size", "8", "--set", "model_args={dim: 16, patch_size: 4}",
            "--batch-size", "4", "--epochs", "1", "--out", tmp_path / "run"]
    code, _, err = _main(capsys, "train", *args, "--num-workers", "2")
    assert "image file" in _one_line(err, code) and "1.png is corrupt or unreadable" in err and "DataLoader worker" not in err


@pytest.mark.parametrize("argv,msg", [
    (["--lr", "abc"], r"config value lr='abc' is invalid: expected float"),
    (["--img-size", "30"], r"not a multiple of the patch size"),  # synthetic data itself is fine at 30 px
    (["--config", "betas.yaml"], r"config value betas=0.9 is invalid: expected tuple"),
    (["--set", "betas=[a, b]"], r"betas=\('a', 'b'\) is out of range: must be two values in \[0, 1\)"),
    (["--config", "latin1.yaml"], r"config file .*latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 8\)"),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, monkeypatch, argv, msg):
    import re

    monkeypatch.chdir(tmp_path)
    Path("betas.yaml").write_text("betas: 0.9\n")
    Path("latin1.yaml").write_bytes("model: d\xe9it_micro\n".encode("latin-1"))
    argv = [a for a in TINY if a != "--set" and not a.startswith("model_args")] + ["--epochs", "1", *argv]
    code, _, err = _main(capsys, "train", *argv, "--out", tmp_path / "run")
    assert re.search(msg, _one_line(err, code)), err


def test_synthetic_data_of_any_size():
    from mixerlab.data import synthetic

    src = synthetic("train", size=8, num_classes=2, in_chans=3, img_size=30)
    assert src.load(0).size == (30, 30)


# ----------------------------------------------------------------------------- cases 11, 12
def test_eval_of_a_pth_and_analyze_of_a_truncated_file(tmp_path, capsys):
    from mixerlab import create_model

    model = create_model("deit_micro")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    code, _, err = _main(capsys, "eval", "--checkpoint", tmp_path / "w.pth")
    assert "is a PyTorch zip file" in _one_line(err, code) and "not a mixerlab training checkpoint" in err
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = _main(capsys, "analyze", tmp_path / "t.safetensors", "--data", "synthetic")
    assert "cannot read weights from" in _one_line(err, code) and "unknown model" not in err


def test_model_options_are_checked_at_the_api_boundary():
    import mixerlab

    with pytest.raises(ValueError, match=r"drop_path_rate=1.5 is invalid: must be a number in \[0, 1\)"):
        mixerlab.create_model("deit_micro", drop_path_rate=1.5)
    with pytest.raises(ValueError, match=r"num_classes='ten' is invalid: must be an int >= 0"):
        mixerlab.create_model("deit_micro", num_classes="ten")
    with pytest.raises(TypeError, match="a model name must be a string.*got None"):
        mixerlab.create_model(None)


# ----------------------------------------------------------------------------- issue 31: 13 and 15
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_a_checkpoint_another_run_wrote(tmp_path, capsys):
    """Issue 31 (13): a last.safetensors copied in from a run on other data is refused in one
    line, exit 2, and not one byte of the folder changes (its best, metrics, summary, config)."""
    run, other = tmp_path / "run", tmp_path / "other"
    assert _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)[0] == 0
    assert _main(capsys, "train", *TINY, "--epochs", "1", "--synthetic-classes", "4", "--out", other)[0] == 0
    shutil.copyfile(other / "last.safetensors", run / "last.safetensors")
    before = _snapshot(run)
    code, out, err = _main(capsys, "train", "--resume", run)
    assert "another run" in _one_line(err, code) and "synthetic_classes=4" in err
    assert _snapshot(run) == before


def test_each_command_refuses_another_commands_folder(tmp_path, capsys):
    """Issue 31 (15): train --out a compare or ablate folder (marked, or from before marks by its
    files) is refused before anything is written; a run folder is marked as one."""
    from mixerlab.engine.run_folder import MARK_NAME, claim_folder, folder_kind

    compare = claim_folder(tmp_path / "cmp", "compare")
    legacy_ablate = tmp_path / "abl"
    (legacy_ablate / "cells").mkdir(parents=True)
    (legacy_ablate / "settings.json").write_text("{}")
    for folder, kind in ((compare, "compare"), (legacy_ablate, "ablate")):
        before = _snapshot(folder)
        code, out, err = _main(capsys, "train", *TINY, "--epochs", "1", "--out", folder)
        assert f"is a {kind} folder" in _one_line(err, code)
        assert _snapshot(folder) == before
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--epochs", "1", "--out", run)[0] == 0
    assert json.loads((run / MARK_NAME).read_text())["kind"] == "train" and folder_kind(run) == "train"
    with pytest.raises(ValueError, match="is a train folder"):
        claim_folder(run, "compare")
    assert folder_kind(tmp_path / "absent") is None and not (tmp_path / "absent").exists()


def test_resume_on_a_data_folder_that_now_holds_other_classes_is_refused(tmp_path, capsys):
    """Issue 31 (13): ``--resume --data-dir`` (a resumable change) pointing at a dataset with other
    classes is refused before anything in the folder is written."""
    a = _image_folder(tmp_path / "a", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    b = _image_folder(tmp_path / "b", {"train": ["ant", "bee", "cow"], "val": ["ant", "bee", "cow"]})
    run = tmp_path / "run"
    args = ["--model", "deit_micro", "--set", "model_args={dim: 32, patch_size: 8}", "--img-size", "16",
            "--data", "imagefolder", "--batch-size", "4", "--epochs", "1", "--progress", "none", "--threads", "1"]
    assert _main(capsys, "train", *args, "--data-dir", a, "--out", run)[0] == 0
    before = _snapshot(run)
    code, out, err = _main(capsys, "train", "--resume", run, "--data-dir", b, "--epochs", "2")
    assert "num_classes 2" in _one_line(err, code) and "Nothing was changed" in err
    assert _snapshot(run) == before
