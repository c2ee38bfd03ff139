"""Backbones for dense prediction: a zoo model's four stage maps (NCHW), each through its own norm.

Hierarchical models (PoolFormer v1/v2, ConvFormer, CAFormer, LaViT): the stage outputs of
``forward_intermediates`` (strides 4, 8, 16, 32 for the paper models), each through an extra
GroupNorm with one group, as PoolFormer's ``fork_feat`` mode (sail-sg/poolformer
``models/poolformer.py``: ``norm0``, ``norm2``, ``norm4``, ``norm6``, one norm layer per output
level; the classifier head and the final norm are dropped). With ``out_indices`` a subset (RetinaNet
takes stages 2-4), only the taken levels get a norm: the official ``FORK_LAST3`` switch, which
replaces ``norm0`` with an identity for RetinaNet.

Isotropic models (DeiT, ConViT, DeepViT, FF-only): the simple feature pyramid of ViTDet (Li et al.,
"Exploring Plain Vision Transformer Backbones for Object Detection", arXiv 2203.16527): from the
last block's map at the patch stride p, two 2x2 / stride-2 deconvolutions (with a channel
LayerNorm and GELU between) for p/4, one for p/2, the map itself for p and a 2x2 max-pool for 2p
(strides 4-32 for p = 16), with widths dim/4, dim/2, dim, dim. ViTDet's per-level 1x1 and 3x3
convs to 256 channels are left to the FPN neck that follows (its lateral and output convs).

timm CNNs (a ``timm:NAME`` classification run, e.g. E1's ResNet-18 anchor of ``mixerlab compare``):
the last four entries of timm's ``feature_info`` (ResNet: ``layer1``-``layer4``, strides 4-32), from
timm's own ``forward_intermediates``, each through the same GroupNorm(1) as the hierarchical maps
(so every backbone meets the FPN neck the same way; mmdet's ResNet configs feed the stage maps
without an extra norm, which here would make the CNN the one backbone treated differently).

``build_backbone`` is the one place where a backbone model is constructed from a name (and
weights); swap it for the general resolver when one exists.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.factory import TIMM, ZOO, identify, open_model
from ..factory import load_pretrained
from ..models.hierarchical import HierarchicalModel
from ..models.isotropic import IsotropicModel
from ..models.timm_model import TimmModel

SIZE_DIVISOR = 32  # input sides must be multiples of this (the coarsest stride of the paper models)


# -- backbone construction (the single swappable place) -------------------------------------------
def build_backbone(backbone: str | os.PathLike | nn.Module, *, weights: str | os.PathLike | None = None,
                   **model_kwargs) -> nn.Module:
    """THE place where a dense model's backbone is built, through the package's one model resolver
    (``mixerlab.open_model``): a zoo name (``list_models()``; ``weights``: a mixerlab weight file or
    a timm state dict to load into it), a classification run folder, a training checkpoint, a
    mixerlab weight file or a timm checkpoint of a covered architecture; or an already built mixerlab
    model (returned as is, ``weights`` loaded into it). ``model_kwargs`` go to the zoo builder (e.g.
    ``img_size``, ``drop_path_rate``); a trained model is rebuilt exactly as saved and takes none.

    Raises:
        ValueError: a source that names no model (one line, with what is allowed).
    """
    if isinstance(backbone, nn.Module):
        if weights is not None:
            load_pretrained(backbone, weights)
        return backbone
    try:
        kind = identify(backbone)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(backbone, str) and not os.path.exists(backbone) and os.sep not in backbone:
            raise ValueError(f"unknown backbone {backbone!r}; allowed: a mixerlab zoo name (mixerlab.list_models(), "
                             "e.g. 'poolformer_s12', 'lavit_small', 'deit_small'), a run folder, a training "
                             "checkpoint, a mixerlab weight file or a timm checkpoint") from None
        raise ValueError(f"backbone {os.fspath(backbone)}: {e}") from None
    if kind == TIMM:
        raise ValueError(f"backbone {backbone!r}: a timm model is not a mixerlab backbone; allowed: a mixerlab "
                         "zoo name (mixerlab.list_models(), e.g. 'poolformer_s12', 'lavit_small', 'deit_small'), "
                         "a run folder, a training checkpoint, a mixerlab weight file or a timm checkpoint")
    if weights is not None and kind != ZOO:
        raise ValueError(f"weights= applies to a zoo name; {backbone} is a {kind} and holds its own weights")
    model, _ = open_model(backbone, pretrained=weights, **model_kwargs) if kind == ZOO else open_model(
        backbone, **model_kwargs)
    return model


# -- pieces ---------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (ViTDet's pyramid norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid (arXiv 2203.16527) from one map at stride p: scale factors
    4, 2, 1, 1/2 -> strides p/4, p/2, p, 2p with widths dim/4, dim/2, dim, dim."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 4:
            raise ValueError(f"simple feature pyramid: the width {dim} is not a multiple of 4")
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, 2)
        self.down2 = nn.MaxPool2d(2, 2)
        self.channels = [dim // 4, dim // 2, dim, dim]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.up4(x), self.up2(x), x, self.down2(x)]


def _group_norm(dim: int) -> nn.GroupNorm:
    """PoolFormer's ``GroupNorm``: ``nn.GroupNorm`` with one group (eps 1e-5)."""
    return nn.GroupNorm(1, dim)


