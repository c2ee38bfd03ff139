"""Many small runs at once: N members of one configuration trained as one vmapped model.

A ``*_micro`` model at batch 64-128 leaves a GPU mostly idle: each kernel is small and the step
is bound by launch overhead. Training N members (different seeds and/or learning rates) as one
model whose every weight carries a leading member dimension gives N times the work per kernel
for the same number of launches. The batching is ``torch.func``'s: ``functional_call`` runs the
architecture on a dict of weights, ``vmap`` maps it over the member dimension (the "model
ensembling" recipe of the PyTorch ``torch.func`` tutorials; JAX's ``vmap``, Bradbury et al.
2018, is the model).

How one member stays the run it would be alone:

* weights: for every parameter (buffer) name one stacked leaf tensor ``(N, ...)``; member ``i``'s
  module (``Ensemble.members[i]``, a real ``nn.Module``) holds views ``stacked[i]`` as its
  parameters and buffers, so it always shows the current weights and can be evaluated, calibrated
  (BatchNorm) or saved with the existing single-model code;
* gradients: the members' losses are independent, so the gradient of their sum w.r.t.
  ``stacked[i]`` is member ``i``'s own gradient; it is handed to the member's parameters as a view
  (no copy);
* optimiser: one ``torch.optim.AdamW`` per member, built by the loop's own
  :func:`~mixerlab.engine.optim.build_optimizer` on the member module (its decay / no-decay
  groups), its LR set before every step from :func:`~mixerlab.engine.optim.lr_at` with the
  member's base LR (the warm-up + cosine schedule of the recipe), clipping with
  ``clip_grad_norm_`` per member; the objective is the loop's
  :class:`~mixerlab.engine.task.ClassificationTask` (label smoothing, LaViT's weighted auxiliary
  terms) evaluated inside ``vmap``;
* BatchNorm (DeepViT's re-attention): the running statistics are stacked buffers, updated in
  place per member inside ``vmap``;
* randomness: a model without dropout or drop path runs under ``vmap(randomness="error")`` (a
  random op that was not expected fails loudly); with them, ``randomness="different"`` gives each
  member its own masks, but not the masks of the run alone: such members are the same
  *distribution* of runs, not the same runs (``Ensemble.exact`` is False);
* fast paths: every switch of :func:`mixerlab.fast_paths` is off inside the ensemble. Under
  ``torch.func`` transforms the hand-written CPU kernels (``onednn_linear``, ``fused_star_relu``)
  fall back to the reference ops anyway (:func:`mixerlab.layers.fast_paths.plain_eager_cpu`), but
  that check reads a private torch probe (``torch._C._are_functorch_transforms_active``) that a
  torch without it answers "no transform" for; switching them off does not depend on it.
  ``fused_attn`` is off by default too: the CPU SDPA kernel has no ``vmap`` batching rule (PyTorch falls back to a
  per-member loop with a warning) and LaViT's attention residual, passed to SDPA as an
  ``attn_mask`` that needs a gradient, fails under it. ``fused_attn=True`` keeps it (for a CUDA
  trial; untested here).

Equal to the run alone (``tests/test_ensemble.py``): each member's per-step losses and weights
after a few steps match a plain single-model training with the same init, batches and LR to
~1e-6 (float rounding of batched vs plain kernels, and the reference vs fast attention path).
Not supported (refused by :meth:`Ensemble.from_config`): Mixup/CutMix (drawn from the global RNG
once per batch for the whole batch), EMA, AMP, gradient accumulation, ``torch.compile``,
channels-last, DDP.
"""
from __future__ import annotations

import copy
import random
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..layers.drop import DropPath
from ..layers.fast_paths import switches_of
from .optim import build_optimizer, lr_at
from .task import ClassificationTask

# the dropout base class is private (torch.nn.modules.dropout); nn.Dropout is the fallback
_DROPOUT = getattr(nn.modules.dropout, "_DropoutNd", nn.Dropout)

