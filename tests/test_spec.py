"""The model spec is a value: builder overrides, config (de)serialisation, one rebuild path that
does not depend on today's zoo defaults, and an import graph without circles."""
from __future__ import annotations

import ast
import re
import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import mixerlab
from mixerlab.engine import build_from_checkpoint, train
from mixerlab.models.config import config_from_dict, config_to_dict
from mixerlab.zoo import registry

from conftest_train import tiny_config

PKG = Path(mixerlab.__file__).parent


# -- builder arguments ------------------------------------------------------------------------
def test_builder_arguments_override_depth_and_heads():
    m = mixerlab.create_model("deit_tiny", depth=6, num_heads=4)
    assert len(m.blocks) == 6
    assert {b.token_mixer.num_heads for b in m.blocks} == {4}
    assert m.cfg.dim == 192 and m.zoo_name == "deit_tiny"
    # depth + heads override == the config written out by hand
    hand = dataclasses.replace(mixerlab.get_model_info("deit_tiny").config,
                               mixers=(("attention", {"num_heads": 4, "qkv_bias": True}),) * 6)
    assert m.cfg == hand


def test_builder_and_config_overrides_combine():
    m = mixerlab.create_model("convit_micro", depth=6, local_layers=3, num_classes=7, in_chans=1)
    names = [b.token_mixer.mixer_name for b in m.blocks]
    assert names == ["gpsa"] * 3 + ["attention"] * 3
    assert m.cfg.cls_token_at == 3 and m.num_classes == 7 and m.in_chans == 1
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_lavit_layout():
    m = mixerlab.create_model("lavit_tiny", layout=("AA", "A", "VLL", "LL"))
    kinds = [[(b.token_mixer.mixer_name, getattr(b.token_mixer, "mode", None)) for b in st.blocks]
             for st in m.stages]
    assert kinds == [[("attention", None)] * 2, [("attention", None)],
                     [("less_attention", "va"), ("less_attention", "la"), ("less_attention", "la")],
                     [("less_attention", "la"), ("less_attention", "la")]]
    assert m.stages[2].blocks[0].token_mixer.residual is None  # stage 2 (all A) carries no map
    assert m.stages[3].blocks[0].token_mixer.inherit  # the LA-only stage inherits stage 3's
    # the default layout spelled out is the zoo model itself
    assert mixerlab.get_model_info("lavit_tiny").resolve(layout=("V", "VL", "V" + "L" * 10, "LL")) == \
        mixerlab.get_model_info("lavit_tiny").config
    with pytest.raises(ValueError, match="layout stage 2 = 'LV'.*no map to inherit.*stage 1 = 'AA'"):
        mixerlab.create_model("lavit_tiny", layout=("AA", "AA", "LV", "VL"))
    with pytest.raises(ValueError, match="layout stage 0 = 'LV'.*first stage"):
        mixerlab.create_model("lavit_tiny", layout=("LV", "AA", "VL", "VL"))
    with pytest.raises(ValueError, match="layout stage 1 = 'AL'.*put a V before it"):
        mixerlab.create_model("lavit_tiny", layout=("VV", "AL", "VL", "VL"))
    with pytest.raises(ValueError, match="letters AVL"):
        mixerlab.create_model("lavit_tiny", layout=("AA", "AX", "VL", "VL"))


def test_lavit_input_size_the_ratios_cannot_divide():
    # 96 px: grids 24/12/6/3, divisible by the ratios 8/4/2/1; 112 px: stage 0's 28 x 28 is not by 8
    assert mixerlab.get_model_info("lavit_tiny").resolve(img_size=96).img_size == (96, 96)
    with pytest.raises(ValueError, match=r"stage 0 \('V'\): its 28x28 token grid at img_size 112 is "
                                         "not divisible by its reduction ratio 8"):
        mixerlab.create_model("lavit_tiny", img_size=112)
    # 40 px on lavit_micro: grids 20/10/5/2; stage 3 cannot receive stage 2's 5 x 5 map
    with pytest.raises(ValueError, match=r"stage 3 \('LL'\): the 5x5 map of stage 2 .* cannot be carried"):
        mixerlab.create_model("lavit_micro", img_size=40)
    # the vanilla twin (PVT attention floors the reduced grid) builds at any size
    assert mixerlab.get_model_info("lavit_tiny_vanilla").resolve(img_size=112).img_size == (112, 112)


