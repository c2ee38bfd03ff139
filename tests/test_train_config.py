"""Config layering (defaults <- YAML <- overrides), validation and the shipped recipes."""
from pathlib import Path

import pytest

from mixerlab.engine.config import TrainConfig, config_from_dict, config_to_yaml, load_config, valid_keys

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_layering_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\nlr: 5e-4\nbatch_size: 64\nclip_grad: 1.0\n")
    cfg = load_config(recipe, {"batch_size": "32", "ema_decay": "null", "amp": "bf16", "deterministic": "true"})
    assert cfg.epochs == 7 and cfg.lr == 5e-4  # YAML 1.1 reads 5e-4 as a string: converted
    assert cfg.batch_size == 32 and cfg.ema_decay is None and cfg.amp == "bf16" and cfg.deterministic is True
    assert cfg.clip_grad == 1.0 and cfg.weight_decay == TrainConfig().weight_decay


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(overrides={"model_args": "{dim: 32}", "betas": "[0.9, 0.95]"})
    assert cfg.model_args == {"dim": 32} and cfg.betas == (0.9, 0.95)
    import yaml
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize("key", ["lrr", "batchsize"])
def test_unknown_key_lists_valid_keys(tmp_path, key):
    with pytest.raises(ValueError, match="valid keys: model, model_args") as e:
        load_config(overrides={key: "1"})
    assert "did you mean" in str(e.value)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"{key}: 1\n")
    with pytest.raises(ValueError, match=f"unknown config key '{key}' in {recipe}"):
        load_config(recipe)


@pytest.mark.parametrize("key,value,msg", [
    ("lr", "-1", "lr=-1.0 is out of range: must be > 0"),
    ("epochs", "0", "epochs=0 is out of range"),
    ("epochs", "1.5", "expected int"),
    ("train_fraction", "1.5", "in \\(0, 1\\]"),
    ("amp", "fp8", "one of 'none', 'bf16', 'fp16'"),
    ("data", "mnist", "one of fashion-mnist"),
    ("batch_size", "7", "must be even when mixup"),
    ("betas", "[0.9]", "two values"),
])
def test_bad_values_are_rejected(key, value, msg):
    with pytest.raises(ValueError, match=msg):
        load_config(overrides={key: value, "recipe": "deit"})  # deit: Mixup on, batch must be even


def test_valid_keys_cover_cli_names():
    for k in ("model", "data", "data_dir", "epochs", "batch_size", "lr", "train_fraction", "seed", "deterministic"):
        assert k in valid_keys()


def test_missing_yaml():
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_recipes_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)


def test_recipes_named_and_default_follows_the_dataset():
    from mixerlab.engine.recipes import RECIPES
    fm = load_config(overrides={"data": "fashion-mnist"})
    assert fm.recipe == "small" and fm.mixup == 0.0 and fm.randaugment is None and fm.crop_padding == 2
    inet = load_config(overrides={"data": "imagefolder"})
    assert inet.recipe == "deit" and inet == TrainConfig(data="imagefolder")  # deit = the field defaults
    # the named recipe wins over the dataset's default; explicit options win over the recipe
    c = load_config(overrides={"data": "fashion-mnist", "recipe": "deit", "mixup": "0.2"})
    assert c.recipe == "deit" and c.mixup == 0.2 and c.cutmix == 1.0
    assert all(k in valid_keys() for r in RECIPES.values() for k in r)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; choose one of deit, small"):
        load_config(overrides={"recipe": "nope"})


def test_every_option_of_every_command_says_what_it_does():
    """--help of every sub-command: each option has a help text beyond its config key, train's
    options name their allowed values and default, and no default is printed twice."""
    import argparse
    import dataclasses
    from mixerlab.cli.main import build_parser
    from mixerlab.engine.config import FIELD_HELP, TrainConfig
    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(TrainConfig)}
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in subs.choices.items():
        text = p.format_help()
        assert "config key" not in text, name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 8, (name, action.option_strings)
        for chunk in text.split("\n  -")[1:]:  # one option's help
            assert chunk.count("default") <= 2 and "(default: None)" not in chunk, (name, chunk)
        if name == "train":
            for f in dataclasses.fields(TrainConfig):
                a = next(a for a in p._actions if a.dest == f.name)
                assert "allowed:" in (a.help or "") or f.name == "recipe", f.name
                assert "default" in a.help, f.name


def test_docs_train_config_is_generated_from_the_field_table():
    """One table per field: the committed docs/train_config.md equals what the table generates,
    and every field carries its help (and a check wherever it states allowed values)."""
    import dataclasses
    from pathlib import Path

    from mixerlab.engine.config import TrainConfig, fields_markdown
    doc = Path(__file__).resolve().parents[1] / "docs" / "train_config.md"
    assert doc.read_text() == fields_markdown(), "regenerate docs/train_config.md (command in its header)"
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name
        if f.metadata.get("check") is not None:
            assert f.metadata.get("allowed") is not None, f.name


def test_one_default_recipe_whichever_door(capsys):
    """Issue 31 (2): ``TrainConfig(data=...)`` in Python, ``load_config`` and ``mixerlab train``
    start from the same recipe: ``small`` for the 28-32 px sets, ``deit`` for ImageFolder; a named
    recipe and explicit values win, and ``dataclasses.replace`` keeps a config's own values."""
    import dataclasses

    import yaml

    from mixerlab.cli.main import main
    from mixerlab.engine.config import config_from_dict
    for data, recipe in (("fashion-mnist", "small"), ("synthetic", "small"), ("imagefolder", "deit")):
        py = TrainConfig(data=data)
        assert py.recipe == recipe and py == load_config(overrides={"data": data})
        if data == "imagefolder":
            continue  # its dry run needs a folder of images
        assert main(["train", "--data", data, "--dry-run"]) == 0
        assert config_from_dict(yaml.safe_load(capsys.readouterr().out)) == py
    assert TrainConfig() == TrainConfig(data="fashion-mnist") and TrainConfig().mixup == 0.0
    assert TrainConfig(recipe="deit").mixup == 0.8 and TrainConfig(data="cifar10", mixup=0.3).mixup == 0.3
    derived = dataclasses.replace(TrainConfig(recipe="deit"), data="cifar10")
    assert derived.recipe == "deit" and derived.mixup == 0.8
