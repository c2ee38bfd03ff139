"""The zoo against the papers: every parameter count pinned to the official code's (or the
paper's rounded) number; configurations as the papers give them."""
from __future__ import annotations

import pytest
import torch

import mixerlab
from mixerlab.bench.complexity import count_macs, count_params

REQUIRED = """deit_tiny deit_small deit_base ffonly_tiny ffonly_base ffonly_large convit_tiny
convit_tiny_plus convit_small convit_small_plus convit_base convit_base_plus vit_depth16 vit_depth24
vit_depth32 deepvit_depth16 deepvit_depth24 deepvit_depth32 deepvit_s deepvit_l poolformer_s12
poolformer_s24 poolformer_s36 poolformer_m36 poolformer_m48 poolformer_v1_identity_s12
poolformer_v1_random_s12 poolformer_hybrid_s12 lavit_tiny lavit_small lavit_base lavit_tiny_vanilla
lavit_small_vanilla lavit_base_vanilla deit_micro ffonly_micro convit_micro
deepvit_micro poolformer_micro identityformer_micro lavit_micro""".split()
V2 = [f"{f}_{s}" for s in ("s12", "s24", "s36", "m36", "m48")
      for f in ("identityformer", "randformer", "poolformerv2")]
V2 += [f"{f}_{s}" for s in ("s18", "s36", "m36", "b36") for f in ("convformer", "caformer")]
REQUIRED += V2 + ["poolformerv2_micro"]


def meta_model(name, **kw):
    with torch.device("meta"):
        return mixerlab.create_model(name, **kw)


def test_zoo_has_exactly_the_required_names():
    assert sorted(mixerlab.list_models()) == sorted(REQUIRED)


@pytest.mark.parametrize("name", [n for n in REQUIRED if n not in V2])
def test_param_count_matches_paper(name):
    e = mixerlab.get_model_info(name)
    ours = count_params(meta_model(name)) / 1e6
    ref = e.reference_params
    assert abs(ours / ref - 1) <= e.param_tolerance, f"{name}: {ours:.3f}M vs {ref}M"


def test_exact_counts_of_official_code():
    """Counts the paper files give to the parameter (measured/derived from the official code)."""
    exact = {"poolformer_s12": 11_915_176, "deit_tiny": 5_717_416}
    assert count_params(meta_model("poolformer_s12")) == exact["poolformer_s12"]
    assert count_params(meta_model("deit_tiny")) == exact["deit_tiny"]
    assert round(count_params(meta_model("ffonly_tiny")) / 1e3) == 7676


def test_micro_models_are_within_15_percent_of_each_other():
    counts = {n: count_params(meta_model(n)) for n in mixerlab.list_models("*_micro")}
    assert len(counts) == 8
    assert max(counts.values()) / min(counts.values()) <= 1.15 / 0.85
    assert all(0.85e6 <= c <= 1.15e6 for c in counts.values())


@pytest.mark.parametrize("name,gmacs", [("deit_tiny", 1.26), ("convit_tiny", 1.26),
                                        ("poolformer_s12", 1.82), ("ffonly_tiny", 1.44),
                                        ("deepvit_depth16", 5.30)])
def test_macs_close_to_reported(name, gmacs):
    # Reported values are fvcore counts with attention matmuls (the pooling mixer counts 0).
    assert abs(count_macs(meta_model(name)) / 1e9 / gmacs - 1) < 0.012


def test_convit_structure():
    m = meta_model("convit_tiny")
    kinds = [type(b.token_mixer).__name__ for b in m.blocks]
    assert kinds == ["GPSA"] * 10 + ["Attention"] * 2
    assert m.cls_token_at == 10 and m.pos_embed.shape == (1, 196, 192)
    assert m.blocks[0].token_mixer.qk.bias is None


def test_deepvit_structure():
    s = meta_model("deepvit_s")
    kinds = [type(b.token_mixer).__name__ for b in s.blocks]
    assert kinds == ["Attention"] * 11 + ["ReAttention"] * 5
    assert s.blocks[-1].token_mixer.reatten_scale == pytest.approx(33 ** -0.5)
    assert s.blocks[0].ls1.value == 2.0  # scale_adjustment 0.5 doubles the branches
    l_ = meta_model("deepvit_l")
    assert [type(b.token_mixer).__name__ for b in l_.blocks].count("ReAttention") == 12
    assert l_.blocks[-1].token_mixer.reatten_scale == 1.0


def test_ffonly_structure():
    m = meta_model("ffonly_large")
    assert m.pos_embed.shape == (1, 197, 1024)  # 14x14 grid + class slot, as stored by the code
    b = m.blocks[0]
    assert b.mlp_first and b.token_mixer.mlp.fc1.weight.shape == (200, 50)
    assert b.norm1.weight.shape == (50,)  # LayerNorm over the 50 tokens


def test_poolformer_structure():
    m = meta_model("poolformer_s36")
    assert m.stages[0].blocks[0].ls1.gamma.shape == (64,)
    h = meta_model("poolformer_hybrid_s12")
    mix = [type(st.blocks[0].token_mixer).__name__ for st in h.stages]
    assert mix == ["Pooling", "Pooling", "Attention", "Attention"]
    assert h.stages[2].blocks[0].token_mixer.num_heads == 10  # 320 / 32
    assert h.stages[2].pos_embed.shape == (1, 196, 320) and h.stages[3].pos_embed is None
    r = meta_model("poolformer_v1_random_s12")
    assert [type(st.blocks[0].token_mixer).__name__ for st in r.stages] == \
        ["IdentityMixer", "IdentityMixer", "RandomMixing", "RandomMixing"]
    assert not r.stages[2].blocks[0].token_mixer.as_parameter  # v1: a buffer, not counted


# LaViT: (params, MACs at 224 px) of mixerlab's counter, pinned; the reported pairs (secondary
# source) are 10.9M / 1.6G, 22.4M / 3.3G, 39.6M / 6.1G.
LAVIT_COUNTS = {"lavit_tiny": (10_520_972, 1_564_076_704), "lavit_small": (22_059_606, 3_418_571_484),
                "lavit_base": (38_323_704, 5_938_524_104),
                "lavit_tiny_vanilla": (15_585_064, 1_984_098_432),
                "lavit_small_vanilla": (33_952_488, 4_434_439_680),
                "lavit_base_vanilla": (58_722_760, 7_682_663_424)}


@pytest.mark.parametrize("name", ["lavit_tiny", "lavit_small", "lavit_base"])
def test_lavit_counts_pinned_near_reported_and_below_the_vanilla_twin(name):
    e = mixerlab.get_model_info(name)
    m, twin = meta_model(name), meta_model(f"{name}_vanilla")
    p, macs = count_params(m), count_macs(m)
    assert (p, macs) == LAVIT_COUNTS[name]
    assert (count_params(twin), count_macs(twin)) == LAVIT_COUNTS[f"{name}_vanilla"]
    assert abs(p / 1e6 / e.reported["params"] - 1) <= 0.05
    assert abs(macs / 1e9 / e.reported["gmacs"] - 1) <= 0.05
    assert macs <= 0.85 * count_macs(twin)  # >= 15 % fewer MACs than the same skeleton all-vanilla
    if name == "lavit_tiny":
        assert macs <= 1.7e9


def test_lavit_twin_is_the_same_skeleton():
    for name in ("lavit_tiny", "lavit_small", "lavit_base"):
        a, b = mixerlab.get_model_info(name).config, mixerlab.get_model_info(f"{name}_vanilla").config
        assert [(st.dim, st.mlp_ratio, len(st.mixers)) for st in a.stages] == \
            [(st.dim, st.mlp_ratio, len(st.mixers)) for st in b.stages]
        assert all(mx[0] == "attention" for st in b.stages for mx in st.mixers)
        sr = [mx[1]["sr_ratio"] for st in a.stages for mx in st.mixers]
        assert sr == [mx[1]["sr_ratio"] for st in b.stages for mx in st.mixers]  # same key grids


def test_lavit_structure():
    m = meta_model("lavit_small")
    modes = [[getattr(b.token_mixer, "mode", "attn") for b in st.blocks] for st in m.stages]
    assert modes == [["va"], ["va", "la"], ["va"] + ["la"] * 14, ["la", "la"]]
    mixers = [st.blocks[0].token_mixer for st in m.stages]
    assert mixers[0].residual is None
    assert all(mx.residual is not None for mx in mixers[1:])  # the residual at every downsampling
    assert mixers[3].inherit and mixers[3].residual.init == "mean"  # stage 4: LA only, inherits
    assert [mx.key_grid for mx in mixers] == [(7, 7)] * 4  # PVT ratios 8/4/2/1 at 224 px
    la = [st.blocks[-1].token_mixer for st in m.stages[1:]]
    assert [x.psi_kind for x in la] == ["kron", "kron", "dense"]
    assert mixers[1].residual.head_mix.shape == (2, 1) and mixers[3].residual.head_mix.shape == (8, 5)


