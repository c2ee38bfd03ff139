"""Fashion-MNIST scenes: an offline detection / segmentation dataset written in COCO's format.

Each scene is a grey canvas (128 px by default, up to 256) holding 2-8 Fashion-MNIST garments
(Xiao, Rasul, Vollgraf, arXiv 1708.07747) at log-uniform sizes, over unlabelled clutter:

* a garment is its 28 x 28 image resized (bilinear) to s x s, s log-uniform in
  [``min_size``, ``max_size``] x canvas, placed wholly inside the canvas; its mask is its pixels
  above ``threshold`` (only those are painted, so what is visible is what is labelled);
* later garments lie on top: the parts of earlier masks they cover are removed, and a placement
  that would hide more than ``max_occlusion`` of an earlier garment's mask is drawn again (up to
  ``TRIES`` times, then the garment is left out), so every object keeps most of itself visible;
* clutter: up to ``clutter`` dimmed, cropped and rotated garment pieces under the garments,
  labelled nothing (a detector must learn garments, not "anything bright");
* train scenes draw garments and clutter from Fashion-MNIST's training split, val scenes from its
  test split; everything follows from ``seed`` (each image from its own generator seeded
  ``(seed, split, index)``).

Written once per spec (hashed into the folder name) under ``$MIXERLAB_CACHE/scenes`` (default
``~/.cache/mixerlab/scenes``), atomically: into a temporary sibling folder, renamed into place when
complete. The layout is that of the real loaders (``mixerlab.dense.data``)::

    images/{train,val}/000000.png            grey PNGs
    annotations/instances_{train,val}.json   COCO instances: boxes, compressed-RLE masks, areas
    semantic/{train,val}/000000.png          class per pixel: 0 background, 1..10 the garments
    scenes.json                              the spec, counts, class names
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import encode_mask

SPLITS = ("train", "val")
TRIES = 20
MAX_CANVAS = 256
FORMAT = "mixerlab-scenes/1"


@dataclass(frozen=True)
class SceneSpec:
    """What a scenes folder holds (all of it goes into the cache key).

    Attributes:
        num_train / num_val: scenes per split.
        canvas: side in pixels (a multiple of 16 from 32 to 256; the paper backbones need multiples
            of 32).
        min_objects / max_objects: garments per scene (uniform).
        min_size / max_size: garment side as a fraction of the canvas (log-uniform).
        max_occlusion: the largest fraction of a garment's mask later garments may hide.
        threshold: grey level above which a garment pixel belongs to its mask (0-255).
        clutter: the most unlabelled pieces per scene (uniform from 0).
        seed: the generator seed.
    """

    num_train: int = 2000
    num_val: int = 300
    canvas: int = 128
    min_objects: int = 2
    max_objects: int = 8
    min_size: float = 0.1
    max_size: float = 0.5
    max_occlusion: float = 0.3
    threshold: int = 40
    clutter: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.canvas % 16 or not 32 <= self.canvas <= MAX_CANVAS:
            raise ValueError(f"scenes canvas {self.canvas}; allowed: a multiple of 16 from 32 to {MAX_CANVAS}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"scenes objects {self.min_objects}..{self.max_objects}; allowed: 1 <= min <= max")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(f"scenes sizes {self.min_size}..{self.max_size}; allowed: 0 < min <= max <= 1 (of the canvas)")
        if not 0 <= self.max_occlusion < 1 or not 0 <= self.threshold < 255:
            raise ValueError("scenes max_occlusion must lie in [0, 1) and threshold in [0, 255)")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("scenes need at least one image per split")

    def key(self, source: str = "") -> str:
        text = json.dumps({"format": FORMAT, "spec": dataclasses.asdict(self), "source": source}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _garment(image: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.uint8)


def compose_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, spec: SceneSpec):
    """One scene: ``(canvas (H, W) uint8, objects)``, each object ``{"label", "mask" (H, W) bool
    (visible part), "full_area" (its mask's pixels before occlusion), "bbox" [x, y, w, h] of the
    visible mask}``, in drawing order."""
    c = spec.canvas
    canvas = np.zeros((c, c), np.uint8)
    for _ in range(int(rng.integers(0, spec.clutter + 1))):  # unlabelled clutter, under the garments
        g = images[int(rng.integers(len(images)))]
        k = int(rng.integers(10, 19))  # a k x k piece of the 28 x 28 garment
        y0, x0 = (int(v) for v in rng.integers(0, 28 - k + 1, size=2))
        side = int(rng.integers(max(4, c // 20), max(5, c // 6)))
        piece = np.rot90(_garment(np.ascontiguousarray(g[y0:y0 + k, x0:x0 + k]), side), int(rng.integers(4)))
        piece = (piece * rng.uniform(0.3, 0.7)).astype(np.uint8)
        y, x = (int(v) for v in rng.integers(0, c - side + 1, size=2))
        np.maximum(canvas[y:y + side, x:x + side], piece, out=canvas[y:y + side, x:x + side])
    objects: list[dict] = []
    full_area: list[int] = []
    lo, hi = np.log(spec.min_size * c), np.log(spec.max_size * c)
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        idx = int(rng.integers(len(images)))
        for _try in range(TRIES):
            side = int(round(np.exp(rng.uniform(lo, hi))))
            side = min(max(side, 4), c)
            y, x = (int(v) for v in rng.integers(0, c - side + 1, size=2))
            g = _garment(images[idx], side)
            mask = np.zeros((c, c), bool)
            mask[y:y + side, x:x + side] = g > spec.threshold
            if mask.sum() < 4:
                continue
            if all((o["mask"] & ~mask).sum() >= (1 - spec.max_occlusion) * a for o, a in zip(objects, full_area)):
                break
        else:
            continue  # no placement kept the others visible enough: leave this garment out
        for o in objects:
            o["mask"] &= ~mask
        painted = np.zeros((c, c), np.uint8)
        painted[y:y + side, x:x + side] = g
        canvas[mask] = painted[mask]
        objects.append({"label": int(labels[idx]), "mask": mask, "full_area": int(mask.sum())})
        full_area.append(int(mask.sum()))
    for o in objects:
        ys, xs = np.nonzero(o["mask"])
        o["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return canvas, objects


def make_scenes(root: str | os.PathLike, spec: SceneSpec, objects: dict, classes, *, log=None) -> dict:
    """Write a scenes folder at ``root`` (which must not exist) atomically.

    Args:
        root: the folder to create.
        spec: the :class:`SceneSpec`.
        objects: ``{"train": (images (N, h, w) uint8, labels (N,)), "val": (...)}``: the garments
            each split's scenes draw from.
        classes: the class names (category ids are 1..K in this order).
        log: called with a progress line now and then.

    Returns:
        ``{split: [[object, ...] per scene]}`` (see :func:`compose_scene`): what was placed.
    """
    spec.check()
    root = Path(root)
    if root.exists():
        raise ValueError(f"scenes folder {root} already exists")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    layout: dict[str, list] = {}
    try:
        for si, split in enumerate(SPLITS):
            images, labels = objects[split]
            images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.int64)
            if images.ndim != 3 or len(images) != len(labels) or not len(images):
                raise ValueError(f"scenes: the {split} garments must be a non-empty (N, h, w) uint8 array with N labels")
            n = spec.num_train if split == "train" else spec.num_val
            for sub in ("images", "semantic"):
                (tmp / sub / split).mkdir(parents=True)
            (tmp / "annotations").mkdir(exist_ok=True)
            coco = {"info": {"description": f"Fashion-MNIST scenes ({split})", "format": FORMAT},
                    "images": [], "annotations": [],
                    "categories": [{"id": k + 1, "name": name} for k, name in enumerate(classes)]}
            layout[split] = []
            for i in range(n):
                rng = np.random.default_rng([spec.seed, si, i])
                canvas, objs = compose_scene(rng, images, labels, spec)
                name = f"{i:06d}.png"
                Image.fromarray(canvas).save(tmp / "images" / split / name)
                semantic = np.zeros_like(canvas)
                for o in objs:
                    semantic[o["mask"]] = o["label"] + 1
                Image.fromarray(semantic).save(tmp / "semantic" / split / name)
                coco["images"].append({"id": i + 1, "file_name": name, "width": spec.canvas, "height": spec.canvas})
                for o in objs:
                    coco["annotations"].append({
                        "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": o["label"] + 1,
                        "bbox": o["bbox"], "area": int(o["mask"].sum()), "iscrowd": 0,
                        "segmentation": encode_mask(o["mask"])})
                layout[split].append(objs)
                if log and (i + 1) % 500 == 0:
                    log(f"scenes: {split} {i + 1}/{n}")
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (tmp / "scenes.json").write_text(json.dumps({
            "format": FORMAT, "spec": dataclasses.asdict(spec), "classes": list(classes),
            "num_images": {s: len(layout[s]) for s in SPLITS},
            "num_objects": {s: sum(len(o) for o in layout[s]) for s in SPLITS}}, indent=1))
        os.rename(tmp, root)  # the folder appears complete, or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout


def default_cache_dir() -> Path:
    return Path(os.environ.get("MIXERLAB_CACHE") or Path.home() / ".cache" / "mixerlab") / "scenes"


def fashion_mnist_scenes(spec: SceneSpec = SceneSpec(), *, data_dir: str | None = None,
                         cache_dir: str | os.PathLike | None = None, log=None) -> Path:
    """The scenes folder of ``spec`` made from the Fashion-MNIST files (the Debian package's
    ``/usr/share/datasets/fashion-mnist`` unless ``data_dir``), generated on first use and
    cached; returns its path. Two processes generating at once both succeed: the second rename
    loses and its copy is dropped."""
    from ..data.datasets import FASHION_MNIST_CLASSES, fashion_mnist

    spec.check()
    train, val = fashion_mnist(data_dir, "train"), fashion_mnist(data_dir, "val")
    source = f"fashion-mnist:{len(train)}:{len(val)}"
    root = Path(cache_dir or default_cache_dir()) / f"fmnist-scenes-{spec.key(source)}"
    if (root / "scenes.json").is_file():
        return root
    if log:
        log(f"scenes: writing {spec.num_train} + {spec.num_val} scenes to {root} (once)")
    try:
        make_scenes(root, spec, {"train": (train.array, train.targets), "val": (val.array, val.targets)},
                    FASHION_MNIST_CLASSES, log=log)
    except (OSError, ValueError):
        if not (root / "scenes.json").is_file():  # another process renamed its copy first: use it
            raise
    return root


def scene_paths(root: str | os.PathLike, split: str) -> dict[str, Path]:
    """Where a scenes folder keeps ``split``: ``ann_file``, ``images``, ``semantic``."""
    root = Path(root)
    return {"ann_file": root / "annotations" / f"instances_{split}.json", "images": root / "images" / split,
            "semantic": root / "semantic" / split}


__all__ = ["SceneSpec", "compose_scene", "default_cache_dir", "fashion_mnist_scenes", "make_scenes", "scene_paths"]
