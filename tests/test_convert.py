"""timm weight interoperability (issue 3): parity of converted weights, round trips, refusals,
``create_model(pretrained=...)`` detection and the ``mixerlab convert`` command.

No downloads: timm models are built with ``pretrained=False`` and every parameter re-randomised.
The base / m-sized pairs are marked slow (run with ``-m slow``).
"""
from __future__ import annotations

import os
import re

import pytest
import torch

import mixerlab
from mixerlab.cli.main import main as cli
from mixerlab.convert import (TIMM_PAIRS, export_timm_weights, guess_model_name, is_timm_state_dict,
                              load_timm_weights)
from mixerlab.bench.parity import check_pair, randomize_parameters
from mixerlab.weights import read_weights, save_weights

timm = pytest.importorskip("timm")

TOL = 1e-4
FAST = ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_tiny_patch16_224",
        "vit_small_patch16_224", "convit_tiny", "convit_small", "poolformer_s12", "poolformer_s24"]
_V2_PAIR = re.compile(r"^(poolformerv2|convformer|caformer)_")
# fp32 at 224 px for v1/ViT/ConViT; the deep v2 models sit above 1e-4 there from fp32 rounding alone
# (timm's own fp32-vs-fp64 error is of that size), so their mapping is checked in fp64 below.
SLOW = [n for n in TIMM_PAIRS if n not in FAST and not _V2_PAIR.match(n)]
V2_LARGE_PAIRS = [n for n in TIMM_PAIRS if _V2_PAIR.match(n) and not n.endswith(("_s12", "_s18"))]


def timm_model(name: str, seed: int = 0):
    return randomize_parameters(timm.create_model(name, pretrained=False), seed).eval()


@pytest.fixture(scope="module")
def timm_sds():
    """Randomised timm state dicts of the small models the refusal tests use."""
    return {n: timm_model(n).state_dict()
            for n in ("deit_tiny_patch16_224", "deit_small_patch16_224", "convit_tiny",
                      "poolformer_s12")}


def images(seed: int = 1):
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- parity ---------------------------------------------------------------------------------------
def _check(name):
    r = check_pair(name)
    assert r["logits"] <= TOL, r
    assert r["features"] <= TOL, r
    assert r["export_logits"] <= TOL, r
    assert r["roundtrip_exact"], r


@pytest.mark.parametrize("name", FAST)
def test_parity_and_round_trip(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_parity_and_round_trip_large(name):
    _check(name)


def test_covered_pairs_are_the_issue_list():
    want = {f"{f}_{s}_patch16_224" for f in ("deit", "vit") for s in ("tiny", "small", "base")}
    want |= {f"convit_{s}" for s in ("tiny", "small", "base")}
    want |= {f"poolformer_{s}" for s in ("s12", "s24", "s36", "m36", "m48")}
    want |= {f"poolformerv2_{s}" for s in ("s12", "s24", "s36", "m36", "m48")}
    want |= {f"{f}_{s}" for f in ("convformer", "caformer") for s in ("s18", "s36", "m36", "b36")}
    assert set(TIMM_PAIRS) == want
    assert set(TIMM_PAIRS) <= set(timm.list_models())
    assert set(TIMM_PAIRS.values()) <= set(mixerlab.list_models())
    assert mixerlab.load_timm_weights is load_timm_weights
    assert mixerlab.export_timm_weights is export_timm_weights


def test_randomisation_makes_a_wrong_mapping_visible(timm_sds):
    """The parity tests can fail: swapping two blocks' tensors changes the logits a lot."""
    tm = timm.create_model("convit_tiny", pretrained=False).eval()
    tm.load_state_dict(timm_sds["convit_tiny"])
    sd = dict(timm_sds["convit_tiny"])
    a, b = "blocks.0.attn.gating_param", "blocks.1.attn.gating_param"
    sd[a], sd[b] = sd[b], sd[a]
    model = load_timm_weights(mixerlab.create_model("convit_tiny"), sd).eval()
    with torch.no_grad():
        assert (model(images()) - tm(images())).abs().max() > 1e-2


def test_poolformer_heads_differ(timm_sds):
    """The official head (norm, then pool) is not timm's (pool, then norm): the option matters."""
    sd = timm_sds["poolformer_s12"]
    tm = timm.create_model("poolformer_s12", pretrained=False).eval()
    tm.load_state_dict(sd)
    model = mixerlab.create_model("poolformer_s12", pretrained=sd).eval()
    assert model.head_norm_first is False and model.cfg.head_norm_first is False
    official = mixerlab.create_model("poolformer_s12").eval()
    own = export_timm_weights(model)
    official.load_state_dict(model.state_dict())  # same tensors, official head order
    with torch.no_grad():
        x = images()
        assert (model(x) - tm(x)).abs().max() <= TOL
        assert (official(x) - tm(x)).abs().max() > 1e-2
    assert same_state(own, sd)


# -- detection and create_model(pretrained=...) --------------------------------------------------
_V2_LARGE = re.compile(r"^(identityformer|randformer|poolformerv2|convformer|caformer)_(s24|s36|m36|m48|b36)$")


def _not_taken(names):
    with torch.device("meta"):
        for name in names:
            assert not is_timm_state_dict(mixerlab.create_model(name).state_dict()), name


def test_mixerlab_state_dicts_are_not_taken_for_timm():
    _not_taken([n for n in mixerlab.list_models() if not _V2_LARGE.match(n)])


@pytest.mark.slow
def test_mixerlab_state_dicts_are_not_taken_for_timm_v2_large():
    _not_taken([n for n in mixerlab.list_models() if _V2_LARGE.match(n)])


def _guess(pairs):
    with torch.device("meta"):
        for tname, mname in pairs:
            assert guess_model_name(timm.create_model(tname, pretrained=False).state_dict()) == mname


def test_guess_model_name_for_every_pair():
    _guess([(t, m) for t, m in TIMM_PAIRS.items() if not _V2_LARGE.match(t)])


@pytest.mark.slow
def test_guess_model_name_for_every_pair_v2_large():
    _guess([(t, m) for t, m in TIMM_PAIRS.items() if _V2_LARGE.match(t)])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_create_model_pretrained_timm_file(tmp_path, suffix):
    tm = timm_model("poolformer_s12", seed=3)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tm.state_dict(), str(path))
    else:
        torch.save(tm.state_dict(), path)
    model = mixerlab.create_model("poolformer_s12", pretrained=path).eval()
    assert model.head_norm_first is False
    with torch.no_grad():
        assert (model(images()) - tm(images())).abs().max() <= TOL


