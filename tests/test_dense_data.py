"""mixerlab.dense data and metrics: the scenes generator against its own layout through the real
loaders, the Fashion-MNIST path on fake IDX files, bad input, COCOeval and mIoU by hand."""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from mixerlab.dense.data import CocoDetection, SegmentationFolder, annotation_mask, encode_mask
from mixerlab.dense.metrics import SegMetric, coco_evaluate, scaled_area_ranges
from mixerlab.dense.scenes import SceneSpec, compose_scene, fashion_mnist_scenes, make_scenes, scene_paths
from mixerlab.dense.train import check_categories, dense_config, lr_factor

CLASSES = ("square", "disc", "bar")


def fake_garments(n: int, seed: int, labels=(0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """28 x 28 grey 'garments': a filled square, a disc or a bar, per label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    images, targets = [], []
    for i in range(n):
        k = labels[i % len(labels)]
        v = int(rng.integers(150, 255))
        shape = [(abs(yy - 14) < 10) & (abs(xx - 14) < 10), (yy - 14) ** 2 + (xx - 14) ** 2 < 110,
                 (abs(yy - 14) < 12) & (abs(xx - 14) < 4)][k % 3]
        images.append(np.where(shape, v, 0).astype(np.uint8))
        targets.append(k)
    return np.stack(images), np.asarray(targets)


SPEC = SceneSpec(num_train=5, num_val=3, canvas=64, min_objects=2, max_objects=5, min_size=0.2, max_size=0.5,
                 max_occlusion=0.3, clutter=2, seed=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes") / "s"
    layout = make_scenes(root, SPEC, {"train": fake_garments(12, 0), "val": fake_garments(9, 1)}, CLASSES)
    return root, layout


def test_loader_round_trip_equals_what_the_generator_placed(scenes):
    root, layout = scenes
    for split in ("train", "val"):
        p = scene_paths(root, split)
        ds = CocoDetection(p["ann_file"], p["images"], in_chans=1, masks=True)
        assert len(ds) == len(layout[split]) and ds.cat_ids == [1, 2, 3]
        for i, objs in enumerate(layout[split]):
            image, t = ds[i]
            assert image.shape == (1, 64, 64)
            assert t["labels"].tolist() == [o["label"] for o in objs]
            boxes = [[o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2], o["bbox"][1] + o["bbox"][3]]
                     for o in objs]
            assert torch.equal(t["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            assert torch.equal(t["masks"].bool(), torch.from_numpy(np.stack([o["mask"] for o in objs])))
            # what is labelled is what is visible: every mask pixel is bright in the image
            assert (image[0][t["masks"].any(0).bool()] > 0).all()
        seg = SegmentationFolder(p["images"], p["semantic"], num_classes=len(CLASSES) + 1, in_chans=1)
        for i, objs in enumerate(layout[split]):
            want = np.zeros((64, 64), np.int64)
            for o in objs:
                want[o["mask"]] = o["label"] + 1
            assert torch.equal(seg[i][1], torch.from_numpy(want))


def test_scene_objects_stay_visible_disjoint_and_inside():
    images, labels = fake_garments(30, 0)
    spec = SceneSpec(canvas=96, min_objects=4, max_objects=8, max_occlusion=0.25)
    counts = []
    for i in range(20):
        canvas, objs = compose_scene(np.random.default_rng([0, 0, i]), images, labels, spec)
        counts.append(len(objs))
        union = np.zeros((96, 96), int)
        for o in objs:
            assert o["mask"].sum() >= (1 - spec.max_occlusion) * o["full_area"] - 1e-9
            union += o["mask"]
            x, y, w, h = o["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
        assert union.max() <= 1  # the visible masks never overlap
    assert max(counts) > 2  # several garments per scene, drawn again when they would hide others


def test_scenes_are_deterministic_from_the_seed(tmp_path):
    objs = {"train": fake_garments(12, 0), "val": fake_garments(9, 1)}
    spec = SceneSpec(num_train=3, num_val=2, canvas=64, seed=5)
    make_scenes(tmp_path / "a", spec, objs, CLASSES)
    make_scenes(tmp_path / "b", spec, objs, CLASSES)
    make_scenes(tmp_path / "c", SceneSpec(num_train=3, num_val=2, canvas=64, seed=6), objs, CLASSES)
    read = lambda r: ((r / "annotations/instances_train.json").read_text(), (r / "images/train/000001.png").read_bytes())
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a") != read(tmp_path / "c")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    with pytest.raises(ValueError, match="already exists"):
        make_scenes(tmp_path / "a", spec, objs, CLASSES)


def _write_idx(path, array: np.ndarray) -> None:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def fake_fashion_mnist(folder) -> None:
    """Four IDX files: training garments labelled 0-4 only, test garments 5-9 only."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, labels, seed in (("train", (0, 1, 2, 3, 4), 0), ("t10k", (5, 6, 7, 8, 9), 1)):
        images, targets = fake_garments(20, seed, labels)
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", targets.astype(np.uint8))


def test_fashion_mnist_scenes_split_objects_cache_and_atomic(tmp_path):
    fake_fashion_mnist(tmp_path / "fm")
    spec = SceneSpec(num_train=4, num_val=3, canvas=64, seed=0)
    root = fashion_mnist_scenes(spec, data_dir=str(tmp_path / "fm"), cache_dir=tmp_path / "cache")
    cats = {s: {a["category_id"] for a in json.loads(scene_paths(root, s)["ann_file"].read_text())["annotations"]}
            for s in ("train", "val")}
    assert cats["train"] <= {1, 2, 3, 4, 5} and cats["val"] <= {6, 7, 8, 9, 10}  # train / test splits kept apart
    stamp = (root / "scenes.json").stat().st_mtime_ns
    again = fashion_mnist_scenes(spec, data_dir=str(tmp_path / "fm"), cache_dir=tmp_path / "cache")
    assert again == root and (root / "scenes.json").stat().st_mtime_ns == stamp  # written once
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]  # no temp folder left
    other = fashion_mnist_scenes(SceneSpec(num_train=4, num_val=3, canvas=64, seed=1), data_dir=str(tmp_path / "fm"),
                                 cache_dir=tmp_path / "cache")
    assert other != root


def test_scene_spec_refuses_bad_values():
    for bad in (dict(canvas=300), dict(canvas=72), dict(min_objects=3, max_objects=2), dict(min_size=0.0)):
        with pytest.raises(ValueError, match="scenes"):
            SceneSpec(**bad).check()


# ----------------------------------------------------------------------------- COCO json: formats and bad input
def _coco(tmp_path, anns, *, images=(("a.png", 20, 30),), categories=(1, 2), write_images=True):
    if write_images:
        for name, h, w in images:
            Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / name)
    data = {"images": [{"id": i + 1, "file_name": n, "height": h, "width": w} for i, (n, h, w) in enumerate(images)],
            "annotations": [{"id": k + 1, "image_id": 1, "iscrowd": 0, **a} for k, a in enumerate(anns)],
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_polygon_and_rle_masks(tmp_path):
    rect = np.zeros((20, 30), np.uint8)
    rect[5:10, 4:12] = 1
    uncompressed = {"size": [20, 30], "counts": []}
    flat, cur, run = rect.flatten(order="F"), 0, 0
    for v in flat:  # COCO's uncompressed RLE: run lengths alternating 0 / 1, column-major
        if v != cur:
            uncompressed["counts"].append(run)
            cur, run = v, 0
        run += 1
    uncompressed["counts"].append(run)
    anns = [{"category_id": 1, "bbox": [4, 5, 8, 5], "segmentation": [[4, 5, 12, 5, 12, 10, 4, 10]]},
            {"category_id": 2, "bbox": [4, 5, 8, 5], "segmentation": encode_mask(rect)},
            {"category_id": 2, "bbox": [4, 5, 8, 5], "segmentation": uncompressed}]
    ds = CocoDetection(_coco(tmp_path, anns), tmp_path, masks=True)
    _, t = ds[0]
    assert t["labels"].tolist() == [0, 1, 1]
    assert torch.equal(t["boxes"][0], torch.tensor([4.0, 5.0, 12.0, 10.0]))
    assert np.array_equal(t["masks"][1].numpy(), rect) and np.array_equal(t["masks"][2].numpy(), rect)
    poly = t["masks"][0].numpy()
    assert abs(int(poly.sum()) - 40) <= 14 and poly[6:9, 5:11].all() and not poly[:4].any()


@pytest.mark.parametrize("case,match", [
    ("missing image", r"image 'a.png' \(id 1\) not found"),
    ("box outside", r"box .* lies outside its image 'a.png'"),
    ("polygon outside", r"polygon mask lies outside its image 'a.png'"),
    ("rle outside", r"RLE mask has size \[40, 30\]"),
    ("unknown category", r"category_id 7, not among the json's categories \[1, 2\]"),
])
def test_bad_coco_json_is_one_clear_error_naming_the_file(tmp_path, case, match):
    ann = {"category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6]]}
    if case == "box outside":
        ann["bbox"] = [25, 1, 10, 5]
    if case == "polygon outside":
        ann["segmentation"] = [[1, 1, 40, 1, 40, 6]]
    if case == "rle outside":
        ann["segmentation"] = encode_mask(np.ones((40, 30), np.uint8))
    if case == "unknown category":
        ann["category_id"] = 7
    path = _coco(tmp_path, [ann], write_images=case != "missing image")
    with pytest.raises(ValueError, match=match) as e:
        CocoDetection(path, tmp_path, masks=True)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_category_the_model_does_not_have(tmp_path):
    path = _coco(tmp_path, [], categories=(1, 2, 9))
    gt = json.loads(path.read_text())
    check_categories(gt, path, [1, 2, 9])
    with pytest.raises(ValueError, match=r"category id\(s\) \[9\] are not among the model's categories \[1, 2\]"):
        check_categories(gt, path, [1, 2])


def test_segmentation_folder_checks_and_reduce_zero_label(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "img" / "x.jpg")
    lab = np.array([[0, 1, 2, 3, 255, 1]] * 4, np.uint8)
    Image.fromarray(lab).save(tmp_path / "lab" / "x.png")
    ds = SegmentationFolder(tmp_path / "img", tmp_path / "lab", num_classes=3, reduce_zero_label=True)
    assert ds[0][1][0].tolist() == [255, 0, 1, 2, 255, 0]
    with pytest.raises(ValueError, match=r"lab/x.png holds class 3; the model has 3 classes"):
        SegmentationFolder(tmp_path / "img", tmp_path / "lab", num_classes=3)[0]
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "lab" / "x.png")
    with pytest.raises(ValueError, match=r"lab/x.png is 6x5, its image x.jpg 6x4"):
        SegmentationFolder(tmp_path / "img", tmp_path / "lab", num_classes=3)[0]
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "img" / "y.png")
    with pytest.raises(ValueError, match=r"img/y.png has no label PNG"):
        SegmentationFolder(tmp_path / "img", tmp_path / "lab", num_classes=3)


