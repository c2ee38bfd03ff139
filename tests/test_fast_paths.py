"""Fast paths equal their explicit references (fp32, 1e-5 relative)."""
from __future__ import annotations

import warnings

import pytest
import torch

import mixerlab
from mixerlab.layers.activations import _FusedStarReLU, star_relu
from mixerlab.mixers import GPSA, ReAttention, TokenContext

from helpers import randomise_less_attention


# lavit_micro at 64 px without key reduction and without a stage-1 map: stage 2 (16 x 16 tokens,
# 32 channels per head) is where the low-rank factored transform pays.
_FACTORED = dict(img_size=64, sr_ratios=(1, 1, 1, 1), layout=("A", "VL", "VL", "LL"))


@pytest.mark.parametrize("name,kw", [("lavit_micro", {}), ("lavit_micro", dict(img_size=64)),
                                     ("lavit_micro", _FACTORED), ("lavit_tiny", dict(img_size=64)),
                                     ("lavit_tiny", dict(img_size=64, psi="kron"))])
def test_less_attention_fast_paths_equal_explicit(name, kw, monkeypatch):
    """Every path (fused VA, factored LA where the cost model picks it, dense and Kronecker Psi,
    residuals, inherited maps) against the explicit path, logits and DP terms."""
    from mixerlab.mixers import less_attention as la_mod
    calls = []
    orig = la_mod.LessAttention.transform_factored
    monkeypatch.setattr(la_mod.LessAttention, "transform_factored",
                        lambda self, c, g=None: calls.append(self.psi_kind) or orig(self, c, g))
    torch.manual_seed(0)
    m = mixerlab.create_model(name, **kw).eval()
    randomise_less_attention(m)
    x = torch.randn(2, 3, *m.img_size)
    with torch.no_grad():
        fast = m(x)
        with mixerlab.explicit_attention(m):
            ref = m(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert bool(calls) == (kw is _FACTORED)  # the factored path ran where (only where) it pays
    kinds = {mod.psi_kind for mod in m.modules() if type(mod).__name__ == "LessAttention" and mod.mode == "la"}
    if "psi" in kw:
        assert kinds == {kw["psi"]}
    elif kw.get("img_size") == 64 and name == "lavit_micro":
        assert kinds == {"dense", "kron"}  # stage 2 (256 queries) Kronecker, the others dense
    m.train()
    _, aux_fast = m(x, return_aux=True)
    with mixerlab.explicit_attention(m):
        _, aux_explicit = m(x, return_aux=True)
    assert set(aux_fast) == set(aux_explicit)
    for k, v in aux_explicit.items():
        torch.testing.assert_close(aux_fast[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(img_size=64), dict(img_size=64, psi="kron")])
def test_less_attention_fast_path_gradients_equal_explicit(kw):
    """Training: the fused/factored/batched-product paths give the explicit path's gradients
    (loss with the DP terms), so the in-place and factored shortcuts are safe under autograd."""
    torch.manual_seed(0)
    m = mixerlab.create_model("lavit_tiny", **kw).train()
    randomise_less_attention(m)
    x = torch.randn(2, 3, 64, 64)

    def grads():
        m.zero_grad(set_to_none=True)
        logits, aux = m(x, return_aux=True)
        (logits.square().mean() + sum(aux.values())).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    fast = grads()
    with mixerlab.explicit_attention(m):
        ref = grads()
    assert fast.keys() == ref.keys() and any("residual" in k for k in ref)
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)