__all__ = ["Ensemble", "EnsembleError", "NonFiniteMemberError", "is_stochastic"]


class EnsembleError(ValueError):
    """The members or the configuration cannot be trained as one vmapped ensemble."""


class NonFiniteMemberError(RuntimeError):
    """A member's loss became NaN/inf (``members`` lists them); no optimiser step was taken."""

    def __init__(self, message: str, members: list[int]):
        super().__init__(message)
        self.members = members


def is_stochastic(model: nn.Module) -> bool:
    """Whether a training forward of ``model`` draws random numbers: dropout, drop path, or an
    attention-map dropout rate (``attn_drop_p``, SDPA's ``dropout_p``)."""
    for m in model.modules():
        if isinstance(m, _DROPOUT) and m.p > 0:
            return True
        if isinstance(m, DropPath) and getattr(m, "drop_prob", 0.0) > 0:
            return True
        if getattr(m, "attn_drop_p", 0.0) > 0:
            return True
    return False


def _seed_all(seed: int) -> None:
    """The seeding the training loop does before it builds a model (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, *, param: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    if param:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=True)
    else:
        mod._buffers[leaf] = value  # keeps the buffer's persistence flag


class Ensemble:
    """N models of one architecture trained together, each with its own AdamW and LR.

    Args:
        models: the members' initial models (same class, same parameter and buffer names and
            shapes, same device); they become the members' modules, their weights views into the
            stacked tensors (the originals' tensors are replaced, not copied back later).
        lrs: each member's base LR (one float: the same for all).
        total_steps, warmup_steps, warmup_lr, min_lr: the schedule of
            :func:`~mixerlab.engine.optim.lr_at` (the loop's values for the run).
        weight_decay, betas, eps: AdamW's (:func:`~mixerlab.engine.optim.build_optimizer`).
        label_smoothing, aux_weights: the objective (:class:`~mixerlab.engine.task.ClassificationTask`,
            no Mixup).
        clip_grad: per-member global gradient-norm clip, or None.
        fused_attn: keep the ``fused_attn`` fast path (SDPA) inside ``vmap`` (module docstring).

    ``train_step(x, y)`` takes one batch shared by all members (``x`` ``(B, C, H, W)``, ``y``
    ``(B,)``) or one per member (``(N, B, C, H, W)``, ``(N, B)``, e.g. from
    :class:`~mixerlab.data.device.DeviceTrainBatches` with the members' seeds).
    """

    def __init__(self, models: Sequence[nn.Module], *, lrs: float | Sequence[float], total_steps: int,
                 warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0, weight_decay: float = 0.05,
                 betas=(0.9, 0.999), eps: float = 1e-8, label_smoothing: float = 0.1,
                 aux_weights: dict[str, float] | None = None, clip_grad: float | None = None,
                 fused_attn: bool = False):
        models = list(models)
        if not models:
            raise EnsembleError("an ensemble needs at least one member")
        self._check_alike(models)
        n = len(models)
        self.lrs = [float(lrs)] * n if isinstance(lrs, (int, float)) else [float(v) for v in lrs]
        if len(self.lrs) != n:
            raise EnsembleError(f"{len(self.lrs)} learning rates for {n} members")
        self.schedule = dict(total_steps=int(total_steps), warmup_steps=int(warmup_steps),
                             warmup_lr=float(warmup_lr), min_lr=float(min_lr))
        self.clip_grad = clip_grad
        self.fused_attn = bool(fused_attn)
        self.task = ClassificationTask(mixup=None, label_smoothing=label_smoothing,
                                       aux_weights=dict(aux_weights if aux_weights is not None
                                                        else {"dp_sym": 1.0, "dp_diag": 1.0}))
        self.exact = not is_stochastic(models[0])
        self.randomness = "error" if self.exact else "different"
        # the architecture, without weights of its own: every tensor it uses comes in through
        # functional_call (a forgotten one fails on the meta device instead of reading stale data)
        self.base = copy.deepcopy(models[0]).to("meta")
        # every fast path off but (on request) fused_attn; the base is private: switched for good
        for m in self.base.modules():
            for switch in switches_of(m):
                if not (switch == "fused_attn" and self.fused_attn):
                    setattr(m, switch, False)
        # stacked leaves, and the members' tensors as views of them
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, _ in models[0].named_parameters():
                self.params[name] = torch.stack([m.get_parameter(name).detach() for m in models]).requires_grad_(True)
            for name, _ in models[0].named_buffers():
                self.buffers[name] = torch.stack([m.get_buffer(name).detach() for m in models])
        for i, m in enumerate(models):
            for name, s in self.params.items():
                _set_tensor(m, name, s.detach()[i], param=True)
            for name, s in self.buffers.items():
                _set_tensor(m, name, s.detach()[i], param=False)
        self.members = models
        self.optimizers = [build_optimizer(m, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
                           for m, lr in zip(models, self.lrs)]
        self._member_params = [[m.get_parameter(name) for name in self.params] for m in models]
        self.step = 0

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_alike(models: list[nn.Module]) -> None:
        ref = models[0]
        shapes = {k: (tuple(v.shape), v.dtype, v.device) for k, v in ref.state_dict(keep_vars=True).items()}
        for i, m in enumerate(models[1:], 1):
            if type(m) is not type(ref):
                raise EnsembleError(f"member {i} is a {type(m).__name__}, member 0 a {type(ref).__name__}")
            other = {k: (tuple(v.shape), v.dtype, v.device) for k, v in m.state_dict(keep_vars=True).items()}
            if other != shapes:
                diff = sorted(set(other.items()) ^ set(shapes.items()))[:3]
                raise EnsembleError(f"member {i} differs from member 0 in its weights' names, shapes, dtypes or "
                                    f"devices (e.g. {diff}); an ensemble's members share one architecture")
        if len({v[2] for v in shapes.values()}) > 1:
            raise EnsembleError("a member's weights are on more than one device")
        named = dict(ref.named_parameters(remove_duplicate=False))
        if len(named) != len(dict(ref.named_parameters())):
            raise EnsembleError("tied (shared) parameters are not supported in an ensemble")

    @classmethod
    def from_config(cls, cfg, *, seeds: Sequence[int], num_classes: int, in_chans: int, steps_per_epoch: int,
                    lrs: float | Sequence[float] | None = None, device: str | torch.device = "cpu",
                    fused_attn: bool = False) -> "Ensemble":
        """Members of the run ``cfg`` (a :class:`~mixerlab.engine.TrainConfig`), one per seed in
        ``seeds`` (``cfg.seed`` is ignored), with base LRs ``lrs`` (default ``cfg.lr``).

        Each member is initialised as :func:`~mixerlab.engine.train` initialises the run with that
        seed (the loop seeds python/numpy/torch with it and builds the model with
        :func:`~mixerlab.engine.factory.model_for_run`); ``steps_per_epoch`` is the loop's
        (``len(loader)``; ``len(DeviceTrainBatches)``), the schedule is the loop's from it.
        Raises :class:`EnsembleError` for what an ensemble does not do (module docstring)."""
        from .factory import model_for_run
        unsupported = [(cfg.mixup > 0 or cfg.cutmix > 0, "mixup/cutmix"), (cfg.ema_decay is not None, "ema_decay"),
                       (cfg.amp != "none", "amp"), (cfg.accum_steps != 1, "accum_steps"),
                       (bool(cfg.compile), "compile"), (bool(cfg.channels_last), "channels_last")]
        bad = [what for flag, what in unsupported if flag]
        if bad:
            raise EnsembleError(f"an ensemble does not support {', '.join(bad)} (set them off: mixup 0, cutmix 0, "
                                "ema_decay null, amp none, accum_steps 1, compile false, channels_last false)")
        seeds = [int(s) for s in seeds]
        models = []
        for s in seeds:
            _seed_all(s)
            models.append(model_for_run(cfg, num_classes=num_classes, in_chans=in_chans).to(device))
        total = cfg.epochs * int(steps_per_epoch)
        return cls(models, lrs=cfg.lr if lrs is None else lrs, total_steps=total,
                   warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), warmup_lr=cfg.warmup_lr,
                   min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps,
                   label_smoothing=cfg.label_smoothing, aux_weights=cfg.aux_weights, clip_grad=cfg.clip_grad,
                   fused_attn=fused_attn)

    # ------------------------------------------------------------------ training
    def __len__(self) -> int:
        return len(self.members)

    def lrs_at(self, step: int) -> list[float]:
        """Each member's LR before optimiser step ``step``."""
        return [lr_at(step, base_lr=b, **self.schedule) for b in self.lrs]

    def _in_dims(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int | None, int | None]:
        xd = 0 if x.ndim == 5 else None
        yd = 0 if y.ndim == 2 else None
        if x.ndim not in (4, 5) or y.ndim not in (1, 2) or (xd is None) != (yd is None):
            raise ValueError(f"expected x (B, C, H, W) and y (B,), or x (N, B, C, H, W) and y (N, B) for the "
                             f"{len(self)} members; got {tuple(x.shape)} and {tuple(y.shape)}")
        if xd == 0 and (x.shape[0] != len(self) or y.shape[0] != len(self)):
            raise ValueError(f"per-member batches for {x.shape[0]} members; the ensemble has {len(self)}")
        return xd, yd

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *, check_finite: bool = True) -> dict[str, torch.Tensor]:
        """One optimiser step of every member on its batch; returns each term (``loss``, ``ce``,
        auxiliary terms) as a detached ``(N,)`` tensor. With ``check_finite`` (one device sync)
        a NaN/inf loss raises :class:`NonFiniteMemberError` before any member steps."""
        xd, yd = self._in_dims(x, y)
        for opt, lr in zip(self.optimizers, self.lrs_at(self.step)):
            for group in opt.param_groups:
                group["lr"] = lr
        self.base.train()
        task, base = self.task, self.base

        def member(params, buffers, xb, yb):
            def forward(inp, return_aux=True):
                return functional_call(base, (params, buffers), (inp,), {"return_aux": return_aux})
            out = task(forward, xb, yb)
            return out["loss"], out["terms"]

        loss, terms = vmap(member, in_dims=(0, 0, xd, yd), randomness=self.randomness)(self.params, self.buffers, x, y)
        if check_finite:
            bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
            if bad:
                raise NonFiniteMemberError(f"member(s) {bad} reached a non-finite loss at step {self.step + 1} "
                                           f"(losses {loss.detach().tolist()}); no member stepped", bad)
        loss.sum().backward()
        for i, (opt, mparams) in enumerate(zip(self.optimizers, self._member_params)):
            for p, s in zip(mparams, self.params.values()):
                p.grad = s.grad[i]
            if self.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(mparams, self.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
        for s in self.params.values():
            s.grad = None
        self.step += 1
        return {"loss": loss.detach(), **terms}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits ``(N, B, K)`` of every member for a shared ``(B, C, H, W)`` batch or
        per-member ``(N, B, C, H, W)`` batches. (Grad mode stays on around the vmapped call: the
        eval-only caches some mixers keep, e.g. GPSA's positional map, key on data pointers that
        ``vmap``'s wrapped tensors do not have; with detached weights no graph is recorded.)"""
        xd = 0 if x.ndim == 5 else None
        was = self.base.training
        self.base.eval()
        try:
            with torch.enable_grad():
                return vmap(lambda p, b, xb: functional_call(self.base, (p, b), (xb,)),
                            in_dims=(0, 0, xd), randomness=self.randomness)(
                    {k: v.detach() for k, v in self.params.items()}, self.buffers, x).detach()
        finally:
            self.base.train(was)

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s weights as a state dict of its own (copies, not views)."""
        return {k: v.detach().clone() for k, v in self.members[i].state_dict().items()}
