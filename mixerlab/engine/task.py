"""The training objective as an object: ``task(model, x, y) -> {'loss', 'output', 'terms'}``.

Classification with label smoothing (Szegedy et al., arXiv:1512.00567) or, when Mixup/CutMix is
on, soft-target cross-entropy on the mixed, smoothed targets (DeiT). The model is called as
``forward(x, return_aux=True) -> (logits, aux)``; each auxiliary term (LaViT's diagonality-
preserving ``dp_sym`` / ``dp_diag``, arXiv:2406.00427) is added with its own weight from
``aux_weights``, and every term is returned in ``terms`` for logging. A term without a weight is
an error, so that a new mixer's loss is never silently dropped or silently weighted.
"""
from __future__ import annotations

from typing import Callable

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn


class ClassificationTask:
    """Loss of one training micro-batch.

    Args:
        mixup: batch transform ``(x, y) -> (x, y_soft)`` or None.
        label_smoothing: used when ``mixup`` is None (Mixup folds smoothing into its targets).
        aux_weights: weight of each auxiliary loss term, by name.
    """

    def __init__(self, *, mixup: Callable | None, label_smoothing: float, aux_weights: dict[str, float]):
        self.mixup = mixup
        self.criterion = SoftTargetCrossEntropy() if mixup is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.aux_weights = dict(aux_weights)

    def __call__(self, forward: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """``forward`` is the module to call (the model, its DDP wrapper or compiled version)."""
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # y: (B,) -> (B, K) soft targets
        output, aux = forward(x, return_aux=True)  # (B, K) logits, {term: scalar}
        ce = self.criterion(output.float(), y)
        terms = {"ce": ce.detach()}
        loss = ce
        for name, value in aux.items():
            if name not in self.aux_weights:
                raise ValueError(f"the model returns the auxiliary loss term {name!r}, which has no "
                                 f"weight in aux_weights {self.aux_weights}; add {name}: WEIGHT "
                                 "(0 to train without it)")
            loss = loss + self.aux_weights[name] * value.float()
            terms[name] = value.detach().float()
        return {"loss": loss, "output": output, "terms": terms}
