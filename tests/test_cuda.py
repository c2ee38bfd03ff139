"""Unit tests with a CUDA variant: real kernels, real backward, on a real device.

They run on ``MIXERLAB_TEST_DEVICE`` (default ``cuda``) and are skipped when that is CUDA and no
CUDA device is available, so the default suite on a CPU machine skips them.
``scripts/gpu_check.sh`` runs them on a GPU; ``scripts/gpu_check.sh --dry-run`` runs them with
``MIXERLAB_TEST_DEVICE=cpu`` (fp16 / GradScaler tests then skip: the trainer allows fp16 on CUDA
only), so they cannot rot. What fake tensors check without a GPU (``test_fake_cuda.py``) is
devices and shapes; these check values: the device output against the CPU output of the same
weights, the fast paths against the reference paths on the device, finite gradients and an
optimiser step in fp32, under bf16 autocast and with fp16 + a grad scaler, and the bench's CUDA
peak-memory accounting.
"""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
import torch.nn.functional as F

import mixerlab
from mixerlab.bench.runner import bench_rows
from test_fake_cuda import FAMILIES, build

DEVICE = torch.device(os.environ.get("MIXERLAB_TEST_DEVICE", "cuda"))


@pytest.fixture
def dev():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (MIXERLAB_TEST_DEVICE=cpu runs these tests on the CPU)")
    return DEVICE


@contextlib.contextmanager
def exact_fp32():
    """No TF32 in cuBLAS / cuDNN (Ampere+ use it for fp32 convs by default), restored on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def batch(model, dev, n: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, model.in_chans, *model.img_size, generator=g)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x.to(dev), y.to(dev)


def loss_of(model, x, y):
    logits, aux = model(x, return_aux=True)
    return F.cross_entropy(logits.float(), y) + 0.1 * sum((v.float() for v in aux.values()), torch.zeros((), device=x.device))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_device_output_matches_cpu(dev, family):
    """Same weights, eval, fp32: the device's kernels (SDPA, cuDNN convs, cuBLAS) agree with the CPU."""
    model = build(family).eval()
    x, _ = batch(model, "cpu")
    with torch.no_grad(), exact_fp32():
        ref = model(x)
        out = model.to(dev)(x.to(dev))
    assert out.device.type == dev.type
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_paths_match_reference_on_device(dev, family):
    model = build(family).to(dev).eval()
    x, _ = batch(model, dev)
    with torch.no_grad(), exact_fp32():
        fast = model(x)
        with mixerlab.fast_paths(model, False):
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_steps_on_device(dev, family):
    """fp32 forward + backward (aux terms included) + AdamW: finite gradients on the device for
    every trainable parameter, the weights move, the loss of a repeated batch goes down."""
    model = build(family).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch(model, dev)
    before = copy.deepcopy(model.state_dict())
    losses = []
    for _ in range(4):
        loss = loss_of(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.device.type == dev.type, n
                assert torch.isfinite(p.grad).all(), n
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0], losses
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == sum(1 for p in model.parameters() if p.requires_grad)