def test_create_model_pretrained_timm_convit_and_mixerlab_checkpoint(tmp_path, timm_sds):
    sd = timm_sds["convit_tiny"]
    torch.save(sd, tmp_path / "convit.pth")
    a = mixerlab.create_model("convit_tiny", pretrained=tmp_path / "convit.pth")
    # a plain mixerlab checkpoint still loads as before
    torch.save(a.state_dict(), tmp_path / "mixerlab.pth")
    b = mixerlab.create_model("convit_tiny", pretrained=tmp_path / "mixerlab.pth")
    assert same_state(a.state_dict(), b.state_dict())
    assert same_state(export_timm_weights(b), sd)


def test_saved_head_option_is_applied(tmp_path, timm_sds):
    """Converted PoolFormer weights remember timm's head; loading rebuilds it."""
    model = mixerlab.create_model("poolformer_s12", pretrained=timm_sds["poolformer_s12"])
    from mixerlab.weights import weights_metadata
    save_weights(model.state_dict(), tmp_path / "pf.safetensors",
                 metadata=weights_metadata(model, {"head_norm_first": False}))
    again = mixerlab.create_model("poolformer_s12", pretrained=tmp_path / "pf.safetensors")
    assert again.head_norm_first is False
    assert same_state(again.state_dict(), model.state_dict())
    save_weights(model.state_dict(), tmp_path / "bad.safetensors",
                 metadata={"format": "mixerlab-weights/1", "options": '{"drop_rate": 0.5}'})
    with pytest.raises(ValueError, match="drop_rate=0.5"):
        mixerlab.create_model("poolformer_s12", pretrained=tmp_path / "bad.safetensors")


# -- refusals ------------------------------------------------------------------------------------
def _refuses(model, sd, pattern):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=pattern):
        load_timm_weights(model, sd)
    assert same_state(before, model.state_dict()), "a refused load changed the model"


def test_wrong_size_names_first_key_and_shapes(timm_sds):
    _refuses(mixerlab.create_model("deit_tiny"), timm_sds["deit_small_patch16_224"],
             re.escape("'cls_token' has shape (1, 1, 384), deit_tiny expects (1, 1, 192)")
             + ".*looks like timm deit_small_patch16_224")


def test_wrong_family(timm_sds):
    _refuses(mixerlab.create_model("deit_tiny"), timm_sds["convit_tiny"],
             "timm ConViT model.*deit_tiny is a ViT/DeiT model")
    _refuses(mixerlab.create_model("convit_tiny"), timm_sds["poolformer_s12"],
             "timm PoolFormer.*convit_tiny is a ConViT model")
    _refuses(mixerlab.create_model("poolformer_s12", head_norm_first=False), timm_sds["deit_tiny_patch16_224"],
             "ViT/DeiT model.*poolformer_s12 is a PoolFormer")