# -- the backbone ---------------------------------------------------------------------------------
class DenseBackbone(nn.Module):
    """A mixerlab model as a dense-prediction backbone: ``forward(images)`` -> ``OrderedDict``
    ``{"0": map, "1": map, ...}`` of (B, C, H, W) maps, one per entry of ``out_indices`` (stages of a
    hierarchical model; pyramid levels of an isotropic one), each through a GroupNorm(1).

    Attributes:
        out_channels_list: the channels of the returned maps.
        strides: their strides (input pixels per map cell).
        size_divisor: image sides must be multiples of it (32, or the coarsest stride if larger).
        body: the model, its classifier head and final norm removed.
    """

    def __init__(self, model: nn.Module, out_indices=(0, 1, 2, 3), *, level_norm: bool = True):
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not 0 <= out_indices[0] \
                or out_indices[-1] > 3:
            raise ValueError(f"out_indices={out_indices}; allowed: increasing level indices in 0..3")
        if isinstance(model, HierarchicalModel):
            n = len(model.stages)
            if n != 4:
                raise ValueError(f"a dense backbone needs a 4-stage model; this one has {n} stages")
            chans = [model.feature_info[i]["num_chs"] for i in out_indices]
            strides = [model.feature_info[i]["reduction"] for i in out_indices]
            model.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)
            self.kind, self.pyramid = "hierarchical", None
        elif isinstance(model, IsotropicModel):
            p = model.patch_embed.patch_size
            model.prune_intermediate_layers([len(model.blocks) - 1], prune_norm=True, prune_head=True)
            self.pyramid = SimplePyramid(model.dim)
            all_strides = [p // 4, p // 2, p, 2 * p]
            if p % 4:
                raise ValueError(f"simple feature pyramid: the patch size {p} is not a multiple of 4")
            chans = [self.pyramid.channels[i] for i in out_indices]
            strides = [all_strides[i] for i in out_indices]
            self.kind = "isotropic"
        elif isinstance(model, TimmModel):
            info = list(getattr(model.net, "feature_info", None) or [])
            if len(info) < 4 or not hasattr(model.net, "forward_intermediates"):
                raise ValueError(f"a timm backbone needs four feature levels and forward_intermediates; "
                                 f"{model.zoo_name} has {len(info)} levels")
            first = len(info) - 4
            self.timm_indices = [first + i for i in out_indices]
            chans = [info[i]["num_chs"] for i in self.timm_indices]
            strides = [info[i]["reduction"] for i in self.timm_indices]
            model.net.prune_intermediate_layers(self.timm_indices, prune_norm=True, prune_head=True)
            self.kind, self.pyramid = "timm", None
        else:
            raise ValueError(f"a dense backbone wraps a mixerlab HierarchicalModel or IsotropicModel, or a "
                             f"timm CNN run (timm:NAME), got {type(model).__name__}")
        self.body = model
        self.out_indices = out_indices
        self.out_channels_list = chans
        self.strides = strides
        coarsest = (2 * model.patch_embed.patch_size if self.kind == "isotropic" else strides[-1]
                    if self.kind == "timm" else model.feature_info[-1]["reduction"])
        self.size_divisor = SIZE_DIVISOR * math.ceil(max(coarsest, SIZE_DIVISOR) / SIZE_DIVISOR)
        self.fixed_input_size = bool(getattr(model, "fixed_input_size", False))
        self.norms = nn.ModuleList(_group_norm(c) if level_norm else nn.Identity() for c in chans)

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(f"input size {h}x{w} is not divisible by {d}; allowed: image sides that "
                             f"are multiples of {d} (the backbone's coarsest stride)")

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        self.check_size(x)
        if self.kind == "timm":
            maps = self.body.net.forward_intermediates(x, indices=self.timm_indices, stop_early=True,
                                                       intermediates_only=True)
        elif self.kind == "hierarchical":
            maps = self.body.forward_intermediates(x, indices=list(self.out_indices), stop_early=True,
                                                   intermediates_only=True)
        else:
            last = self.body.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)[0]
            levels = self.pyramid(last)
            maps = [levels[i] for i in self.out_indices]
        return OrderedDict((str(i), norm(m)) for i, (norm, m) in enumerate(zip(self.norms, maps)))


def dense_backbone(backbone: str | nn.Module, out_indices=(0, 1, 2, 3), *,
                   weights: str | os.PathLike | None = None, level_norm: bool = True,
                   **model_kwargs) -> DenseBackbone:
    """``DenseBackbone`` of a zoo name (or a built model), with optional weights (see
    ``build_backbone``)."""
    return DenseBackbone(build_backbone(backbone, weights=weights, **model_kwargs), out_indices,
                         level_norm=level_norm)