def test_trainer_optimizer_is_fused_on_cuda_and_steps_as_foreach(dev):
    """``build_optimizer`` picks the fused AdamW kernel exactly when the parameters are on CUDA, and
    its steps equal the foreach kernel's (fp32, 5 steps, 1e-5 relative on the weights)."""
    from mixerlab.engine.optim import build_optimizer
    torch.manual_seed(0)
    ref = build("poolformer").to(dev).train()
    twin = copy.deepcopy(ref)
    fused = build_optimizer(ref, lr=1e-3, weight_decay=0.05)
    plain = build_optimizer(twin, lr=1e-3, weight_decay=0.05, fused=False)
    assert bool(fused.defaults.get("fused")) == (dev.type == "cuda") and not plain.defaults.get("fused")
    x, y = batch(ref, dev)
    with exact_fp32():
        for _ in range(5):
            for m, opt in ((ref, fused), (twin, plain)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                opt.step()
    for (n, a), b in zip(ref.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", ["deit", "convit", "deepvit", "ffonly", "poolformer", "lavit"])
def test_bf16_autocast_training_step(dev, family):
    """Under bf16 autocast the logits are bf16, the loss and every gradient finite, and the
    logits stay close to fp32 (bf16 keeps 8 bits of mantissa)."""
    model = build(family).to(dev).train()
    x, y = batch(model, dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        logits = model(x)
        loss = loss_of(model, x, y)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                        if p.grad is not None)
    with torch.no_grad():
        model.eval()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            low = model(x).float()
        torch.testing.assert_close(low, model(x), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("family", ["deit", "convit", "deepvit", "lavit"])
def test_fp16_grad_scaler_steps(dev, family):
    """fp16 autocast with a grad scaler (the trainer's ``--amp fp16``): finite scaled steps."""
    if dev.type != "cuda":
        pytest.skip("fp16 autocast + GradScaler is the CUDA recipe (the trainer rejects it on CPU)")
    model = build(family).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    x, y = batch(model, dev)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_of(model, x, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(loss)
    assert scaler.get_scale() > 0


def test_gpsa_cache_on_device_matches_the_uncached_map(dev):
    model = build("convit").to(dev).eval()
    gpsa = model.blocks[0].token_mixer
    x, _ = batch(model, dev)
    with torch.no_grad():
        first = model(x)
        cached = gpsa._pos_cache[1]
        second = model(x)
    assert gpsa._pos_cache[1] is cached and cached.device.type == dev.type
    uncached = model(x)  # autograd on: the cache is bypassed
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(uncached.detach(), first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["deepvit_s", "poolformer"])
def test_channels_last_matches_contiguous(dev, family):
    model = build(family).to(dev).eval()
    x, _ = batch(model, dev)
    with torch.no_grad(), exact_fp32():
        ref = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bench_peak_memory_accounting(dev):
    """The bench's training-step row on the device: CUDA rows use max_memory_allocated."""
    rows = bench_rows(["deit_micro"], batch_sizes=[8], modes=["train"], device=str(dev), reps=1, warmup=1,
                      min_time=0.0)
    (row,) = rows
    assert row["img_per_s"] > 0 and row["device"] == str(dev)
    assert ("cuda" in row["mem_kind"]) == (dev.type == "cuda")
    if dev.type == "cuda":
        # the step's activations of 8 images: at least the logits' and more than nothing
        assert row["peak_mem_mb"] > 0


# ---- the GPU preset's device data path and ensemble (mixerlab.data.device, mixerlab.engine.ensemble)
def test_device_data_pixels_on_device(dev):
    """The shift / flip / normalisation done on the device: ArrayTransform's pixels on the CPU."""
    from mixerlab.data import sample_seed, synthetic
    from mixerlab.data.device import DeviceTransform
    from mixerlab.data.transforms import ArrayTransform
    src = synthetic("train", size=256, num_classes=4, in_chans=1, img_size=28)
    ref_t = ArrayTransform.for_pipeline(32, (0.2860,), (0.3530,), train=True, padding=2, hflip=0.5)
    seeds = [sample_seed(3, 1, i) for i in range(256)]
    images = torch.from_numpy(src.array)
    got = DeviceTransform.from_array_transform(ref_t)(images.to(dev), torch.tensor(seeds, device=dev))
    assert got.device.type == dev.type
    assert torch.equal(got.cpu(), ref_t(images, seeds))


def test_ensemble_on_device_matches_runs_alone(dev):
    """Two deit members (own inits, LRs, batches) vmapped on the device: each member's losses are
    those of the run alone on the same device (fp32, no TF32)."""
    from mixerlab.engine.ensemble import Ensemble
    from mixerlab.engine.optim import build_optimizer, lr_at
    from mixerlab.engine.task import ClassificationTask
    sched = dict(total_steps=10, warmup_steps=1, warmup_lr=1e-6, min_lr=1e-5)
    lrs = [1e-3, 3e-3]
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(mixerlab.create_model("deit_micro", num_classes=10, in_chans=1, img_size=28, patch_size=7,
                                            dim=32, num_heads=2, depth=2).to(dev))
    refs = [copy.deepcopy(m) for m in models]
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 16, 1, 28, 28, generator=g).to(dev), torch.randint(0, 10, (2, 16), generator=g).to(dev))
            for _ in range(3)]
    task = ClassificationTask(mixup=None, label_smoothing=0.1, aux_weights={})
    with exact_fp32():
        ens = Ensemble(models, lrs=lrs, aux_weights={}, **sched)
        got = torch.stack([ens.train_step(x, y)["loss"] for x, y in data]).cpu()
        for i, model in enumerate(refs):
            opt = build_optimizer(model, lr=lrs[i], weight_decay=0.05)
            for step, (x, y) in enumerate(data):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, base_lr=lrs[i], **sched)
                out = task(model, x[i], y[i])
                out["loss"].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                assert abs(out["loss"].item() - got[step, i].item()) < 1e-4, (i, step)


def test_collects_on_a_torch_without_the_fake_tensor_mismatch_error():
    """This file (through test_fake_cuda's FAMILIES) must collect on a torch whose private
    ``torch._subclasses.fake_tensor`` lacks ``FakeTensorDeviceMismatchError`` (torch 2.11). In a
    subprocess the module is replaced in ``sys.modules`` by a view without that name (torch's own
    code keeps the real module), then both files are collected and test_fake_cuda's fallback read."""
    import subprocess
    import sys
    from pathlib import Path
    code = """
import sys, types
import torch._subclasses.fake_tensor as real
class WithoutName(types.ModuleType):
    def __getattr__(self, name):
        if name == "FakeTensorDeviceMismatchError":
            raise AttributeError(name)
        return getattr(real, name)
sys.modules["torch._subclasses.fake_tensor"] = WithoutName(real.__name__)
try:
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
    sys.exit("the name was not removed")
except ImportError:
    pass
import pytest
rc = pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", "tests/test_cuda.py", "tests/test_fake_cuda.py"])
import test_fake_cuda
assert test_fake_cuda.FakeTensorDeviceMismatchError is RuntimeError, test_fake_cuda.FakeTensorDeviceMismatchError
sys.exit(int(rc))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=300, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "tests collected" in out and "ERROR" not in out and "errors" not in out, out[-3000:]
