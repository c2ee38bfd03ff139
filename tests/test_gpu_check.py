"""``scripts/gpu_check.sh``: the dry run (every step on the CPU at toy sizes) reports every step ok,
so the device check cannot rot between GPU loans; bad arguments are refused before any work."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
STEPS = ["unit_tests", "bench_vs_timm", "flops_util", "train_fp16", "train_bf16", "torchrun_train",
         "ddp_nccl", "compile_deit", "compile_convit", "compile_deit_s", "lavit_twin", "compare_gpu"]


def run(*args, timeout=60):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("args, msg", [(["--fast"], "unknown option --fast"),
                                       (["a", "b"], "one output folder only"),
                                       (["--steps"], "--steps needs a comma-separated list")])
def test_bad_arguments_are_refused(tmp_path, args, msg):
    r = run(*[str(tmp_path / a) if not a.startswith("-") else a for a in args])
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_steps_listed_here_are_the_scripts():
    text = SCRIPT.read_text()
    assert [s for s in STEPS if f"\nstep {s} " in text] == STEPS


@pytest.mark.slow
def test_dry_run_reports_every_step_ok(tmp_path):
    out = tmp_path / "out"
    r = run("--dry-run", str(out), timeout=2400)  # the script stops itself after 1800 s
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    status = {name: st for name, st, _ in rows}
    assert list(status) == STEPS, r.stdout[-3000:]
    assert all(st == "ok" for st in status.values()), (status, r.stdout[-3000:])
    assert r.returncode == 0
    assert "gpu_check summary (dry run, CPU)" in r.stdout
    for name in STEPS:
        assert (out / f"{name}.log").is_file()
    assert (out / "bench_vs_timm.json").is_file() and (out / "summary.md").is_file()
    assert (out / "compare" / "report.md").is_file()
    assert "fraction of matmul rate" in (out / "flops_util.log").read_text()
