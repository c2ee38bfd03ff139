"""Linear layer with a oneDNN fast path on the CPU.

On the CPU, ``F.linear`` with a bias runs as ``addmm``: the bias is first broadcast into the whole
output (one extra pass over a (tokens x width) tensor), then the GEMM accumulates into it. oneDNN's
matmul primitive (``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's own CPU compiler
emits for linear layers) adds the bias, and optionally an activation, inside the GEMM. Its forward
beats ``addmm``'s and it beats ``mm`` for the input gradient; ``mm`` stays ahead for the weight
gradient (measurements: docs/benchmarks.md, "CPU ... current (oneDNN linear layers)";
``scripts/bench_linear.py``).

``Linear`` is ``nn.Linear`` (same parameters, state dict and initialisation) whose forward takes
the oneDNN path where it is exact, supported and pays off: fp32 CPU tensors and a contiguous
weight; no autocast; not while ``torch.compile`` traces (the compiler picks its own kernels); no
tensor subclasses; no active Python dispatch mode (``FlopCounterMode`` and other tracing tools see
the reference ``addmm``); no ``torch.func`` transform; in training only calls of at least ``MIN_MACS`` multiply-adds (batch-1
training keeps ``addmm``), in inference every call. Training goes through an autograd function:
input gradient ``g W`` by oneDNN, weight gradient ``g^T x`` by ``mm``, bias gradient ``sum(g)``;
under ``create_graph`` the backward uses differentiable ops, so double backward works.
``onednn_linear = False`` (per module, or ``mixerlab.fast_paths(model, False, kinds="onednn_linear")``)
gives the reference path ``F.linear``; ``scripts/profile_model.py --paths`` and the unit tests
compare the two (fp32, 1e-5 relative).
"""
from __future__ import annotations

import warnings

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .fast_paths import _dispatch_modes, fast_path_switch, plain_eager_cpu


def _find_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_LINEAR_POINTWISE = _find_op()
# When a gradient is needed, below this many multiply-adds per call the fixed costs (the Python
# autograd function, the transposed weight for the input gradient) outweigh the gain: on 2 cores at
# DeiT-Ti's widths the oneDNN forward + backward loses at 197 rows (batch 1), breaks even around
# ~1,500 rows and wins from ~6,000 rows (scripts/bench_linear.py --tokens N; docs/benchmarks.md).
# 2^27 MACs is ~1,200 rows of a 192 -> 576 layer. Without a gradient (inference) every size takes
# oneDNN, batch 1 included (scripts/profile_model.py MODEL --paths --only onednn_linear --mode infer
# --batch 1 --reps 20).
MIN_MACS = 1 << 27


_op_checked: bool | None = None  # the once-per-process check of the private op (None: not yet)


def _check_op() -> bool:
    """``torch.ops.mkldnn._linear_pointwise`` is private (no compatibility promise): compare it
    once, on a small case, with ``F.linear`` (plain and with GELU); off with one warning when it
    is missing, raises or differs, or when dispatch modes cannot be detected."""
    if _LINEAR_POINTWISE is None:
        return False
    why = None
    if _dispatch_modes is None:
        why = "torch._C._len_torch_dispatch_stack is missing (FlopCounterMode could not be detected)"
    else:
        try:
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(*s, generator=g) for s in ((5, 7), (3, 7), (3,)))
            with torch.no_grad():
                ref = F.linear(x, w, b)
                ok = (torch.allclose(_onednn(x, w, b), ref, rtol=1e-5, atol=1e-5)
                      and torch.allclose(_onednn(x, w, b, "gelu"), F.gelu(ref), rtol=1e-5, atol=1e-5))
            if not ok:
                why = "it differs from F.linear on a test case"
        except Exception as e:  # a changed signature or a broken kernel: the reference path
            why = f"it raised {type(e).__name__}: {e}"
    if why is not None:
        warnings.warn(f"mixerlab: oneDNN linear fast path off: {why}; using F.linear", stacklevel=3)
        return False
    return True


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel the fast path calls, and it passed
    its once-per-process check against ``F.linear``."""
    global _op_checked
    if _op_checked is None:
        _op_checked = _check_op()
    return _op_checked


def fast_path_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T (+ b)`` may take the oneDNN path (otherwise: ``F.linear``)."""
    return (_LINEAR_POINTWISE is not None and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() > 0 and weight.is_contiguous()
            and onednn_linear_available()  # checked (at import): also False without the probe
            and plain_eager_cpu(x, weight))  # FlopCounterMode & co. see the reference ops


def _onednn(x2d: torch.Tensor, weight: torch.Tensor, bias, act: str = "none") -> torch.Tensor:
    if act == "gelu":  # exact (erf) GELU; "tanh" would be the approximation
        return _LINEAR_POINTWISE(x2d, weight, bias, "gelu", [], "none")
    return _LINEAR_POINTWISE(x2d, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    # forward without ctx + setup_context: the form torch.func (grad, vmap, jvp) can transform
    @staticmethod
    def forward(x2d, weight, bias):
        return _onednn(x2d, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x2d, weight, bias = inputs
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph: keep the backward differentiable
                gx = grad.mm(weight)
            else:
                gx = _onednn(grad, weight.t().contiguous(), None)
        if ctx.needs_input_grad[1]:
            gw = grad.t().mm(x2d)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


@torch.fx.wrap  # a leaf for torch.fx: the kernel choice reads the tensors' properties
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           act: str = "none", fast: bool = True) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` over the last axis; ``act`` is ``"none"`` or ``"gelu"`` (exact).

    The activation is fused into the GEMM only when no gradient is needed (its backward needs the
    pre-activation, which the fused kernel does not keep); otherwise it runs as ``F.gelu``.
    """
    if act not in ("none", "gelu"):
        raise ValueError(f"act must be 'none' or 'gelu', got {act!r}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if not (fast and fast_path_ok(x, weight)) or (needs_grad and x.numel() * weight.shape[0] < MIN_MACS):
        y = F.linear(x, weight, bias)
        return F.gelu(y) if act == "gelu" else y
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    if needs_grad:
        y = _OneDNNLinear.apply(x2d, weight, bias)
        if act == "gelu":
            y = F.gelu(y)
    else:
        y = _onednn(x2d, weight, bias, act)
    return y.reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` with the oneDNN fast path on the CPU (``onednn_linear = False``: ``F.linear``)."""

    fast_path_switches = (fast_path_switch(
        "onednn_linear", "layers.Linear: oneDNN GEMM with the bias (and GELU) inside; off: F.linear"),)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.onednn_linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, fast=self.onednn_linear)


onednn_linear_available()  # the check runs at import, outside any dispatch mode
