"""Train and eval transforms for small images (PIL in, normalised float tensor out).

Train: fit to ``img_size`` -> crop -> horizontal flip -> RandAugment -> normalise -> random erasing.
Eval: fit to ``img_size`` -> normalise.

Sources and choices:
    * RandAugment: Cubuk et al., arXiv:1909.13719, via ``torchvision.transforms.v2.RandAugment``
      (2 ops, magnitude m). DeiT uses timm's ``rand-m9-mstd0.5-inc1``; timm's increasing
      posterize can ask Pillow >= 10 for 0 bits and raise, so we use torchvision's op set
      (same magnitude, fixed instead of Gaussian-jittered).
    * Random erasing: Zhong et al., arXiv:1708.04896, via ``timm.data.random_erasing.RandomErasing``
      in pixel mode, one box (DeiT: probability 0.25).
    * Fit to size: images smaller than ``img_size`` are zero-padded around the centre (Fashion-MNIST
      28 -> 32 adds a 2-pixel black border, which matches its black background and keeps every
      pixel unresampled); larger images are resized (bicubic) and centre-cropped.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2


class FitTo:
    """Zero-pad an image smaller than ``size`` to ``size`` (centred); resize + centre-crop a larger one."""

    def __init__(self, size: int):
        self.size = size
        self.resize = v2.Compose([
            v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
        ])

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w <= self.size and h <= self.size:
            if w == h == self.size:
                return img
            left, top = (self.size - w) // 2, (self.size - h) // 2
            return v2.functional.pad(img, [left, top, self.size - w - left, self.size - h - top], fill=0)
        return self.resize(img)

    def __repr__(self) -> str:
        return f"FitTo(size={self.size})"


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Deterministic: fit to size and normalise. Output (C, img_size, img_size) float32."""
    return v2.Compose([FitTo(img_size), *_to_tensor(mean, std)])


def train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop: str = "pad-crop",
    hflip: float = 0.5,
    randaugment: int | None = 9,
    random_erasing: float = 0.25,
    padding: int | None = None,
) -> v2.Compose:
    """Random augmentation pipeline; all randomness comes from the global torch/python RNGs.

    Args:
        img_size: output side length.
        mean, std: per-channel normalisation (length = number of channels).
        crop: ``'pad-crop'`` (pad 4 then random crop, the CIFAR recipe), ``'rrc'``
            (RandomResizedCrop scale (0.35, 1), bicubic; for large ImageFolder images) or ``'none'``.
        hflip: horizontal flip probability.
        randaugment: RandAugment magnitude (2 ops), None to disable.
        random_erasing: RandomErasing probability (pixel mode), 0 to disable.
        padding: zero padding of ``'pad-crop'`` (random shifts of up to that many pixels);
            None: ``img_size // 8`` (4 at 32 px, the CIFAR recipe).
    """
    ops: list = []
    if crop == "rrc":
        ops.append(v2.RandomResizedCrop(img_size, scale=(0.35, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
    else:
        ops.append(FitTo(img_size))
        if crop == "pad-crop":
            ops.append(v2.RandomCrop(img_size, padding=img_size // 8 if padding is None else padding, fill=0))
        elif crop != "none":
            raise ValueError(f"unknown crop {crop!r}; choose pad-crop, rrc or none")
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if randaugment is not None:
        fill = [round(255 * m) for m in mean]  # fill exposed areas with the mean colour
        ops.append(v2.RandAugment(num_ops=2, magnitude=randaugment, fill=fill if len(fill) > 1 else fill[0]))
    ops += _to_tensor(mean, std)
    if random_erasing > 0:
        ops.append(RandomErasing(random_erasing, mode="pixel", max_count=1, device="cpu"))
    return v2.Compose(ops)


class ArrayTransform:
    """The batched form of the light pipelines, on uint8 image arrays held in memory.

    For the 28-32 px sets (Fashion-MNIST, CIFAR: every image already in one array) the per-image
    torchvision pipeline costs more than a small model's training step. When a pipeline is only
    fit-to-size by zero padding, a random shift (``pad-crop``), a horizontal flip and the
    normalisation (the ``small`` recipe, and every eval pipeline), this does the same operations on
    a whole batch at once: the same pixels as the per-image pipeline for the same shift and flip
    (``tests/test_data.py`` checks this against torchvision's kernels).

    The shift and flip of a training image come from its per-sample seed (the ``(index, seed)``
    keys of the training sampler), so a run is reproducible and resumes exactly; the global RNGs
    are not read. Keys without a seed (eval) get no shift or flip.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], *,
                 padding: int = 0, hflip: float = 0.0):
        self.size = int(img_size)
        self.padding = int(padding)
        self.hflip = float(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def for_pipeline(cls, img_size: int, mean, std, *, train: bool, crop: str = "pad-crop",
                     hflip: float = 0.5, randaugment: int | None = None, random_erasing: float = 0.0,
                     padding: int | None = None) -> "ArrayTransform | None":
        """The batched equivalent of ``train_transform`` / ``eval_transform`` with these
        arguments, or None when the pipeline has an op without one (RandAugment, random erasing,
        RandomResizedCrop)."""
        if not train:
            return cls(img_size, mean, std)
        if randaugment is not None or random_erasing > 0 or crop not in ("pad-crop", "none"):
            return None
        pad = (img_size // 8 if padding is None else padding) if crop == "pad-crop" else 0
        return cls(img_size, mean, std, padding=pad, hflip=hflip)

    def params(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top, left, flip) per image from its seed: top/left in [0, 2 * padding] of the padded
        image, flip with probability ``hflip`` (12 bits of the seed)."""
        s = torch.tensor([int(v) & 0xFFFFFFFF for v in seeds], dtype=torch.int64)
        # the flip from the high bits of a multiplicative hash (independent of the low bits)
        f = torch.tensor([((int(v) & 0xFFFFFFFF) * 0x9E3779B1 >> 20) & 0xFFF for v in seeds])
        k = 2 * self.padding + 1
        top, left = s % k, (s // k) % k
        flip = f.to(torch.float32) / 4096.0 < self.hflip
        return top, left, flip

    def fits(self, height: int, width: int) -> bool:
        """Whether images of this size take the batched path (no larger than the output)."""
        return height <= self.size and width <= self.size

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """``images``: uint8 (B, H, W) or (B, H, W, C), H, W <= img_size; out: float32
        (B, C, img_size, img_size), normalised."""
        x = images if images.ndim == 4 else images.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        b, _, h, w = x.shape
        s = self.size
        # fit to size (centred zero padding) and the shift padding, in one pad
        left0, top0 = (s - w) // 2, (s - h) // 2
        p = self.padding if seeds is not None else 0
        x = torch.nn.functional.pad(x, (left0 + p, s - w - left0 + p, top0 + p, s - h - top0 + p))
        if seeds is not None and (p > 0 or self.hflip > 0):
            top, left, flip = self.params(seeds)
            ar = torch.arange(s)
            rows = (top[:, None] + ar)  # (B, s)
            cols = left[:, None] + torch.where(flip[:, None], s - 1 - ar, ar)  # (B, s)
            bi = torch.arange(b)[:, None, None]
            x = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return (x.to(torch.float32).div_(255.0) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ArrayTransform(size={self.size}, padding={self.padding}, hflip={self.hflip})"
