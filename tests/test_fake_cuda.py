"""Device correctness on fake CUDA tensors: no GPU needed, runs in the default suite.

Under ``torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)`` a module built
on the CPU can be moved with ``.to("cuda")`` even on a machine without CUDA: its parameters and
buffers become fake tensors that carry a shape, a dtype and the device ``cuda:0`` but no data,
and every operator checks the devices of its operands the way a real CUDA run would. A tensor
created on the wrong device inside a forward (``torch.arange(n)`` without ``device=``, a mask, a
positional table, a plain tensor attribute that ``.to()`` does not move, a cached map built for
another device) meets the CUDA activations and raises ``FakeTensorDeviceMismatchError``, here on
the CPU, before any GPU is lent. (Zero-dimensional CPU tensors mix with CUDA tensors in real
PyTorch too, so they are allowed here as well.)

Covered (each on fake CUDA, the model built on the CPU and moved with ``.to("cuda")``):

* every zoo family at micro size (``FAMILIES``: DeiT, ViT, DeepViT, DeepViT-S's CNN stem /
  scale adjustment / transform scale, ConViT, FF-only, PoolFormer, the PoolFormer hybrid with its
  stage position embedding, IdentityFormer, RandFormer, LaViT in both ``la_source`` modes with its
  PVT spatial reduction, factored and dense less-attention paths and attention residual), in
  train mode (dropout and drop path on) and eval mode, with every fast-path switch on and off
  (``fused_attn``, ``token_major``, ``onednn_linear`` through ``mixerlab.fast_paths``), under
  ``attention_maps`` (the recorded maps stay on the device), with ``return_aux=True`` (LaViT's
  diagonality terms), channels-last weights, gradient checkpointing and another input resolution
  (position-table resampling, GPSA's relative-position table rebuilt on the device);
* every registered mixer on its own ``examples`` (train / eval, fast paths on / off, with a class
  token where it takes one), so a new mixer is checked without being added to a list here;
* GPSA's eval-mode positional-map cache: built on the device, hit on the second forward;
* the training objective (cross-entropy with label smoothing, Mixup/CutMix soft targets, the
  weighted aux terms), the EMA copy and its update, and the analysis metrics, including the
  whole ``analysis.analyze.collect`` pass (scalar read-outs, ``.item()``/``.tolist()``, have no
  value on a fake tensor and are stubbed with NaN: only devices and shapes are checked);
* that the check can fail: toy mixers that build an index table with ``torch.arange(n)`` in their
  forward, or keep a plain CPU tensor attribute, are registered here and must raise.

Not covered (fake tensors have no data and no CUDA context; ``scripts/gpu_check.sh`` runs these
on a real GPU):

* the backward pass: autograd's engine needs a real CUDA context for CUDA tensors ("hasPrimaryContext
  expects a valid device index"), so optimiser steps, the grad scaler and the training loop are
  not run here;
* autocast: ``torch.autocast("cuda")`` is disabled when CUDA is unavailable, so bf16 / fp16 paths
  (dtype casts inside mixers) run in fp32 here;
* kernels and numerics: which SDPA backend is chosen (flash / memory-efficient / math), cuBLAS,
  cuDNN, channels-last kernels, ``torch.compile``'s Triton code, NCCL, CUDA RNG streams (dropout
  masks), peak-memory accounting and speed; no value is computed at all;
* data-dependent control flow: a branch on a tensor's value cannot be taken on a fake tensor.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

# A private module: its names come and go between releases. The device-mismatch error has its own
# class only in newer torch (a RuntimeError subclass, "... found at least two devices, cuda:0 and
# cpu!"); older releases raise a plain RuntimeError ("... found two different devices cuda:0,
# cpu"). This file must import on either, also because tests/test_cuda.py imports FAMILIES from it.
try:
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
except ImportError:
    FakeTensorDeviceMismatchError = RuntimeError
DEVICE_MISMATCH = r"cuda:0 and cpu|cpu and cuda:0|cuda:0, cpu|cpu, cuda:0"

import mixerlab
from mixerlab.analysis import metrics as M
from mixerlab.analysis.analyze import collect
from mixerlab.data.mixup import build_mixup
from mixerlab.engine.loop import make_ema
from mixerlab.engine.task import ClassificationTask
from mixerlab.mixers import (AttentionMixer, LessAttention, MixerCost, TokenContext, TokenMixer, attention_maps, get_mixer,
                             list_mixers, register_mixer, unregister_mixer)

CUDA = torch.device("cuda", 0)

# Zoo family -> (zoo name, overrides): the smallest models that still take every path of the family.
LAVIT3 = dict(layout=("A", "VL", "VL"), dims=(32, 64, 96), num_heads=(1, 2, 3), mlp_ratios=(4, 4, 4),
              sr_ratios=(2, 1, 1))  # SR attention; factored LA at 8x8; dense LA + attention residual at 4x4
MICRO32 = dict(img_size=32, num_classes=10)
FAMILIES = {
    "deit": ("deit_micro", dict(depth=2)),
    "vit": ("vit_depth16", dict(depth=2, dim=48, num_heads=2, patch_size=4, **MICRO32)),
    "deepvit": ("deepvit_micro", dict(depth=2, reattn_last=1)),
    "deepvit_s": ("deepvit_s", dict(depth=2, dim=48, num_heads=2, reattn_last=1, **MICRO32)),
    "convit": ("convit_micro", dict(depth=2, local_layers=1)),
    "ffonly": ("ffonly_micro", dict(depth=2)),
    "poolformer": ("poolformer_micro", dict(depths=(1, 1, 1, 1))),
    "poolformer_hybrid": ("poolformer_hybrid_s12", dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32),
                                                        stem=(3, 2, 1), **MICRO32)),
    "identityformer": ("identityformer_micro", dict(depths=(1, 1, 1, 1))),
    "randformer": ("randformer_s12", dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), stem=(3, 2, 1), **MICRO32)),
    "poolformerv2": ("poolformerv2_s12", dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), stem=(3, 2, 1), **MICRO32)),
    "convformer": ("convformer_s18", dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), stem=(3, 2, 1), **MICRO32)),
    "caformer": ("caformer_s18", dict(depths=(1, 1, 1, 1), dims=(32, 32, 64, 64), stem=(3, 2, 1), **MICRO32)),
    "lavit": ("lavit_micro", LAVIT3),  # la_source="post_softmax": in less_attention's examples
}
# Dropout everywhere it exists (SDPA's dropout_p, token FF's module path, GPSA's explicit path)
# and stochastic depth (a per-sample mask drawn with new_empty on the activations' device).
TRAIN_DROP = dict(drop_rate=0.1, drop_path_rate=0.1)


@contextlib.contextmanager
def fake_cuda():
    """A fake-tensor mode in which ``.to("cuda")`` and ``device="cuda"`` work without CUDA."""
    with warnings.catch_warnings():
        # GPSA's cache key reads weight.data_ptr(), which a fake tensor answers with a warning.
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode


def to_fake_cuda(model: nn.Module) -> nn.Module:
    """Move a CPU-built module onto the fake CUDA device (call inside ``fake_cuda()``)."""
    model.to("cuda")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert isinstance(t, FakeTensor) and t.device == CUDA, (name, type(t), t.device)
    return model


def images(model, batch: int = 2, size=None) -> torch.Tensor:
    h, w = size or model.img_size
    return torch.randn(batch, model.in_chans, h, w, device="cuda")


def assert_on_cuda(*tensors) -> None:
    for t in tensors:
        assert isinstance(t, FakeTensor) and t.device == CUDA, (type(t), getattr(t, "device", None))


@contextlib.contextmanager
def scalar_readouts_as_nan(monkeypatch):
    """``.item()`` / ``.tolist()`` on a fake tensor (no data) give NaN, so code that reads scalars
    runs to its end; real tensors are unaffected."""
    item, tolist = torch.Tensor.item, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item",
                        lambda self: math.nan if isinstance(self, FakeTensor) else item(self))
    monkeypatch.setattr(torch.Tensor, "tolist",
                        lambda self: np.full(tuple(self.shape), math.nan).tolist()
                        if isinstance(self, FakeTensor) else tolist(self))
    yield


def build(family: str, **extra) -> nn.Module:
    name, overrides = FAMILIES[family]
    torch.manual_seed(0)
    return mixerlab.create_model(name, **overrides, **extra)


def run_forward_paths(model: nn.Module) -> None:
    """Train (fast paths on / off, aux terms) and eval (no grad; attention maps, i.e. the
    explicit attention path) forwards on fake CUDA, asserting every output stays on the device."""
    x = images(model)
    n_attn = sum(isinstance(m, AttentionMixer) for m in model.modules())
    model.train()
    for fast in (True, False):
        with mixerlab.fast_paths(model, fast):
            logits, aux = model(x, return_aux=True)
        assert logits.shape == (2, model.num_classes)
        assert_on_cuda(logits, *aux.values())
    if any(getattr(m, "monitor_diagonality", False) for m in model.modules()):
        assert set(aux) == {"dp_sym", "dp_diag"}
    model.eval()
    with torch.no_grad():
        assert_on_cuda(model(x))
        with attention_maps(model) as rec:
            assert_on_cuda(model(x))
    assert len(rec) == n_attn
    assert_on_cuda(*rec.maps.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zoo_family_forward_on_fake_cuda(family, monkeypatch):
    model = build(family, **TRAIN_DROP)  # built on the CPU
    calls = {"transform_factored": 0, "transform": 0}
    for name in calls:  # LaViT: count which less-attention paths ran
        orig = getattr(LessAttention, name)
        monkeypatch.setattr(LessAttention, name, lambda self, m, g=None, _o=orig, _n=name: (
            calls.__setitem__(_n, calls[_n] + 1), _o(self, m, g))[1])
    with fake_cuda():
        run_forward_paths(to_fake_cuda(model))
    if family == "lavit":  # the factored path (8 x 8 grid) and the dense one (4 x 4) both ran
        assert calls["transform_factored"] > 0 and calls["transform"] > 0, calls


def test_every_zoo_family_is_covered():
    """A new zoo family must get an entry in FAMILIES (its smallest path-complete variant)."""
    families = {mixerlab.get_model_info(n).family for n in mixerlab.list_models()}
    covered = {mixerlab.get_model_info(name).family for name, _ in FAMILIES.values()}
    assert families <= covered, f"zoo families without a fake-CUDA case: {sorted(families - covered)}"


def run_mixer_examples(name: str, *, dim: int = 16, grid=(4, 4), batch: int = 2) -> int:
    """Every example instance of mixer ``name``, built on the CPU and run on fake CUDA (train and
    eval, fast paths on and off, grid tokens only and with a class token where it takes one).
    The examples run in order on one context, as in the mixer contract. Returns the cases run."""
    cls = get_mixer(name)
    n_grid = grid[0] * grid[1]
    cases, state = 0, {}
    for kw in cls.examples:
        kwargs = dict(kw)
        if cls.needs_num_tokens:
            kwargs.setdefault("num_tokens", n_grid)
        torch.manual_seed(0)
        mixer = cls(dim, **kwargs)
        mixer.init_weights()
        prefixes = [0] + ([1] if mixer.supports_prefix_tokens and not mixer.fixed_num_tokens else [])
        with fake_cuda():
            to_fake_cuda(mixer)
            next_state = state
            for p in prefixes:
                x = torch.randn(batch, n_grid + p, dim, device="cuda")
                for train in (True, False):
                    mixer.train(train)
                    for fast in (True, False):
                        ctx = TokenContext(grid=grid, num_prefix_tokens=p, state=dict(state))
                        with mixerlab.fast_paths(mixer, fast), torch.set_grad_enabled(train):
                            y = mixer(x, ctx)
                        assert y.shape == x.shape, (name, kw, p)
                        assert_on_cuda(y, *[v for vs in ctx.aux.values() for v in vs])
                        if p == 0:
                            next_state = ctx.state
                        cases += 1
        state = next_state
    return cases


@pytest.mark.parametrize("name", list_mixers())
def test_every_mixer_on_fake_cuda(name):
    assert run_mixer_examples(name) >= 4


def test_gpsa_positional_cache_lives_on_the_device():
    model = build("convit").eval()
    gpsa = model.blocks[0].token_mixer
    with fake_cuda():
        to_fake_cuda(model)
        x = images(model)
        with torch.no_grad():
            model(x)
            key, first = gpsa._pos_cache
            model(x)
            assert gpsa._pos_cache[1] is first  # hit: built once, on the device
        assert_on_cuda(first, gpsa.rel_pos)
        assert key[1] == "cuda:0"
        assert first.shape == (gpsa.num_heads, 64, 64)


@pytest.mark.parametrize("family", ["convit", "poolformer_hybrid"])
def test_other_resolution_on_fake_cuda(family):
    """Position tables resampled and GPSA's relative positions rebuilt for a 40 x 40 input."""
    model = build(family).eval()
    with fake_cuda():
        to_fake_cuda(model)
        with torch.no_grad():
            assert_on_cuda(model(images(model)), model(images(model, size=(40, 40))))
    if family == "convit":
        assert model.blocks[0].token_mixer.rel_pos.shape[0] == 100


