"""A device-resident training data path: the whole split as one uint8 tensor on the device.

For the 28-32 px sets a micro model's step on a GPU takes well under a millisecond of compute per
image, so a DataLoader (worker processes, collation, pinned host copies) becomes the limit. This
module keeps the images of a :class:`~mixerlab.data.loader.TransformedDataset` as one uint8 tensor
on the device (Fashion-MNIST's 60,000 28 x 28 images are 47 MB) and does the ``small`` recipe's
augmentation there, batched: the random shift (pad-crop), the horizontal flip and the
normalisation. There are no workers and no host-to-device copies per batch; per epoch, the key
order (a few hundred kB of int64) is built on the host and copied once.

What is identical to the DataLoader path (``train_loader`` + ``TransformedDataset`` with its
:class:`~mixerlab.data.transforms.ArrayTransform`), and tested in ``tests/test_device_data.py``:

* the keys: the same ``(index, seed)`` pairs in the same order for a run seed, an epoch, a rank,
  a world size and a start offset (the permutation is ``DistributedSampler``'s own, the per-sample
  seeds are :func:`~mixerlab.data.loader.sample_seed` evaluated on arrays);
* the batches: consecutive ``batch_size`` keys, the last partial batch dropped (``BatchSampler``
  with ``drop_last=True``), the labels of those keys;
* the pixels: the shift and flip drawn from each sample's seed by ``ArrayTransform.params``'s
  formulas, evaluated with integer tensor ops on the device, and the same float operations for the
  normalisation (``/ 255``, ``- mean``, ``/ std``), so the images are bit-for-bit those of
  ``ArrayTransform`` on the CPU (tested on the CPU; on CUDA the three float ops are correctly
  rounded IEEE operations, so the same values are expected; ``tests/test_cuda.py`` checks it on a
  GPU).

What is not covered: pipelines without a batched form (RandAugment, random erasing,
RandomResizedCrop, images larger than the output size) are refused with ``ValueError``
(``ArrayTransform.for_pipeline`` returns None for them); Mixup/CutMix are not applied here (the
training task does that, on the global RNG); and the DataLoader path's ``pin_memory`` / worker
options have no counterpart.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from .transforms import ArrayTransform

__all__ = ["DeviceData", "DeviceTrainBatches", "DeviceTransform", "epoch_keys", "sample_seeds"]

_M64 = np.uint64(2**64 - 1)


def sample_seeds(seed: int, epoch: int, indices) -> np.ndarray:
    """:func:`~mixerlab.data.loader.sample_seed` for an array of indices (int64 array of 32-bit
    seeds): the same splitmix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom
    number generators", OOPSLA 2014) in numpy ``uint64`` arithmetic, which wraps modulo 2**64."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    base = np.uint64((seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9) & (2**64 - 1))
    with np.errstate(over="ignore"):
        z = base + idx * np.uint64(0x94D049BB133111EB)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(0xFFFFFFFF)).astype(np.int64)


