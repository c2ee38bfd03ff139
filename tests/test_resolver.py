"""``mixerlab.open_model``: one resolver for every source a command takes, the file kinds told from
their contents, and the run config's ownership of the input shape."""
from __future__ import annotations

import pytest
import torch

import mixerlab
from mixerlab.engine import train
from mixerlab.engine.config import load_config
from mixerlab.engine.factory import (CHECKPOINT, RUN_FOLDER, STATE_DICT, TIMM, TIMM_CHECKPOINT, WEIGHTS, ZOO,
                                     build_from_checkpoint, identify, model_for_run, open_model)
from mixerlab.weights import save_weights, weights_metadata

from conftest_train import run_cli, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("resolver") / "run"
    train(tiny_config(epochs=1, synthetic_size=64), out_dir=out)
    return out


def _logits(m, x):
    with torch.no_grad():
        return m.eval()(x)


def test_every_kind_is_identified_by_content_and_opens_the_same_model(run_dir, tmp_path):
    x = torch.randn(2, 1, 32, 32)
    ref, ckpt = build_from_checkpoint(run_dir)
    assert identify(run_dir) == RUN_FOLDER and identify(ckpt.path) == CHECKPOINT
    for source in (run_dir, ckpt.path, str(ckpt.path)):
        m, src = open_model(source)
        assert torch.equal(_logits(m, x), _logits(ref, x))
        assert src.train_config["model"] == "deit_micro" and src.data == "synthetic" and src.state["epoch"] >= 1
    # a weight file that records its config: the same model, whatever its file name says
    w = tmp_path / "model.bin.safetensors"
    save_weights(ref.state_dict(), w, metadata=weights_metadata(ref))
    m, src = open_model(w)
    assert identify(w) == WEIGHTS and src.kind == WEIGHTS and torch.equal(_logits(m, x), _logits(ref, x))
    # bare tensors: which model must be named, and the name is then used
    bare = tmp_path / "bare.safetensors"
    save_weights(ref.state_dict(), bare)
    assert identify(bare) == STATE_DICT
    with pytest.raises(ValueError, match="record no model"):
        open_model(bare)
    with pytest.raises(ValueError, match="does not fit this model"):  # the zoo's deit_micro is wider
        open_model(bare, name="deit_micro")
    m, src = open_model(bare, name="deit_micro", dim=32, patch_size=8, in_chans=1)  # the tiny run's shapes
    assert src.kind == STATE_DICT and torch.equal(_logits(m, x), _logits(ref, x))
    # a name is a model, never a file
    assert identify("deit_micro") == ZOO and identify("mixerlab_deit_micro") == ZOO
    assert identify("timm:resnet18") == TIMM


def test_a_timm_checkpoint_opens_as_its_zoo_model_with_timms_logits(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    t = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval()
    f = tmp_path / "deit.pth"
    torch.save(t.state_dict(), f)
    assert identify(f) == TIMM_CHECKPOINT
    m, src = open_model(f, name="deit_tiny", depth=2)
    x = torch.randn(1, 3, 224, 224)
    assert src.kind == TIMM_CHECKPOINT and src.name == "deit_tiny"
    torch.testing.assert_close(_logits(m, x), _logits(t, x), atol=1e-5, rtol=1e-5)


def test_zoo_and_timm_names_take_options_trained_sources_refuse_them(run_dir):
    m, src = open_model("deit_micro", depth=2, num_classes=3, in_chans=1)
    assert src.kind == ZOO and src.weights == "random init" and len(m.blocks) == 2 and m.num_classes == 3
    t, src = open_model("timm:resnet18", num_classes=4, in_chans=1, img_size=28, channels=(8, 8, 8, 8),
                        stem_width=8)
    assert src.kind == TIMM and t.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 4)
    with pytest.raises(TypeError, match="rebuilt exactly"):
        open_model(run_dir, depth=3)
    with pytest.raises(ValueError, match="holds a deit_micro model, not convit_micro"):
        open_model(run_dir, name="convit_micro")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_model("runs/no-such-run/")
    with pytest.raises(ValueError, match="did you mean deit_micro"):
        open_model("deit_mirco")


