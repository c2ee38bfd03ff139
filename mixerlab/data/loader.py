"""Datasets with per-sample seeded augmentation, resumable distributed samplers, loaders.

Exact resumption (mid-epoch included) needs the augmentation of sample ``i`` in epoch ``e`` not
to depend on which worker or process loads it. The training sampler therefore yields
``(index, seed)`` pairs, with ``seed`` a hash of (run seed, epoch, index), and the dataset seeds
python/numpy/torch RNGs with it before transforming that sample (saving and restoring the
caller's RNG state when it runs in the main process).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from .datasets import STATS, ImageSource, balanced_subset, build_sources, validation_split
from .transforms import ArrayTransform, eval_transform, train_transform


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed from (seed, epoch, index), mixed with the splitmix64 finaliser."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class TransformedDataset(Dataset):
    """``source`` restricted to ``indices`` with ``transform``; items are ``(image, target)``.

    A key is an int (no seeding: eval transforms are deterministic) or ``(int, seed)``.
    ``batch_transform`` (an :class:`~mixerlab.data.transforms.ArrayTransform`, the batched form of
    ``transform``) is used instead of ``transform`` when the source holds its images in one array
    that it fits; the transform's docstring says what it preserves.
    """

    def __init__(self, source: ImageSource, transform: Callable, indices: np.ndarray | None = None,
                 batch_transform: ArrayTransform | None = None):
        self.source = source
        self.transform = transform
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        arr = source.array
        self.batch_transform = (batch_transform if batch_transform is not None and arr is not None
                                and batch_transform.fits(arr.shape[1], arr.shape[2]) else None)

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, key) -> tuple[torch.Tensor, int]:
        if isinstance(key, (tuple, list)):
            i, seed = key
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU generator only: never touches CUDA RNG
        else:
            i = key
        j = int(self.indices[i])
        return self.transform(self.source.load(j)), int(self.source.targets[j])

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list:
        """Batched fetch (used by DataLoader): the batched transform when there is one, else one
        RNG save/restore per batch in the main process."""
        seeded = any(isinstance(k, (tuple, list)) for k in keys)
        if self.batch_transform is not None:
            idx = [int(k[0]) if isinstance(k, (tuple, list)) else int(k) for k in keys]
            seeds = [int(k[1]) for k in keys] if seeded else None
            j = self.indices[idx]
            images = self.batch_transform(torch.from_numpy(self.source.array[j]), seeds)
            return list(zip(images.unbind(0), (int(t) for t in self.source.targets[j])))
        if not seeded or get_worker_info() is not None:
            return [self._load(k) for k in keys]
        state = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            return [self._load(k) for k in keys]
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            torch.default_generator.set_state(state[2])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle with seed + epoch, pad, stride by rank) that yields
    ``(index, sample_seed)`` pairs and can start part-way through an epoch."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Eval sharding without padding (rank r gets r, r + W, ...), so summed metrics are exact."""

    def __init__(self, order: np.ndarray, *, num_replicas: int, rank: int):
        self.indices = [int(i) for i in order[rank::num_replicas]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def unwrap_worker_error(e: BaseException) -> BaseException:
    """The error a DataLoader worker raised, without the worker's traceback.

    torch re-raises a worker's exception in the main process as the same type with a message
    ``"Caught X in DataLoader worker process N.\\nOriginal Traceback ... X: <message>"``; this gives
    back ``X(<message>)``, the one line the single-process path shows. Other errors are returned
    unchanged."""
    text = str(e)
    if "DataLoader worker process" not in text or "Original Traceback" not in text:
        return e
    m = re.search(rf"\n(?:[\w.]+\.)?{re.escape(type(e).__name__)}: (.*)\Z", text, re.S)
    if not m:
        return e
    try:
        return type(e)(m.group(1).strip())
    except Exception:  # an exception type that takes other arguments
        return e


class CleanErrorLoader(DataLoader):
    """A DataLoader whose worker errors read like the single-process ones (:func:`unwrap_worker_error`)."""

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as e:
                clean = unwrap_worker_error(e)
                if clean is e:
                    raise
                raise clean from None
            yield batch


@dataclass
class DataBundle:
    """Datasets of one run; ``*_loader`` methods build loaders for a given rank/world size."""

    train: TransformedDataset  # augmented training split (possibly a fraction)
    train_plain: TransformedDataset  # same images, eval transform (BN calibration)
    val: TransformedDataset  # what the loop evaluates: the held-out validation split, or the test split
    num_classes: int
    in_chans: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test: TransformedDataset | None = None  # the test split (the same object as ``val`` when no validation split is held out)


def build_data(cfg) -> DataBundle:
    """Datasets for a :class:`~mixerlab.engine.TrainConfig` (uses its data and augmentation fields)."""
    train_src, val_src = build_sources(
        cfg.data, cfg.data_dir, size=cfg.synthetic_size, num_classes=cfg.synthetic_classes,
        in_chans=cfg.synthetic_chans, img_size=cfg.img_size,
    )
    mean, std = STATS[cfg.data]
    mean, std = tuple(mean[: train_src.in_chans]), tuple(std[: train_src.in_chans])
    # A fixed, class-balanced validation split held out of the training split (``val_images``),
    # the same for every run whatever its train_fraction; the training fraction is then drawn
    # from the rest. Without one (0), the loop evaluates on the test split as before.
    n_val = getattr(cfg, "val_images", 0)
    rest = len(train_src) - n_val
    if n_val and n_val > rest:
        raise ValueError(f"the validation split of {n_val} images is larger than the training subset it "
                         f"leaves ({rest} of {len(train_src)} images); lower val_images")
    pool, held_out = validation_split(train_src.targets, n_val, cfg.subset_seed)
    subset = pool[balanced_subset(train_src.targets[pool], cfg.train_fraction, cfg.subset_seed)]
    # A class-balanced, fixed part of the test split (quick experiments); None = all of it.
    test_subset = (balanced_subset(val_src.targets, cfg.val_fraction, cfg.subset_seed)
                   if cfg.val_fraction < 1.0 else None)
    t_train = train_transform(
        cfg.img_size, mean, std, crop=cfg.train_crop, hflip=cfg.hflip,
        randaugment=cfg.randaugment, random_erasing=cfg.random_erasing,
        padding=getattr(cfg, "crop_padding", None),
    )
    t_eval = eval_transform(cfg.img_size, mean, std)
    # the batched forms, for sources held in one array (Fashion-MNIST, CIFAR, synthetic)
    b_train = ArrayTransform.for_pipeline(
        cfg.img_size, mean, std, train=True, crop=cfg.train_crop, hflip=cfg.hflip,
        randaugment=cfg.randaugment, random_erasing=cfg.random_erasing,
        padding=getattr(cfg, "crop_padding", None))
    b_eval = ArrayTransform.for_pipeline(cfg.img_size, mean, std, train=False)
    test = TransformedDataset(val_src, t_eval, test_subset, b_eval)
    return DataBundle(
        train=TransformedDataset(train_src, t_train, subset, b_train),
        train_plain=TransformedDataset(train_src, t_eval, subset, b_eval),
        val=TransformedDataset(train_src, t_eval, held_out, b_eval) if n_val else test,
        num_classes=len(train_src.classes),
        in_chans=train_src.in_chans,
        classes=train_src.classes,
        mean=mean,
        std=std,
        test=test,
    )


def train_loader(ds: Dataset, *, batch_size: int, seed: int, rank: int, world: int, workers: int, pin: bool) -> DataLoader:
    """Shuffled, drop-last batches of ``(index, seed)`` keys; call ``loader.batch_sampler.sampler.set_epoch``."""
    sampler = ResumableSampler(ds, num_replicas=world, rank=rank, seed=seed)
    if len(sampler) < batch_size:
        raise ValueError(
            f"the training split has {len(ds)} images ({len(sampler)} per process), fewer than one batch of {batch_size}; "
            "lower --batch-size or raise --train-fraction"
        )
    batches = BatchSampler(sampler, batch_size, drop_last=True)  # constant batch: Mixup needs even sizes
    # Own generator: creating an iterator draws a worker base seed, which must not consume the
    # global torch RNG (that would shift drop-path masks after a mid-epoch resume).
    return CleanErrorLoader(ds, batch_sampler=batches, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(seed))


def eval_loader(
    ds: Dataset, *, batch_size: int, rank: int, world: int, workers: int, pin: bool,
    limit: int | None = None, shuffle_seed: int | None = None,
) -> DataLoader:
    """Unpadded shard of ``ds``: in order, or in a fixed shuffled order (``shuffle_seed``, e.g. for
    BN calibration on a class-sorted folder), truncated to the first ``limit`` images."""
    order = np.arange(len(ds)) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(ds))
    order = order[:limit]
    return CleanErrorLoader(ds, batch_size=batch_size, sampler=ShardSampler(order, num_replicas=world, rank=rank),
                            num_workers=workers, pin_memory=pin, generator=torch.Generator().manual_seed(0))