@pytest.mark.parametrize("family", ["deepvit_s", "poolformer"])
def test_channels_last_on_fake_cuda(family):
    model = build(family).to(memory_format=torch.channels_last).train()
    with fake_cuda():
        to_fake_cuda(model)
        x = images(model).contiguous(memory_format=torch.channels_last)
        assert_on_cuda(*model(x, return_aux=True)[1].values(), model(x))


@pytest.mark.parametrize("family", ["deit", "poolformer"])
def test_gradient_checkpointing_on_fake_cuda(family):
    model = build(family).train()
    model.set_grad_checkpointing(True)
    with fake_cuda():
        to_fake_cuda(model)
        assert_on_cuda(model(images(model)))


def test_training_objective_on_fake_cuda():
    """Cross-entropy with label smoothing + LaViT's weighted aux terms."""
    model = build("lavit").train()
    task = ClassificationTask(mixup=None, label_smoothing=0.1, aux_weights={"dp_sym": 0.1, "dp_diag": 0.1})
    with fake_cuda():
        to_fake_cuda(model)
        x, y = images(model, batch=4), torch.randint(0, model.num_classes, (4,), device="cuda")
        out = task(model, x, y)
        assert out["loss"].shape == () and out["output"].shape == (4, model.num_classes)
        assert set(out["terms"]) == {"ce", "dp_sym", "dp_diag"}
        assert_on_cuda(out["loss"], out["output"], *out["terms"].values())


