"""The oneDNN linear fast path equals ``F.linear`` (fp32, 1e-5 relative) and steps aside where it must."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixerlab
from mixerlab.layers import Linear, Mlp
from mixerlab.layers import linear as linear_mod

needs_onednn = pytest.mark.skipif(not linear_mod.onednn_linear_available(),
                                  reason="this PyTorch build has no oneDNN linear kernel")


def count_fast_calls(monkeypatch, min_macs=0):
    """Record oneDNN calls; the size threshold is lifted so that small test shapes take the path."""
    monkeypatch.setattr(linear_mod, "MIN_MACS", min_macs)
    calls = []
    orig = linear_mod._onednn
    monkeypatch.setattr(linear_mod, "_onednn", lambda *a, **k: calls.append(a[0].shape) or orig(*a, **k))
    return calls


def grads(layer, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    out = [y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return out


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (3, 7, 24), (2, 4, 3, 24)])
def test_linear_fast_path_equals_reference(shape, bias, monkeypatch):
    torch.manual_seed(0)
    lin = Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    g = torch.randn(*shape[:-1], 40)
    calls = count_fast_calls(monkeypatch)
    fast = grads(lin, x, g)
    assert len(calls) == 2  # forward and the input gradient
    lin.onednn_linear = False
    ref = grads(lin, x, g)
    assert len(calls) == 2
    assert fast[0].shape == (*shape[:-1], 40)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_linear_non_contiguous_input_and_frozen_weight(monkeypatch):
    torch.manual_seed(0)
    lin = Linear(16, 8)
    ref = nn.Linear(16, 8)
    ref.load_state_dict(lin.state_dict())
    lin.weight.requires_grad_(False)
    ref.weight.requires_grad_(False)
    base = torch.randn(16, 6, 3)
    calls = count_fast_calls(monkeypatch)
    xs = [base.clone().requires_grad_(True) for _ in range(2)]
    ya, yb = lin(xs[0].transpose(0, 2)), ref(xs[1].transpose(0, 2))  # (3, 6, 16), a strided view
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-6)
    assert lin.weight.grad is None and len(calls) == 2


@needs_onednn
def test_linear_double_backward_matches_reference(monkeypatch):
    calls = count_fast_calls(monkeypatch)
    torch.manual_seed(0)
    lin = Linear(12, 9)
    x = torch.randn(4, 12)
    out = []
    for fast in (True, False):
        lin.onednn_linear = fast
        xi = x.clone().requires_grad_(True)
        gx, = torch.autograd.grad(lin(xi).pow(2).sum(), xi, create_graph=True)
        gx.pow(2).sum().backward()
        out.append((xi.grad, lin.weight.grad.clone()))
        lin.zero_grad(set_to_none=True)
    # the forward, and the plain backward of the second pass (through y); the create_graph backward
    # of the first pass used differentiable ops
    assert len(calls) == 2
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_linear_is_an_nn_linear():
    lin = Linear(6, 4)
    ref = nn.Linear(6, 4)
    assert isinstance(lin, nn.Linear)
    assert lin.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(lin.state_dict())  # strict


@needs_onednn
def test_linear_reference_path_where_the_kernel_does_not_apply(monkeypatch):
    lin = Linear(8, 8)
    calls = count_fast_calls(monkeypatch)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # autocast casts as it does for nn.Linear
    assert lin.to(torch.float64)(x.double()).dtype == torch.float64
    lin.float()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        lin(x)
    assert counter.get_total_flops() == 2 * 2 * 8 * 8  # counted as addmm
    with torch.no_grad():  # a transposed (non-contiguous) weight, e.g. a tied one
        torch.testing.assert_close(linear_mod.linear(x, lin.weight.t()), x @ lin.weight)
    meta = Linear(8, 8, device="meta")
    assert meta(torch.empty(3, 8, device="meta")).shape == (3, 8)
    assert calls == []
    lin(x)
    assert len(calls) == 1


@needs_onednn
def test_linear_small_training_calls_keep_addmm(monkeypatch):
    lin = Linear(64, 64)
    calls = count_fast_calls(monkeypatch, min_macs=linear_mod.MIN_MACS)
    y = lin(torch.randn(3, 64))  # 12k multiply-adds and a gradient needed: below the threshold
    assert calls == [] and y.grad_fn.name() == "AddmmBackward0"
    with torch.no_grad():
        lin(torch.randn(3, 64))  # inference: every size
    assert len(calls) == 1
    rows = linear_mod.MIN_MACS // (64 * 64) + 1
    lin(torch.randn(rows, 64, requires_grad=True)).sum().backward()
    assert len(calls) == 3  # forward and input gradient


@needs_onednn
@pytest.mark.parametrize("train", [False, True])
def test_mlp_fused_gelu_equals_reference(train, monkeypatch):
    torch.manual_seed(0)
    mlp = Mlp(16, hidden_dim=64)
    x = torch.randn(2, 5, 16) * 3
    g = torch.randn(2, 5, 16)
    calls = count_fast_calls(monkeypatch)
    outs = []
    for fast in (True, False):
        with mixerlab.fast_paths(mlp, fast):
            assert mlp.fc1.onednn_linear is fast and mlp.fc2.onednn_linear is fast
            if train:
                outs.append(grads(mlp, x, g))
            else:
                with torch.no_grad():
                    outs.append([mlp(x)])
    assert mlp.fc1.onednn_linear and mlp.fc2.onednn_linear  # restored
    assert len(calls) == (4 if train else 2)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mlp_follows_a_replaced_activation():
    mlp = Mlp(8, hidden_dim=16)
    x = torch.randn(3, 8)
    mlp.act = nn.ReLU()
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))


def test_mlp_keeps_fc1_hooks():
    mlp = Mlp(8, hidden_dim=16)
    seen = []
    mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        y = mlp(torch.randn(3, 8))
    assert seen == [(3, 16)] and y.shape == (3, 8)


@needs_onednn
@pytest.mark.parametrize("name", ["deit_micro", "poolformer_micro"])
def test_model_training_step_fast_linear_equals_reference(name, monkeypatch):
    """Loss and every parameter gradient of a whole model agree with the F.linear path."""
    calls = count_fast_calls(monkeypatch)
    torch.manual_seed(0)
    m = mixerlab.create_model(name, num_classes=10).train()
    x = torch.randn(4, 3, *m.img_size)
    y = torch.randint(0, 10, (4,))
    linears = [mod for mod in m.modules() if isinstance(mod, Linear)]
    assert len(linears) > 4
    res = []
    for fast in (True, False):
        with mixerlab.fast_paths(m, fast, kinds="onednn_linear"):
            assert all(mod.onednn_linear is fast for mod in linears)
            m.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
        res.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
        if fast:
            assert len(calls) >= 2 * len(linears) - 1  # forwards and input gradients (not the stem's)
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("broken", ["differs", "raises", "no_dispatch_probe"])
def test_private_op_checked_once_then_off_with_one_warning(broken, monkeypatch):
    """The private oneDNN op is compared once with F.linear; a wrong or failing op, or no way to
    see dispatch modes, turns the fast path off with one warning (the reference path is used)."""
    real = linear_mod._LINEAR_POINTWISE
    if broken == "differs":
        monkeypatch.setattr(linear_mod, "_LINEAR_POINTWISE", lambda *a: real(*a) + 1.0)
    elif broken == "raises":
        def bad(*a):
            raise RuntimeError("signature changed")
        monkeypatch.setattr(linear_mod, "_LINEAR_POINTWISE", bad)
    else:
        monkeypatch.setattr(linear_mod, "_dispatch_modes", None)
    monkeypatch.setattr(linear_mod, "_op_checked", None)
    x, w, b = torch.randn(64, 16), torch.randn(8, 16), torch.randn(8)
    with pytest.warns(UserWarning, match="fast path off"):
        assert not linear_mod.fast_path_ok(x, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked once: no second warning
        assert not linear_mod.fast_path_ok(x, w)
        with torch.no_grad():
            torch.testing.assert_close(linear_mod.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    monkeypatch.setattr(linear_mod, "_op_checked", None)


@needs_onednn
def test_private_op_passes_its_check():
    linear_mod._op_checked = None
    assert linear_mod.onednn_linear_available()
    assert linear_mod.fast_path_ok(torch.randn(4, 8), torch.randn(3, 8))