def test_missing_and_unexpected_keys(timm_sds):
    sd = dict(timm_sds["deit_tiny_patch16_224"])
    del sd["blocks.3.mlp.fc2.bias"]
    _refuses(mixerlab.create_model("deit_tiny"), sd, re.escape("missing key 'blocks.3.mlp.fc2.bias'"))
    sd = dict(timm_sds["deit_tiny_patch16_224"], **{"blocks.12.norm1.weight": torch.ones(192)})
    _refuses(mixerlab.create_model("deit_tiny"), sd, re.escape("unexpected key 'blocks.12.norm1.weight'"))


def test_class_count_mismatch(timm_sds):
    _refuses(mixerlab.create_model("convit_tiny", num_classes=10), timm_sds["convit_tiny"],
             re.escape("'head.weight' has shape (1000, 192), convit_tiny expects (10, 192)"))


def test_not_a_timm_state_dict(timm_sds):
    own = mixerlab.create_model("deit_tiny").state_dict()
    _refuses(mixerlab.create_model("deit_tiny"), own, "not a timm ViT/DeiT, ConViT or PoolFormer")


@pytest.mark.parametrize("name", ["deepvit_s", "lavit_small", "identityformer_s12", "ffonly_tiny",
                                  "poolformer_hybrid_s12"])
def test_models_without_timm_counterpart(name, timm_sds):
    if name not in mixerlab.list_models():
        pytest.skip(f"{name} not in the zoo")
    with torch.device("meta"):
        model = mixerlab.create_model(name)
    with pytest.raises(ValueError, match="no timm counterpart"):
        export_timm_weights(model)
    with pytest.raises(ValueError, match="no timm counterpart"):
        load_timm_weights(model, timm_sds["poolformer_s12"])


def test_official_poolformer_head_is_refused(timm_sds):
    model = mixerlab.create_model("poolformer_s12")
    _refuses(model, timm_sds["poolformer_s12"], "head_norm_first=False")
    with pytest.raises(ValueError, match="head_norm_first=False"):
        export_timm_weights(model)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, timm_sds, suffix):
    path = tmp_path / f"full{suffix}"
    save_weights(timm_sds["deit_tiny_patch16_224"], path)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_timm_weights(mixerlab.create_model("deit_tiny"), cut)
    with pytest.raises(ValueError, match="cannot read weights"):
        mixerlab.create_model("deit_tiny", pretrained=cut)


# -- atomic writes and the CLI -------------------------------------------------------------------
def test_save_weights_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_weights({"a": torch.ones(3)}, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_cli_timm_to_mixerlab_and_back(tmp_path, capsys, timm_sds):
    sd = timm_sds["poolformer_s12"]
    torch.save(sd, tmp_path / "in.pth")
    out = tmp_path / "out.safetensors"
    assert cli(["convert", "--from", "timm", "--model", "poolformer_s12",
                str(tmp_path / "in.pth"), str(out)]) == 0
    assert "head_norm_first" in capsys.readouterr().out
    w, meta = read_weights(out)
    assert meta["model"] == "poolformer_s12" and "head_norm_first" in meta["options"]
    model = mixerlab.create_model("poolformer_s12", pretrained=out).eval()
    tm = timm.create_model("poolformer_s12", pretrained=False).eval()
    tm.load_state_dict(sd)
    with torch.no_grad():
        assert (model(images()) - tm(images())).abs().max() <= TOL
    back = tmp_path / "back.safetensors"
    assert cli(["convert", "--from", "mixerlab", str(out), str(back)]) == 0  # model from metadata
    tm.load_state_dict(read_weights(back)[0], strict=True)
    assert same_state(tm.state_dict(), sd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.safetensors", "in.pth", "out.safetensors"]


def test_cli_guesses_the_model(tmp_path, timm_sds):
    torch.save(timm_sds["deit_tiny_patch16_224"], tmp_path / "in.pth")
    assert cli(["convert", "--from", "timm", str(tmp_path / "in.pth"), str(tmp_path / "o.pth")]) == 0
    m = mixerlab.create_model("deit_tiny", pretrained=tmp_path / "o.pth")
    assert same_state(export_timm_weights(m), timm_sds["deit_tiny_patch16_224"])


@pytest.mark.parametrize("case", ["missing", "truncated", "wrong_size", "wrong_family", "exists",
                                  "bad_ext", "mixerlab_as_timm", "unknown_model"])
def test_cli_bad_input(tmp_path, capsys, timm_sds, case):
    good = tmp_path / "in.pth"
    torch.save(timm_sds["deit_tiny_patch16_224"], good)
    out = tmp_path / "out.safetensors"
    args = ["convert", "--from", "timm", "--model", "deit_tiny", str(good), str(out)]
    if case == "missing":
        args[-2] = str(tmp_path / "nope.pth")
    elif case == "truncated":
        (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
        args[-2] = str(tmp_path / "cut.pth")
    elif case == "wrong_size":
        args[4] = "deit_small"
    elif case == "wrong_family":
        args[4] = "convit_tiny"
    elif case == "exists":
        out.write_bytes(b"keep")
    elif case == "bad_ext":
        args[-1] = str(tmp_path / "out.txt")
    elif case == "mixerlab_as_timm":
        torch.save(mixerlab.create_model("deit_tiny").state_dict(), good)
    elif case == "unknown_model":
        args[4] = "deit_tinyy"
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixerlab convert: error:") and "\n" not in err
    names = sorted(p.name for p in tmp_path.iterdir())
    if case == "exists":
        assert out.read_bytes() == b"keep"
    else:
        assert "out.safetensors" not in names
    assert not [n for n in names if n.endswith(".tmp")]


def test_training_checkpoint_weights_load(tmp_path):
    """A ``mixerlab-checkpoint`` safetensors file: the ``model.`` tensors are the weights."""
    from safetensors.torch import save_file
    model = mixerlab.create_model("deit_micro")
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp_path / "ckpt.safetensors"), metadata={"format": "mixerlab-checkpoint/1"})
    again = mixerlab.create_model("deit_micro", pretrained=tmp_path / "ckpt.safetensors")
    assert same_state(again.state_dict(), model.state_dict())


# -- MetaFormer v2 (poolformerv2 / convformer / caformer) ------------------------------------------
# Reduced variants (same modules, fewer and narrower blocks: every key kind is there: stem and
# downsampling norms, residual scales in stages 3-4, SepConv, attention, the MLP head) keep the
# default suite fast; the s12/s18 and larger sizes run with ``-m slow``.
V2_FAST = ["poolformerv2_s12", "convformer_s18", "caformer_s18"]
V2_TINY = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 96))
V2_TOL32, V2_TOL64 = 1e-5, 1e-10


def _check_v2(name, model_args=None, img_size=64):
    r32 = check_pair(name, img_size=img_size, model_args=model_args)
    assert max(r32["logits"], r32["features"], r32["export_logits"]) <= V2_TOL32, r32
    assert r32["roundtrip_exact"], r32
    r64 = check_pair(name, img_size=img_size, model_args=model_args, dtype=torch.float64)
    assert max(r64["logits"], r64["features"], r64["export_logits"]) <= V2_TOL64, r64
    assert r64["roundtrip_exact"], r64


@pytest.mark.parametrize("name", ["poolformerv2_s12", "caformer_s18"])
def test_v2_parity_reduced(name):
    """poolformerv2 (GroupNorm(1) without bias, linear head) and caformer (SepConv, attention,
    MLP head) between them hold every v2 key kind; convformer runs with ``-m slow``."""
    _check_v2(name, V2_TINY)


@pytest.mark.slow
def test_v2_parity_reduced_convformer():
    _check_v2("convformer_s18", V2_TINY)


@pytest.mark.slow
@pytest.mark.parametrize("name", V2_LARGE_PAIRS)
def test_v2_parity_large_fp64(name):
    """The larger v2 models: every weight mapped (both directions), checked in float64 at 64 px."""
    r = check_pair(name, img_size=64, dtype=torch.float64)
    assert max(r["logits"], r["features"], r["export_logits"]) <= V2_TOL64, r
    assert r["roundtrip_exact"], r


@pytest.mark.slow
@pytest.mark.parametrize("name", V2_FAST)
def test_v2_parity_full_size_fp64(name):
    """Full s12/s18 models: the mapping is exact in float64 (fp32 differences of the full models
    are at fp32's own noise level, see docs/timm_interop.md)."""
    r = check_pair(name, img_size=64, dtype=torch.float64)
    assert max(r["logits"], r["features"], r["export_logits"]) <= V2_TOL64, r
    assert r["roundtrip_exact"], r