# ----------------------------------------------------------------------------- metrics
def _gt_as_detections(gt, segm=False, shift=0.0):
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [x + shift * w, y, w, h]}
        if segm:
            d["segmentation"] = a["segmentation"]
        out.append(d)
    return out


def test_coco_ap_is_one_on_the_ground_truth_and_lower_when_perturbed(scenes):
    root, _ = scenes
    gt = json.loads(scene_paths(root, "train")["ann_file"].read_text())
    area = scaled_area_ranges(64)
    assert coco_evaluate(gt, _gt_as_detections(gt), "bbox", area_ranges=area)["AP"] == pytest.approx(1.0)
    assert coco_evaluate(gt, _gt_as_detections(gt, segm=True), "segm")["AP"] == pytest.approx(1.0)
    shifted = coco_evaluate(gt, _gt_as_detections(gt, shift=0.3), "bbox")
    assert 0.0 <= shifted["AP"] < 0.9 and shifted["AP50"] == pytest.approx(1.0)  # IoU 0.54: only the loose thresholds
    wrong = [dict(d, category_id=d["category_id"] % 3 + 1) for d in _gt_as_detections(gt)]
    assert coco_evaluate(gt, wrong, "bbox")["AP"] < 0.5
    assert coco_evaluate(gt, [], "bbox")["AP"] == 0.0


