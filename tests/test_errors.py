"""Bad input gets a clear error naming the problem and what is allowed."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mixerlab


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match=r"unknown model 'convit_tiy'.*convit_tiny"):
        mixerlab.create_model("convit_tiy")


def test_misspelt_override_lists_allowed():
    with pytest.raises(TypeError, match=r"num_clases.*allowed:.*num_classes"):
        mixerlab.create_model("deit_micro", num_clases=3)


def test_unknown_mixer_in_config():
    cfg = mixerlab.IsotropicConfig(mixers=(("atention", {"num_heads": 2}),), dim=8, img_size=16,
                                   patch_size=4)
    with pytest.raises(ValueError, match=r"unknown token mixer 'atention'.*allowed"):
        mixerlab.build_model(cfg)


def test_misspelt_mixer_kwarg_in_config():
    cfg = mixerlab.IsotropicConfig(mixers=(("attention", {"num_head": 2}),), dim=8, img_size=16,
                                   patch_size=4)
    with pytest.raises(TypeError, match="num_head"):
        mixerlab.build_model(cfg)


def test_wrong_channel_count():
    m = mixerlab.create_model("deit_micro", in_chans=1)
    with pytest.raises(ValueError, match=r"expected 1 input channel\(s\), got 3"):
        m(torch.randn(1, 3, 32, 32))


def test_fixed_size_model_says_why():
    m = mixerlab.create_model("ffonly_micro")
    with pytest.raises(ValueError, match=r"accepts only 32x32.*token_ff.*img_size=\(48, 48\)"):
        m(torch.randn(1, 3, 48, 48))
    r = mixerlab.create_model("randformer_s12", img_size=64, num_classes=10)
    with pytest.raises(ValueError, match=r"accepts only 64x64"):
        r(torch.randn(1, 3, 96, 96))


def test_size_not_multiple_of_patch():
    m = mixerlab.create_model("deit_micro")
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        m(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        mixerlab.create_model("deit_micro", img_size=30)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        mixerlab.create_model("deit_micro")(torch.randn(3, 32, 32))


def test_bad_option_values():
    with pytest.raises(ValueError, match="pool_size"):
        mixerlab.get_mixer("pooling")(8, pool_size=4)
    with pytest.raises(ValueError, match=r"la_source='soft'.*allowed"):
        mixerlab.get_mixer("less_attention")(8, num_heads=2, num_tokens=4, la_source="soft")
    with pytest.raises(ValueError, match="global_pool"):
        mixerlab.create_model("deit_micro", global_pool="max")
    with pytest.raises(ValueError, match="unknown norm"):
        mixerlab.create_model("deit_micro", block=mixerlab.BlockConfig(norm="batchnorm"))


def test_cli_list_and_errors():
    out = subprocess.run([sys.executable, "-m", "mixerlab", "list", "*_micro", "--no-macs"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for n in mixerlab.list_models("*_micro"):
        assert n in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mixerlab", "list", "nope*"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "no model matches" in bad.stderr and "Traceback" not in bad.stderr


def test_overrides_from_plain_data():
    """YAML-style overrides: nested dicts for the block and stages, lists for mixer specs."""
    m = mixerlab.create_model("poolformer_micro", stages=[
        {}, {}, {"mixers": [["attention", {"num_heads": 3}]] * 2}, {"mixers": [["identity", {}]]}])
    kinds = [[type(b.token_mixer).__name__ for b in st.blocks] for st in m.stages]
    assert kinds[2] == ["Attention", "Attention"] and kinds[3] == ["IdentityMixer"]
    d = mixerlab.create_model("deit_micro", mixers=[["reattention", {"num_heads": 4}]] * 3,
                              block={"mlp_ratio": 2.0})
    assert len(d.blocks) == 3 and d.blocks[0].mlp.fc1.out_features == 256
    with pytest.raises(TypeError, match=r"unknown block option\(s\) \['mlp_ration'\]"):
        mixerlab.create_model("deit_micro", block={"mlp_ration": 2.0})
    with pytest.raises(TypeError, match=r"unknown stage 0 option"):
        mixerlab.create_model("poolformer_micro", stages=[{"dims": 3}, {}, {}, {}])


def test_lazy_top_level_api():
    assert callable(mixerlab.train)  # mixerlab.train(config) is the documented entry point
    assert mixerlab.TrainConfig().model == "deit_micro"
    assert callable(mixerlab.evaluate) and callable(mixerlab.load_timm_weights)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mixerlab.nope


def test_cli_version_and_dry_run_checks_the_model(capsys):
    from mixerlab.cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"mixerlab {mixerlab.__version__}")
    assert main(["train", "--model", "deit_mirco", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "deit_micro" in err and "Traceback" not in err  # names the close match
    assert main(["train", "--model", "deit_micro", "--set", "model_args={dpeth: 3}", "--dry-run"]) == 2
    assert "dpeth" in capsys.readouterr().err
    assert main(["train", "--model", "deit_micro", "--dry-run"]) == 0
    assert "model: deit_micro" in capsys.readouterr().out


def _one_line_error(capsys, argv) -> str:
    from mixerlab.cli.main import main
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_config_file_mistakes_are_named(tmp_path, capsys):
    """Issue 31 (19): a YAML key given twice is refused (PyYAML silently keeps the second); a
    folder given to --config is called a folder."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("epochs: 3\nlr: 1e-3\nepochs: 5\n")
    err = _one_line_error(capsys, ["train", "--config", str(dup), "--dry-run"])
    assert "'epochs' is given twice (lines 1 and 3)" in err
    err = _one_line_error(capsys, ["train", "--config", str(tmp_path), "--dry-run"])
    assert "is a folder" in err