def test_mixup_objective_on_fake_cuda():
    """Mixup/CutMix soft targets (both of timm's branches) and the soft-target cross-entropy."""
    model = build("deit").train()
    mix = build_mixup(mixup=0.8, cutmix=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                      num_classes=model.num_classes)
    task = ClassificationTask(mixup=mix, label_smoothing=0.1, aux_weights={})
    with fake_cuda():
        to_fake_cuda(model)
        x, y = images(model, batch=4), torch.randint(0, model.num_classes, (4,), device="cuda")
        for switch in (0.0, 1.0):  # 0: always Mixup (lam blend); 1: always CutMix (box paste)
            mix.switch_prob = switch
            xm, ym = mix(x.clone(), y)
            assert ym.shape == (4, model.num_classes)
            assert_on_cuda(xm, ym)
        out = task(model, x, y)
        assert_on_cuda(out["loss"], out["output"])


def test_ema_on_fake_cuda(monkeypatch):
    model = build("deepvit")  # BatchNorm running statistics are copied, parameters averaged
    # timm's ModelEmaV3 makes a stochastic-rounding generator on the model's device even when
    # rounding is off (as here); a CUDA generator needs a driver: give it a CPU one (never used)
    cpu_generator = torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda device=None: cpu_generator())
    with fake_cuda():
        to_fake_cuda(model)
        ema = make_ema(model, decay=0.99)
        ema.update(model)
        for t in ema.state_dict().values():
            assert_on_cuda(t)
        assert_on_cuda(ema.module(images(model)))


