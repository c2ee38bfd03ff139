"""``mixerlab train`` / ``mixerlab eval``: success paths and every failure case (message + exit code)."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest_train import ROOT, TINY_RUN_ARGS, cli_main, run_cli

# Tiny, fast and deterministic: the same knobs as conftest_train.tiny_config, as CLI options.
TINY = ["--model", "deit_micro", "--set", "model_args={dim: 32, patch_size: 8}", *TINY_RUN_ARGS]
_main = cli_main


def test_train_eval_and_resume_via_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = _main(capsys, "train", *TINY, "--out", str(run))
    assert code == 0 and "best test top-1" in out  # no validation split held out: named the test split
    code, out, _ = _main(capsys, "train", "--resume", str(run), "--epochs", "2")  # extend the run
    assert code == 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    code, out, _ = _main(capsys, "eval", "--checkpoint", str(run / "last.safetensors"))
    assert code == 0 and "top-1" in out and "class9" in out
    assert (run / "eval" / "eval_synthetic_last_confusion.png").is_file()
    code, out, _ = _main(capsys, "eval", "--checkpoint", str(run), "--json")
    assert code == 0 and json.loads(out)["n"] == 16


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\nlr: 1e-4\n")
    code, out, _ = _main(capsys, "train", "--config", str(recipe), "--epochs", "5", "--dry-run")
    assert code == 0 and "epochs: 5" in out and "lr: 0.0001" in out


@pytest.mark.parametrize("args,msg", [
    (["--lr", "-1"], "lr=-1.0 is out of range"),
    (["--train-fraction", "2"], "train_fraction=2.0 is out of range"),
    (["--set", "lrr=1"], "unknown config key 'lrr'.*valid keys: model, model_args"),
    (["--amp", "fp16", "--device", "cpu"], "amp=fp16 needs a CUDA device"),
    (["--model", "no_such_model"], "no_such_model"),
    (["--data", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["--data", "cifar10", "--data-dir", "/nonexistent"], "CIFAR-10 not found"),
    (["--data", "imagefolder", "--data-dir", "/nonexistent"], "ImageFolder split not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, msg):
    code, _, err = _main(capsys, "train", *TINY, "--out", str(tmp_path / "run"), *args)
    assert code == 2
    assert err.startswith("mixerlab train: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(msg, err), err


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--out", str(run))[0] == 0
    before = (run / "last.safetensors").read_bytes()
    code, _, err = _main(capsys, "train", *TINY, "--out", str(run))
    assert code == 2 and "already holds a run" in err
    code, _, err = _main(capsys, "train", "--resume", str(run), "--model", "lavit_micro")
    assert code == 2 and "another config: model='deit_micro'" in err
    assert (run / "last.safetensors").read_bytes() == before


def test_corrupt_or_missing_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--out", str(run))[0] == 0
    data = (run / "last.safetensors").read_bytes()
    (run / "last.safetensors").write_bytes(data[: len(data) - 100])  # truncated
    code, _, err = _main(capsys, "train", "--resume", str(run))
    assert code == 2 and "corrupt or truncated" in err
    code, _, err = _main(capsys, "eval", "--checkpoint", str(run / "last.safetensors"))
    assert code == 2 and "corrupt or truncated" in err
    code, _, err = _main(capsys, "eval", "--checkpoint", str(tmp_path / "nothing"))
    assert code == 2 and "checkpoint not found" in err
    code, _, err = _main(capsys, "eval", "--checkpoint", str(run / "best.safetensors"), "--data", "cifar10",
                         "--data-dir", str(tmp_path))
    assert code == 2 and "CIFAR-10 not found" in err


def test_non_finite_loss_exit_1(tmp_path, capsys):
    code, _, err = _main(capsys, "train", *TINY, "--out", str(tmp_path / "run"), "--lr", "1e30", "--min-lr", "1e30")
    assert code == 1
    assert "loss became nan at step 2 (epoch 1); run stopped" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # two interpreter start-ups; the in-process equivalent is test_train_loop's resume test
def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [a if a != "64" else "512" for a in TINY]  # 32 steps: long enough to interrupt
    args = [a if a != "none" else "plain" for a in args] + ["--log-every", "1", "--out", str(run)]
    # the run stops after step 3 (the test-pause hook) until released, so the Ctrl-C lands mid-epoch
    # however fast the machine trains
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-m", "mixerlab", "train", *args], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                                            "MIXERLAB_TEST_PAUSE": "step@3", "MIXERLAB_TEST_RELEASE": str(release)})
    for line in proc.stderr:
        if line.startswith("mixerlab-test-pause"):
            break
    proc.send_signal(signal.SIGINT)
    release.touch()
    err = proc.stderr.read()
    assert proc.wait(60) == 130, err
    assert "resume with: mixerlab train --resume" in err
    res = run_cli("train", "--resume", str(run), "--epochs", "1", "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow  # three processes with torch + gloo start-up
def test_torchrun_two_processes_match_single_process(tmp_path):
    """DDP on CPU (gloo): 2 x batch 8 sees the same global batches as 1 x batch 16 (DistributedSampler
    with the same seed strides one permutation), so losses agree up to float rounding."""
    base = [a for a in TINY if a not in ("--deterministic",)] + ["--drop-path-rate", "0"]  # masks are per-rank random
    base[base.index("--batch-size") + 1] = "8"
    single = tmp_path / "single"
    res = run_cli("train", *base, "--batch-size", "16", "--epochs", "2", "--out", str(single))
    assert res.returncode == 0, res.stderr
    ddp = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    res = subprocess.run([*torchrun, "-m", "mixerlab", "train", *base, "--epochs", "2", "--out", str(ddp)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    a = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-4)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], abs=1e-4)
        assert rb["val_top1"] == pytest.approx(ra["val_top1"], abs=1e-6)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2


def test_corrupt_data_file_is_a_clear_error(tmp_path, capsys):
    from test_data import _write_idx

    _write_idx(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])  # truncated gzip stream
    code, _, err = _main(capsys, "train", *TINY, "--data", "fashion-mnist", "--data-dir", str(tmp_path),
                         "--out", str(tmp_path / "run"))
    assert code == 2 and "train-labels-idx1-ubyte.gz is corrupt or truncated" in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_eval_takes_the_run_as_its_argument_and_refuses_a_file_or_foreign_folder_as_out(tmp_path, capsys):
    """Issue 31: ``eval RUN`` like analyze/ablate (10; --checkpoint kept); ``--out FILE`` that exists
    says it is a file (19); ``--out`` another command's folder is refused (15)."""
    from mixerlab.engine.run_folder import claim_folder
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--out", str(run))[0] == 0
    code, out, _ = _main(capsys, "eval", str(run), "--json")
    assert code == 0 and json.loads(out)["n"] == 16
    assert (run / "eval").is_dir()
    f = tmp_path / "metrics.txt"
    f.write_text("keep")
    code, _, err = _main(capsys, "eval", str(run), "--out", str(f))
    assert code == 2 and "is a file; eval writes a folder" in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == "keep"
    claim_folder(tmp_path / "abl", "ablate")
    for out_dir, kind in ((tmp_path / "abl", "ablate"), (run, "train")):
        code, _, err = _main(capsys, "eval", str(run), "--out", str(out_dir))
        assert code == 2 and f"is a {kind} folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(capsys, "eval")
    assert code == 2 and "mixerlab eval RUN_DIR" in err