class _Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def epoch_keys(n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1,
               start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, sample seeds)`` of one rank's share of an epoch: the keys
    :class:`~mixerlab.data.loader.ResumableSampler` yields for a dataset of ``n`` images (its
    ``DistributedSampler`` permutation, padding and rank stride, then ``start`` skipped)."""
    sampler = DistributedSampler(_Sized(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    idx = np.fromiter(iter(sampler), dtype=np.int64, count=sampler.num_samples)[start:]
    return idx, sample_seeds(seed, epoch, idx)


class DeviceTransform:
    """:class:`~mixerlab.data.transforms.ArrayTransform` on tensors that stay on their device:
    fit to size by zero padding, the per-seed shift and flip, the normalisation."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], *,
                 padding: int = 0, hflip: float = 0.0):
        self.size = int(img_size)
        self.padding = int(padding)
        self.hflip = float(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._stats: dict = {}  # device -> (mean, std) there (one copy, not one per batch)

    @classmethod
    def from_array_transform(cls, t: ArrayTransform) -> "DeviceTransform":
        return cls(t.size, t.mean.flatten().tolist(), t.std.flatten().tolist(), padding=t.padding, hflip=t.hflip)

    def params(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ArrayTransform.params`` on an int64 tensor of seeds (any device): (top, left, flip)."""
        s = seeds.to(torch.int64) & 0xFFFFFFFF
        k = 2 * self.padding + 1
        top, left = s % k, (s // k) % k
        # bits 20..31 of s * 0x9E3779B1 depend only on the product's low 32 bits; with s split in
        # 16-bit halves every partial product stays below 2**48 (no int64 overflow)
        mult = 0x9E3779B1
        lo, hi = s & 0xFFFF, s >> 16
        low32 = (lo * mult + ((hi * mult) & 0xFFFF) * 65536) & 0xFFFFFFFF
        f = (low32 >> 20) & 0xFFF
        flip = f.to(torch.float32) / 4096.0 < self.hflip
        return top, left, flip

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """``images``: uint8 (B, H, W) or (B, H, W, C) on the device; ``seeds``: int64 (B,) on
        the same device, or None (no shift or flip, the eval pipeline). Out: float32
        (B, C, size, size), normalised."""
        dev = images.device
        x = images if images.ndim == 4 else images.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        b, _, h, w = x.shape
        s = self.size
        left0, top0 = (s - w) // 2, (s - h) // 2
        p = self.padding if seeds is not None else 0
        x = torch.nn.functional.pad(x, (left0 + p, s - w - left0 + p, top0 + p, s - h - top0 + p))
        if seeds is not None and (p > 0 or self.hflip > 0):
            top, left, flip = self.params(seeds.to(dev))
            ar = torch.arange(s, device=dev)
            rows = top[:, None] + ar  # (B, s)
            cols = left[:, None] + torch.where(flip[:, None], s - 1 - ar, ar)  # (B, s)
            bi = torch.arange(b, device=dev)[:, None, None]
            x = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if dev not in self._stats:
            self._stats[dev] = (self.mean.to(dev), self.std.to(dev))
        mean, std = self._stats[dev]
        return (x.to(torch.float32).div_(255.0) - mean) / std

    def __repr__(self) -> str:
        return f"DeviceTransform(size={self.size}, padding={self.padding}, hflip={self.hflip})"


class DeviceData:
    """The images and targets of one split as tensors on ``device``, with the batched transform.

    Row ``i`` is the dataset's item ``i`` (a ``TransformedDataset``'s ``indices`` are applied
    once, here), so the sampler's indices address rows directly.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: DeviceTransform):
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets.to(device=images.device, dtype=torch.int64)
        self.transform = transform

    @classmethod
    def from_dataset(cls, ds, device: str | torch.device = "cpu") -> "DeviceData":
        """From a :class:`~mixerlab.data.loader.TransformedDataset` (``DataBundle.train``,
        ``.train_plain``, ``.val``, ``.test``) whose pipeline has a batched form; ``ValueError``
        otherwise (RandAugment, random erasing, RandomResizedCrop, images larger than the output
        or a source not held in one array)."""
        bt = getattr(ds, "batch_transform", None)
        if bt is None:
            raise ValueError("this dataset has no batched transform (RandAugment, random erasing or "
                             "RandomResizedCrop in the pipeline, images larger than img_size, or a source "
                             "not held in memory); the device data path covers the small recipe's "
                             "pad-crop + flip + normalise only")
        idx = np.asarray(ds.indices)
        images = torch.from_numpy(np.ascontiguousarray(ds.source.array[idx])).to(device)
        targets = torch.from_numpy(np.asarray(ds.source.targets[idx], dtype=np.int64)).to(device)
        return cls(images, targets, DeviceTransform.from_array_transform(bt))

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor, seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the rows ``index`` (any shape ``S``), augmented by ``seeds`` (the
        same shape) or not (None): ``(S + (C, size, size)`` float32, ``S`` int64)."""
        shape = tuple(index.shape)
        flat = index.reshape(-1).to(self.device)
        x = self.transform(self.images[flat], None if seeds is None else seeds.reshape(-1).to(self.device))
        return x.reshape(shape + tuple(x.shape[1:])), self.targets[flat].reshape(shape)

    def eval_batches(self, batch_size: int, *, limit: int | None = None,
                     shuffle_seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches in ``eval_loader``'s order for one process (in order, or the
        ``shuffle_seed`` permutation), the first ``limit`` images, the last batch partial."""
        n = len(self)
        order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
        order = torch.from_numpy(np.asarray(order[:limit], dtype=np.int64)).to(self.device)
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size])


class DeviceTrainBatches:
    """The training batches of ``train_loader`` for one run seed, or for several at once.

    Args:
        data: the training split on the device (``DeviceData.from_dataset(bundle.train, device)``).
        batch_size: images per batch (per member); the last partial batch is dropped.
        seeds: one run seed (batches ``(B, C, H, W)``, ``(B,)``), or a sequence of them (batches
            ``(S, B, C, H, W)``, ``(S, B)``: member ``s`` gets the batch the run with seed
            ``seeds[s]`` would get, for an ensemble whose members differ in seed).
        rank, world: the process's share, as ``DistributedSampler`` strides it.

    ``set_epoch`` / ``set_start`` as on the loop's sampler; ``len()`` counts the batches left.
    """

    def __init__(self, data: DeviceData, *, batch_size: int, seeds: int | Sequence[int], rank: int = 0, world: int = 1):
        self.data = data
        self.batch_size = int(batch_size)
        self.stacked = not isinstance(seeds, (int, np.integer))
        self.seeds = [int(s) for s in seeds] if self.stacked else [int(seeds)]
        if not self.seeds:
            raise ValueError("no seeds")
        self.rank, self.world = int(rank), int(world)
        self.epoch = 0
        self.start = 0
        per_rank = math.ceil(len(data) / self.world)
        if per_rank < self.batch_size:
            raise ValueError(f"the training split has {len(data)} images ({per_rank} per process), fewer than one "
                             f"batch of {self.batch_size}; lower --batch-size or raise --train-fraction")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        self.start = int(start)

    def keys(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, sample seeds) of the current epoch for run seed ``seed``, on the device."""
        idx, sd = epoch_keys(len(self.data), seed=seed, epoch=self.epoch, rank=self.rank, world=self.world,
                             start=self.start)
        dev = self.data.device
        return torch.from_numpy(idx).to(dev), torch.from_numpy(sd).to(dev)

    def __len__(self) -> int:
        return (math.ceil(len(self.data) / self.world) - self.start) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self) * self.batch_size
        keys = [self.keys(s) for s in self.seeds]
        idx = torch.stack([k[0][:n] for k in keys]).view(len(self.seeds), -1, self.batch_size)
        sd = torch.stack([k[1][:n] for k in keys]).view(len(self.seeds), -1, self.batch_size)
        for b in range(idx.shape[1]):
            x, y = self.data.batch(idx[:, b], sd[:, b])  # (S, B, ...)
            yield (x, y) if self.stacked else (x[0], y[0])
