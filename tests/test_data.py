"""Offline datasets, fit-to-size, class-balanced fractions, seeded augmentation and samplers."""
import gzip
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest_train import HAVE_FMNIST, tiny_config
from mixerlab.data import (
    FASHION_MNIST_DIR, FitTo, ResumableSampler, sample_seed, ShardSampler, TransformedDataset, balanced_subset, build_data,
    build_mixup, fashion_mnist, synthetic, train_loader, train_transform,
)
from mixerlab.data.transforms import ArrayTransform, eval_transform

needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")


@needs_fmnist
def test_fashion_mnist_reader():
    train, val = fashion_mnist(None, "train"), fashion_mnist(None, "val")
    assert (len(train), len(val)) == (60000, 10000) and train.in_chans == 1
    img = train.load(0)
    assert img.size == (28, 28) and img.mode == "L"
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert train.classes[9] == "Ankle boot"


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        fashion_mnist(str(tmp_path), "train")
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def _write_idx(folder, n=20, corrupt=None):
    rng = np.random.default_rng(0)
    for split, m in (("train", n), ("t10k", n // 2)):
        imgs = rng.integers(0, 255, (m, 28, 28), dtype=np.uint8)
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03" + np.array([m, 28, 28], ">u4").tobytes() + imgs.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01" + np.array([m], ">u4").tobytes() + (np.arange(m) % 10).astype(np.uint8).tobytes())


def test_idx_from_data_dir_and_corrupt_file(tmp_path):
    _write_idx(tmp_path)
    src = fashion_mnist(str(tmp_path), "train")
    assert len(src) == 20 and src.load(3).size == (28, 28)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])  # truncated gzip stream
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fashion_mnist(str(tmp_path), "val")


def test_fit_to_pads_28_to_32_with_black_border():
    img = Image.fromarray(np.full((28, 28), 200, np.uint8), "L")
    out = np.asarray(FitTo(32)(img))
    assert out.shape == (32, 32)
    assert (out[2:30, 2:30] == 200).all() and out[:2].max() == 0 and out[:, 30:].max() == 0
    big = Image.fromarray(np.zeros((64, 48, 3), np.uint8), "RGB")
    assert FitTo(32)(big).size == (32, 32)


def test_balanced_subset_is_balanced_and_fixed():
    targets = np.repeat(np.arange(10), 100)
    a, b = balanced_subset(targets, 0.1, seed=0), balanced_subset(targets, 0.1, seed=0)
    assert np.array_equal(a, b) and len(a) == 100
    assert np.bincount(targets[a]).tolist() == [10] * 10
    assert not np.array_equal(a, balanced_subset(targets, 0.1, seed=1))
    assert len(balanced_subset(targets, 0.001)) == 10  # at least one per class


@pytest.mark.parametrize("chans", [1, 3])
def test_train_transform_with_randaugment_and_erasing(chans):
    src = synthetic("train", size=16, num_classes=4, in_chans=chans)
    t = train_transform(32, (0.5,) * chans, (0.25,) * chans, randaugment=9, random_erasing=1.0)
    x = t(src.load(0))
    assert x.shape == (chans, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_seeded_augmentation_is_independent_of_loading_order():
    src = synthetic("train", size=32, num_classes=4, in_chans=1)
    ds = TransformedDataset(src, train_transform(32, (0.5,), (0.25,)))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(5, 1234)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    ds.__getitems__([(1, 7), (2, 8)])
    assert torch.equal(ds[(5, 1234)][0], a)
    assert not torch.equal(ds[(5, 999)][0], a)


def test_resumable_sampler_shards_and_skips():
    ds = list(range(10))
    s0, s1 = (ResumableSampler(ds, num_replicas=2, rank=r, seed=3) for r in (0, 1))
    i0, i1 = [i for i, _ in s0], [i for i, _ in s1]
    assert sorted(i0 + i1) == list(range(10))
    s0.set_epoch(1)
    e1 = list(s0)
    assert [i for i, _ in e1] != i0  # reshuffled per epoch
    s0.set_start(2)
    assert list(s0) == e1[2:] and len(s0) == 3
    assert [i for i in ShardSampler(np.arange(5), num_replicas=2, rank=1)] == [1, 3]


def test_build_data_and_loader_on_synthetic():
    bundle = build_data(tiny_config(synthetic_size=64, train_fraction=0.5))
    assert 30 <= len(bundle.train) <= 35 and len(bundle.val) == 16 and bundle.num_classes == 10 and bundle.in_chans == 1
    loader = train_loader(bundle.train, batch_size=8, seed=0, rank=0, world=1, workers=0, pin=False)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 32, 32) and y.shape == (8,)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_loader(bundle.train, batch_size=64, seed=0, rank=0, world=1, workers=0, pin=False)


