"""Training and evaluation of detectors and segmenters: ``train_dense(cfg, out_dir)``,
``evaluate_run(run_dir)``.

A run folder works as ``mixerlab train``'s (``mixerlab.engine``): one writer (the run-folder lock),
``config.yaml``, ``last.safetensors`` (the commit point of every epoch end and of an interrupt:
model, optimiser, RNG and loop state, written atomically by ``mixerlab.engine.checkpoint``),
``best.safetensors`` (a copy), ``metrics.jsonl`` (one record per evaluation, rewritten
atomically) and ``summary.json`` at the end. ``resume=True`` continues from ``last`` at the exact
iteration: the data order and flips of an epoch follow from ``(seed, epoch)``, the RNG is
restored. A checkpoint stores the dense model's spec (task, classes, the backbone's resolved
config, head options), so a run is rebuilt without the weight file it started from.

Schedules (``RECIPES``; iteration-based, as mmcv's runners):

* ``retinanet_1x`` / ``mask_rcnn_1x``: PoolFormer's COCO setup (arXiv 2111.11418, following
  PVT; sail-sg/poolformer ``detection/``): AdamW lr 1e-4, weight decay 1e-4,
  batch 16, 12 epochs, lr x 0.1 after epochs 8 and 11, linear warm-up over 500 iterations from
  0.001 x lr; images resized to 1333 x 800 (keep ratio), flipped with p 0.5.
* ``semantic_fpn_40k``: PoolFormer's ADE20K setup (following PVT; sail-sg/poolformer
  ``segmentation/``): AdamW lr 2e-4,
  weight decay 1e-4, batch 32, 40,000 iterations, poly decay (power 0.9) to 0; 512 x 512 crops of
  images rescaled by 0.5-2.0, flipped with p 0.5.
* ``small``: the Fashion-MNIST scenes on a CPU in minutes: 1,000 + 200 scenes of 128 px, batch 8,
  AdamW lr 1e-3, weight decay 1e-4, 2 epochs (250 iterations), FPN / head 64 channels, GroupNorm in
  the RetinaNet head (torchvision's v2 head: box AP 0.110 after one epoch, 0.015 without) and the
  segmentation head; the detectors: 100 warm-up iterations, step decay after 2/3 and 11/12 of
  the iterations (the 1x schedule's 8 and 11 of 12); the segmenter: 50 warm-up iterations, poly
  decay.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.datasets import STATS
from ..engine.checkpoint import (CheckpointError, atomic_write_text, capture_rng, clean_stale_temps, copy_atomic,
                                 load_checkpoint, restore_rng, save_checkpoint)
from ..engine.runlock import run_folder_lock
from ..version import __version__
from .data import CocoDetection, SegmentationFolder, ade20k, coco2017, detection_collate, hflip_detection
from .detection import DETECTORS, create_detector
from .metrics import SegMetric, coco_evaluate, detections_to_coco, scaled_area_ranges
from .scenes import SceneSpec, fashion_mnist_scenes, scene_paths
from .segmentation import SEGMENTERS, create_segmenter

TASKS = DETECTORS + SEGMENTERS
DATASETS = ("scenes", "coco", "ade20k")
MODEL_FORMAT = "mixerlab-dense-model/1"
PROGRESS_EVERY_S = 10.0
# fields a resume may change (they do not alter what has been trained)
RESUMABLE = ("num_threads", "eval_every", "data_dir", "progress_every_s", "max_eval_images")


@dataclass
class DenseConfig:
    """A dense run. Defaults are the ``small`` recipe's; see ``RECIPES`` and ``docs/dense.md``."""

    task: str = "retinanet"            # retinanet | mask_rcnn | semantic_fpn
    backbone: str = "poolformer_micro"  # a zoo name, run folder, weight file or timm checkpoint (open_model)
    data: str = "scenes"               # scenes | coco | ade20k
    data_dir: str | None = None        # coco / ade20k root; for scenes the Fashion-MNIST folder
    recipe: str = "small"
    scenes: dict = field(default_factory=lambda: {"num_train": 1000, "num_val": 200, "canvas": 128})
    img_size: int = 128                # scenes canvas / detection short side / segmentation crop
    max_size: int = 128                # detection long side
    epochs: int = 2
    iters: int | None = None           # total iterations (overrides epochs)
    batch_size: int = 8
    optimizer: str = "adamw"           # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "step"             # step | poly
    milestones: tuple = (2 / 3, 11 / 12)  # step: fractions of the run after which lr x gamma
    milestone_unit: str = "iter"       # step decay at epoch ends ("epoch", mmdet's 1x) or any iteration
    gamma: float = 0.1
    poly_power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 100
    warmup_ratio: float = 0.001
    clip_grad: float | None = None
    hflip: float = 0.5
    scale_range: tuple = (1.0, 1.0)    # segmentation: random rescale before the crop
    fpn_channels: int = 64
    head_channels: int = 64
    seg_norm: str = "gn"
    head_norm: str | None = None       # RetinaNet head: None (mmdet's RetinaHead) | "gn" (GroupNorm(32))
    eval_every: int = 1                # epochs
    eval_at_start: bool = True         # evaluate the untrained model first (the baseline)
    max_eval_images: int | None = None
    num_threads: int | None = None
    seed: int = 0
    progress_every_s: float = PROGRESS_EVERY_S

    def check(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; allowed: {list(TASKS)}")
        if self.data not in DATASETS:
            raise ValueError(f"data={self.data!r}; allowed: {list(DATASETS)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}; allowed: adamw, sgd")
        if self.schedule not in ("step", "poly"):
            raise ValueError(f"schedule={self.schedule!r}; allowed: step, poly")
        if self.milestone_unit not in ("epoch", "iter"):
            raise ValueError(f"milestone_unit={self.milestone_unit!r}; allowed: epoch, iter")
        if self.seg_norm not in ("bn", "gn"):
            raise ValueError(f"seg_norm={self.seg_norm!r}; allowed: bn, gn")
        if self.data == "ade20k" and self.task != "semantic_fpn" or self.data == "coco" and self.task == "semantic_fpn":
            raise ValueError(f"data={self.data} does not fit task={self.task} (coco: detectors; ade20k: semantic_fpn)")
        for name in ("epochs", "batch_size", "img_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; allowed: >= 1")
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"iters={self.iters}; allowed: >= 1 or null")


