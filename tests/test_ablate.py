"""Mixer surgery (``mixerlab ablate``): transplanted weights, the greedy search's guarantee, the
saved model, the mean-attention replacement, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.factory import model_from_weights
from mixerlab.surgery import ablate, block_slots, transplant, with_mixers
from mixerlab.surgery.ablate import build_ablate_data, correctness, finetune, parse_blocks, validation_indices
from mixerlab.weights import save_weights, weights_metadata

TINY = dict(depth=3, dim=32, num_heads=2, img_size=16, in_chans=1, num_classes=4, patch_size=4)


def _tiny(**kw):
    torch.manual_seed(0)
    return mixerlab.create_model("deit_micro", **{**TINY, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DeiT trained on the synthetic set until it classifies its validation split."""
    m = _tiny()
    d = build_ablate_data(m, "synthetic", None, 64, 0, synthetic_size=512)
    finetune(m, list(m.parameters()), d.tune, steps=30, lr=5e-3, batch_size=32, seed=0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_weights(m.state_dict(), path, metadata=weights_metadata(m))
    return m, path


def test_identity_in_a_block_whose_residual_branch_is_zero_leaves_logits_unchanged():
    m = _tiny(block={"layer_scale_init": 1e-5}).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.head.weight)  # the zero-initialised head would hide every difference
        for blk in m.blocks:
            blk.ls1.gamma.fill_(1.0)
        m.blocks[1].ls1.gamma.zero_()  # block 1's mixer branch contributes nothing
    new = transplant(m, with_mixers(m.cfg, {1: ("identity", {})}), {1}).eval()
    assert block_slots(new)[1].mixer_name == "identity"
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(new(x), m(x), rtol=0, atol=0)
        # and the transplant kept every other weight: block 2's identity changes the logits
        other = transplant(m, with_mixers(m.cfg, {2: ("identity", {})}), {2}).eval()
        assert not torch.allclose(other(x), m(x))


def test_mean_attention_equals_attention_whose_map_does_not_depend_on_the_input():
    """With q = k = 0 every map is uniform, so the averaged map is exact and adopt() reproduces the layer."""
    m = _tiny().eval()
    att = m.blocks[0].token_mixer
    with torch.no_grad():
        att.qkv.weight[: 2 * 32].zero_()
        att.qkv.bias[: 2 * 32].zero_()
    slots = block_slots(m)
    from mixerlab.surgery.blocks import replacement_spec
    spec = replacement_spec(m, slots[0], "mean_attention")
    new = transplant(m, with_mixers(m.cfg, {0: spec}), {0}).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(), mixerlab.attention_maps(m, ["blocks.0.token_mixer"]) as rec:
        m(x)
        mean = rec["blocks.0.token_mixer"].mean(0)
    new.blocks[0].token_mixer.adopt(att, mean)
    with torch.no_grad():
        torch.testing.assert_close(new(x), m(x), rtol=1e-5, atol=1e-6)


def test_greedy_stays_within_tolerance_and_the_saved_model_reloads(trained, tmp_path):
    model, path = trained
    out = tmp_path / "abl"
    res = ablate(path, data="synthetic", out=out, val_size=64, finetune_steps=5, batch_size=32,
                 synthetic_size=512, tolerance=3.0, replace=["identity", "mean_attention"], time_reps=1,
                 log=lambda s: None)
    base = res["original"]["acc"]
    g = res["greedy"]
    assert g["val_acc"] >= base - 3.0
    assert all(p["acc"] >= base - 3.0 for p in g["path"])
    # the saved model rebuilds from its own config and reproduces the greedy result on the same split
    again = model_from_weights(out / "ablated.safetensors").eval()
    assert [s.mixer_name for s in block_slots(again)] == g["mixers"]
    d = build_ablate_data(again, "synthetic", None, 64, 0, synthetic_size=512)
    assert correctness(again, d.val).astype(int).tolist() == g["val_correct"]
    # every cell is recorded with its numbers; results.json holds the per-image correctness
    data = json.loads((out / "results.json").read_text())
    assert len(data["cells"]) == 3 * 2 and all(c["status"] == "ok" for c in data["cells"])
    assert len(data["original"]["val_correct"]) == 64
    assert (out / "report.md").read_text().count("| block ") == 6 and (out / "heatmap.png").is_file()
    # a second run reuses the finished cells (resume) and gives the same table
    logs = []
    ablate(path, data="synthetic", out=out, val_size=64, finetune_steps=5, batch_size=32, synthetic_size=512,
           tolerance=3.0, replace=["identity", "mean_attention"], time_reps=1, search=False, log=logs.append)
    assert sum("reused" in s for s in logs) == 6