def test_v2_mlp_head_eps_is_switched_to_timms():
    """timm's MLP head normalises with eps 1e-6, the official code with 1e-5: loading timm
    weights switches it, and the switch is visible in the logits."""
    from mixerlab.bench.parity import _timm_model
    tm = randomize_parameters(_timm_model("caformer_s18", V2_TINY), 4).eval()
    model = mixerlab.create_model("caformer_s18", **V2_TINY).eval()
    assert model.cfg.head_hidden_norm_eps == 1e-5 and model.head.norm.eps == 1e-5
    load_timm_weights(model, tm.state_dict())
    assert model.cfg.head_hidden_norm_eps == 1e-6 and model.head.norm.eps == 1e-6
    x = images()[..., :64, :64]
    with torch.no_grad():
        assert (model(x) - tm(x)).abs().max() <= V2_TOL32
        model.set_head_hidden_norm_eps(1e-5)
        assert (model(x) - tm(x)).abs().max() > V2_TOL32


def test_v2_wrong_family_and_version_names_both():
    from mixerlab.bench.parity import _timm_model
    v2 = randomize_parameters(_timm_model("poolformerv2_s12", V2_TINY)).state_dict()
    v1 = randomize_parameters(timm.models.metaformer.MetaFormer(
        downsample_norm=None, mlp_act=torch.nn.GELU, mlp_bias=True,
        norm_layers=timm.layers.GroupNorm1, layer_scale_init_values=1e-5,
        res_scale_init_values=None, use_mlp_head=False, **V2_TINY)).state_dict()  # poolformer_s12's options
    _refuses(mixerlab.create_model("poolformerv2_s12", **V2_TINY), v1,
             "timm PoolFormer v1 .*poolformerv2_s12 is a MetaFormer v2")
    _refuses(mixerlab.create_model("poolformer_s12", head_norm_first=False, **V2_TINY), v2,
             "timm MetaFormer v2 .*poolformer_s12 is a PoolFormer v1")
    conv = randomize_parameters(_timm_model("convformer_s18", V2_TINY)).state_dict()
    _refuses(mixerlab.create_model("caformer_s18", **V2_TINY), conv, "caformer_s18")


def test_v1_v2_native_checkpoints_name_both_versions(tmp_path):
    v1 = mixerlab.create_model("poolformer_s12", depths=(1, 1, 1, 1))
    v2 = mixerlab.create_model("poolformerv2_s12", depths=(1, 1, 1, 1))
    save_weights(v1.state_dict(), tmp_path / "v1.safetensors")
    torch.save(v2.state_dict(), tmp_path / "v2.pth")
    with pytest.raises(ValueError, match="MetaFormer v1 .* weights, but poolformerv2_s12 is a MetaFormer v2"):
        mixerlab.create_model("poolformerv2_s12", depths=(1, 1, 1, 1), pretrained=tmp_path / "v1.safetensors")
    with pytest.raises(ValueError, match="MetaFormer v2 .* weights, but poolformer_s12 is a MetaFormer v1"):
        mixerlab.create_model("poolformer_s12", depths=(1, 1, 1, 1), pretrained=tmp_path / "v2.pth")
    # same version still loads
    again = mixerlab.create_model("poolformerv2_s12", depths=(1, 1, 1, 1), pretrained=tmp_path / "v2.pth")
    assert same_state(again.state_dict(), v2.state_dict())


def test_v2_models_without_timm_counterpart(timm_sds):
    with torch.device("meta"):
        for name in ("identityformer_s12", "randformer_s12"):
            with pytest.raises(ValueError, match="no timm counterpart"):
                export_timm_weights(mixerlab.create_model(name))
        bad = mixerlab.create_model("convformer_s18", mixers=(("sepconv", {"kernel_size": 5}),) * 4)
        with pytest.raises(ValueError, match="kernel_size"):
            export_timm_weights(bad)


@pytest.mark.slow
def test_cli_v2_timm_to_mixerlab_and_back(tmp_path, capsys):
    tm = timm_model("caformer_s18", seed=5)
    sd = tm.state_dict()
    torch.save(sd, tmp_path / "in.pth")
    out = tmp_path / "out.safetensors"
    assert cli(["convert", "--from", "timm", str(tmp_path / "in.pth"), str(out)]) == 0  # guessed
    assert "head_hidden_norm_eps" in capsys.readouterr().out
    w, meta = read_weights(out)
    assert meta["model"] == "caformer_s18"
    model = mixerlab.create_model("caformer_s18", pretrained=out).eval()
    assert model.head.norm.eps == 1e-6
    x = images()[..., :64, :64]
    with torch.no_grad():
        assert (model(x) - tm(x)).abs().max() <= 1e-4
    back = tmp_path / "back.safetensors"
    assert cli(["convert", "--from", "mixerlab", str(out), str(back)]) == 0
    assert same_state(read_weights(back)[0], sd)