def test_analysis_metrics_on_fake_cuda(monkeypatch):
    """Every metric on maps and features recorded on the device, via the analysis pass itself
    (``collect``) and directly."""
    model = build("lavit").eval()
    with fake_cuda(), scalar_readouts_as_nan(monkeypatch):
        to_fake_cuda(model)
        x = images(model, batch=2)
        raw = collect(model, x, batch_size=2)  # attention_maps + every metric, as `mixerlab analyze`
        names = [n for n, m in model.named_modules() if isinstance(m, AttentionMixer)]
        assert raw["num_images"] == 2 and raw["attention_layers"] == names
        assert set(raw["dp"]) == {n for n in names if model.get_submodule(n).monitor_diagonality}
        for v in [*raw["head"].values(), *raw["nonloc"].values(), *raw["entropy"].values()]:
            assert_on_cuda(v)
        for p in raw["pictures"].values():
            assert isinstance(p["maps"], FakeTensor) and p["maps"].device.type == "cpu"  # moved for plots
        a = torch.rand(2, 2, 16, 5, device="cuda")  # 16 queries on a 4x4 grid, 4 SR keys + 1 prefix
        assert_on_cuda(M.column_cosine(a, a), M.nonlocality(a[..., 1:], (4, 4)))
        p = torch.rand(2, 2, 16, 16, device="cuda").softmax(-1)
        assert set(M.diagonality_terms(p)) == {"asymmetry", "diag_mass", "dp_diag"}
        M.attention_similarity(p, p)
        M.mean_off_diagonal(M.head_similarity(p))
        feats = torch.randn(2, 16, 8, device="cuda")
        M.token_similarity(feats, feats)
        M.intra_token_similarity(feats)