def test_misspelt_override_names_the_allowed_keys():
    with pytest.raises(TypeError) as e:
        mixerlab.create_model("deit_tiny", dpeth=6)
    msg = str(e.value)
    assert "'dpeth'" in msg and "did you mean depth" in msg
    assert "builder arguments ['depth', 'dim', 'num_heads', 'qkv_bias']" in msg
    assert "num_classes" in msg  # config fields listed too


# -- serialisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", mixerlab.list_models())
def test_every_zoo_config_round_trips_through_json(name):
    cfg = mixerlab.get_model_info(name).config
    d = json.loads(json.dumps(cfg.to_dict()))
    assert type(cfg).from_dict(d) == cfg
    assert config_from_dict(d) == cfg


def test_from_dict_rejects_foreign_data():
    with pytest.raises(ValueError, match="not a mixerlab model config"):
        config_from_dict({"dim": 3})
    d = config_to_dict(mixerlab.get_model_info("deit_micro").config)
    d["config"]["dimension"] = 3
    with pytest.raises(ValueError, match="unknown field.*dimension"):
        config_from_dict(d)


# -- one rebuild path, independent of today's zoo defaults --------------------------------------
def _change_zoo_default(monkeypatch, name: str, **args):
    entry = registry.get_model_info(name)
    monkeypatch.setitem(registry._ZOO._items, name, dataclasses.replace(entry, args={**entry.args, **args}))


def test_checkpoint_rebuilds_the_trained_model_after_a_zoo_default_changes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config(model="lavit_micro", model_args={}, epochs=1, synthetic_size=32, batch_size=8)
    train(cfg, out_dir=run)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    before, _ = build_from_checkpoint(run)
    ref = before.eval()(x)
    # a default that changes no shape but changes the computation
    _change_zoo_default(monkeypatch, "lavit_micro", la_source="post_softmax")
    changed = mixerlab.create_model("lavit_micro", in_chans=1)
    changed.load_state_dict(before.state_dict())
    assert not torch.allclose(changed.eval()(x), ref)  # the changed default matters
    after, ckpt = build_from_checkpoint(run)
    assert after.cfg == before.cfg
    assert torch.equal(after.eval()(x), ref)  # bit-identical
    # eval and analyze rebuild through the same function
    assert mixerlab.evaluate(run, data="synthetic")["top1"] is not None
    from mixerlab.analysis.inputs import load_model
    assert torch.equal(load_model(str(run)).model.eval()(x), ref)


def test_header_only_rebuild_on_the_meta_device(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=1, synthetic_size=32, batch_size=8), out_dir=run)
    with torch.device("meta"):
        m, ckpt = build_from_checkpoint(run, weights=None)
    assert ckpt is None and next(m.parameters()).is_meta
    assert m.cfg.dim == 32 and m.zoo_name == "deit_micro"


def test_old_checkpoint_without_model_config_rebuilds_from_its_name_with_a_warning(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=1, synthetic_size=32, batch_size=8), out_dir=run)
    path = run / "best.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    assert "model_config" in meta and meta["mixerlab_version"] == mixerlab.__version__
    del meta["model_config"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=meta)
    new, _ = build_from_checkpoint(path)
    with pytest.warns(UserWarning, match="before checkpoints stored their model config"):
        legacy, _ = build_from_checkpoint(old)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(legacy.eval()(x), new.eval()(x))


