"""Dense prediction on mixerlab backbones: detection (RetinaNet, Mask R-CNN; torchvision) and
semantic segmentation (Semantic FPN), as the PoolFormer paper's COCO / ADE20K experiments
(arXiv 2111.11418; sail-sg/poolformer ``detection/`` and ``segmentation/``).

    import mixerlab.dense as dense
    det = dense.create_detector("retinanet", backbone="poolformer_s12", num_classes=80)
    seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_s12", num_classes=150)

Data (COCO json / ADE20K folders, the offline Fashion-MNIST scenes), metrics (COCOeval AP,
mIoU) and the training engine behind ``mixerlab dense`` are in ``data``, ``scenes``, ``metrics``
and ``train``. Imports only the lower layers (data, models, zoo, factory, engine). See
``docs/dense.md``.
"""
from .backbone import DenseBackbone, SimplePyramid, build_backbone, dense_backbone
from .detection import DETECTORS, BackboneFPN, create_detector, retinanet_anchors, rpn_anchors
from .segmentation import SEGMENTERS, FPNHead, SemanticFPN, create_segmenter
from .data import CocoDetection, SegmentationFolder, ade20k, coco2017
from .metrics import SegMetric, coco_evaluate, scaled_area_ranges
from .scenes import SceneSpec, fashion_mnist_scenes, make_scenes
from .train import RECIPES, DenseConfig, dense_config, evaluate_run, open_dense_run, train_dense

__all__ = ["BackboneFPN", "DETECTORS", "DenseBackbone", "FPNHead", "SEGMENTERS", "SemanticFPN",
           "SimplePyramid", "build_backbone", "create_detector", "create_segmenter", "dense_backbone",
           "retinanet_anchors", "rpn_anchors",
           "CocoDetection", "SegmentationFolder", "ade20k", "coco2017", "SegMetric", "coco_evaluate",
           "scaled_area_ranges", "SceneSpec", "fashion_mnist_scenes", "make_scenes", "RECIPES", "DenseConfig",
           "dense_config", "evaluate_run", "open_dense_run", "train_dense"]