def test_mixup_gives_smoothed_soft_targets():
    mix = build_mixup(mixup=0.8, cutmix=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    xm, ym = mix(x, y)
    assert xm.shape == x.shape and ym.shape == (4, 5)
    assert torch.allclose(ym.sum(1), torch.ones(4)) and ym.min() > 0  # smoothing: no zero entries
    assert build_mixup(mixup=0, cutmix=0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5) is None


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    bundle = build_data(tiny_config(data="imagefolder", data_dir=str(tmp_path), train_crop="rrc"))
    assert bundle.classes == ("cat", "dog") and bundle.in_chans == 3 and len(bundle.train) == len(bundle.val) == 6
    assert bundle.train[(0, 1)][0].shape == (3, 32, 32) and bundle.val[5][0].shape == (3, 32, 32)
    assert bundle.val[5][1] == 1
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        bundle.train_plain[0]


def _reference(src, i, size, pad, top, left, flip, mean, std):
    """torchvision's per-image kernels for a given shift and flip (the pipeline the batched
    transform replaces): centred zero padding to ``size``, pad ``pad``, crop, flip, normalise."""
    from torchvision.transforms import v2
    img = FitTo(size)(src.load(i))
    img = v2.functional.crop(v2.functional.pad(img, [pad] * 4, fill=0), int(top), int(left), size, size)
    if flip:
        img = v2.functional.horizontal_flip(img)
    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(img)


@pytest.mark.parametrize("chans,src_size,size", [(1, 28, 28), (1, 28, 32), (3, 32, 32)])
def test_array_transform_matches_torchvision_per_image(chans, src_size, size):
    src = synthetic("train", size=64, num_classes=4, in_chans=chans, img_size=src_size)
    mean, std = (0.3,) * chans, (0.2,) * chans
    bt = ArrayTransform.for_pipeline(size, mean, std, train=True, padding=2, hflip=0.5)
    seeds = [sample_seed(3, 1, i) for i in range(64)]
    out = bt(torch.from_numpy(src.array), seeds)
    top, left, flip = bt.params(seeds)
    assert 0.25 < flip.float().mean() < 0.75 and set(top.tolist()) == set(range(5)) == set(left.tolist())
    assert out.shape == (64, chans, size, size) and out.dtype == torch.float32
    for i in range(64):
        ref = _reference(src, i, size, 2, top[i], left[i], bool(flip[i]), mean, std)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)
    # eval: no shift, no flip, exactly the eval pipeline
    ev = ArrayTransform.for_pipeline(size, mean, std, train=False)(torch.from_numpy(src.array[:8]))
    t = eval_transform(size, mean, std)
    for i in range(8):
        torch.testing.assert_close(ev[i], t(src.load(i)), rtol=0, atol=1e-6)


def test_array_transform_only_for_pipelines_it_can_batch():
    assert ArrayTransform.for_pipeline(32, (0.5,), (0.2,), train=True, randaugment=9) is None
    assert ArrayTransform.for_pipeline(32, (0.5,), (0.2,), train=True, random_erasing=0.25) is None
    assert ArrayTransform.for_pipeline(32, (0.5,), (0.2,), train=True, crop="rrc") is None
    # images larger than the output are resized by the per-image path, never by this one
    src = synthetic("train", size=8, num_classes=2, in_chans=1, img_size=40)
    ds = TransformedDataset(src, eval_transform(32, (0.5,), (0.2,)), None,
                            ArrayTransform.for_pipeline(32, (0.5,), (0.2,), train=False))
    assert ds.batch_transform is None and ds[0][0].shape == (1, 32, 32)


def test_batched_loading_is_seeded_and_leaves_the_rng_alone():
    bundle = build_data(tiny_config(synthetic_size=64, train_fraction=1.0))
    ds = bundle.train
    assert isinstance(ds.batch_transform, ArrayTransform)  # the small recipe on an in-memory source
    before = torch.get_rng_state()
    a = ds.__getitems__([(5, 1234), (6, 99)])
    assert torch.equal(torch.get_rng_state(), before)
    b = ds.__getitems__([(6, 99), (5, 1234)])
    assert torch.equal(a[0][0], b[1][0]) and torch.equal(a[1][0], b[0][0]) and a[0][1] == b[1][1]
    assert bundle.val.batch_transform is not None and bundle.train_plain.batch_transform is not None
