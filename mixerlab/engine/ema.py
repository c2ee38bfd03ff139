"""Exponential moving average of model weights (Polyak averaging; DeiT/DeepViT keep one).

theta_ema <- decay * theta_ema + (1 - decay) * theta after every optimiser step; floating
buffers (BatchNorm running statistics) are copied, not averaged, since they are recalibrated
before evaluation anyway. Kept in float32 on the model's device.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of ``model`` updated with :meth:`update`.

    Args:
        model: the (unwrapped) model to track.
        decay: weight of the old average per step, in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._params = {name for name, _ in self.module.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema[name]
            if name in self._params:
                target.lerp_(value.detach(), 1.0 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