def test_bench_out_extension_is_checked_before_running(tmp_path, capsys, monkeypatch):
    """Issue 31 (19): bench --out b.txt is refused before any benchmark runs."""
    import mixerlab.bench.runner as runner

    def never(*a, **k):
        raise AssertionError("benchmark ran before --out was checked")
    monkeypatch.setattr(runner, "bench_rows", never)
    err = _one_line_error(capsys, ["bench", "deit_micro", "--flops-only", "--out", str(tmp_path / "b.txt")])
    assert "expected a .csv or .json file name" in err


def test_timm_model_args_name_the_argument_and_its_type(capsys):
    """Issue 31 (19): a timm keyword with a value of the wrong type names the keyword, the value's
    type and the type timm expects; an unknown keyword says it is unknown."""
    err = _one_line_error(capsys, ["train", "--model", "timm:resnet18", "--model-args", "{channels: 5}",
                                   "--data", "synthetic", "--dry-run"])
    assert "channels=5 (int, expected a tuple like (64, 128, 256, 512))" in err
    err = _one_line_error(capsys, ["train", "--model", "timm:resnet18", "--model-args", "{chanels: 5}",
                                   "--data", "synthetic", "--dry-run"])
    assert "does not accept the option(s) ['chanels']: an unknown keyword" in err


def test_pretrained_true_says_nothing_is_downloaded():
    """Issue 31 (4): timm's ``pretrained=True`` habit gets the reason and the remedy, not
    "state dict does not hold a state dict of tensors"; ``pretrained=False`` is no weights."""
    with pytest.raises(ValueError, match=r"mixerlab downloads nothing; pretrained= takes a local weight file"):
        mixerlab.create_model("convit_tiny", pretrained=True)
    assert mixerlab.create_model("deit_micro", pretrained=False).num_classes == 10


def test_one_name_per_idea_across_commands(capsys):
    """Issue 31 (10): --threads in train as in bench and ablate (--num-threads still accepted,
    hidden); --device defaults to auto in every command that has it; list fits a narrow terminal
    or shows the columns asked for."""
    import argparse

    from mixerlab.cli.list_cmd import choose_columns, zoo_records
    from mixerlab.cli.main import build_parser, main
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "bench", "ablate"):
        assert "--threads" in sub.choices[name]._option_string_actions, name
    helps = {name: sub.choices[name].format_help() for name in sub.choices}
    assert "--num-threads" not in helps["train"]
    for name, p in sub.choices.items():
        dev = p._option_string_actions.get("--device")
        if dev is not None and name != "train":  # train's options default to its config's values
            assert dev.default == "auto" and "auto" in dev.choices, name
    assert mixerlab.TrainConfig().device == "auto"
    for flag in ("--threads", "--num-threads"):
        assert main(["train", "--data", "synthetic", flag, "1", "--dry-run"]) == 0
        assert "num_threads: 1" in capsys.readouterr().out
    rows = zoo_records(macs=False)
    cols, dropped = choose_columns(rows, None, 80)
    widths = [max(len(t), *(len(str(r[k]) if r[k] is not None else "-") for r in rows)) for _, k, t in cols]
    assert sum(widths) + 2 * (len(widths) - 1) <= 80 and "paper" in dropped and cols[0][0] == "model"
    assert [c[0] for c in choose_columns(rows, "model,paper", 80)[0]] == ["model", "paper"]
    assert len(choose_columns(rows, None, None)[0]) == 9
    with pytest.raises(ValueError, match="unknown column"):
        choose_columns(rows, "model,nope", None)


def test_a_reader_that_leaves_early_is_not_an_error():
    """``mixerlab list | head``: the pipe closes before the table is written; no error line."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "mixerlab", "list", "deit_*"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and "Broken pipe" not in err and "Traceback" not in err, err