def test_weight_files_carry_the_resolved_config(tmp_path):
    from mixerlab.weights import read_weights, save_weights, weights_metadata
    m = mixerlab.create_model("poolformer_micro", head_norm_first=False)
    path = save_weights(m.state_dict(), tmp_path / "w.safetensors", metadata=weights_metadata(m))
    _, meta = read_weights(path)
    assert config_from_dict(json.loads(meta["model_config"])) == m.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixerlab.create_model("poolformer_micro", head_norm_first=False, pretrained=path)
    with pytest.warns(UserWarning, match="config differs"):  # same shapes, another LayerScale init
        mixerlab.create_model("poolformer_micro", head_norm_first=False, ls=1e-3, pretrained=path)


# -- the import graph ---------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """mixerlab modules that ``path`` imports (relative or absolute), as dotted names."""
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    pkg = pkg.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out.update(n for n in [target, *names] if n.startswith("mixerlab"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mixerlab"))
    return out


def _layers_of_architecture_md() -> dict[str, int]:
    """``{dotted package or module: layer}`` from the layer table of docs/ARCHITECTURE.md."""
    text = (PKG.parent / "docs" / "ARCHITECTURE.md").read_text()
    layers = {}
    for line in text.splitlines():
        m = re.match(r"^\| (\d+) \| (.+?) \|", line)
        if m:
            for item in re.findall(r"`([\w/.]+)`", m.group(2)):
                layers["mixerlab." + item.removesuffix("/").removesuffix(".py").replace("/", ".")] = int(m.group(1))
    return layers


def _layer(name: str, layers: dict[str, int]) -> tuple[str, int] | None:
    parts = name.split(".")
    for k in range(len(parts), 1, -1):
        unit = ".".join(parts[:k])
        if unit in layers:
            return unit, layers[unit]
    return None


def test_imports_follow_the_layers_of_architecture_md():
    """Every import inside the package goes to the importer's own package or to a lower layer of
    docs/ARCHITECTURE.md's table; every module belongs to a layer (a new package must be added)."""
    layers = _layers_of_architecture_md()
    assert len(layers) >= 15, layers
    problems, unplaced = [], []
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        if name in ("mixerlab", "mixerlab.__main__"):
            continue  # the package's top: it may import anything
        own = _layer(name, layers)
        if own is None:
            unplaced.append(name)
            continue
        for dep in _imports(path):
            target = _layer(dep, layers)
            if target is None or target[0] == own[0]:
                continue  # a name of an unlisted module is caught as unplaced; own package is free
            if target[1] >= own[1]:
                problems.append(f"{name} (layer {own[1]}, {own[0]}) imports {dep} (layer {target[1]}, {target[0]})")
    assert not unplaced, f"modules in no layer of docs/ARCHITECTURE.md: {sorted(unplaced)}"
    assert not problems, "imports that do not go down:\n" + "\n".join(sorted(set(problems)))


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The check above fails on an import that goes up (so it can fail)."""
    layers = _layers_of_architecture_md()
    own, target = _layer("mixerlab.models.block", layers), _layer("mixerlab.engine.loop", layers)
    assert own[1] < target[1]
    own, target = _layer("mixerlab.convert.parity", layers), _layer("mixerlab.factory", layers)
    assert own[1] < target[1]  # where parity.py was: convert/ importing factory.py went up


def test_no_import_circles_between_files_and_no_import_mixerlab_inside_the_package():
    files = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = {d for d in _imports(path) if d in files and d != name}
        assert "mixerlab" not in _imports(path) or name == "mixerlab", f"{name} imports mixerlab"
        # a package's __init__ only hands names on; its edges are its children's edges
        graph[name] = deps
    # cycles among modules, ignoring edges into package faces (__init__ files)
    faces = {n for n, p in files.items() if p.name == "__init__.py"}
    edges = {n: {d for d in deps if d not in faces} for n, deps in graph.items() if n not in faces}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in edges.get(n, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(d):] + [d])}")
            if d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in edges:
        if n not in state:
            visit(n, [n])