RECIPES: dict[str, dict] = {
    "small": {"head_norm": "gn"},
    "retinanet_1x": dict(task="retinanet", data="coco", img_size=800, max_size=1333, epochs=12, iters=None,
                         batch_size=16, optimizer="adamw", lr=1e-4, weight_decay=1e-4, schedule="step",
                         milestones=(8 / 12, 11 / 12), milestone_unit="epoch", warmup_iters=500, head_norm=None, warmup_ratio=0.001, fpn_channels=256,
                         eval_every=1, eval_at_start=False),
    "semantic_fpn_40k": dict(task="semantic_fpn", data="ade20k", img_size=512, iters=40000, batch_size=32,
                             optimizer="adamw", lr=2e-4, weight_decay=1e-4, schedule="poly", poly_power=0.9,
                             min_lr=0.0, warmup_iters=0, scale_range=(0.5, 2.0), fpn_channels=256,
                             head_channels=128, seg_norm="bn", eval_every=10, eval_at_start=False),
}
RECIPES["mask_rcnn_1x"] = {**RECIPES["retinanet_1x"], "task": "mask_rcnn"}


def dense_config(recipe: str = "small", **overrides) -> DenseConfig:
    """The config of ``recipe`` with ``overrides``; the small recipe's segmenter uses poly decay."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; allowed: {sorted(RECIPES)}")
    names = {f.name for f in dataclasses.fields(DenseConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(names)}")
    values = {**RECIPES[recipe], "recipe": recipe}
    if recipe == "small" and overrides.get("task") == "semantic_fpn":
        values.update(schedule="poly", warmup_iters=50)
    values.update(overrides)
    if values.get("task", "retinanet") != "retinanet" and "head_norm" not in overrides:
        values["head_norm"] = None  # a RetinaNet option
    if values.get("data", "scenes") == "scenes":
        scenes = {**DenseConfig().scenes, **(values.get("scenes") or {})}
        if "img_size" in overrides:
            scenes["canvas"] = overrides["img_size"]
        values["scenes"] = scenes
        values["img_size"] = values["max_size"] = scenes["canvas"]
    for key in ("milestones", "scale_range"):
        if key in values:
            values[key] = tuple(values[key])
    cfg = DenseConfig(**values)
    cfg.check()
    return cfg


def config_dict(cfg: DenseConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["milestones"], d["scale_range"] = list(cfg.milestones), list(cfg.scale_range)
    return d


def config_from_dict(d: dict) -> DenseConfig:
    d = dict(d)
    d.pop("kind", None)
    names = {f.name for f in dataclasses.fields(DenseConfig)}
    cfg = DenseConfig(**{k: (tuple(v) if k in ("milestones", "scale_range") else v) for k, v in d.items() if k in names})
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------- data
@dataclass
class DenseData:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    num_classes: int
    cat_ids: list[int]
    classes: tuple
    gt: dict | None          # the val split's COCO json (detection)
    area_ranges: tuple | None
    mean: tuple
    std: tuple


def data_stats(data: str, in_chans: int, backbone_data: str | None = None) -> tuple[tuple, tuple]:
    """Normalisation: that of the data the backbone was trained on when known (a run folder's),
    else the dataset's (scenes: Fashion-MNIST's; COCO / ADE20K: ImageNet's)."""
    key = backbone_data if backbone_data in STATS else ("fashion-mnist" if data == "scenes" else "imagefolder")
    mean, std = STATS[key]
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return tuple(mean), tuple(std)


def build_dense_data(cfg: DenseConfig, in_chans: int, *, backbone_data: str | None = None, log=None) -> DenseData:
    masks = cfg.task == "mask_rcnn"
    seg = cfg.task == "semantic_fpn"
    mean, std = data_stats(cfg.data, in_chans, backbone_data)
    if cfg.data == "scenes":
        root = fashion_mnist_scenes(SceneSpec(**cfg.scenes), data_dir=cfg.data_dir, log=log)
        meta = json.loads((root / "scenes.json").read_text())
        classes = tuple(meta["classes"])
        if seg:
            sets = [SegmentationFolder(scene_paths(root, s)["images"], scene_paths(root, s)["semantic"],
                                       num_classes=len(classes) + 1, in_chans=in_chans) for s in ("train", "val")]
            return DenseData(*sets, len(classes) + 1, list(range(len(classes) + 1)), ("background",) + classes,
                             None, None, mean, std)
        sets = [CocoDetection(scene_paths(root, s)["ann_file"], scene_paths(root, s)["images"], in_chans=in_chans,
                              masks=masks) for s in ("train", "val")]
        area = scaled_area_ranges(cfg.scenes["canvas"])
    elif cfg.data == "coco":
        if cfg.data_dir is None:
            raise ValueError("data=coco needs --data-dir: a COCO 2017 folder (annotations/, train2017/, val2017/)")
        sets = [coco2017(cfg.data_dir, s, in_chans=in_chans, masks=masks) for s in ("train", "val")]
        area = None
    else:
        if cfg.data_dir is None:
            raise ValueError("data=ade20k needs --data-dir: the ADEChallengeData2016 folder")
        sets = [ade20k(cfg.data_dir, s, in_chans=in_chans) for s in ("train", "val")]
        return DenseData(*sets, 150, list(range(150)), tuple(str(k) for k in range(150)), None, None, mean, std)
    train, val = sets
    if train.cat_ids != val.cat_ids:
        raise ValueError(f"{train.ann_file} and {val.ann_file} list different categories "
                         f"({train.cat_ids} / {val.cat_ids})")
    return DenseData(train, val, train.num_classes, train.cat_ids, train.classes, val.dataset, area, mean, std)


def check_categories(gt: dict, where, cat_ids: list[int]) -> None:
    """A json whose categories the model does not have: one ValueError naming the file."""
    extra = sorted({int(c["id"]) for c in gt["categories"]} - set(cat_ids))
    if extra:
        raise ValueError(f"{where}: category id(s) {extra} are not among the model's categories {cat_ids}")


# ----------------------------------------------------------------------------- model
def backbone_in_chans(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "in_chans"):
        return int(cfg.in_chans)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    raise ValueError(f"cannot tell the input channels of backbone {type(model).__name__}")


def build_dense_model(spec: dict, backbone: torch.nn.Module) -> torch.nn.Module:
    """The detector / segmenter of ``spec`` (:func:`model_spec`) on ``backbone``."""
    o = spec["options"]
    if spec["task"] in DETECTORS:
        model = create_detector(spec["task"], backbone=backbone, num_classes=spec["num_classes"],
                                fpn_channels=o["fpn_channels"], min_size=o["img_size"], max_size=o["max_size"],
                                image_mean=list(o["mean"]), image_std=list(o["std"]),
                                **({"head_norm": o["head_norm"]} if o.get("head_norm") else {}))
    else:
        model = create_segmenter("semantic_fpn", backbone=backbone, num_classes=spec["num_classes"],
                                 neck_channels=o["fpn_channels"], head_channels=o["head_channels"], norm=o["seg_norm"])
    d = model.backbone.body.size_divisor if spec["task"] in DETECTORS else model.backbone.size_divisor
    if spec["task"] in SEGMENTERS and o["img_size"] % d:
        raise ValueError(f"input size {o['img_size']} is not divisible by {d}, the coarsest stride of backbone "
                         f"{spec['backbone_name']}; allowed: a multiple of {d} (--img-size)")
    return model


def model_spec(cfg: DenseConfig, data: DenseData, backbone: torch.nn.Module) -> dict:
    return {"format": MODEL_FORMAT, "task": cfg.task, "num_classes": data.num_classes, "cat_ids": data.cat_ids,
            "classes": list(data.classes), "backbone_name": getattr(backbone, "zoo_name", type(backbone).__name__),
            "backbone_config": backbone.cfg.to_dict(),
            "options": {"fpn_channels": cfg.fpn_channels, "head_channels": cfg.head_channels,
                        "seg_norm": cfg.seg_norm, "head_norm": cfg.head_norm if cfg.task == "retinanet" else None,
                        "img_size": cfg.img_size, "max_size": cfg.max_size,
                        "mean": list(data.mean), "std": list(data.std), "in_chans": backbone_in_chans(backbone)}}


def rebuild(spec: dict) -> torch.nn.Module:
    """A dense model from the spec a checkpoint stores (random weights; load them after)."""
    from ..models.config import config_from_dict as model_config_from_dict
    from ..models.factory import build_model

    if not isinstance(spec, dict) or spec.get("format") != MODEL_FORMAT:
        raise CheckpointError("this checkpoint holds no dense model (it was not written by `mixerlab dense train`)")
    from ..models.timm_model import TIMM_CONFIG_FORMAT, TimmModel, TimmModelConfig

    bc = spec["backbone_config"]
    if isinstance(bc, dict) and bc.get("format") == TIMM_CONFIG_FORMAT:  # a timm CNN run (compare's E6 anchor)
        backbone = TimmModel(TimmModelConfig.from_dict(bc))
    else:
        backbone = build_model(model_config_from_dict(bc), name=spec["backbone_name"])
    return build_dense_model(spec, backbone)


def open_dense_run(run: str | os.PathLike, prefer: str = "best") -> tuple[torch.nn.Module, dict, dict]:
    """``(model, spec, config)`` of a dense run folder or checkpoint, weights loaded."""
    from ..engine.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(run, prefer=prefer)
    ckpt = load_checkpoint(path)
    if ckpt.config.get("kind") != "dense":
        raise CheckpointError(f"{path} is not a dense run's checkpoint (written by `mixerlab train`?); "
                              "evaluate it with `mixerlab eval`")
    model = rebuild(ckpt.model_config)
    ckpt.load_model(model)
    return model, ckpt.model_config, ckpt.config


# ----------------------------------------------------------------------------- schedule
def lr_factor(cfg: DenseConfig, it: int, total: int, iters_per_epoch: int) -> float:
    """The learning rate at iteration ``it`` over the base rate: linear warm-up (mmcv's
    ``warmup='linear'``: from ``warmup_ratio``), then step decay at ``milestones`` (fractions of
    the run, applied at epoch boundaries for epoch-based runs) or poly decay to ``min_lr``."""
    if cfg.schedule == "poly":
        f = (1 - it / total) ** cfg.poly_power * (1 - cfg.min_lr / cfg.lr) + cfg.min_lr / cfg.lr
    else:
        if cfg.iters is None and cfg.milestone_unit == "epoch":
            epochs = total // iters_per_epoch
            done = it // iters_per_epoch
            f = cfg.gamma ** sum(done >= round(m * epochs) for m in cfg.milestones)
        else:
            f = cfg.gamma ** sum(it >= round(m * total) for m in cfg.milestones)
    if it < cfg.warmup_iters:
        f *= 1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return f


# ----------------------------------------------------------------------------- batches
def _flip(seed: int, epoch: int, index: int, p: float) -> bool:
    return p > 0 and np.random.default_rng([seed, epoch, index, 7]).random() < p


def seg_train_sample(image, labels, cfg: DenseConfig, epoch: int, index: int, ignore_index: int = 255):
    """Rescale (``scale_range``), random crop / pad to ``img_size`` (pad labels ignored), flip:
    every draw from ``(seed, epoch, index)``."""
    rng = np.random.default_rng([cfg.seed, epoch, index, 11])
    s = cfg.img_size
    lo, hi = cfg.scale_range
    if (lo, hi) != (1.0, 1.0) or image.shape[-2:] != (s, s):
        h, w = image.shape[-2:]
        r = rng.uniform(lo, hi) * s / min(h, w)
        size = (max(1, round(h * r)), max(1, round(w * r)))
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        labels = torch.nn.functional.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
        h, w = size
        ph, pw = max(0, s - h), max(0, s - w)
        image = torch.nn.functional.pad(image, (0, pw, 0, ph))
        labels = torch.nn.functional.pad(labels, (0, pw, 0, ph), value=ignore_index)
        y = int(rng.integers(0, image.shape[-2] - s + 1))
        x = int(rng.integers(0, image.shape[-1] - s + 1))
        image, labels = image[:, y:y + s, x:x + s], labels[y:y + s, x:x + s]
    if _flip(cfg.seed, epoch, index, cfg.hflip):
        image, labels = image.flip(-1), labels.flip(-1)
    return image, labels


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


def train_batch(cfg: DenseConfig, ds, indices, epoch: int, label_offset: int, mean, std):
    if cfg.task in SEGMENTERS:
        pairs = [seg_train_sample(*ds[int(i)], cfg, epoch, int(i)) for i in indices]
        return normalize(torch.stack([p[0] for p in pairs]), mean, std), torch.stack([p[1] for p in pairs])
    images, targets = [], []
    for i in indices:
        image, target = ds[int(i)]
        if _flip(cfg.seed, epoch, int(i), cfg.hflip):
            image, target = hflip_detection(image, target)
        target = {k: v for k, v in target.items() if k != "image_id"}
        target["labels"] = target["labels"] + label_offset
        images.append(image)
        targets.append(target)
    return images, targets


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_dense(model: torch.nn.Module, spec: dict, val, *, gt: dict | None = None, area_ranges=None,
                   batch_size: int = 8, max_images: int | None = None, log: Callable[[str], None] | None = None,
                   every_s: float = PROGRESS_EVERY_S, keep: bool = False) -> dict:
    """Box AP (and mask AP for Mask R-CNN) with COCOeval, or mIoU, of ``model`` on ``val``.

    ``keep``: also return what the metric was computed from, per test image, under ``per_image``
    (what a bootstrap over test images recomputes the metric from): a detector's COCO results
    (``detections``, ``image_ids``), a segmenter's per-class pixel ``intersect`` and ``union`` counts
    (images x classes)."""
    was_training = model.training
    model.eval()
    n = len(val) if max_images is None else min(len(val), max_images)
    last = time.monotonic()
    out: dict = {}
    per: dict = {}
    try:
        if spec["task"] in SEGMENTERS:
            o = spec["options"]
            metric = SegMetric(spec["num_classes"], getattr(val, "ignore_index", 255))
            d = model.backbone.size_divisor
            for i in range(n):
                image, labels = val[i]
                h, w = image.shape[-2:]
                x = torch.nn.functional.pad(image, (0, -w % d, 0, -h % d))  # whole-image inference, padded
                logits = model(normalize(x[None], o["mean"], o["std"]))[..., :h, :w]
                before = (metric.intersect.clone(), metric.union.clone()) if keep else None
                metric.update(logits.argmax(1)[0], labels)
                if keep:
                    per.setdefault("intersect", []).append((metric.intersect - before[0]).long().tolist())
                    per.setdefault("union", []).append((metric.union - before[1]).long().tolist())
                if log and time.monotonic() - last >= every_s:
                    log(f"eval {i + 1}/{n} images")
                    last = time.monotonic()
            r = metric.compute()
            out = {"mIoU": r["mIoU"], "aAcc": r["aAcc"], "IoU": r["IoU"]}
            if keep:
                out["per_image"] = per
        else:
            offset = 1 if spec["task"] == "mask_rcnn" else 0
            boxes, masks, ids = [], [], []
            for start in range(0, n, batch_size):
                items = [val[i] for i in range(start, min(n, start + batch_size))]
                outputs = model([im for im, _ in items])
                for (_, t), o in zip(items, outputs):
                    b, m = detections_to_coco(o, t["image_id"], spec["cat_ids"], label_offset=offset)
                    boxes += b
                    masks += m
                    ids.append(t["image_id"])
                if log and time.monotonic() - last >= every_s:
                    log(f"eval {min(n, start + batch_size)}/{n} images")
                    last = time.monotonic()
            check_categories(gt, getattr(val, "ann_file", "the ground truth"), spec["cat_ids"])
            box = coco_evaluate(gt, boxes, "bbox", area_ranges=area_ranges, image_ids=ids)
            out = {f"box_{k}": v for k, v in box.items()}
            if spec["task"] == "mask_rcnn":
                out.update({f"mask_{k}": v for k, v in coco_evaluate(gt, masks, "segm", area_ranges=area_ranges,
                                                                     image_ids=ids).items()})
            out["detections"] = len(boxes)
            if keep:
                out["per_image"] = {"detections": boxes, "image_ids": ids}
    finally:
        model.train(was_training)
    return out


def main_metric(task: str) -> str:
    return "mIoU" if task in SEGMENTERS else "box_AP"


# ----------------------------------------------------------------------------- the run
RUN_FILES = ("last.safetensors", "best.safetensors", "metrics.jsonl", "summary.json")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the run stopped, ``last`` keeps the previous epoch end."""


def _config_yaml(d: dict) -> str:
    import yaml
    return yaml.safe_dump(d, sort_keys=False)


def _check_folder(run_dir: Path, resume: bool) -> None:
    from ..engine.run_folder import check_folder
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} is a file, not a folder")
    check_folder(run_dir, "dense")  # a classification run, compare, ablate ... folder is refused
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not resume and present:
        raise ValueError(f"run folder {run_dir} already holds a run ({', '.join(present)}); "
                         f"pass --resume {run_dir} to continue it, or choose another --out")
    if resume and not (run_dir / "last.safetensors").exists():
        raise ValueError(f"cannot resume {run_dir}: it holds no last.safetensors")


def stored_config(run_dir: str | os.PathLike) -> DenseConfig:
    """The config of a dense run folder (from ``last.safetensors``'s header)."""
    from ..engine.checkpoint import read_config

    run_dir = Path(run_dir)
    if not (run_dir / "last.safetensors").is_file():
        raise ValueError(f"cannot resume {run_dir}: it holds no last.safetensors")
    d = read_config(run_dir / "last.safetensors")
    if d.get("kind") != "dense":
        raise ValueError(f"{run_dir} is not a dense run (resume it with `mixerlab train --resume`)")
    return config_from_dict(d)


def train_dense(cfg: DenseConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                log: Callable[[str], None] = print, stop_after: int | None = None) -> dict:
    """Train (or, with ``resume``, continue) a dense run in ``out_dir``; returns the summary.

    ``stop_after``: stop (as an interrupt does: ``last`` written, resumable) after that many
    iterations in total (tests). Raises ``ValueError`` for bad input, ``NonFiniteLoss``."""
    cfg.check()
    run_dir = Path(out_dir)
    _check_folder(run_dir, resume)
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):
            raise KeyboardInterrupt
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _term)
    created = not run_dir.exists()
    try:
        with run_folder_lock(run_dir):
            from ..engine.run_folder import claim_folder
            claim_folder(run_dir, "dense")
            clean_stale_temps(run_dir)
            try:
                return _train(cfg, run_dir, resume, log, stop_after)
            except BaseException:
                if created and not any((run_dir / n).exists() for n in RUN_FILES):
                    for name in ("config.yaml", ".lock", ".mixerlab-folder.json"):
                        (run_dir / name).unlink(missing_ok=True)
                    try:
                        run_dir.rmdir()
                    except OSError:
                        pass
                raise
    finally:
        torch.set_num_threads(threads)
        for sig, h in previous.items():
            signal.signal(sig, h)


