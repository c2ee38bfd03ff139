"""Safetensors checkpoints: round trip, corruption detection, mismatch errors, atomic writes."""
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mixerlab.engine.checkpoint import (
    CheckpointError, capture_rng, load_checkpoint, load_weights, resolve_checkpoint, restore_rng, save_checkpoint,
)


def _parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_everything(tmp_path):
    model, opt = _parts()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = capture_rng()
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, config={"model": "x"}, state={"step": 7},
                           optimizer=opt, ema=model, rng=rng)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    model2, opt2 = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), None
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    ckpt = load_checkpoint(path)
    ckpt.load_model(model2)
    ckpt.load_optimizer(opt2)
    assert ckpt.config == {"model": "x"} and ckpt.state["step"] == 7 and ckpt.has_ema
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == 1e-3
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"]) and torch.equal(s1["step"], s2["step"])
    restore_rng(ckpt.rng())
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert set(load_weights(tmp_path)) == set(model.state_dict())  # run folder -> best/last


def test_truncated_and_bitflipped_files_are_rejected(tmp_path):
    model, opt = _parts()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, config={}, state={}, optimizer=opt)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    flipped = bytearray(data)
    flipped[-20] ^= 0xFF  # inside the tensor data: only the digest can tell
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "flip.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_foreign_safetensors_and_missing(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="not a mixerlab training checkpoint"):
        load_checkpoint(tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)


def test_other_model_is_a_clear_error(tmp_path):
    model, _ = _parts()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, config={"model": "a"}, state={})
    other = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    with pytest.raises(CheckpointError, match="does not fit model 'a'.*shape mismatch: 0.bias, 0.weight"):
        load_checkpoint(path).load_model(other)


def _writer(path, ready):
    """Child process: rewrite ``path`` forever with a model whose weights equal the write count."""
    torch.set_num_threads(1)
    model = nn.Linear(1024, 1024)  # 4 MiB of weights: each write takes a few ms
    i = 0
    while True:
        with torch.no_grad():
            model.weight.fill_(float(i))
        save_checkpoint(path, model=model, config={}, state={"i": i})
        if i == 0:
            ready.set()
        i += 1


def test_killed_writer_never_corrupts_last(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # no fresh interpreter + torch import per child
    path = tmp_path / "last.safetensors"
    rng = random.Random(0)
    for _ in range(4):
        ready = ctx.Event()
        proc = ctx.Process(target=_writer, args=(path, ready), daemon=True)
        proc.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up handlers run
        proc.join()
        ckpt = load_checkpoint(path)  # never half-written
        assert torch.all(ckpt.part("model")["weight"] == float(ckpt.state["i"]))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.safetensors"]
    # at most stray hidden temp files (ours: .last.safetensors.tmp-PID; safetensors' own: .tmpXXXX)
    assert all(name.startswith(".") and "tmp" in name for name in leftovers), leftovers
