"""torch.compile, torch.export and ONNX (dynamo) export of LaViT: the traced model equals eager."""
from __future__ import annotations

import pytest
import torch

import mixerlab

from helpers import randomise_less_attention


def _model(name, **kw):
    torch.manual_seed(0)
    m = mixerlab.create_model(name, **kw).eval()
    randomise_less_attention(m)  # transforms and residuals away from their identity/zero init
    return m, torch.randn(2, 3, *m.img_size)


def test_torch_export_lavit_micro():
    m, x = _model("lavit_micro")
    with torch.no_grad():
        ref = m(x)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_export_and_compile_lavit_tiny():
    m, x = _model("lavit_tiny")
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(torch.export.export(m, (x,)).module()(x), ref, rtol=1e-5, atol=1e-5)
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lavit_micro", "lavit_tiny"])
def test_onnx_dynamo_export_lavit(name, tmp_path):
    """The dynamo exporter decomposes fused attention; the reshape after it must not be a view
    of the eager strides (it failed with "Cannot view [2,16,3,32] as (2,16,96)")."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m, x = _model(name)
    with torch.no_grad():
        ref = m(x)
    prog = torch.onnx.export(m, (x,), dynamo=True, verbose=False)
    path = tmp_path / f"{name}.onnx"
    prog.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)
