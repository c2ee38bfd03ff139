"""Dense-prediction datasets: COCO-format instances (boxes, labels, instance masks) and
ADE20K-style segmentation folders (images + label PNGs).

* :class:`CocoDetection` reads an instances json in COCO's format (Lin et al., "Microsoft COCO:
  Common Objects in Context", arXiv 1405.0312; the format of cocodataset.org's
  ``annotations/instances_{train,val}2017.json``) and a folder of images. A real COCO 2017 folder
  works as it is. Instance masks come from polygons or RLE through ``pycocotools.mask``. Crowd
  annotations (``iscrowd=1``) are left out of the training targets (COCOeval ignores them when it
  reads the json); category ids map to contiguous labels ``0..K-1`` in ascending id order.
* :class:`SegmentationFolder` pairs images with same-named label PNGs (ADE20K's
  ``ADEChallengeData2016/{images,annotations}/{training,validation}``; :func:`ade20k` names them).
  ADE20K's label 0 ("other") is ignored and 1..150 become 0..149 (mmseg's ``reduce_zero_label``).

Everything is checked where it is read, and bad input raises one ``ValueError`` naming the file:
a json that names a missing image, a box or mask outside its image, an annotation whose category
is not among the json's categories, a label PNG whose size differs from its image or whose labels
exceed the model's classes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TOLERANCE = 1.0  # pixels a box / polygon may stick out of its image (COCO's float rounding)


def _load_image(path: Path, in_chans: int) -> torch.Tensor:
    """(C, H, W) float in [0, 1]; grey images are repeated to 3 channels and colour images
    converted to grey to fit ``in_chans``."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"image file {path} is corrupt or unreadable: {e}") from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W)
    return t.float().div_(255)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as e:
        raise ValueError(f"image file {path} is corrupt or unreadable: {e}") from None
    return h, w


# ----------------------------------------------------------------------------- COCO
class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format instances json and its image folder.

    ``ds[i]`` is ``(image, target)``: image (C, H, W) float in [0, 1]; target ``boxes`` (N, 4)
    float32 xyxy in pixels, ``labels`` (N,) int64 in ``0..K-1``, ``masks`` (N, H, W) uint8 (with
    ``masks=True``), ``image_id`` (the json's id).

    Args:
        ann_file: the instances json.
        image_dir: the folder its ``file_name`` entries are relative to.
        in_chans: 1 (grey) or 3 (RGB): images are converted on reading.
        masks: decode instance masks (Mask R-CNN); boxes and labels only otherwise.
        check_files: check at construction that every image the json names exists.

    Attributes:
        cat_ids: the json's category ids in label order; ``classes``: their names.
        ids: the image ids, in the json's order.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, in_chans: int = 3,
                 masks: bool = False, check_files: bool = True):
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.in_chans = in_chans
        self.masks = masks
        data = read_coco_json(self.ann_file)
        self.dataset = data
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [int(c["id"]) for c in cats]
        self.classes = tuple(str(c.get("name", c["id"])) for c in cats)
        self.cat_to_label = {cid: k for k, cid in enumerate(self.cat_ids)}
        self.images = {int(im["id"]): im for im in data["images"]}
        self.ids = [int(im["id"]) for im in data["images"]]
        self.anns: dict[int, list[dict]] = {i: [] for i in self.ids}
        for a in data["annotations"]:
            self._check_annotation(a)
            self.anns[int(a["image_id"])].append(a)
        if check_files:
            for im in data["images"]:
                path = self.image_dir / im["file_name"]
                if not path.is_file():
                    raise ValueError(f"{self.ann_file}: image {im['file_name']!r} (id {im['id']}) not found "
                                     f"in {self.image_dir}")

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _check_annotation(self, a: dict) -> None:
        where = f"{self.ann_file}: annotation {a.get('id')!r}"
        try:
            image = self.images[int(a["image_id"])]
        except KeyError:
            raise ValueError(f"{where} names image id {a.get('image_id')!r}, which the json does not list") from None
        if int(a.get("category_id", -1)) not in self.cat_to_label:
            raise ValueError(f"{where} has category_id {a.get('category_id')!r}, not among the json's "
                             f"categories {self.cat_ids}")
        h, w = int(image["height"]), int(image["width"])
        x, y, bw, bh = (float(v) for v in a["bbox"])
        if x < -TOLERANCE or y < -TOLERANCE or x + bw > w + TOLERANCE or y + bh > h + TOLERANCE or bw < 0 or bh < 0:
            raise ValueError(f"{where}: box [x, y, w, h] = {a['bbox']} lies outside its image "
                             f"{image['file_name']!r} ({w}x{h})")
        seg = a.get("segmentation")
        if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]
            for poly in seg:
                xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
                if len(xs) and (xs.min() < -TOLERANCE or ys.min() < -TOLERANCE or xs.max() > w + TOLERANCE
                                or ys.max() > h + TOLERANCE):
                    raise ValueError(f"{where}: its polygon mask lies outside its image {image['file_name']!r} "
                                     f"({w}x{h})")
        elif isinstance(seg, dict):  # RLE {"size": [h, w], "counts": ...}
            if [int(v) for v in seg.get("size", [])] != [h, w]:
                raise ValueError(f"{where}: its RLE mask has size {seg.get('size')} (h, w), not its image "
                                 f"{image['file_name']!r}'s [{h}, {w}]")

    def label_of(self, category_id: int) -> int:
        return self.cat_to_label[int(category_id)]

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> dict:
        """The target of image ``index`` without reading the image (sizes from the json)."""
        image_id = self.ids[index]
        info = self.images[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns = [a for a in self.anns[image_id] if not a.get("iscrowd", 0)]
        boxes, labels, masks = [], [], []
        for a in anns:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw < 1 or bh < 1:  # degenerate boxes are dropped, as mmdet's CocoDataset does
                continue
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)])
            labels.append(self.cat_to_label[int(a["category_id"])])
            if self.masks:
                masks.append(annotation_mask(a, h, w))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64), "image_id": image_id}
        if self.masks:
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks else
                               torch.zeros((0, h, w), dtype=torch.uint8))
        return target

    def __getitem__(self, index: int):
        info = self.images[self.ids[index]]
        path = self.image_dir / info["file_name"]
        image = _load_image(path, self.in_chans)
        if tuple(image.shape[-2:]) != (int(info["height"]), int(info["width"])):
            raise ValueError(f"{self.ann_file}: image {info['file_name']!r} is {image.shape[-1]}x{image.shape[-2]}, "
                             f"the json says {info['width']}x{info['height']}")
        return image, self.target(index)


