"""Offline image datasets: Fashion-MNIST (IDX), CIFAR-10/100 (python pickles), ImageFolder, synthetic.

Nothing here downloads. Each reader returns an :class:`ImageSource` (images by index as PIL
images, integer targets, class names) for one split; ``build_sources`` picks the pair
(train, val) from the dataset name.

Sources:
    * Fashion-MNIST: Xiao, Rasul, Vollgraf, arXiv:1708.07747. IDX file format as described on
      yann.lecun.com/exdb/mnist (big-endian magic: 0x0000 0803 images, 0x0000 0801 labels).
      Debian ships the four ``.gz`` files in ``dataset-fashion-mnist``
      (``/usr/share/datasets/fashion-mnist``). We parse them ourselves because torchvision's
      ``FashionMNIST`` wants an uncompressed ``FashionMNIST/raw`` layout.
    * CIFAR-10/100: Krizhevsky 2009; read with ``torchvision.datasets.CIFAR10/100(download=False)``.
    * ImageFolder: ``torchvision.datasets.ImageFolder`` on ``DIR/train`` and ``DIR/val``.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-dataset normalisation (mean, std) per channel, computed on the training splits.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


@dataclass
class ImageSource:
    """One split: ``load(i)`` gives the i-th image as PIL, ``targets[i]`` its class."""

    load: Callable[[int], Image.Image]
    targets: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    in_chans: int
    array: np.ndarray | None = None  # every image as one uint8 (N, H, W[, C]) array, when in memory

    def __len__(self) -> int:
        return len(self.targets)


def _array_source(images: np.ndarray, targets: Sequence[int], classes: Sequence[str]) -> ImageSource:
    """Images as a uint8 array (N, H, W) or (N, H, W, C)."""
    mode = "L" if images.ndim == 3 else "RGB"
    return ImageSource(
        load=lambda i: Image.fromarray(images[i], mode=mode),
        targets=np.asarray(targets, dtype=np.int64),
        classes=tuple(classes),
        in_chans=1 if images.ndim == 3 else images.shape[-1],
        array=images,
    )


# ----------------------------------------------------------------------------- Fashion-MNIST
def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a uint8 array; ValueError if it is damaged."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"data file {path} is corrupt or truncated: {e}") from None
    if len(raw) < 8:
        raise ValueError(f"data file {path} is corrupt or truncated: {len(raw)} bytes")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expect_magic:
        raise ValueError(f"data file {path} is not an IDX file of the expected kind (magic {magic:#010x})")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"data file {path} is corrupt or truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(folder: str, split: str, _mtime: float) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    images = _read_idx(_find_idx(Path(folder), img_stem), 0x00000803)  # (N, 28, 28)
    labels = _read_idx(_find_idx(Path(folder), lbl_stem), 0x00000801)  # (N,)
    if len(images) != len(labels) or labels.max(initial=0) > 9:
        raise ValueError(f"Fashion-MNIST files in {folder} do not match: {len(images)} images, {len(labels)} labels")
    return images, labels


def fashion_mnist(data_dir: str | None, split: str) -> ImageSource:
    """Fashion-MNIST split ``'train'`` (60k) or ``'val'`` (the 10k test set), 28x28 grey."""
    folder = Path(data_dir or os.environ.get("MIXERLAB_FASHION_MNIST", FASHION_MNIST_DIR))
    missing = [s + ".gz" for s in sum(FASHION_MNIST_FILES.values(), ()) if _find_idx(folder, s) is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}). mixerlab never downloads: "
            "install it with `apt-get install dataset-fashion-mnist` (files go to "
            f"{FASHION_MNIST_DIR}), or pass --data-dir DIR with the four IDX files "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            "t10k-labels-idx1-ubyte.gz (from github.com/zalandoresearch/fashion-mnist)."
        )
    mtime = max(_find_idx(folder, s).stat().st_mtime for s in FASHION_MNIST_FILES[split])
    images, labels = _fashion_mnist_arrays(str(folder), split, mtime)
    return _array_source(images, labels, FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------- CIFAR
def cifar(data_dir: str | None, split: str, num_classes: int) -> ImageSource:
    """CIFAR-10/100 from the python-pickle batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, folder = (CIFAR10, "cifar-10-batches-py") if num_classes == 10 else (CIFAR100, "cifar-100-python")
    if data_dir is None:
        raise FileNotFoundError(f"--data-dir is required for cifar{num_classes}: a folder containing {folder}/")
    root = Path(data_dir)
    if root.name == folder:
        root = root.parent
    if not (root / folder).is_dir():
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found: expected {root / folder}/ (the python version from "
            f"www.cs.toronto.edu/~kriz/cifar.html, extracted). mixerlab never downloads."
        )
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except Exception as e:  # torchvision: RuntimeError "not found or corrupted", or unpickling errors
        raise ValueError(f"CIFAR-{num_classes} files in {root / folder} are missing or corrupt: {e}") from None
    return _array_source(ds.data, ds.targets, ds.classes)  # data: (N, 32, 32, 3) uint8