def test_list_models_pattern():
    assert mixerlab.list_models("convit_*")[:2] == ["convit_tiny", "convit_tiny_plus"]
    assert mixerlab.list_models("nothing*") == []


# -- MetaFormer v2 (MetaFormer Baselines, arXiv 2210.13452) ---------------------------------------
def _timm_count(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        return count_params(timm.create_model(name, pretrained=False))


TIMM_V2 = [n for n in V2 if not n.startswith(("identityformer", "randformer"))]
TIMM_V2_FAST = ["poolformerv2_s12", "convformer_s18", "caformer_s18"]


def _v2_against_timm(name):
    """timm's poolformerv2 / convformer / caformer load the official weights, so their counts are
    the official code's; the pinned ``params_exact`` was read from them."""
    assert mixerlab.get_model_info(name).reported["params_exact"] == _timm_count(name)


@pytest.mark.parametrize("name", TIMM_V2_FAST)
def test_v2_pinned_counts_equal_timm(name):
    _v2_against_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_V2 if n not in TIMM_V2_FAST])
def test_v2_pinned_counts_equal_timm_large(name):
    _v2_against_timm(name)


def test_v2_counts_equal_the_pinned_official_counts():
    """Every v2 entry's count to the parameter; IdentityFormer = PoolFormerV2 (pooling has no
    parameters); RandFormer adds one frozen N x N matrix per block of stages 3-4 (14x14 and 7x7
    tokens at 224 px): the official code's ``nn.Parameter(requires_grad=False)``, the README's
    "+ 0.2M" etc."""
    for name in V2:
        e = mixerlab.get_model_info(name)
        m = meta_model(name)
        assert count_params(m) == e.reported["params_exact"], name
        assert abs(e.reported["params"] / (e.reported["params_exact"] / 1e6) - 1) < 1e-3
    for size in ("s12", "s24", "s36", "m36", "m48"):
        pool = mixerlab.get_model_info(f"poolformerv2_{size}").reported["params_exact"]
        assert mixerlab.get_model_info(f"identityformer_{size}").reported["params_exact"] == pool
        rand = mixerlab.get_model_info(f"randformer_{size}")
        d = rand.args["depths"]
        frozen = d[2] * 196 ** 2 + d[3] * 49 ** 2
        assert rand.reported["params_exact"] == pool + frozen
        assert round(frozen / 1e6, 1) == {"s12": 0.2, "s24": 0.5, "s36": 0.7, "m36": 0.7, "m48": 0.9}[size]
    r = meta_model("randformer_s12")
    assert count_params(r, trainable_only=True) == 11_891_712


def test_identityformer_s12_v2_vs_v1_numbers():
    """The issue's facts: v2 IdentityFormer-S12 11,891,712 params / 74.6; v1 ablation 11,915,176 / 74.3."""
    v2, v1 = mixerlab.get_model_info("identityformer_s12"), mixerlab.get_model_info("poolformer_v1_identity_s12")
    assert count_params(meta_model("identityformer_s12")) == 11_891_712 and v2.reported["top1"] == 74.6
    assert count_params(meta_model("poolformer_v1_identity_s12")) == 11_915_176 and v1.reported["top1"] == 74.3
    assert "top1" not in mixerlab.get_model_info("poolformer_v1_random_s12").reported
    assert "identityformer_s12" in v1.reported["note"]


def test_v2_top1_are_the_papers():
    top1 = {n: mixerlab.get_model_info(n).reported["top1"] for n in V2}
    assert [top1[f"poolformerv2_{s}"] for s in ("s12", "s24", "s36", "m36", "m48")] == [78.0, 80.7, 81.6, 82.2, 82.6]
    assert [top1[f"randformer_{s}"] for s in ("s12", "s24", "s36", "m36", "m48")] == [76.6, 78.2, 79.5, 81.2, 81.4]
    assert [top1[f"convformer_{s}"] for s in ("s18", "s36", "m36", "b36")] == [83.0, 84.1, 84.5, 84.8]
    assert [top1[f"caformer_{s}"] for s in ("s18", "s36", "m36", "b36")] == [83.6, 84.5, 85.2, 85.5]


