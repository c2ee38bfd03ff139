"""Kernel-choice switches and ``fast_paths``, the one context manager that sets them.

A module with a fast path names its switches in the class attribute ``fast_path_switches``: boolean
instance attributes, ``True`` = the fast kernel (the default), ``False`` = the reference path that
the tests compare the fast one with. Each switch name is declared once with
:func:`fast_path_switch`, so ``fast_paths(..., kinds=...)`` can reject a misspelt one. The switches
of mixerlab:

* ``fused_attn`` (attention-family mixers): ``F.scaled_dot_product_attention`` (or LaViT's factored
  form) instead of the explicit attention map.
* ``token_major`` (``token_ff``): the token-major GEMM layout instead of the ``Mlp`` module call.
* ``onednn_linear`` (``layers.Linear``): oneDNN's GEMM with the bias (and GELU) in the kernel
  instead of ``F.linear``.
* ``fused_star_relu`` (``layers.StarReLU``): a hand-written backward that keeps one tensor and
  allocates one per pass instead of the four autograd ops.

:func:`plain_eager_cpu` is the condition every hand-written CPU kernel shares: where it is false
(``torch.compile`` or ``torch.export`` tracing, ``torch.jit.trace``, autocast, tensor subclasses,
Python dispatch modes such as ``FlopCounterMode``, ``torch.func`` transforms, other devices) the
reference ops run, so tracers and counters see ordinary PyTorch operations.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

# Without this probe a Python dispatch mode (FlopCounterMode) cannot be seen: fast paths are off.
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
# torch.func transforms (grad, vmap, jvp) wrap tensors; the reference ops have their rules
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def plain_eager_cpu(*tensors: torch.Tensor) -> bool:
    """Whether a hand-written kernel may replace the reference ops for ``tensors``: all plain CPU
    tensors in eager mode (see the module docstring for what turns it off)."""
    return (_dispatch_modes is not None
            and all(t.device.type == "cpu" for t in tensors)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not torch.overrides.has_torch_function(tensors)
            and not _dispatch_modes() and not _functorch_active())

SWITCHES: dict[str, str] = {}  # switch attribute -> what its fast path is


def fast_path_switch(name: str, doc: str) -> str:
    """Declare the switch attribute ``name`` (``doc``: what ``True`` selects); returns ``name``."""
    if SWITCHES.get(name, doc) != doc:
        raise ValueError(f"fast-path switch {name!r} declared twice with different meanings")
    SWITCHES[name] = doc
    return name


def switches_of(module: nn.Module) -> tuple[str, ...]:
    """The switch attributes ``module`` declares (``()`` for modules without a fast path)."""
    return tuple(getattr(type(module), "fast_path_switches", ()))


@contextlib.contextmanager
def fast_paths(model: nn.Module, enabled: bool, *, kinds: Iterable[str] | None = None):
    """Switch every fast path of ``model`` on (``enabled=True``) or off, restore on exit.

    Args:
        model: any module; every submodule (``model`` included) that declares
            ``fast_path_switches`` is switched.
        enabled: ``True`` selects the fast kernels, ``False`` the reference paths.
        kinds: switch names to set (e.g. ``("fused_attn",)``); the default is all of them.

    Yields:
        The switched ``(module, switch)`` pairs.
    """
    wanted = None if kinds is None else set([kinds] if isinstance(kinds, str) else kinds)
    if wanted is not None and wanted - set(SWITCHES):
        raise ValueError(f"unknown fast-path switch(es) {sorted(wanted - set(SWITCHES))}; "
                         f"known: {sorted(SWITCHES)}")
    pairs = [(m, s) for m in model.modules() for s in switches_of(m) if wanted is None or s in wanted]
    saved = [getattr(m, s) for m, s in pairs]
    for m, s in pairs:
        setattr(m, s, bool(enabled))
    try:
        yield pairs
    finally:
        for (m, s), v in zip(pairs, saved):
            setattr(m, s, v)
