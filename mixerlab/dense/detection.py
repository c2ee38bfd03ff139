"""Detectors on mixerlab backbones, built from torchvision's detection models.

As in the PoolFormer paper's COCO experiments (Yu et al., arXiv 2111.11418, Tables 4-5; code
sail-sg/poolformer ``detection/``, on mmdetection 2.x):

* RetinaNet 1x (Lin et al., arXiv 1708.02002): an FPN (256 channels) on stages 2-4 (strides 8, 16,
  32; mmdet ``start_level=1``), P6 and P7 by 3x3 / stride-2 convs from C5, the last backbone map
  (mmdet ``add_extra_convs='on_input'``; a ReLU before P7), torchvision's ``RetinaNetHead`` (four 3x3
  convs per branch, no norm by default, as mmdet's ``RetinaHead``) and anchors as mmdet's RetinaNet:
  octave base scale 4, 3 scales per octave (4 * 2^(i/3) * stride), ratios 0.5 / 1 / 2, on the five
  levels (strides 8-128 for the paper models).
* Mask R-CNN 1x (He et al., arXiv 1703.06870): an FPN on all four stages plus a max-pooled fifth
  level, torchvision's RPN, box and mask heads, anchors of size 8 x stride, ratios 0.5 / 1 / 2
  (mmdet's ``scales=[8]``).

``num_classes`` counts the object classes (80 for COCO); Mask R-CNN's torchvision heads get one
more, the background. The backbone is a ``DenseBackbone``: the stage maps, each through
PoolFormer's per-level GroupNorm (the classifier head and final norm dropped). Counting
conventions: see ``docs/dense.md``.
"""
from __future__ import annotations

import os

from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .backbone import DenseBackbone, build_backbone

DETECTORS = ("mask_rcnn", "retinanet")


class P6P7FromC5(LastLevelP6P7):
    """torchvision's P6/P7 block, always from the last *backbone* map C5 (mmdet's
    ``add_extra_convs='on_input'``): torchvision switches to P5 when C5 has the FPN's width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels)
        self.use_P5 = False


class BackboneFPN(nn.Module):
    """A ``DenseBackbone`` followed by torchvision's ``FeaturePyramidNetwork``: the backbone
    torchvision's detectors take (``out_channels`` attribute, ``OrderedDict`` of maps)."""

    def __init__(self, body: DenseBackbone, out_channels: int = 256, extra_blocks=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        n_extra = 0 if extra_blocks is None else (2 if isinstance(extra_blocks, LastLevelP6P7) else 1)
        self.strides = list(body.strides) + [body.strides[-1] * 2 ** (k + 1) for k in range(n_extra)]

    def forward(self, x):
        return self.fpn(self.body(x))


def retinanet_anchors(strides) -> AnchorGenerator:
    """mmdet's RetinaNet anchors: octave base scale 4, 3 scales per octave, ratios 0.5 / 1 / 2."""
    sizes = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def rpn_anchors(strides) -> AnchorGenerator:
    """mmdet's Mask R-CNN RPN anchors: one scale of 8 x stride, ratios 0.5 / 1 / 2."""
    return AnchorGenerator(tuple((8.0 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))


def _check_flexible(body: DenseBackbone, name) -> None:
    if body.fixed_input_size:
        raise ValueError(f"backbone {name!r} accepts only its build size {tuple(body.body.img_size)} "
                         f"(a token mixer sized to the token count: {body.body.fixed_mixer_names()}); "
                         "allowed: a backbone that runs at any size (detection resizes the images)")


def create_detector(name: str, backbone: str | nn.Module = "poolformer_s12", num_classes: int = 80, *,
                    backbone_weights: str | os.PathLike | None = None, backbone_kwargs: dict | None = None,
                    fpn_channels: int = 256, head_norm: str | None = None, **kw) -> nn.Module:
    """A torchvision detector on a mixerlab backbone.

    Args:
        name: ``"retinanet"`` or ``"mask_rcnn"``.
        backbone: a mixerlab zoo name (hierarchical or isotropic), a classification run folder, a
            training checkpoint, a mixerlab weight file, a timm checkpoint (``build_backbone``) or a
            built mixerlab model.
        num_classes: object classes (80 for COCO), background not counted.
        backbone_weights: a weight file for the backbone (mixerlab or timm; ``build_backbone``).
        backbone_kwargs: ``create_model`` overrides for the backbone (``drop_path_rate=0.1``).
        fpn_channels: the FPN width (256).
        head_norm: RetinaNet only: None (mmdet's RetinaHead, the paper's) or ``"gn"``
            (GroupNorm(32) in the head convs, torchvision's RetinaNet v2).
        **kw: options of torchvision's ``RetinaNet`` / ``MaskRCNN`` (``min_size``, ``max_size``,
            score and NMS thresholds...). Defaults: 800 / 1333 px (mmdet's 1333 x 800), images
            padded to the backbone's size divisor (32), 100 detections per image.

    Raises:
        ValueError: an unknown detector name, an unknown backbone name or a backbone that
            cannot change its input size.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; allowed: {list(DETECTORS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; allowed: >= 1 object classes")
    if head_norm not in (None, "gn"):
        raise ValueError(f"head_norm={head_norm!r}; allowed: [None, 'gn']")
    if head_norm is not None and name != "retinanet":
        raise ValueError("head_norm applies to retinanet only")
    model = build_backbone(backbone, weights=backbone_weights, **(backbone_kwargs or {}))
    if name == "retinanet":
        body = DenseBackbone(model, out_indices=(1, 2, 3))
        _check_flexible(body, backbone)
        bb = BackboneFPN(body, fpn_channels, P6P7FromC5(body.out_channels_list[-1], fpn_channels))
        anchors = retinanet_anchors(bb.strides)
        norm = (lambda c: nn.GroupNorm(32, c)) if head_norm == "gn" else None
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=norm)
        kw.setdefault("detections_per_img", 100)
        kw.setdefault("size_divisible", body.size_divisor)
        return RetinaNet(bb, num_classes, anchor_generator=anchors, head=head, **kw)
    body = DenseBackbone(model, out_indices=(0, 1, 2, 3))
    _check_flexible(body, backbone)
    bb = BackboneFPN(body, fpn_channels, LastLevelMaxPool())
    kw.setdefault("size_divisible", body.size_divisor)
    return MaskRCNN(bb, num_classes + 1, rpn_anchor_generator=rpn_anchors(bb.strides), **kw)