def test_the_run_owns_the_input_shape():
    # a model argument that contradicts the run is an error, at config time and at build time
    with pytest.raises(ValueError, match="model_args sets img_size=64, but the run owns img_size: 32"):
        load_config(overrides=dict(model="deit_micro", model_args={"img_size": 64}))
    with pytest.raises(ValueError, match="drop_path_rate"):
        load_config(overrides=dict(model="deit_micro", model_args={"drop_path_rate": 0.3}))
    cfg = tiny_config(model_args={"dim": 32, "patch_size": 8, "num_classes": 5})
    with pytest.raises(ValueError, match="num_classes=5, but the run owns num_classes: 10"):
        model_for_run(cfg, num_classes=10, in_chans=1)
    # saying what the run says is accepted: the model follows the run
    cfg = load_config(overrides=dict(model="deit_micro", img_size=32, model_args={"img_size": [32, 32]}))
    assert tuple(model_for_run(cfg, num_classes=10, in_chans=1).img_size) == (32, 32)
    cfg = tiny_config(img_size=16, model_args={"dim": 32, "patch_size": 8})
    assert tuple(model_for_run(cfg, num_classes=7, in_chans=3).img_size) == (16, 16)


def test_cli_refuses_model_args_that_contradict_the_run_and_the_dry_run_checks_the_model(tmp_path):
    out = tmp_path / "r"
    r = run_cli("train", "--model", "deit_micro", "--model-args", "{img_size: 64}", "--data", "synthetic",
                "--out", str(out))
    assert r.returncode == 2 and "the run owns img_size" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = run_cli("train", "--dry-run", "--img-size", "30")  # the run itself refuses 30 for patch 4
    assert r.returncode == 2 and "not a multiple of the patch size" in r.stderr


def test_open_model_is_the_public_entry():
    assert mixerlab.open_model is open_model


def test_dense_backbones_come_through_the_resolver(run_dir, tmp_path):
    """A detector's or segmenter's backbone from a run folder, a weight file or a zoo name plus a
    weight file: the trained weights, unchanged, in the backbone."""
    from mixerlab.dense import build_backbone, create_segmenter
    ref, _ = build_from_checkpoint(run_dir)
    got = build_backbone(run_dir)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), ref.state_dict().values()))
    torch.manual_seed(1)
    pool = mixerlab.create_model("poolformer_micro")
    w = tmp_path / "pool.safetensors"
    save_weights(pool.state_dict(), w, metadata=weights_metadata(pool))
    for kw in (dict(backbone=w), dict(backbone="poolformer_micro", backbone_weights=w)):
        seg = create_segmenter("semantic_fpn", num_classes=3, neck_channels=8, head_channels=8, **kw)
        sd = {k.split("stages.", 1)[1]: v for k, v in seg.state_dict().items() if "stages." in k}
        assert sd and all(torch.equal(v, pool.state_dict()["stages." + k]) for k, v in sd.items())
    with pytest.raises(ValueError, match="holds its own weights"):
        build_backbone(run_dir, weights=w)
    with pytest.raises(ValueError, match="not a mixerlab backbone"):
        build_backbone("timm:resnet18")


def test_top_level_names_resolve():
    """Every name in ``mixerlab.__all__`` is reachable (the lazy ones included)."""
    for name in mixerlab.__all__:
        assert getattr(mixerlab, name) is not None, name
    from mixerlab.dense import create_detector
    assert mixerlab.create_detector is create_detector


def test_a_dense_run_is_named_not_misread(tmp_path):
    """A ``mixerlab dense`` run folder or checkpoint is a detector, not a classifier: every command
    that opens models says so and names the command that reads it."""
    from mixerlab.engine.checkpoint import save_checkpoint
    run = tmp_path / "det"
    run.mkdir()
    save_checkpoint(run / "last.safetensors", model=torch.nn.Linear(2, 2),
                    config={"kind": "dense", "task": "retinanet"}, state={"epoch": 1})
    for source in (run, run / "last.safetensors"):
        with pytest.raises(ValueError, match=r"detection/segmentation run \(mixerlab dense\).*mixerlab dense eval"):
            identify(source)
    r = run_cli("eval", str(run))
    assert r.returncode == 2 and "mixerlab dense eval" in r.stderr and "Traceback" not in r.stderr, r.stderr
