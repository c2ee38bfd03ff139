"""The README's quick starts run as written (issue 31), so the README cannot rot.

The Python quick start and the CLI quick start are read out of README.md and run, shrunk where
they train (one epoch on 0.2 % of Fashion-MNIST, 1 % of its test split): every shrink is a textual
replacement or appended options that must still find their target, so a changed README line fails
here until the test follows it. Every ``mixerlab`` line of the CLI block is parsed by the real
parser first (an option that no longer exists fails even where the line is not run). Lines not
run: ``compare`` (parsed only; ``tests/test_compare.py`` runs its presets) and
``scripts/sweep_lr.py`` (a full LR sweep).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest_train import HAVE_FMNIST, ROOT

README = ROOT / "README.md"
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="the quick starts use Fashion-MNIST (apt-get install dataset-fashion-mnist)")

# one epoch on 0.2 % of the training images (two batches of 64), 1 % of the test images; one thread
TRAIN_SHRINK = ["--epochs", "1", "--train-fraction", "0.002", "--val-fraction", "0.01", "--threads", "1",
                "--progress", "none"]


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _replace(code: str, old: str, new: str) -> str:
    assert old in code, f"README no longer holds {old!r}: update tests/test_readme.py"
    return code.replace(old, new)


def test_setup_paragraph_activates_the_venv_and_bare_mixerlab_then_works():
    """Issue 31 (1): after ``bash scripts/setup.sh`` the README says to activate ``.venv``, and
    that line is what makes the bare ``mixerlab`` of the quick starts a command."""
    setup = _section("Two commands on a fresh machine (Debian, Python ≥ 3.10, run from the repository root)")
    assert ". .venv/bin/activate" in _code_blocks(setup, "bash")[-1]
    assert setup.index("scripts/setup.sh` installs") < setup.index(". .venv/bin/activate")
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv here (set up with bash scripts/setup.sh)")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    bare = subprocess.run(["bash", "-c", "command -v mixerlab"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bare.returncode != 0  # a fresh shell after setup.sh: not on PATH yet
    active = subprocess.run(["bash", "-c", ". .venv/bin/activate && command -v mixerlab && head -1 \"$(command -v mixerlab)\""],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert active.returncode == 0, active.stderr
    where, shebang = active.stdout.splitlines()[:2]
    assert where == str(ROOT / ".venv" / "bin" / "mixerlab") and ".venv/bin/python" in shebang


@needs_fmnist
def test_python_quick_start_runs_as_written(tmp_path):
    """Issue 31 (1, 2, 3): the Python quick start, shrunk to one short epoch, runs in a fresh
    interpreter; its TrainConfig starts from the same recipe as the CLI (``small``)."""
    code = _code_blocks(_section("Python quick start"), "python")[0]
    code = _replace(code, "epochs=2, train_fraction=0.1", "epochs=1, train_fraction=0.002, val_fraction=0.01, "
                                                           "num_threads=1, progress='none'")
    code += ("\nassert cfg.recipe == 'small' and summary['recipe'] == 'small'"
             "\nassert isinstance(model, torch.nn.Module) and ckpt.config['model'] == 'poolformer_micro'\n")
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]


def _cli_lines() -> list[list[str]]:
    block = _code_blocks(_section("CLI quick start"), "bash")[0]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [t for t in lines if t]


def _shrunk(argv: list[str]) -> list[str] | None:
    """The line as run here, or None for a line that is only parsed."""
    cmd = argv[0]
    if cmd == "compare":
        return None
    if cmd == "list":
        return argv + ["--no-macs"]
    if cmd == "train" and "--resume" in argv:
        return argv + ["--threads", "1", "--progress", "none"]
    if cmd == "train":
        return argv + TRAIN_SHRINK + (["--dry-run"] if "--nproc-per-node" in argv else [])
    if cmd == "bench":
        argv = _replace(" ".join(argv), "--batch-size 1 64", "--batch-size 1").split()
        return argv + ["--flops-only", "--threads", "1", "--device", "cpu"]  # params and MACs: no timing
    if cmd == "analyze":
        return argv + ["--num-images", "4", "--batch-size", "4", "--pictures", "2"]
    if cmd == "ablate":
        argv = _replace(" ".join(argv), "--finetune-steps 100", "--finetune-steps 2").split()
        return argv + ["--replace", "identity", "--no-search", "--val-size", "64", "--threads", "1"]
    return argv


@needs_fmnist
def test_cli_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    """Issue 31 (1, 3): every ``mixerlab`` line of the CLI quick start parses; each one that
    trains, evaluates, converts, benchmarks, analyses or ablates runs (shrunk) in order, then the
    README's snippet that loads convert's timm-layout output into timm."""
    import timm
    import torch

    from mixerlab.cli.main import build_parser, main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    torch.save(timm.create_model("convit_tiny").state_dict(), "convit_tiny.pth")  # the README's IN file
    lines = _cli_lines()
    ran = []
    for tokens in lines:
        if tokens[0] != "mixerlab":
            assert tokens[-2:] == ["--preset", "quick"] and "scripts/sweep_lr.py" in tokens, tokens
            continue
        argv = tokens[1:]
        if not any("|" in t or t.startswith("[") for t in argv):
            build_parser().parse_args(argv)  # SystemExit: an option the README names no longer exists
        run = _shrunk(argv)
        if run is None:
            continue
        code = main(run)
        out = capsys.readouterr()
        assert code == 0, f"mixerlab {' '.join(run)}: {out.err[-2000:]}"
        ran.append(argv[0])
    assert {"list", "train", "eval", "convert", "bench", "analyze", "ablate"} <= set(ran)
    snippet = next(b for b in _code_blocks(README.read_text(), "python") if "convit_tiny_timm.safetensors" in b)
    exec(compile(snippet, "README.md", "exec"), {})


def test_dense_example_commands_parse():
    """The README's detection example: every ``mixerlab`` command of it parses (the run itself is
    the slow learning test of ``tests/test_dense_cli.py``, at a smaller scale), and its Python twin
    names functions that exist."""
    from mixerlab.cli.main import build_parser
    import mixerlab.dense as dense
    section = _section("Detection and segmentation (`mixerlab dense`)")
    block = _code_blocks(section, "bash")[0].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    commands = [t for t in commands if t]
    assert [t[:2] for t in commands] == [["mixerlab", "train"], ["mixerlab", "dense"], ["mixerlab", "dense"]]
    for tokens in commands:
        build_parser().parse_args(tokens[1:])
    python = _code_blocks(section, "python")[0]
    for name in re.findall(r"from mixerlab\.dense import (.+)", python)[0].split(","):
        assert hasattr(dense, name.strip()), name