def _train(cfg: DenseConfig, run_dir: Path, resume: bool, log, stop_after) -> dict:
    from ..engine.factory import open_model

    t_start = time.monotonic()
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir / "last.safetensors")
        stored = config_from_dict(ckpt.config)
        changed = [f.name for f in dataclasses.fields(DenseConfig)
                   if getattr(stored, f.name) != getattr(cfg, f.name) and f.name not in RESUMABLE]
        if changed:
            raise ValueError(f"{run_dir / 'last.safetensors'} was written for another config: "
                             + ", ".join(f"{k}={getattr(stored, k)!r} (now {getattr(cfg, k)!r})" for k in changed))
        spec = ckpt.model_config
        model = rebuild(spec)
        data = build_dense_data(cfg, spec["options"]["in_chans"], log=log)
        data.mean, data.std = tuple(spec["options"]["mean"]), tuple(spec["options"]["std"])
        if list(data.cat_ids) != list(spec["cat_ids"]):  # the data changed under the run (another --data-dir)
            where = getattr(data.train, "ann_file", getattr(data.train, "label_dir", cfg.data_dir))
            raise ValueError(f"{where}: categories {list(data.cat_ids)} are not the model's {list(spec['cat_ids'])}")
        ckpt.load_model(model)
    else:
        from ..engine.factory import ZOO, identify
        zoo = identify(cfg.backbone) == ZOO
        kwargs = {"in_chans": 1 if cfg.data == "scenes" else 3} if zoo else {}
        torch.manual_seed(cfg.seed)  # the heads' (and a zoo backbone's) initialisation
        backbone, src = open_model(cfg.backbone, **kwargs)
        in_chans = backbone_in_chans(backbone)
        data = build_dense_data(cfg, in_chans, backbone_data=src.data, log=log)
        spec = model_spec(cfg, data, backbone)
        model = build_dense_model(spec, backbone)
        log(f"{cfg.task} on {spec['backbone_name']} ({src.kind}, weights: {src.weights}), "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {data.num_classes} classes")
        atomic_write_text(run_dir / "config.yaml", _config_yaml({**config_dict(cfg), "kind": "dense"}))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n_train = len(data.train)
    per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.iters if cfg.iters is not None else cfg.epochs * per_epoch
    label_offset = 1 if cfg.task == "mask_rcnn" else 0
    state = {"iter": 0, "epoch": 0, "records": [], "best": None, "best_epoch": None, "train_time_s": 0.0,
             "initial": None}
    if ckpt is not None:
        ckpt.load_optimizer(opt)
        restore_rng(ckpt.rng())
        state.update({k: ckpt.state[k] for k in state if k in ckpt.state})
        log(f"resumed {run_dir} at iteration {state['iter']}/{total}")
    key = main_metric(cfg.task)
    cfg_d = {**config_dict(cfg), "kind": "dense"}

    def evaluate(tag):
        t0 = time.monotonic()
        r = evaluate_dense(model, spec, data.val, gt=data.gt, area_ranges=data.area_ranges,
                           max_images=cfg.max_eval_images, log=log, every_s=cfg.progress_every_s)
        r = {"epoch": tag, "iter": state["iter"], **r, "eval_time_s": round(time.monotonic() - t0, 2)}
        log("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in r.items() if k != "IoU"))
        return r

    def save(rng=None):
        save_checkpoint(run_dir / "last.safetensors", model=model, config=cfg_d, state=state, model_config=spec,
                        optimizer=opt, rng=rng)

    def write_metrics():
        text = "".join(json.dumps(r) + "\n" for r in state["records"])
        atomic_write_text(run_dir / "metrics.jsonl", text)

    if cfg.eval_at_start and state["iter"] == 0 and not state["records"]:
        state["records"].append(evaluate(0))
        state["initial"] = state["records"][0]
    interrupted = False
    last_line = time.monotonic()
    loss_sum, loss_n, seen, t_run = 0.0, 0, 0, time.monotonic()
    try:
        while state["iter"] < total:
            epoch = state["iter"] // per_epoch
            step_in_epoch = state["iter"] % per_epoch
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
            idx = order[step_in_epoch * cfg.batch_size:(step_in_epoch + 1) * cfg.batch_size]
            f = lr_factor(cfg, state["iter"], total, per_epoch)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            x, y = train_batch(cfg, data.train, idx, epoch, label_offset, data.mean, data.std)
            losses = model(x, y)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"the loss became {loss.item()} at iteration {state['iter']}; "
                                    f"{run_dir / 'last.safetensors'} keeps the last epoch end")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            opt.step()
            state["iter"] += 1
            loss_sum += loss.item()
            loss_n += 1
            seen += len(idx)
            now = time.monotonic()
            if now - last_line >= cfg.progress_every_s or state["iter"] == total:
                ips = seen / max(now - t_run, 1e-9)
                eta = (total - state["iter"]) * cfg.batch_size / max(ips, 1e-9)
                parts = " ".join(f"{k} {v.item():.4f}" for k, v in losses.items())
                log(f"iter {state['iter']}/{total} epoch {epoch + 1} loss {loss_sum / loss_n:.4f} ({parts}) "
                    f"lr {cfg.lr * f:.2e} {ips:.1f} img/s eta {eta:.0f}s")
                last_line = now
            epoch_end = state["iter"] % per_epoch == 0 or state["iter"] == total
            if epoch_end:
                state["epoch"] = math.ceil(state["iter"] / per_epoch)
                state["train_time_s"] += time.monotonic() - t_run
                if state["epoch"] % cfg.eval_every == 0 or state["iter"] == total:
                    r = evaluate(state["epoch"])
                    r["train_loss"] = loss_sum / max(loss_n, 1)
                    state["records"].append(r)
                    is_best = state["best"] is None or r[key] > state["best"]
                    if is_best:
                        state["best"], state["best_epoch"] = r[key], state["epoch"]
                    save()  # the commit point
                    if is_best:
                        copy_atomic(run_dir / "last.safetensors", run_dir / "best.safetensors")
                    write_metrics()
                else:
                    save()
                loss_sum, loss_n = 0.0, 0
                last_line = t_run = time.monotonic()  # evaluation and saving are not training time
                seen = 0
            if stop_after is not None and state["iter"] >= stop_after and state["iter"] < total:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        state["train_time_s"] += time.monotonic() - t_run
        save()
        if state["records"]:
            write_metrics()
        log(f"interrupted at iteration {state['iter']}/{total}; resume with: mixerlab dense train --resume {run_dir}")
    final = state["records"][-1] if state["records"] else {}
    summary = {"task": cfg.task, "backbone": cfg.backbone, "backbone_name": spec["backbone_name"], "data": cfg.data,
               "recipe": cfg.recipe, "iters": state["iter"], "total_iters": total, "epochs": state["epoch"],
               "metric": key, "initial": (state["initial"] or {}).get(key), "final": final.get(key),
               "best": state["best"], "best_epoch": state["best_epoch"],
               "final_metrics": {k: v for k, v in final.items() if k != "IoU"},
               "train_time_s": round(state["train_time_s"], 1), "wall_s": round(time.monotonic() - t_start, 1),
               "run_dir": str(run_dir), "interrupted": interrupted, "mixerlab_version": __version__,
               "num_threads": torch.get_num_threads()}
    if not interrupted:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_run(run: str | os.PathLike, *, ann_file=None, image_dir=None, data_dir=None,
                 max_images: int | None = None, prefer: str = "best", log=print) -> dict:
    """Evaluate a dense run (its val split, or another COCO json + image folder / segmentation
    folder pair) and return the metrics."""
    model, spec, cfg_d = open_dense_run(run, prefer=prefer)
    cfg = config_from_dict(cfg_d)
    if data_dir is not None:
        cfg.data_dir = data_dir
    in_chans = spec["options"]["in_chans"]
    gt, area = None, None
    if ann_file is not None or image_dir is not None:
        if spec["task"] in SEGMENTERS:
            if image_dir is None or ann_file is None:
                raise ValueError("a segmenter evaluates on --images DIR with --labels DIR")
            val = SegmentationFolder(image_dir, ann_file, num_classes=spec["num_classes"], in_chans=in_chans)
        else:
            if image_dir is None or ann_file is None:
                raise ValueError("a detector evaluates on --ann-file JSON with --images DIR")
            val = CocoDetection(ann_file, image_dir, in_chans=in_chans, masks=spec["task"] == "mask_rcnn")
            check_categories(val.dataset, ann_file, spec["cat_ids"])
            gt = val.dataset
            area = scaled_area_ranges(cfg.scenes["canvas"]) if cfg.data == "scenes" else None
    else:
        data = build_dense_data(cfg, in_chans, log=log)
        val, gt, area = data.val, data.gt, data.area_ranges
    return evaluate_dense(model, spec, val, gt=gt, area_ranges=area, max_images=max_images, log=log,
                          every_s=cfg.progress_every_s)


__all__ = ["DATASETS", "DenseConfig", "NonFiniteLoss", "RECIPES", "TASKS", "build_dense_data", "config_from_dict",
           "dense_config", "evaluate_dense", "evaluate_run", "lr_factor", "open_dense_run", "stored_config",
           "train_dense"]