def test_scaled_area_ranges():
    assert scaled_area_ranges(512) == (32 ** 2, 96 ** 2)
    assert scaled_area_ranges(128) == pytest.approx((8 ** 2, 24 ** 2))


def test_miou_sums_intersections_and_unions_over_the_dataset():
    m = SegMetric(3, ignore_index=255)
    # image 1: label [0 0 1 1], pred [0 1 1 1]; image 2: label [2 2 255 0], pred [2 0 1 0]
    m.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    m.update(torch.tensor([2, 0, 1, 0]), torch.tensor([2, 2, 255, 0]))
    r = m.compute()
    # class 0: I = 1 + 1 = 2, U = (pred 1+2, label 2+1, I 2) -> 3 + 3 - 2 = 4 -> 0.5
    # class 1: I = 2, pred 3 (the ignored pixel does not count), label 2 -> U 3 -> 2/3
    # class 2: I = 1, pred 1, label 2 -> U 2 -> 0.5
    assert r["IoU"] == pytest.approx([0.5, 2 / 3, 0.5])
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert r["aAcc"] == pytest.approx(5 / 7)
    # a per-image average would differ: image 1 alone: IoU 0 = 1/2, 1 = 2/3, class 2 absent
    one = SegMetric(3)
    one.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert np.isnan(one.compute()["IoU"][2]) and one.compute()["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_lr_schedules_by_hand():
    det = dense_config("small", epochs=12, warmup_iters=10, warmup_ratio=0.001)
    assert lr_factor(det, 0, 120, 10) == pytest.approx(0.001)
    assert lr_factor(det, 5, 120, 10) == pytest.approx(1 - 0.5 * 0.999)
    assert lr_factor(det, 79, 120, 10) == 1.0 and lr_factor(det, 80, 120, 10) == pytest.approx(0.1)
    assert lr_factor(det, 110, 120, 10) == pytest.approx(0.01)
    one_x = dense_config("retinanet_1x", warmup_iters=0)
    assert one_x.milestone_unit == "epoch" and (one_x.lr, one_x.weight_decay, one_x.batch_size) == (1e-4, 1e-4, 16)
    assert lr_factor(one_x, 7 * 100 + 99, 1200, 100) == 1.0 and lr_factor(one_x, 800, 1200, 100) == pytest.approx(0.1)
    assert lr_factor(one_x, 1100, 1200, 100) == pytest.approx(0.01)
    seg = dense_config("semantic_fpn_40k")
    assert (seg.iters, seg.lr, seg.batch_size, seg.schedule) == (40000, 2e-4, 32, "poly")
    assert lr_factor(seg, 20000, 40000, 625) == pytest.approx(0.5 ** 0.9)


def test_torchvision_outputs_to_coco_results_mask_rcnn_labels_and_masks(scenes):
    """Mask R-CNN's labels count the background (offset 1); masks are probabilities (N, 1, H, W):
    the ground truth passed through that path scores box and mask AP 1.0."""
    from mixerlab.dense.metrics import detections_to_coco

    root, layout = scenes
    p = scene_paths(root, "val")
    ds = CocoDetection(p["ann_file"], p["images"], in_chans=1, masks=True)
    boxes, masks = [], []
    for i in range(len(ds)):
        t = ds.target(i)
        out = {"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"] + 1,
               "masks": t["masks"][:, None].float() * 0.9}
        b, m = detections_to_coco(out, t["image_id"], ds.cat_ids, label_offset=1)
        assert [d["category_id"] for d in b] == [ds.cat_ids[k] for k in t["labels"].tolist()]
        boxes += b
        masks += m
    assert coco_evaluate(ds.dataset, masks, "segm")["AP"] == pytest.approx(1.0)
    # boxes: xyxy -> xywh with the exclusive right edge of the COCO box
    assert coco_evaluate(ds.dataset, boxes, "bbox")["AP"] == pytest.approx(1.0)
    wrong = [dict(d, category_id=d["category_id"] % 3 + 1) for d in masks]
    assert coco_evaluate(ds.dataset, wrong, "segm")["AP"] < 0.5
