"""Dense prediction on mixerlab backbones: detection (RetinaNet, Mask R-CNN; torchvision) and
semantic segmentation (Semantic FPN), as the PoolFormer paper's COCO / ADE20K experiments
(arXiv 2111.11418; sail-sg/poolformer ``detection/`` and ``segmentation/``).

    import mixerlab.dense as dense
    det = dense.create_detector("retinanet", backbone="poolformer_s12", num_classes=80)
    seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_s12", num_classes=150)

Imports only the lower layers (models, zoo, factory). See ``docs/dense.md``.
"""
from .backbone import DenseBackbone, SimplePyramid, build_backbone, dense_backbone
from .detection import DETECTORS, BackboneFPN, create_detector, retinanet_anchors, rpn_anchors
from .segmentation import SEGMENTERS, FPNHead, SemanticFPN, create_segmenter

__all__ = ["BackboneFPN", "DETECTORS", "DenseBackbone", "FPNHead", "SEGMENTERS", "SemanticFPN",
           "SimplePyramid", "build_backbone", "create_detector", "create_segmenter", "dense_backbone",
           "retinanet_anchors", "rpn_anchors"]
