"""The training objective as an object: ``task(model, x, y) -> {'loss', 'output', 'terms'}``.

Classification with label smoothing (Szegedy et al., arXiv:1512.00567) or, when Mixup/CutMix is
on, soft-target cross-entropy on the mixed, smoothed targets (DeiT). Models that report
auxiliary losses through ``model.aux_losses()`` (LaViT's diagonality-preserving terms
``dp_sym``/``dp_diag``, arXiv:2406.00427; see ``/work/shared/papers/lavit.md`` §3.8) get
``dp_weight * sum(aux)`` added; each term is returned in ``terms`` for logging.
"""
from __future__ import annotations

from typing import Callable

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn


class ClassificationTask:
    """Loss of one training micro-batch.

    Args:
        model: the unwrapped model (its ``aux_losses()`` is read after each forward).
        mixup: batch transform ``(x, y) -> (x, y_soft)`` or None.
        label_smoothing: used when ``mixup`` is None (Mixup folds smoothing into its targets).
        dp_weight: weight of the auxiliary (diagonality-preserving) losses.
    """

    def __init__(self, model: nn.Module, *, mixup: Callable | None, label_smoothing: float, dp_weight: float):
        self.model = model
        self.mixup = mixup
        self.criterion = SoftTargetCrossEntropy() if mixup is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.dp_weight = dp_weight

    def __call__(self, forward: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """``forward`` is the module to call (the model, its DDP wrapper or compiled version)."""
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # y: (B,) -> (B, K) soft targets
        output = forward(x)  # (B, K) logits
        ce = self.criterion(output.float(), y)
        terms = {"ce": ce.detach()}
        loss = ce
        aux = self.model.aux_losses() if hasattr(self.model, "aux_losses") else {}
        if aux:
            loss = loss + self.dp_weight * sum(v.float() for v in aux.values())
            terms.update({name: v.detach().float() for name, v in aux.items()})
        return {"loss": loss, "output": output, "terms": terms}