def test_ctrl_c_under_the_launcher_checkpoints_then_one_line_exit_130(tmp_path):
    """Issue 31 (11): ``mixerlab train --nproc-per-node N`` (torchrun's launcher in-process) on
    Ctrl-C (SIGINT to the process group, as a terminal sends it): the worker saves a checkpoint,
    and the command exits 130 with no traceback (a bare torchrun prints its SignalException)."""
    import os
    run, release = tmp_path / "run", tmp_path / "release"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT), "MIXERLAB_TEST_PAUSE": "step@2", "MIXERLAB_TEST_RELEASE": str(release)}
    proc = subprocess.Popen([sys.executable, "-m", "mixerlab", "train", "--nproc-per-node", "1", *TINY,
                             "--out", str(run)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("mixerlab-test-pause"):
            break
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    release.touch()
    err = "".join(seen) + proc.stderr.read()
    assert proc.wait(60) == 130, err
    assert "Traceback" not in err and "SignalException" not in err, err
    assert err.count("resume with: mixerlab train --resume") == 1 and (run / "last.safetensors").is_file()


def test_the_evaluated_split_is_named_honestly(tmp_path, capsys):
    """Issue 31 (6): without a validation split the loop evaluates (and picks best.safetensors)
    on the test split, and says "test" in its start line, epoch lines, summary and last line;
    with --val-images N it says "validation"."""
    plain = [a if a != "none" else "plain" for a in TINY]
    for extra, split, key in (([], "test", "test_top1"), (["--val-images", "16"], "validation", "val_top1")):
        run = tmp_path / split
        code, out, err = _main(capsys, "train", *plain, *extra, "--out", str(run))
        assert code == 0, err
        assert f"/ 16 {split} images" in err and f" {key} " in err and f"best {split} top-1" in out
        assert ("no validation split" in err) == (split == "test")
        assert json.loads((run / "summary.json").read_text())["eval_split"] == split


def test_dry_run_refuses_what_the_run_refuses(tmp_path, capsys):
    """Issue 31 (5): the dry run checks the device/precision and the run folder like the run."""
    from mixerlab.engine.run_folder import claim_folder
    claim_folder(tmp_path / "cmp", "compare")
    f = tmp_path / "file"
    f.write_text("x")
    for extra, msg in ((["--amp", "fp16", "--device", "cpu"], "amp=fp16 needs a CUDA device"),
                       (["--out", str(tmp_path / "cmp")], "is a compare folder"),
                       (["--out", str(f)], "is a file, not a folder")):
        code, out, err = _main(capsys, "train", *TINY, *extra, "--dry-run")
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    run = tmp_path / "run"
    assert _main(capsys, "train", *TINY, "--out", str(run))[0] == 0
    code, out, err = _main(capsys, "train", *TINY, "--out", str(run), "--dry-run")
    assert code == 2 and "already holds a run" in err
    assert _main(capsys, "train", *TINY, "--out", str(tmp_path / "new"), "--dry-run")[0] == 0
    assert not (tmp_path / "new").exists()
