"""Offline datasets, transforms, samplers and Mixup/CutMix for mixerlab training."""
from .datasets import (
    FASHION_MNIST_DIR, STATS, ImageSource, balanced_subset, build_sources, cifar, fashion_mnist,
    image_folder, synthetic, validation_split,
)
from .loader import (
    DataBundle, ResumableSampler, ShardSampler, TransformedDataset, build_data, eval_loader,
    sample_seed, train_loader,
)
from .mixup import build_mixup
from .transforms import FitTo, eval_transform, train_transform

__all__ = [
    "FASHION_MNIST_DIR", "STATS", "ImageSource", "balanced_subset", "build_sources", "cifar",
    "fashion_mnist", "image_folder", "synthetic", "validation_split", "DataBundle", "ResumableSampler", "ShardSampler",
    "TransformedDataset", "build_data", "eval_loader", "sample_seed", "train_loader", "build_mixup",
    "FitTo", "eval_transform", "train_transform",
]