# ---- the check can fail: a mixer that creates a tensor on the wrong device inside forward ----------
class ArangeTable(TokenMixer):
    """Adds a relative-index table built with ``torch.arange(n)``; ``on_device`` puts it on x's
    device (correct), otherwise on the CPU (the bug the fake-CUDA check exists for)."""

    on_device = False

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        n = x.shape[1]
        idx = torch.arange(n, device=x.device) if self.on_device else torch.arange(n)
        table = (idx[None, :] - idx[:, None]).abs().to(x.dtype) / n  # (N, N)
        return self.proj(table.softmax(dim=-1) @ x)

    def cost(self, num_tokens, grid, *, dim, batch=1) -> MixerCost:
        return MixerCost(num_tokens * num_tokens * dim + num_tokens * dim * dim)


class StaleAttribute(TokenMixer):
    """Keeps a mask as a plain tensor attribute: ``.to("cuda")`` does not move it (a buffer would)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = torch.linspace(0.5, 1.5, dim)  # not a buffer

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return x * self.scale

    def cost(self, num_tokens, grid, *, dim, batch=1) -> MixerCost:
        return MixerCost(0, num_tokens * dim)


@pytest.fixture
def toy_mixers():
    names = {"toy_arange_table": ArangeTable, "toy_stale_attribute": StaleAttribute}
    for n, cls in names.items():
        register_mixer(n)(cls)
    try:
        yield names
    finally:
        for n in names:
            unregister_mixer(n)
        ArangeTable.on_device = False
    assert not set(names) & set(list_mixers())


@pytest.mark.parametrize("name", ["toy_arange_table", "toy_stale_attribute"])
def test_fake_cuda_catches_a_tensor_on_the_wrong_device(toy_mixers, name):
    with pytest.raises(FakeTensorDeviceMismatchError, match=DEVICE_MISMATCH):
        run_mixer_examples(name)
    model = mixerlab.create_model("deit_micro", depth=2, mixers=((name, {}),) * 2)
    with pytest.raises(FakeTensorDeviceMismatchError), fake_cuda():
        run_forward_paths(to_fake_cuda(model))
    # On the CPU the same model runs: only a device check can see the bug.
    assert mixerlab.create_model("deit_micro", depth=2, mixers=((name, {}),) * 2)(
        torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fake_cuda_passes_the_same_mixer_built_on_the_device(toy_mixers):
    ArangeTable.on_device = True
    assert run_mixer_examples("toy_arange_table") == 8
    model = mixerlab.create_model("deit_micro", depth=2, mixers=(("toy_arange_table", {}),) * 2)
    with fake_cuda():
        run_forward_paths(to_fake_cuda(model))
