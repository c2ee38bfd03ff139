"""Semantic FPN (Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", arXiv
1901.02446, the semantic branch) on mixerlab backbones, as the PoolFormer paper's ADE20K experiments
(arXiv 2111.11418, Table 6; sail-sg/poolformer ``segmentation/``, on mmsegmentation's ``FPN`` neck
and ``FPNHead``):

* neck: an FPN on the four stage maps to 256 channels (1x1 lateral and 3x3 output convs with bias,
  no norm; nearest top-down upsampling), torchvision's ``FeaturePyramidNetwork``;
* head: per level, a stack of max(1, log2(stride / stride_0)) conv3x3 (no bias) - norm - ReLU
  stages of 128 channels, each but at the finest level followed by a 2x bilinear upsampling
  (``align_corners=False``); the levels are summed at the finest stride (4 for the paper models),
  then dropout (0.1, 2-d) and a 1x1 classifier;
* the logits are upsampled bilinearly (``align_corners=False``) to the input size.

The norm is BatchNorm (mmseg's config: SyncBN) or GroupNorm(32) (``norm="gn"``); both have 2 x 128
parameters per stage.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from .backbone import DenseBackbone, build_backbone

SEGMENTERS = ("semantic_fpn",)


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "bn" else nn.GroupNorm(32, c)


class FPNHead(nn.Module):
    """The Semantic FPN head (mmseg's ``FPNHead``): per-level conv-norm-ReLU (+2x upsample) stacks
    summed at the finest stride, dropout, 1x1 classifier."""

    def __init__(self, strides, in_channels: int = 256, channels: int = 128, num_classes: int = 150,
                 *, norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        s0 = strides[0]
        heads = []
        for s in strides:
            n = max(1, int(round(math.log2(s / s0))))
            layers = []
            for k in range(n):
                layers += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                           _norm(norm, channels), nn.ReLU(inplace=True)]
                if s != s0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            heads.append(nn.Sequential(*layers))
        self.scale_heads = nn.ModuleList(heads)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # mmseg's conv_seg init
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + F.interpolate(head(f), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """Backbone (four normed stage maps) -> FPN neck -> ``FPNHead`` -> logits at the input size.

    ``forward(images)`` returns (B, num_classes, H, W) logits; ``forward(images, targets)`` with
    (B, H, W) integer labels returns ``{"loss_seg": cross entropy}`` (labels ``ignore_index``, 255,
    are ignored), as mmseg's decode head."""

    def __init__(self, backbone: DenseBackbone, num_classes: int = 150, *, neck_channels: int = 256,
                 head_channels: int = 128, norm: str = "bn", dropout: float = 0.1,
                 ignore_index: int = 255):
        super().__init__()
        if norm not in ("bn", "gn"):
            raise ValueError(f"norm={norm!r}; allowed: ['bn', 'gn']")
        self.backbone = backbone
        self.neck = FeaturePyramidNetwork(backbone.out_channels_list, neck_channels)
        self.decode_head = FPNHead(backbone.strides, neck_channels, head_channels, num_classes,
                                   norm=norm, dropout=dropout)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.output_stride = backbone.strides[0]

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        feats = self.neck(self.backbone(images))
        logits = self.decode_head(list(feats.values()))  # (B, K, H / stride_0, W / stride_0)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if targets is None:
            return logits
        return {"loss_seg": F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)}


def create_segmenter(name: str, backbone: str | nn.Module = "poolformer_s12", num_classes: int = 150, *,
                     backbone_weights: str | os.PathLike | None = None,
                     backbone_kwargs: dict | None = None, **kw) -> SemanticFPN:
    """A segmentation model on a mixerlab backbone.

    Args:
        name: ``"semantic_fpn"``.
        backbone: a mixerlab zoo name (hierarchical or isotropic) or a built mixerlab model.
        num_classes: 150 for ADE20K.
        backbone_weights: a weight file for the backbone (mixerlab or timm; ``build_backbone``).
        backbone_kwargs: ``create_model`` overrides for the backbone.
        **kw: ``SemanticFPN`` options (``norm="bn" | "gn"``, ``neck_channels``, ``head_channels``,
            ``dropout``, ``ignore_index``).

    Raises:
        ValueError: an unknown head name or backbone name; at forward, an input whose sides are
            not multiples of the backbone's size divisor (32).
    """
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; allowed: {list(SEGMENTERS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; allowed: >= 1 classes")
    model = build_backbone(backbone, weights=backbone_weights, **(backbone_kwargs or {}))
    return SemanticFPN(DenseBackbone(model, out_indices=(0, 1, 2, 3)), num_classes, **kw)
