"""Registry-driven conformance tests: every zoo model (shrunk to two blocks per stage and a small
input) builds, runs forward and backward, gives intermediates, round-trips its state dict."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import mixerlab
from mixerlab.models import build_model
from mixerlab.models.hierarchical import HierarchicalModel

from helpers import small_config

ALL = mixerlab.list_models()
# The larger MetaFormer v2 sizes shrink to the same modules as their s12 / s18 (two blocks per
# stage, other widths): they run with -m slow, to keep the default suite fast.
_V2_LARGE = re.compile(r"^(identityformer|randformer|poolformerv2|convformer|caformer)_(s24|s36|m36|m48|b36)$")
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if _V2_LARGE.match(n) else n for n in ALL]


@pytest.fixture(params=PARAMS)
def small(request):
    torch.manual_seed(0)
    return request.param, build_model(small_config(request.param))


def test_forward_backward_no_nan(small):
    name, m = small
    m.train()
    x = torch.randn(2, m.in_chans, *m.img_size)
    y, aux = m(x, return_aux=True)
    assert y.shape == (2, m.num_classes)
    assert torch.isfinite(y).all()
    loss = y.logsumexp(dim=1).mean() + sum(aux.values(), torch.zeros(()))
    loss.backward()
    # v2 RandFormer's random matrices are frozen parameters (sail-sg/metaformer), nothing else is.
    frozen = {n for n, p in m.named_parameters()
              if not p.requires_grad and not n.endswith("token_mixer.random_matrix")}
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    # The positional bias of GPSA is cancelled by the softmax (dead parameter, kept for parity).
    missing = [n for n in missing if not n.endswith("pos_proj.bias")]
    assert not missing and not frozen
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_api_contract(small):
    name, m = small
    m.eval()
    x = torch.randn(2, m.in_chans, *m.img_size)
    feats = m.forward_features(x)
    assert feats.shape[-1] == m.num_features
    pre = m.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, m.head_hidden_size)
    torch.testing.assert_close(m.forward_head(feats), m(x))
    assert isinstance(m.no_weight_decay(), set)
    for k in m.no_weight_decay():
        assert k in dict(m.named_parameters())
    sd = m.state_dict()
    assert m.pretrained_cfg["first_conv"] + ".weight" in sd
    assert m.pretrained_cfg["classifier"] + ".weight" in sd  # head, or the MLP head's head.fc2
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    m.reset_classifier(7)
    assert m(x).shape == (2, 7)


def test_forward_intermediates(small):
    name, m = small
    m.eval()
    x = torch.randn(1, m.in_chans, *m.img_size)
    final, feats = m.forward_intermediates(x)
    torch.testing.assert_close(final, m.forward_features(x))
    if isinstance(m, HierarchicalModel):
        assert len(feats) == len(m.stages)
        for f, info in zip(feats, m.feature_info):
            assert f.shape == (1, info["num_chs"], m.img_size[0] // info["reduction"],
                               m.img_size[1] // info["reduction"])
    else:
        assert len(feats) == len(m.blocks)
        gh, gw = m.grid
        assert all(f.shape == (1, m.num_features, gh, gw) for f in feats)
    only = m.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(only) == 1
    torch.testing.assert_close(only[0], feats[-1])


def test_safetensors_round_trip(small, tmp_path):
    name, m = small
    m.eval()
    x = torch.randn(1, m.in_chans, *m.img_size)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    torch.manual_seed(123)
    m2 = build_model(m.cfg).eval()
    m2.load_state_dict(load_file(str(path)))
    assert torch.equal(m(x), m2(x))


def test_fused_equals_explicit(small):
    name, m = small
    m.eval()
    x = torch.randn(2, m.in_chans, *m.img_size)
    fused = m(x)
    with mixerlab.explicit_attention(m):
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", mixerlab.list_models("*_micro"))
def test_micro_models_native(name):
    m = mixerlab.create_model(name, in_chans=1).eval()
    assert m.img_size == (32, 32) and m.num_classes == 10
    y = m(torch.randn(3, 1, 32, 32))
    assert y.shape == (3, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["deit_micro", "convit_micro", "poolformer_micro", "lavit_micro"])
def test_timm_registry(name):
    import timm
    assert f"mixerlab_{name}" in timm.list_models("mixerlab_*")
    torch.manual_seed(0)
    m = timm.create_model(f"mixerlab_{name}", num_classes=5, in_chans=1)
    torch.manual_seed(0)
    ref = mixerlab.create_model(name, num_classes=5, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(m.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("size", [(48, 48), (64, 32)])
@pytest.mark.parametrize("name", ["deit_micro", "convit_micro", "deepvit_micro", "poolformer_micro"])
def test_other_input_sizes(name, size):
    """Position tables are resampled; GPSA rebuilds its relative positions for the new grid."""
    m = mixerlab.create_model(name).eval()
    y = m(torch.randn(1, 3, *size))
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_grad_checkpointing_same_output():
    m = mixerlab.create_model("convit_micro").eval()
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    m.set_grad_checkpointing(True)
    with torch.enable_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
    lavit = mixerlab.create_model("lavit_micro")
    with pytest.raises(ValueError, match="less_attention"):
        lavit.set_grad_checkpointing(True)


def test_timm_features_only():
    import timm
    m = timm.create_model("mixerlab_poolformer_micro", features_only=True)
    feats = m(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == m.feature_info.channels() == [24, 48, 96, 176]
    assert [32 // f.shape[-1] for f in feats] == m.feature_info.reduction()
    v = timm.create_model("mixerlab_deit_micro", features_only=True, out_indices=(1, 3))
    assert [tuple(f.shape) for f in v(torch.randn(1, 3, 32, 32))] == [(1, 128, 8, 8)] * 2