# ----------------------------------------------------------------------------- ImageFolder
def image_folder(data_dir: str | None, split: str) -> ImageSource:
    """Any ``DIR/train/<class>/*.jpg`` + ``DIR/val/<class>/*.jpg`` tree, loaded as RGB."""
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise FileNotFoundError("--data-dir is required for imagefolder: a folder with train/ and val/")
    folder = Path(data_dir) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageFolder split not found: {folder} (expected DIR/train/<class>/... and DIR/val/<class>/...)")
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as e:
        raise FileNotFoundError(f"ImageFolder {folder}: {e}") from None

    def load(i: int) -> Image.Image:
        path = ds.samples[i][0]
        try:
            return ds.loader(path).convert("RGB")
        except OSError as e:
            raise ValueError(f"image file {path} is corrupt or unreadable: {e}") from None

    return ImageSource(load=load, targets=np.asarray(ds.targets, dtype=np.int64), classes=tuple(ds.classes), in_chans=3)


# ----------------------------------------------------------------------------- synthetic
def synthetic(split: str, *, size: int, num_classes: int, in_chans: int, img_size: int = 32) -> ImageSource:
    """A learnable toy dataset: one smooth random prototype per class plus per-image noise.

    The prototypes come from a fixed seed (the same in every run); the splits use different
    noise. ``size`` images for ``'train'``, ``size // 4`` (at least ``num_classes``) for ``'val'``.
    """
    rng = np.random.default_rng(1234)
    # (K, C, 4, 4) coarse patterns, upsampled to (K, C, img_size, img_size): low-frequency "objects"
    coarse = rng.choice([30.0, 225.0], size=(num_classes, in_chans, 4, 4))  # high-contrast on/off cells
    cell = -(-img_size // 4)  # ceil: any size works; cut back to img_size
    protos = np.kron(coarse, np.ones((1, 1, cell, cell)))[:, :, :img_size, :img_size]
    n = size if split == "train" else max(size // 4, num_classes)
    rng = np.random.default_rng(1 if split == "train" else 2)
    targets = np.arange(n) % num_classes
    rng.shuffle(targets)
    images = protos[targets] + rng.normal(0, 30, size=(n, in_chans, img_size, img_size))
    images = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    if in_chans == 1:
        images = images[..., 0]  # (N, H, W)
    return _array_source(np.ascontiguousarray(images), targets, [f"class{k}" for k in range(num_classes)])


def build_sources(name: str, data_dir: str | None, **synthetic_args) -> tuple[ImageSource, ImageSource]:
    """The (train, val) sources of dataset ``name``; val is the official test split where there is one."""
    if name == "fashion-mnist":
        return fashion_mnist(data_dir, "train"), fashion_mnist(data_dir, "val")
    if name in ("cifar10", "cifar100"):
        k = 10 if name == "cifar10" else 100
        return cifar(data_dir, "train", k), cifar(data_dir, "val", k)
    if name == "imagefolder":
        train, val = image_folder(data_dir, "train"), image_folder(data_dir, "val")
        if train.classes != val.classes:  # labels are class indices: they must mean the same class
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise ValueError(f"ImageFolder {data_dir}: train/ and val/ have different class folders "
                             f"(only in train/: {only_train or 'none'}; only in val/: {only_val or 'none'}); "
                             "both splits need the same class sub-folders, or the validation labels would be wrong")
        return train, val
    if name == "synthetic":
        return synthetic("train", **synthetic_args), synthetic("val", **synthetic_args)
    raise ValueError(f"unknown dataset {name!r}; choose one of fashion-mnist, cifar10, cifar100, imagefolder, synthetic")


def dataset_shape(name: str, data_dir: str | None = None, *, synthetic_classes: int = 10,
                  synthetic_chans: int = 1) -> tuple[int, int]:
    """``(num_classes, in_chans)`` of dataset ``name`` without reading its images (an ImageFolder's
    classes are its ``train/`` sub-folders)."""
    fixed = {"fashion-mnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3)}
    if name in fixed:
        return fixed[name]
    if name == "synthetic":
        return synthetic_classes, synthetic_chans
    if name == "imagefolder":
        root = Path(data_dir or ".") / "train"
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolder {data_dir}: no train/ folder")
        return sum(1 for d in root.iterdir() if d.is_dir()), 3
    raise ValueError(f"unknown dataset {name!r}; choose one of fashion-mnist, cifar10, cifar100, imagefolder, synthetic")


def balanced_subset(targets: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced ``fraction`` of the samples (at least one per class), sorted.

    Every class keeps ``round(fraction * n_c)`` of its samples, drawn with a fixed seed, so a
    sample-efficiency sweep sees nested-in-expectation, reproducible subsets.
    """
    if fraction >= 1.0:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep))


def validation_split(targets: np.ndarray, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, class-balanced validation split carved out of a training split.

    Returns ``(train_idx, val_idx)`` (sorted, disjoint, covering every sample): ``n_val`` images
    for validation, ``n_val // K`` per class and the remainder one each to the first classes (in
    class order), drawn with ``seed``; the rest for training. The split depends only on the
    targets, ``n_val`` and ``seed``, so every run of a comparison holds out the same images.

    Raises ``ValueError`` when a class has too few images to give its share and keep one for
    training.
    """
    targets = np.asarray(targets)
    if n_val <= 0:
        return np.arange(len(targets)), np.arange(0)
    classes = np.unique(targets)
    k = len(classes)
    share = {c: n_val // k + (1 if i < n_val % k else 0) for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    val = []
    for c in classes:
        idx = np.flatnonzero(targets == c)
        if share[c] >= len(idx):
            raise ValueError(f"validation split of {n_val} images needs {share[c]} of class {c}, which has "
                             f"only {len(idx)} training images (one must stay for training)")
        val.append(rng.permutation(idx)[:share[c]])
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(len(targets), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx
