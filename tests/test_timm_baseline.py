"""``mixerlab train --model timm:NAME``: any timm model on mixerlab's recipe, data and run folder,
rebuilt from its checkpoint, its weights loadable into timm's own model (compare's CNN anchor)."""
import json

import pytest
import timm
import torch

from conftest_train import TINY_RUN_ARGS, cli_main
from mixerlab.engine import build_from_checkpoint
from mixerlab.models.timm_model import TimmModel, TimmModelConfig, check_timm_name

NARROW = {"channels": [8, 8, 16, 16], "stem_width": 8}
TINY = ["--model", "timm:resnet18", "--set", "model_args={channels: [8, 8, 16, 16], stem_width: 8}",
        *TINY_RUN_ARGS]
_main = cli_main


def test_train_resume_and_eval_a_timm_model(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = _main(capsys, "train", *TINY, "--out", str(run))
    assert code == 0 and "done: timm:resnet18" in out
    code, _, _ = _main(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert code == 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    code, out, _ = _main(capsys, "eval", "--checkpoint", str(run), "--json")
    assert code == 0 and json.loads(out)["n"] == 16
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "timm:resnet18" and summary["recipe"]

    # the checkpoint records timm's name and keywords; the rebuilt model is timm's own, same weights
    model, ckpt = build_from_checkpoint(run)
    assert isinstance(model, TimmModel) and ckpt.model_config["name"] == "resnet18"
    assert ckpt.model_config["kwargs"] == NARROW
    reference = timm.create_model("resnet18", pretrained=False, num_classes=model.num_classes,
                                  in_chans=model.in_chans, channels=(8, 8, 16, 16), stem_width=8)
    reference.load_state_dict(model.timm_state_dict())  # strict: timm's names and shapes exactly
    x = torch.randn(3, model.in_chans, 32, 32)
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        logits, aux = model(x, return_aux=True)
    assert aux == {} and logits.shape == (3, model.num_classes)


def test_config_round_trip_and_meta_build():
    cfg = TimmModelConfig("resnet18", num_classes=10, in_chans=1, img_size=28, kwargs={"channels": [8, 8, 8, 8]})
    assert TimmModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with torch.device("meta"):
        m = TimmModel(cfg)
    assert m.pretrained_cfg["input_size"] == (1, 28, 28)  # what the MAC counter reads
    vit = TimmModel(TimmModelConfig("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=32,
                                    kwargs={"patch_size": 8, "depth": 1}))
    assert vit.net.patch_embed.img_size == (32, 32)  # img_size reaches models that take it


@pytest.mark.parametrize("argv,msg", [
    (["--model", "timm:resnet19"], r"unknown timm model 'resnet19'.*close matches: timm:resnet1"),
    (["--model", "timm:"], r"unknown timm model ''"),
])
def test_unknown_timm_model_is_one_line_and_exit_2(tmp_path, capsys, argv, msg):
    code, _, err = _main(capsys, "train", *TINY, *argv, "--out", str(tmp_path / "run"), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(msg, err), err
    assert not (tmp_path / "run").exists()


def test_bad_timm_options_name_the_model():
    with pytest.raises(TypeError, match=r"timm:resnet18 does not accept the option\(s\) \['no_such'\]"):
        TimmModel(TimmModelConfig("resnet18", kwargs={"no_such": 1}))
    with pytest.raises(TypeError, match="set by the run"):
        TimmModel(TimmModelConfig("resnet18", kwargs={"num_classes": 3}))
    with pytest.raises(ValueError, match="unknown timm model"):
        check_timm_name("timm:not_a_model_at_all")