def test_transplanted_model_keeps_every_weight_outside_the_replaced_mixer():
    m = _tiny()
    new = transplant(m, with_mixers(m.cfg, {1: ("pooling", {"pool_size": 3})}), {1})
    old, sd = m.state_dict(), new.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, old[k]), k
    assert not any(k.startswith("blocks.1.token_mixer.") for k in sd)


def test_validation_split_is_class_balanced_fixed_and_checked():
    t = np.repeat(np.arange(4), 50)
    a, b = validation_indices(t, 40, 0), validation_indices(t, 40, 0)
    assert (a == b).all() and np.bincount(t[a]).tolist() == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="leaves no training images"):
        validation_indices(t, 200, 0)
    assert parse_blocks("1-2,0", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"out of range; the model has 3 blocks \(0-2\)"):
        parse_blocks("1-5", 3)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mixerlab", "ablate", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("extra, message", [
    (["--blocks", "7"], "out of range"),
    (["--replace", "token_ff", "--keep-variable-size"], "cannot take token_ff: it fixes the token count"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(trained, tmp_path, capsys, extra, message):
    from mixerlab.cli.main import main
    _, path = trained
    out = tmp_path / "o"
    assert main(["ablate", str(path), "--data", "synthetic", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_a_checkpoint_of_an_unsupported_architecture(tmp_path):
    f = tmp_path / "resnet.safetensors"
    save_weights({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, f)
    r = _cli(str(f), "--data", "synthetic", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "not a mixerlab run folder" in r.stderr and "Traceback" not in r.stderr


def test_validation_images_of_a_run_are_the_ones_it_held_out():
    """With the run's (val_images, seed) the split is taken from the held-out images only, and the
    fine-tune images are the run's own training pool (``mixerlab.data.validation_split``)."""
    from mixerlab.data import build_sources
    from mixerlab.data.datasets import validation_split
    m = _tiny()
    d = build_ablate_data(m, "synthetic", None, 16, 0, synthetic_size=256, held_out=(40, 3))
    train, _ = build_sources("synthetic", None, size=256, num_classes=4, in_chans=1, img_size=16)
    rest, pool = validation_split(np.asarray(train.targets), 40, 3)
    val_idx = set(int(i) for i in d.val.ds.indices)
    assert len(val_idx) == 16 and val_idx <= set(pool.tolist())
    assert set(int(i) for i in d.tune.ds.indices) == set(rest.tolist())


def test_cli_refuses_a_training_run_as_out_and_a_timm_run(tmp_path, capsys):
    """Issue 31: ablate --out a training run folder is refused before any work (15); a
    `train --model timm:NAME` run is refused in words (17). One line, exit 2, nothing written."""
    from conftest_train import tiny_config
    from mixerlab.cli.main import main
    from mixerlab.engine import train
    run = tmp_path / "run"
    train(tiny_config(epochs=1), out_dir=run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["ablate", str(run), "--out", str(run), "--finetune-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "is a train folder" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before
    timm_run = tmp_path / "timm"
    train(tiny_config(epochs=1, model="timm:resnet18", model_args={}, synthetic_size=32), out_dir=timm_run)
    assert main(["ablate", str(timm_run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "timm:resnet18, a timm model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_default_validation_split_adapts_to_a_small_training_set():
    """Issue 31 (10): without --val-size a 300-image training set gives a 60-image validation
    split (a fifth) instead of refusing the 2000 default; an explicit size is still checked."""
    m = _tiny()
    d = build_ablate_data(m, "synthetic", None, None, 0, synthetic_size=300)
    assert len(d.val) == 60 and len(d.tune) == 240
    assert len(build_ablate_data(m, "synthetic", None, None, 0, synthetic_size=20000).val) == 2000
    with pytest.raises(ValueError, match="leaves no training images"):
        build_ablate_data(m, "synthetic", None, 2000, 0, synthetic_size=300)
