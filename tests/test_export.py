"""Export and function transforms on every family: torch.func grad / jvp / vmap (micro models,
default run), torch.compile(fullgraph=True) forward and a compiled training step, torch.export,
ONNX (dynamo exporter) run by onnxruntime (slow: micro and one 224 px model per family).

References are independent of the path under test: eager autograd for torch.func.grad, the
adjoint identity <J u, v> = <u, J^T v> for jvp, per-sample eager calls for vmap, the eager model
for compile / export / ONNX.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

import mixerlab

MICRO = ["deit_micro", "ffonly_micro", "convit_micro", "deepvit_micro", "poolformer_micro",
         "identityformer_micro", "lavit_micro"]
FULL = ["deit_tiny", "ffonly_tiny", "convit_tiny", "deepvit_s", "poolformer_s12", "lavit_tiny"]
FAST = {"deit_micro", "convit_micro", "poolformer_micro"}  # jvp / vmap in the default run; rest slow


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from a clean dynamo cache: the models share their block code, and after
    torch._dynamo.config.recompile_limit (8) recompilations of one frame a ``fullgraph=True``
    compile raises instead of tracing again."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _cases(names, xfail=None):
    out = []
    for n in names:
        marks = [] if n in FAST else [pytest.mark.slow]
        if xfail and n in xfail:
            marks.append(pytest.mark.xfail(reason=xfail[n], strict=True))
        out.append(pytest.param(n, marks=marks))
    return out


def _model(name: str, train: bool = False, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = mixerlab.create_model(name, **kw)
    return m.train(train)


def _images(m, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, m.in_chans, *m.img_size, generator=torch.Generator().manual_seed(seed))


# -- torch.func ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MICRO)
def test_func_grad_matches_autograd(name):
    """torch.func.grad at batch 32 (where the oneDNN linear path would engage) equals autograd."""
    m = _model(name)  # eval: no dropout / drop-path randomness between the two passes
    x = _images(m, 32)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p):
        return functional_call(m, p, (x,)).logsumexp(dim=1).mean()

    g = grad(loss)(params)
    m.zero_grad()
    m(x).logsumexp(dim=1).mean().backward()
    for k, p in m.named_parameters():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(g[k], ref, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", _cases(MICRO))
def test_func_jvp_adjoint_of_vjp(name):
    """<J u, v> == <u, J^T v> for the image -> logits map (jvp against vjp). PyTorch's CPU
    flash-attention kernel (behind F.scaled_dot_product_attention) has no forward-mode formula,
    so the fused attention path is off here (the unfused path is the reference math)."""
    m = _model(name)
    x = _images(m, 2)
    u = torch.randn_like(x)
    with mixerlab.fast_paths(m, False, kinds="fused_attn"):
        out, ju = jvp(m, (x,), (u,))
        torch.testing.assert_close(out, m(x), rtol=1e-5, atol=1e-5)
        v = torch.randn_like(out)
        _, pullback = vjp(m, x)
        (jtv,) = pullback(v)
    lhs, rhs = (ju * v).sum().double(), (u * jtv).sum().double()
    assert abs(lhs - rhs) <= 1e-3 * max(1.0, abs(rhs)), (lhs.item(), rhs.item())


@pytest.mark.parametrize("name", _cases(MICRO, xfail={
    "lavit_micro": "issue 14: less_attention's SDPA with a computed attn_mask fails under vmap"}))
def test_func_vmap_matches_per_sample(name):
    m = _model(name)
    x = _images(m, 3)
    batched = vmap(lambda xi: m(xi[None])[0])(x)
    ref = torch.cat([m(x[i:i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(batched, ref, rtol=1e-4, atol=1e-5)


# -- compile / export / ONNX (slow) ----------------------------------------------------------
SLOW_CASES = [pytest.param(n, marks=pytest.mark.slow) for n in MICRO + FULL]


@pytest.mark.parametrize("name", SLOW_CASES)
def test_compile_fullgraph_forward(name):
    m = _model(name)
    x = _images(m, 2)
    with torch.no_grad():
        ref = m(x)
        out = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


DEEPVIT_STEP = ("open: the compiled DeepViT training step differs from eager (parameters after one "
                "step, cls_token first); cause not found yet (suspect: the BatchNorm2d over the "
                "re-attention maps, whose batch variance is tiny, so reduction-order rounding is "
                "amplified)")
STEP_CASES = [pytest.param(n, marks=[pytest.mark.slow] + (
    [pytest.mark.xfail(reason=DEEPVIT_STEP, strict=False)] if n.startswith("deepvit") else []))
    for n in MICRO]  # the compiled training step: micro models (a 224 px inductor compile of the
# backward takes minutes per model on 2 CPU cores; the 224 px models run the forward checks)


@pytest.mark.parametrize("name", STEP_CASES)
def test_compiled_training_step_matches_eager(name):
    """One SGD step of the compiled model (fullgraph) gives the eager loss and parameters."""
    eager = _model(name, train=True, drop_path_rate=0.0)
    comp = copy.deepcopy(eager)
    x = _images(eager, 4)
    y = torch.arange(4) % eager.num_classes
    losses, models = [], []
    for model, wrap in ((eager, lambda m: m), (comp, lambda m: torch.compile(m, fullgraph=True))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses.append(_train_step(wrap(model), opt, x, y))
        models.append(model)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", SLOW_CASES)
def test_torch_export(name):
    m = _model(name)
    x = _images(m, 2)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SLOW_CASES)
def test_onnx_dynamo_onnxruntime(name, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m = _model(name)
    x = _images(m, 2)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), m(x), rtol=1e-3, atol=1e-4)