def test_v2_structure():
    m = meta_model("caformer_s18")
    assert [type(st.blocks[0].token_mixer).__name__ for st in m.stages] == ["SepConv", "SepConv", "Attention", "Attention"]
    att = m.stages[2].blocks[0].token_mixer
    assert att.num_heads == 10 and att.qkv.bias is None and att.proj.bias is None
    assert [st.blocks[0].rs1 is not None for st in m.stages] == [False, False, True, True]
    b = m.stages[0].blocks[0]
    assert b.norm1.bias is None and b.mlp.fc1.bias is None and type(b.mlp.act).__name__ == "StarReLU"
    assert isinstance(b.ls1, torch.nn.Identity)
    assert m.stem.norm.bias is None and not m.stem.norm_first and m.stages[1].downsample.norm_first
    assert m.stages[1].downsample.norm.weight.shape == (64,)  # normed before the conv: input width
    assert type(m.head).__name__ == "MlpHead" and m.head.fc1.weight.shape == (2048, 512)
    p = meta_model("poolformerv2_s12")
    assert type(p.stages[0].blocks[0].norm1).__name__ == "GroupNorm1" and p.stages[0].blocks[0].norm1.eps == 1e-6
    assert isinstance(p.head, torch.nn.Linear) and not p.head_norm_first
    r = meta_model("randformer_s12")
    assert r.stages[3].blocks[0].token_mixer.random_matrix.shape == (49, 49)
    assert not r.stages[3].blocks[0].token_mixer.random_matrix.requires_grad


def test_v2_init_trunc_normal_convs():
    """v2: every conv trunc-normal(0.02) with zero bias (sail-sg/metaformer ``_init_weights``);
    v1 keeps PyTorch's default for the stem (std ~ 1 / sqrt(3 * 49 * 3) ~ 0.048)."""
    torch.manual_seed(0)
    v2 = mixerlab.create_model("convformer_s18", depths=(1, 1, 1, 1))
    for w in (v2.stem.conv.weight, v2.stages[0].blocks[0].token_mixer.dwconv.weight):
        assert abs(w.std().item() - 0.02) < 0.003 and abs(w.mean().item()) < 0.003
    assert torch.equal(v2.stem.conv.bias, torch.zeros_like(v2.stem.conv.bias))
    v1 = mixerlab.create_model("poolformer_micro")  # stem 3x3 on 3 channels: uniform(+-1/sqrt(27))
    assert v1.stem.conv.weight.std() > 0.08


def test_list_shows_v1_and_v2_with_their_papers():
    from mixerlab.cli.list_cmd import zoo_records
    rows = {r["name"]: r for r in zoo_records("*former*_s1[28]", macs=False)}
    assert rows["poolformer_s12"]["arch"] == "MetaFormer v1" and "2111.11418" in rows["poolformer_s12"]["paper"]
    for n in ("poolformerv2_s12", "identityformer_s12", "randformer_s12", "convformer_s18", "caformer_s18"):
        assert rows[n]["arch"] == "MetaFormer v2" and "2210.13452" in rows[n]["paper"], n
    assert rows["poolformer_v1_identity_s12"]["arch"] == "MetaFormer v1"


def test_list_counts_macs_once_and_reports_progress(tmp_path, monkeypatch):
    from mixerlab.bench.complexity import count_macs
    from mixerlab.cli import list_cmd
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path))
    seen = []
    rows = list_cmd.zoo_records("deit_micro", progress=lambda i, n, name: seen.append((i, n, name)))
    assert seen == [(0, 1, "deit_micro")]
    assert rows[0]["gmacs"] == round(count_macs(meta_model("deit_micro")) / 1e9, 3)
    assert (tmp_path / "zoo_macs.json").exists()
    # the second call reads the kept count: counting again would fail here
    monkeypatch.setattr("mixerlab.bench.complexity.count_macs", lambda m: (_ for _ in ()).throw(AssertionError))
    seen.clear()
    assert list_cmd.zoo_records("deit_micro", progress=lambda *a: seen.append(a)) == rows and seen == []
    # a damaged cache file is counted again, not an error
    (tmp_path / "zoo_macs.json").write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path))
    assert list_cmd.zoo_records("deit_micro")[0]["gmacs"] == rows[0]["gmacs"]
