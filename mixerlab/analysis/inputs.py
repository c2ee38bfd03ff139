"""What ``mixerlab analyze`` runs on: a model (zoo name, weight file, or training checkpoint / run
folder) and a few evaluation images (the dataset's validation split through the trainer's
deterministic eval transform).

Images are always adapted to the model: grey images are repeated to the model's channel count, and
the dataset's own normalisation statistics are used (``mixerlab.data.STATS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.factory import CHECKPOINT, RUN_FOLDER, ZOO, identify, open_model


@dataclass
class LoadedModel:
    model: nn.Module
    name: str  # zoo name
    source: str  # "random init" | weight file | checkpoint path
    data: str | None = None  # the dataset the checkpoint was trained on, if known
    data_dir: str | None = None
    info: dict = field(default_factory=dict)


def load_model(spec: str, *, weights: str | None = None, ema: bool = False, **overrides) -> LoadedModel:
    """A model for analysis, opened by ``mixerlab.open_model``.

    Args:
        spec: a zoo name (random init unless ``weights``), ``timm:NAME``, a run folder, a training
            checkpoint, a mixerlab weight file or a timm checkpoint.
        weights: a weight file (or a run folder / training checkpoint) for a zoo name.
        ema: take the EMA weights of a training checkpoint.
        **overrides: ``create_model`` overrides for a zoo name (``img_size``, ``in_chans``, ...).
    """
    if weights is not None:
        if identify(spec) != ZOO:
            raise ValueError("give either a checkpoint, run folder or weight file, or a zoo name with --weights, not both")
        if identify(weights) in (RUN_FOLDER, CHECKPOINT):  # a trained run of that zoo model
            model, src = open_model(weights, weights="ema" if ema else "model", name=spec)
        else:
            model, src = open_model(spec, pretrained=weights, **overrides)
    else:
        model, src = open_model(spec, weights="ema" if ema else "model", **overrides)
    from ..models.timm_model import TimmModel
    if isinstance(model, TimmModel):  # a `train --model timm:NAME` run, or timm:NAME itself
        raise ValueError(f"{spec} is {model.zoo_name}, a timm model: analyze reads attention maps and gates "
                         "through mixerlab's mixer probes, which a timm model does not have (its report would be "
                         "empty); analyze a mixerlab zoo model, or convert timm weights with mixerlab convert "
                         "--from timm")
    if src.train_config is not None:
        return LoadedModel(model, src.train_config.get("model", src.name), src.path, data=src.data,
                           data_dir=src.data_dir,
                           info=dict(epoch=src.state.get("epoch"), checkpoint_part="ema" if ema else "model"))
    return LoadedModel(model, src.name, src.weights if src.kind == ZOO else src.path)


def _fit(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) -> (C, H, W): zero-pad when at most 8 px smaller (the trainer's FitTo), else resize."""
    c, h, w = img.shape
    if (h, w) == size:
        return img
    if h <= size[0] <= h + 8 and w <= size[1] <= w + 8:
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        out = img.new_zeros(c, *size)
        out[:, top:top + h, left:left + w] = img
        return out
    return torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True,
                                           align_corners=False)[0]


def load_images(data: str, n: int, *, in_chans: int, img_size: tuple[int, int],
                data_dir: str | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``n`` validation images for the model.

    Args:
        data: ``fashion-mnist``, ``synthetic`` or any dataset name ``mixerlab.data`` knows.
        n: number of images (a fixed random subset of the validation split, by ``seed``).
        in_chans: model channels (grey images are repeated).
        img_size: model input (H, W).

    Returns:
        (normalised images (n, C, H, W), display images in [0, 1] (n, H, W, 3), class targets).
    """
    from ..data import STATS, build_sources

    if data == "synthetic":
        _, val = build_sources("synthetic", None, size=max(4 * n, 40), num_classes=10, in_chans=1,
                               img_size=32)
    else:
        _, val = build_sources(data, data_dir)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(val), generator=g)[:n].tolist()
    raw = []
    for i in idx:
        import numpy as np
        a = torch.from_numpy(np.array(val.load(i), dtype=np.float32) / 255.0)
        a = a[None] if a.ndim == 2 else a.permute(2, 0, 1)  # (C, h, w)
        raw.append(_fit(a, img_size))
    x = torch.stack(raw)  # (n, c, H, W) in [0, 1]
    mean, std = STATS.get(data, STATS["synthetic"])
    mean = torch.tensor(mean[: x.shape[1]]).view(1, -1, 1, 1)
    std = torch.tensor(std[: x.shape[1]]).view(1, -1, 1, 1)
    norm = (x - mean) / std
    if norm.shape[1] != in_chans:
        if norm.shape[1] == 1:
            norm = norm.expand(-1, in_chans, -1, -1).contiguous()
        else:
            raise ValueError(f"{data} images have {norm.shape[1]} channels; the model takes {in_chans}")
    show = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    return norm, show.permute(0, 2, 3, 1).clamp(0, 1), [int(val.targets[i]) for i in idx]