def read_coco_json(path: str | os.PathLike) -> dict:
    """A COCO instances json, checked for its three lists (``ValueError`` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotation file {path} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"annotation file {path} is not readable json: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k) if isinstance(data, dict) else None, list)]
    if missing:
        raise ValueError(f"annotation file {path} is not a COCO instances json (no {', '.join(missing)} list)")
    return data


def annotation_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """The (h, w) uint8 mask of a COCO annotation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if seg else None
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    if rle is None:
        return np.zeros((h, w), np.uint8)
    return mask_utils.decode(rle).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a (h, w) binary mask, json-ready (``counts`` a str)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------- segmentation folders
class SegmentationFolder(torch.utils.data.Dataset):
    """Images and same-named label PNGs (one class index per pixel).

    ``ds[i]`` is ``(image (C, H, W) float in [0, 1], labels (H, W) int64)``; ``ignore_index``
    marks pixels without a label.

    Args:
        image_dir: the images (``.jpg``, ``.png``, ...).
        label_dir: one PNG per image, same stem.
        num_classes: labels must lie in ``0..num_classes-1`` (or be ``ignore_index``) after the
            zero-label reduction.
        reduce_zero_label: ADE20K's convention: 0 is "other" (ignored), 1..K become 0..K-1.
        in_chans: 1 or 3, as :class:`CocoDetection`.
    """

    def __init__(self, image_dir: str | os.PathLike, label_dir: str | os.PathLike, *, num_classes: int,
                 reduce_zero_label: bool = False, ignore_index: int = 255, in_chans: int = 3):
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise ValueError(f"segmentation folder {d} not found")
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.in_chans = in_chans
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise ValueError(f"segmentation folder {self.image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.labels = []
        for p in self.images:
            lab = self.label_dir / (p.stem + ".png")
            if not lab.is_file():
                raise ValueError(f"image {p} has no label PNG {lab}")
            self.labels.append(lab)

    def __len__(self) -> int:
        return len(self.images)

    def read_labels(self, index: int) -> torch.Tensor:
        path = self.labels[index]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except OSError as e:
            raise ValueError(f"label file {path} is corrupt or unreadable: {e}") from None
        if arr.ndim != 2:
            raise ValueError(f"label file {path} has {arr.shape[-1]} channels; allowed: one class index per pixel")
        lab = arr.astype(np.int64)
        if self.reduce_zero_label:
            lab = np.where(lab == 0, self.ignore_index, lab - 1)
            lab[lab == self.ignore_index - 1] = self.ignore_index  # 255 stays unlabelled
        bad = (lab != self.ignore_index) & ((lab < 0) | (lab >= self.num_classes))
        if bad.any():
            raise ValueError(f"label file {path} holds class {int(lab[bad].max())}; the model has "
                             f"{self.num_classes} classes (0..{self.num_classes - 1}, {self.ignore_index} = ignore)")
        return torch.from_numpy(lab)

    def __getitem__(self, index: int):
        image = _load_image(self.images[index], self.in_chans)
        labels = self.read_labels(index)
        if tuple(labels.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"label file {self.labels[index]} is {labels.shape[1]}x{labels.shape[0]}, its image "
                             f"{self.images[index].name} {image.shape[-1]}x{image.shape[-2]}")
        return image, labels


def ade20k(root: str | os.PathLike, split: str, *, in_chans: int = 3) -> SegmentationFolder:
    """ADE20K (SceneParsing, ``ADEChallengeData2016``): ``split`` ``'train'`` or ``'val'``; 150
    classes, label 0 ignored."""
    sub = {"train": "training", "val": "validation"}[split]
    root = Path(root)
    return SegmentationFolder(root / "images" / sub, root / "annotations" / sub, num_classes=150,
                              reduce_zero_label=True, in_chans=in_chans)


def coco2017(root: str | os.PathLike, split: str, *, in_chans: int = 3, masks: bool = False) -> CocoDetection:
    """A COCO 2017 folder: ``annotations/instances_{split}2017.json`` and ``{split}2017/``."""
    root = Path(root)
    return CocoDetection(root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017",
                         in_chans=in_chans, masks=masks)


# ----------------------------------------------------------------------------- batches
def hflip_detection(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its boxes (and masks) left-right."""
    w = image.shape[-1]
    t = dict(target)
    b = target["boxes"].clone()
    b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    t["boxes"] = b
    if "masks" in t:
        t["masks"] = t["masks"].flip(-1)
    return image.flip(-1), t


def detection_collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


__all__ = ["CocoDetection", "SegmentationFolder", "ade20k", "annotation_mask", "coco2017", "detection_collate",
           "encode_mask", "hflip_detection", "read_coco_json"]
