"""Dense-prediction metrics: COCO box / mask AP (pycocotools' COCOeval) and mIoU (mmseg's).

* :func:`coco_evaluate` runs COCO's own evaluator (``pycocotools.cocoeval.COCOeval``, the code
  mmdet calls for the COCO APs of the PoolFormer paper) on a ground-truth json and a list of
  detections in COCO's result format. Its size breakdown (AP_s / AP_m / AP_l) uses COCO's area
  thresholds, 32^2 and 96^2 pixels, which are made for images of about 640 x 480. On smaller
  canvases pass ``area_ranges``: :func:`scaled_area_ranges` scales the two thresholds by
  (canvas / 512)^2, i.e. the threshold sides 32 and 96 px become 8 and 24 px on a 128 px canvas
  and 16 and 48 px on 256 px (a 512 px reference image: COCO's are 640 x 480 or so). On the
  default scenes (garments of 13-64 px, their visible masks 70-1,400 px^2) this puts about 3 % of
  the objects in "small", 70 % in "medium" and 27 % in "large" (measured on the 1,000 + 200 scenes
  of the small recipe; COCO val2017: 41 / 34 / 24 %): AP_s is the noisy one.
* :class:`SegMetric` accumulates, per class, the intersection and union of prediction and label
  over the whole dataset (pixels labelled ``ignore_index`` left out), as mmseg's
  ``IoUMetric`` / ``intersect_and_union``: IoU_k = sum_images I_k / sum_images U_k; mIoU is the
  mean over the classes that occur (union > 0; mmseg's ``nanmean``), not a mean of per-image IoUs.

Resampling the test images (the seed-aware intervals of ``mixerlab compare``'s E6) needs the metric
of a *multiset* of images many times over; rerunning COCOeval on each resample is slow. The match
of every detection to the ground truth depends on its own image alone, so COCOeval's ``evaluate``
runs once (:func:`coco_matches`) and :func:`ap_from_matches` repeats only its ``accumulate`` step
with each image counted ``weights[i]`` times: the same precision / recall curve, 101-point
interpolation and mean over IoU thresholds and categories, as cumulative sums of weighted true and
false positives (an image counted k times is k copies of its detections at equal scores, and the
interpolated precision at the end of a run of equal-score copies is what COCOeval reads; the test
checks it against COCOeval on images duplicated by id). :func:`miou_from_counts` is the same for
mIoU, exactly: per-image intersections and unions summed with weights.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

AP_KEYS = ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l")
COCO_AREA = (32 ** 2, 96 ** 2)


def scaled_area_ranges(canvas: int) -> tuple[float, float]:
    """COCO's small / large area thresholds (32^2, 96^2) scaled to a ``canvas``-px image
    (by (canvas / 512)^2); see the module docstring."""
    s = (canvas / 512) ** 2
    return COCO_AREA[0] * s, COCO_AREA[1] * s


def coco_evaluate(gt: dict, detections: list[dict], iou_type: str = "bbox", *,
                  area_ranges: tuple[float, float] | None = None, image_ids=None) -> dict[str, float]:
    """COCO AP of ``detections`` against the ground truth ``gt`` (a COCO instances json, as a
    dict).

    Args:
        gt: the ground truth (``images``, ``annotations``, ``categories``).
        detections: COCO results: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
            (``iou_type="bbox"``) or with ``"segmentation"``: a compressed RLE (``"segm"``).
        iou_type: ``"bbox"`` or ``"segm"``.
        area_ranges: the small / large area thresholds in pixels (default COCO's 32^2, 96^2).
        image_ids: evaluate these images only (default: every image of ``gt``).

    Returns:
        ``{"AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l"}`` as fractions (COCOeval's ``stats[0:6]``;
        -1 where a size class has no object); no detections at all give AP 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}; allowed: 'bbox', 'segm'")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if not detections:
            return {k: 0.0 for k in AP_KEYS}
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(detections)))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        if area_ranges is not None:
            lo, hi = area_ranges
            ev.params.areaRng = [[0, 1e10], [0, lo], [lo, hi], [hi, 1e10]]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(AP_KEYS, ev.stats[:6])}


def detections_to_coco(output: dict, image_id: int, cat_ids, *, label_offset: int = 0,
                       mask_threshold: float = 0.5) -> tuple[list[dict], list[dict]]:
    """One image's torchvision detections (``boxes`` xyxy, ``scores``, ``labels``, optional
    ``masks`` (N, 1, H, W) probabilities) as COCO box results and mask results.

    ``labels - label_offset`` index ``cat_ids`` (Mask R-CNN's labels count the background as 0:
    offset 1)."""
    from .data import encode_mask

    boxes = output["boxes"].detach().cpu().numpy()
    scores = output["scores"].detach().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy() - label_offset
    box_res, mask_res = [], []
    for k in range(len(boxes)):
        if not 0 <= labels[k] < len(cat_ids):
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        base = {"image_id": int(image_id), "category_id": int(cat_ids[labels[k]]), "score": float(scores[k])}
        box_res.append({**base, "bbox": [x0, y0, x1 - x0, y1 - y0]})
        if "masks" in output:
            m = output["masks"][k, 0].detach().cpu().numpy() > mask_threshold
            mask_res.append({**base, "segmentation": encode_mask(m)})
    return box_res, mask_res


