"""The device-resident data path (``mixerlab.data.device``) against the DataLoader path it replaces:
the keys of ``ResumableSampler``, the pixels of ``ArrayTransform``, the batches of ``train_loader``
and ``eval_loader`` (all on the CPU here; ``tests/test_cuda.py`` repeats the pixel check on a GPU)."""
import itertools

import numpy as np
import pytest
import torch

from conftest_train import tiny_config
from mixerlab.data import ResumableSampler, build_data, eval_loader, sample_seed, synthetic, train_loader
from mixerlab.data.device import DeviceData, DeviceTrainBatches, DeviceTransform, epoch_keys, sample_seeds
from mixerlab.data.transforms import ArrayTransform

# the small recipe's augmentation (pad 2 + crop, flips) on a synthetic split held in memory
SMALL_AUG = dict(train_crop="pad-crop", crop_padding=2, hflip=0.5)


def test_sample_seeds_equal_sample_seed():
    rng = np.random.default_rng(0)
    idx = np.concatenate([np.arange(50), rng.integers(0, 2**31 - 1, 200)])
    for seed, epoch in [(0, 0), (3, 1), (12345, 29), (2**40 + 7, 3)]:
        ref = [sample_seed(seed, epoch, int(i)) for i in idx]
        assert sample_seeds(seed, epoch, idx).tolist() == ref


@pytest.mark.parametrize("n,world,rank,start", [(103, 1, 0, 0), (103, 1, 0, 37), (103, 2, 1, 0), (101, 3, 2, 5)])
def test_epoch_keys_equal_resumable_sampler(n, world, rank, start):
    for epoch in (0, 4):
        sampler = ResumableSampler(range(n), num_replicas=world, rank=rank, seed=7)
        sampler.set_epoch(epoch)
        sampler.set_start(start)
        idx, seeds = epoch_keys(n, seed=7, epoch=epoch, rank=rank, world=world, start=start)
        assert list(zip(idx.tolist(), seeds.tolist())) == list(sampler)


@pytest.mark.parametrize("padding,hflip", [(2, 0.5), (4, 0.3), (0, 0.5), (3, 0.0)])
def test_params_equal_array_transform(padding, hflip):
    rng = np.random.default_rng(1)
    seeds = [0, 1, 2**32 - 1, 2**31, 0x9E3779B1] + rng.integers(0, 2**32, 500).tolist()
    ref = ArrayTransform(32, (0.5,), (0.2,), padding=padding, hflip=hflip).params(seeds)
    got = DeviceTransform(32, (0.5,), (0.2,), padding=padding, hflip=hflip).params(torch.tensor(seeds))
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    if 0 < hflip < 1:
        assert 0 < got[2].sum() < len(seeds)  # both branches are exercised


@pytest.mark.parametrize("chans,src_size,size", [(1, 28, 28), (1, 28, 32), (3, 32, 32)])
def test_pixels_equal_array_transform(chans, src_size, size):
    src = synthetic("train", size=64, num_classes=4, in_chans=chans, img_size=src_size)
    mean, std = (0.2860, 0.3, 0.4)[:chans], (0.3530, 0.25, 0.2)[:chans]
    ref_t = ArrayTransform.for_pipeline(size, mean, std, train=True, padding=2, hflip=0.5)
    dev_t = DeviceTransform.from_array_transform(ref_t)
    seeds = [sample_seed(3, 1, i) for i in range(64)]
    images = torch.from_numpy(src.array)
    ref = ref_t(images, seeds)
    got = dev_t(images, torch.tensor(seeds))
    assert got.shape == ref.shape == (64, chans, size, size)
    assert torch.equal(got, ref)  # bit-for-bit: the same integer gather, the same float ops
    # the eval form: no shift, no flip
    assert torch.equal(dev_t(images[:8]), ref_t(images[:8]))


def _same_batches(a, b):
    n = 0
    for (xa, ya), (xb, yb) in itertools.zip_longest(a, b, fillvalue=(None, None)):
        assert xa is not None and xb is not None, "different numbers of batches"
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
        n += 1
    return n


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1)])
def test_train_batches_equal_train_loader(world, rank):
    cfg = tiny_config(synthetic_size=200, train_fraction=0.75, val_images=10, **SMALL_AUG)
    bundle = build_data(cfg)
    data = DeviceData.from_dataset(bundle.train)
    assert len(data) == len(bundle.train) and len(bundle.train) < 200  # a subset: rows map through indices
    loader = train_loader(bundle.train, batch_size=16, seed=5, rank=rank, world=world, workers=0, pin=False)
    dev = DeviceTrainBatches(data, batch_size=16, seeds=5, rank=rank, world=world)
    for epoch, start in [(0, 0), (1, 0), (1, 16)]:  # a later epoch, and a resume one batch in
        for s in (loader.batch_sampler.sampler, dev):
            s.set_epoch(epoch)
            s.set_start(start)
        assert len(dev) == len(loader)
        assert _same_batches(dev, loader) == len(loader) > 0


def test_stacked_seeds_give_each_member_its_runs_batches():
    bundle = build_data(tiny_config(synthetic_size=64, **SMALL_AUG))
    seeds = [0, 3, 11]
    dev = DeviceTrainBatches(DeviceData.from_dataset(bundle.train), batch_size=16, seeds=seeds)
    dev.set_epoch(2)
    loaders = []
    for s in seeds:
        loader = train_loader(bundle.train, batch_size=16, seed=s, rank=0, world=1, workers=0, pin=False)
        loader.batch_sampler.sampler.set_epoch(2)
        loaders.append(loader)
    n = 0
    for (x, y), *refs in zip(dev, *loaders):
        assert x.shape == (3, 16, 1, 32, 32) and y.shape == (3, 16)
        for m, (xr, yr) in enumerate(refs):
            assert torch.equal(x[m], xr) and torch.equal(y[m], yr)
        n += 1
    assert n == len(dev) == 4
    assert not torch.equal(x[0], x[1])  # the members' batches differ


@pytest.mark.parametrize("limit,shuffle_seed", [(None, None), (40, 3)])
def test_eval_batches_equal_eval_loader(limit, shuffle_seed):
    bundle = build_data(tiny_config(synthetic_size=64, val_images=0, **SMALL_AUG))
    for ds in (bundle.val, bundle.train_plain):
        ref = eval_loader(ds, batch_size=24, rank=0, world=1, workers=0, pin=False, limit=limit, shuffle_seed=shuffle_seed)
        got = DeviceData.from_dataset(ds).eval_batches(24, limit=limit, shuffle_seed=shuffle_seed)
        assert _same_batches(got, ref) == len(ref)


def test_pipelines_without_a_batched_form_are_refused():
    bundle = build_data(tiny_config(synthetic_size=32, randaugment=9))
    with pytest.raises(ValueError, match="no batched transform"):
        DeviceData.from_dataset(bundle.train)
    DeviceData.from_dataset(bundle.val)  # the eval pipeline always has one
    with pytest.raises(ValueError, match="fewer than one batch"):
        DeviceTrainBatches(DeviceData.from_dataset(bundle.val), batch_size=64, seeds=0)