def test_less_attention_post_softmax_mode_runs_explicitly():
    m = mixerlab.create_model("lavit_micro", la_source="post_softmax").eval()  # a builder argument
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        with mixerlab.explicit_attention(m):
            b = m(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # (stage 1's plain attention is fused)


def test_gpsa_positional_cache_is_invalidated():
    torch.manual_seed(0)
    g = GPSA(16, num_heads=4).eval()
    g.init_weights()
    with torch.no_grad():
        p1 = g.positional_attention((3, 3), "cpu", torch.float32)
        assert g.positional_attention((3, 3), "cpu", torch.float32) is p1  # cached
        p_other = g.positional_attention((4, 4), "cpu", torch.float32)  # resolution change
        assert p_other.shape == (4, 16, 16)
        g.pos_proj.weight.mul_(2.0)  # parameters change in place (as an optimizer step does)
        p2 = g.positional_attention((3, 3), "cpu", torch.float32)
    assert not torch.allclose(p1, p2)
    with torch.no_grad():
        g.pos_proj.weight.div_(2.0)
        torch.testing.assert_close(g.positional_attention((3, 3), "cpu", torch.float32), p1)
    g.train()
    assert g.positional_attention((3, 3), "cpu", torch.float32).requires_grad  # no cache in training


def test_gpsa_positional_cache_follows_autocast():
    """The cached map's dtype depends on autocast (pos_proj runs in bf16 under it): a cache filled
    under autocast must not serve a plain fp32 forward (it did: "expected scalar type Float but
    found BFloat16"), nor the other way round."""
    torch.manual_seed(0)
    g = GPSA(16, num_heads=4).eval()
    g.init_weights()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        ref = g(x, TokenContext(grid=(3, 3)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = g(x, TokenContext(grid=(3, 3)))
            assert g._pos_cache[1].dtype == torch.bfloat16
        again = g(x, TokenContext(grid=(3, 3)))
    assert g._pos_cache[1].dtype == torch.float32
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


def test_gpsa_fused_with_attention_dropout_falls_back():
    g = GPSA(16, num_heads=4, attn_drop=0.5).train()
    x = torch.randn(2, 9, 16)
    torch.manual_seed(1)
    with mixerlab.attention_maps(g) as rec:
        g(x, TokenContext(grid=(3, 3)))
    assert "" in rec.maps  # recorded: the explicit path ran
    torch.manual_seed(1)
    a = g(x, TokenContext(grid=(3, 3)))
    torch.manual_seed(1)
    with mixerlab.explicit_attention(g):
        b = g(x, TokenContext(grid=(3, 3)))
    assert torch.equal(a, b)  # same dropout mask: the fused call used the explicit path


def test_reattention_folded_bn_equals_batchnorm():
    torch.manual_seed(0)
    r = ReAttention(24, num_heads=4, transform_scale=True)
    x = torch.randn(4, 7, 24)
    for _ in range(3):
        r(x, TokenContext(grid=(2, 3), num_prefix_tokens=1))  # non-trivial running statistics
    r.eval()
    attn = torch.rand(2, 4, 7, 7)
    folded = r.mix_heads(attn)
    ref = r.head_norm(r.head_mix(attn)) * r.reatten_scale
    torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["convit_micro", "lavit_micro", "poolformer_micro",
                                  "deepvit_micro", "ffonly_micro", "deit_micro"])
def test_compile_no_graph_breaks(name):
    """fullgraph=True fails on any graph break; the eager backend keeps this test fast."""
    torch._dynamo.reset()
    m = mixerlab.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convit_micro", "poolformer_micro"])
def test_compile_inductor_matches_eager(name):
    torch._dynamo.reset()
    m = mixerlab.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-4, atol=1e-4)


def test_gpsa_trains_after_inference_mode_forward():
    m = mixerlab.create_model("convit_micro")
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.inference_mode():
        m(x)
    m.train()
    m(x).sum().backward()  # the cached relative positions must not be inference tensors
    assert m.blocks[0].token_mixer.pos_proj.weight.grad is not None


@pytest.mark.parametrize("bias", [True, False])
def test_token_ff_token_major_equals_module_path(bias):
    """The token-major GEMMs give the module path's output and gradients (eval and training)."""
    from mixerlab.mixers import TokenFF
    torch.manual_seed(0)
    t = TokenFF(12, num_tokens=17)
    if not bias:
        t.mlp.fc1.bias = t.mlp.fc2.bias = None
    base = torch.randn(3, 12, 17)
    ctx = TokenContext(grid=(4, 4), num_prefix_tokens=1)
    for x in (base.transpose(1, 2), base.transpose(1, 2).contiguous()):  # the token norm's layout, plain
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        t.token_major = True
        fast = t(xs[0], ctx)
        t.token_major = False
        ref = t(xs[1], ctx)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(ref)
        gw_fast = torch.autograd.grad(fast, [xs[0], t.mlp.fc1.weight, t.mlp.fc2.weight], g)
        gw_ref = torch.autograd.grad(ref, [xs[1], t.mlp.fc1.weight, t.mlp.fc2.weight], g)
        for a, b in zip(gw_fast, gw_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_token_ff_dropout_takes_module_path():
    from mixerlab.mixers import TokenFF
    t = TokenFF(8, num_tokens=5, drop=0.5).train()
    calls = []
    t.mlp.register_forward_hook(lambda *a: calls.append(1))
    t(torch.randn(2, 5, 8), TokenContext(grid=(2, 2), num_prefix_tokens=1))
    assert calls == [1]
    t.eval()(torch.randn(2, 5, 8), TokenContext(grid=(2, 2), num_prefix_tokens=1))
    assert calls == [1]  # eval: the token-major path, no module call


def test_ffonly_model_fast_equals_reference():
    torch.manual_seed(0)
    m = mixerlab.create_model("ffonly_micro").eval()
    x = torch.randn(2, 3, *m.img_size)
    with torch.no_grad():
        fast = m(x)
        with mixerlab.fast_paths(m, False):
            ref = m(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def _switch_states(model):
    from mixerlab.layers.fast_paths import switches_of
    return {(n, s): getattr(mod, s) for n, mod in model.named_modules() for s in switches_of(mod)}


def test_fast_paths_switches_every_kind_and_restores():
    """One model with all three switch kinds (attention, token_ff, Linear): off, on, a subset,
    nested, restored after an exception; a misspelt kind is refused."""
    from mixerlab.models.config import HierarchicalConfig, StageConfig
    m = mixerlab.build_model(HierarchicalConfig(
        stages=(StageConfig(dim=16, mixers=(("token_ff", {}),)),
                StageConfig(dim=24, mixers=(("attention", {"num_heads": 2}),))),
        img_size=32, num_classes=10, stem=(3, 2, 1)))
    before = _switch_states(m)
    assert {s for _, s in before} == {"fused_attn", "token_major", "onednn_linear"}
    assert all(before.values())  # the fast paths are the default
    with mixerlab.fast_paths(m, False) as pairs:
        assert len(pairs) == len(before) and not any(_switch_states(m).values())
        with mixerlab.fast_paths(m, True, kinds=["token_major"]):
            states = _switch_states(m)
            assert all(v == (s == "token_major") for (_, s), v in states.items())
        assert not any(_switch_states(m).values())  # the inner block restored "off"
    assert _switch_states(m) == before
    with pytest.raises(RuntimeError, match="boom"):
        with mixerlab.fast_paths(m, False, kinds=("fused_attn",)):
            raise RuntimeError("boom")
    assert _switch_states(m) == before
    with pytest.raises(ValueError, match="unknown fast-path switch.*'fused'.*known"):
        with mixerlab.fast_paths(m, False, kinds=("fused",)):
            pass
    # explicit_attention switches the attention family only
    with mixerlab.explicit_attention(m):
        assert all(v == (s != "fused_attn") for (_, s), v in _switch_states(m).items())
    assert _switch_states(m) == before


def test_fast_paths_off_equals_reference_training_step():
    """All fast paths off vs on: same loss and gradients (convit_micro: GPSA, attention, Linear)."""
    torch.manual_seed(0)
    m = mixerlab.create_model("convit_micro", num_classes=10).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    res = []
    for fast in (True, False):
        with mixerlab.fast_paths(m, fast):
            m.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
        res.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _star_relu_inputs(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=dtype, requires_grad=True)
    s = torch.tensor([0.7], dtype=dtype, requires_grad=True)
    b = torch.tensor([-0.3], dtype=dtype, requires_grad=True)
    return x, s, b


def test_fused_star_relu_equals_reference_with_gradients():
    """The fused StarReLU: the same values and x / scale / bias gradients as the four reference ops
    (fp32 and fp64), and gradcheck plus gradgradcheck (its create_graph backward) pass."""
    for dtype in (torch.float32, torch.float64):
        x, s, b = _star_relu_inputs(dtype)
        g = torch.randn(3, 5, 7, dtype=dtype)
        out = {}
        for fast in (True, False):
            y = star_relu(x, s, b, fast=fast)
            assert (y.grad_fn.name() == "_FusedStarReLUBackward") == fast
            out[fast] = (y, *torch.autograd.grad(y, (x, s, b), g))
        torch.testing.assert_close(out[True][0], s * torch.relu(x) ** 2 + b)
        for a, r in zip(out[True], out[False]):
            torch.testing.assert_close(a, r)
    x, s, b = _star_relu_inputs()
    fn = _FusedStarReLU.apply
    assert torch.autograd.gradcheck(fn, (x, s, b))
    assert torch.autograd.gradgradcheck(fn, (x, s, b))


def test_fused_star_relu_off_where_tracers_and_counters_look():
    """FlopCounterMode, jit.trace, autocast and float16 see the reference ops (no fused node)."""
    from torch.utils.flop_counter import FlopCounterMode
    x, s, b = _star_relu_inputs(torch.float32)
    with FlopCounterMode(display=False):
        assert star_relu(x, s, b).grad_fn.name() != "_FusedStarReLUBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert star_relu(x, s, b).grad_fn.name() != "_FusedStarReLUBackward"
    h = x.detach().half().requires_grad_()
    assert star_relu(h, s.half(), b.half()).grad_fn.name() != "_FusedStarReLUBackward"
    act = mixerlab.layers.StarReLU()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace is deprecated; still supported
        traced = torch.jit.trace(act, x.detach())
    graph = str(traced.graph)
    assert "_FusedStarReLU" not in graph and "aten::square" in graph  # the reference ops
    torch.testing.assert_close(traced(x.detach()), act(x.detach()))


def test_v2_model_star_relu_switch_and_training_step():
    """poolformerv2_micro: ``fast_paths`` turns every StarReLU's switch off and back on; a training
    step gives the same loss and gradients either way."""
    torch.manual_seed(0)
    m = mixerlab.create_model("poolformerv2_micro", num_classes=10).train()
    acts = [mod for mod in m.modules() if isinstance(mod, mixerlab.layers.StarReLU)]
    assert acts and all(a.fused_star_relu for a in acts)
    x = torch.randn(4, 3, *m.img_size)
    y = torch.randint(0, 10, (4,))
    res = []
    for fast in (True, False):
        with mixerlab.fast_paths(m, fast, kinds="fused_star_relu"):
            assert all(a.fused_star_relu == fast for a in acts)
            m.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
        res.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    assert all(a.fused_star_relu for a in acts)
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