class SegMetric:
    """mIoU accumulated over a dataset (see the module docstring).

    ``update(pred, label)`` with (..., H, W) integer class maps; ``compute()`` ->
    ``{"mIoU", "aAcc", "IoU": [per class, nan where a class never occurs]}``."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.intersect = torch.zeros(num_classes, dtype=torch.float64)
        self.union = torch.zeros(num_classes, dtype=torch.float64)
        self.label_area = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        k = self.num_classes
        inter = torch.bincount(pred[pred == label], minlength=k)[:k].double()
        area_pred = torch.bincount(pred, minlength=k)[:k].double()
        area_label = torch.bincount(label, minlength=k)[:k].double()
        self.intersect += inter
        self.union += area_pred + area_label - inter
        self.label_area += area_label

    def compute(self) -> dict:
        iou = torch.where(self.union > 0, self.intersect / self.union.clamp_min(1), torch.tensor(float("nan"),
                                                                                                  dtype=torch.float64))
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if valid.any() else float("nan")
        total = float(self.label_area.sum())
        return {"mIoU": miou, "aAcc": float(self.intersect.sum()) / total if total else float("nan"),
                "IoU": [float(v) for v in iou]}


def coco_matches(gt: dict, detections: list[dict], iou_type: str = "bbox", *,
                 image_ids=None) -> dict:
    """COCOeval's per-image matching of ``detections`` to ``gt`` (area range "all", at most
    ``maxDets[-1]`` = 100 detections per image and category), kept for :func:`ap_from_matches`.

    Returns ``{"image_ids", "iou_thrs", "rec_thrs", "cats": [{"npig": (images,) non-ignored ground
    truths per image, "img": (D,) image position of each detection, "tp", "fp": (T, D) bool}]}``,
    the detections of each category in COCOeval's order (images in id order, then a stable sort by
    descending score)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}; allowed: 'bbox', 'segm'")
    ids = sorted(int(i) for i in (image_ids if image_ids is not None else [im["id"] for im in gt["images"]]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(detections)))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
    p = ev.params
    n_img, n_area, t = len(ids), len(p.areaRng), len(p.iouThrs)
    max_det = p.maxDets[-1]
    cats = []
    for k, _ in enumerate(p.catIds):
        npig = np.zeros(n_img, dtype=np.int64)
        scores, img, tp, fp = [], [], [], []
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0: "all"
            if e is None:
                continue
            npig[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            sc = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            m = np.asarray(e["dtMatches"], dtype=np.float64).reshape(t, -1)[:, :max_det]
            ig = np.asarray(e["dtIgnore"], dtype=bool).reshape(t, -1)[:, :max_det]
            scores.append(sc)
            img.append(np.full(len(sc), i, dtype=np.int64))
            tp.append((m != 0) & ~ig)
            fp.append((m == 0) & ~ig)
        if scores:
            sc = np.concatenate(scores)
            order = np.argsort(-sc, kind="mergesort")  # COCOeval's order
            cat = dict(npig=npig, img=np.concatenate(img)[order], tp=np.concatenate(tp, axis=1)[:, order],
                       fp=np.concatenate(fp, axis=1)[:, order])
        else:
            cat = dict(npig=npig, img=np.zeros(0, dtype=np.int64), tp=np.zeros((t, 0), bool), fp=np.zeros((t, 0), bool))
        cats.append(cat)
    return dict(image_ids=ids, iou_thrs=np.asarray(p.iouThrs), rec_thrs=np.asarray(p.recThrs), cats=cats)


def ap_from_matches(matches: dict, weights=None, *, iou: float | None = None) -> float:
    """COCO AP (a fraction) of the images counted ``weights[i]`` times (default once each) from
    :func:`coco_matches`: COCOeval's ``accumulate`` on the weighted detections (module docstring).
    ``iou``: one IoU threshold (0.5: AP50) instead of the mean over 0.50:0.95. No category with a
    ground truth: -1 (COCOeval's convention)."""
    n = len(matches["image_ids"])
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights: expected {n} values (one per test image), got shape {w.shape}")
    thrs = matches["iou_thrs"]
    rows = range(len(thrs)) if iou is None else [int(np.argmin(np.abs(thrs - iou)))]
    rec_thrs = matches["rec_thrs"]
    qs = []
    for cat in matches["cats"]:
        npig = float(w @ cat["npig"])
        if npig == 0:
            continue
        wd = w[cat["img"]]
        keep = wd > 0
        wd = wd[keep]
        for t in rows:
            q = np.zeros(len(rec_thrs))
            tp = np.cumsum(cat["tp"][t, keep] * wd)
            fp = np.cumsum(cat["fp"][t, keep] * wd)
            if len(tp):
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                inds = np.searchsorted(rc, rec_thrs, side="left")
                ok = inds < len(pr)
                # COCOeval fills the recall thresholds in order until the first one past the curve
                stop = int(np.argmin(ok)) if not ok.all() else len(ok)
                q[:stop] = pr[inds[:stop]]
            qs.append(q)
    return float(np.mean(qs)) if qs else -1.0


def miou_from_counts(intersect, union, weights=None) -> float:
    """mIoU (a fraction) of the images counted ``weights[i]`` times from their per-class pixel
    ``intersect`` and ``union`` counts (images x classes; ``evaluate_dense(..., keep=True)``):
    :class:`SegMetric`'s dataset-level mIoU, exactly, for weights of one."""
    inter = np.asarray(intersect, dtype=np.float64)
    uni = np.asarray(union, dtype=np.float64)
    w = np.ones(len(inter)) if weights is None else np.asarray(weights, dtype=np.float64)
    i, u = w @ inter, w @ uni
    valid = u > 0
    return float(np.mean(i[valid] / u[valid])) if valid.any() else float("nan")


__all__ = ["AP_KEYS", "SegMetric", "ap_from_matches", "coco_evaluate", "coco_matches", "detections_to_coco",
           "miou_from_counts", "scaled_area_ranges"]
