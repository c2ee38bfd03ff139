"""What the isotropic and hierarchical backbones share: mixer resolution, the init walk, input
checks, auxiliary losses, classifier handling and the timm-style model API."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers.linear import Linear
from ..layers.norm import get_norm_layer
from ..mixers.base import TokenContext, TokenMixer, get_mixer


def to_2tuple(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"img_size must be an int or (H, W), got {v}")
    return v


def mixer_factory(spec, *, num_tokens: int, drop: float):
    """Resolve ``(name, kwargs)`` to a factory ``f(dim) -> mixer``.

    The builder adds what a mixer declares it needs: ``num_tokens`` (``needs_num_tokens``) and
    the model's dropout under the mixer's ``drop_kwarg`` unless the spec sets it.
    """
    if isinstance(spec, str):
        spec = (spec, {})
    name, kwargs = spec
    cls = get_mixer(name)
    kwargs = dict(kwargs)
    if cls.needs_num_tokens:
        kwargs.setdefault("num_tokens", num_tokens)
    drop_kwarg = getattr(cls, "drop_kwarg", None)
    if drop_kwarg is not None and drop > 0:
        kwargs.setdefault(drop_kwarg, drop)
    return partial(cls, **kwargs)


def init_weights(model: nn.Module, *, conv_trunc_normal: bool = False) -> None:
    """Generic init (DeiT-era timm): Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0; convs
    keep PyTorch's default (as the official ViT/ConViT/PoolFormer/DeepViT code), or, with
    ``conv_trunc_normal``, get trunc-normal(0.02) with zero bias too (the MetaFormer baselines,
    sail-sg/metaformer ``MetaFormer._init_weights``). Then each submodule's own ``init_weights``
    (GPSA's local init, LaViT's identity transforms, ...)."""
    for m in model.modules():
        if isinstance(m, nn.Linear) or (conv_trunc_normal and isinstance(m, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if m is not model and hasattr(m, "init_weights"):
            m.init_weights()


class MixerModel(nn.Module):
    """Base class of mixerlab backbones (the timm model contract)."""

    num_prefix_tokens = 0

    def _setup_common(self, cfg) -> None:
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.img_size = to_2tuple(cfg.img_size)
        self.grad_checkpointing = False
        if cfg.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {cfg.in_chans}")
        if cfg.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {cfg.num_classes}")
        self.norm_layer = get_norm_layer(cfg.block.norm)

    def _finish(self, *, conv_trunc_normal: bool = False) -> None:
        mixers = [m for m in self.modules() if isinstance(m, TokenMixer)]
        self.fixed_input_size = any(getattr(m, "fixed_num_tokens", False) for m in mixers)
        self.uses_context_state = any(getattr(m, "uses_context_state", False) for m in mixers)
        self.pretrained_cfg = {
            "input_size": (self.in_chans, *self.img_size),
            "fixed_input_size": self.fixed_input_size,
            "mean": tuple(self.cfg.mean),
            "std": tuple(self.cfg.std),
            "num_classes": self.num_classes,
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "first_conv": self.first_conv,
            "classifier": "head",
        }
        if self.in_chans == 1:  # one-channel images: mean/std of the first channel are meaningless
            self.pretrained_cfg["mean"], self.pretrained_cfg["std"] = (0.5,), (0.5,)
        init_weights(self, conv_trunc_normal=conv_trunc_normal)

    # -- input checks -------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channel(s), got {x.shape[1]}; "
                             f"build the model with in_chans={x.shape[1]} to accept them")
        if self.fixed_input_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"this model accepts only {self.img_size[0]}x{self.img_size[1]} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}: a token mixer with a fixed token count "
                f"({self.fixed_mixer_names()}) sizes its weights to the sequence length; build the "
                f"model with img_size={tuple(x.shape[-2:])} instead")

    def fixed_mixer_names(self) -> str:
        names = {type(m).mixer_name for m in self.modules()
                 if isinstance(m, TokenMixer) and getattr(m, "fixed_num_tokens", False)}
        return ", ".join(sorted(names))

    # -- blocks ---------------------------------------------------------------------------------
    def run_block(self, blk: nn.Module, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, ctx, use_reentrant=False)
        return blk(x, ctx)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable and self.uses_context_state:
            raise ValueError("gradient checkpointing is not supported for models whose layers pass "
                             "state to each other (less_attention): recomputation would read "
                             "another layer's state")
        self.grad_checkpointing = enable

    # -- classifier -----------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_global_pool(self, global_pool: str) -> None:
        raise ValueError(f"{type(self).__name__} has no selectable global pool")

    def forward(self, x: torch.Tensor, *, return_aux: bool = False):
        """Images -> logits; with ``return_aux=True``, ``(logits, aux)`` where ``aux`` maps each
        auxiliary loss term the layers report (LaViT: ``dp_sym``, ``dp_diag``) to its sum over
        layers (empty for models without such terms). Returned, never stored on the module,
        so it goes through DDP and ``torch.compile`` like the logits."""
        if not return_aux:
            return self.forward_head(self.forward_features(x))
        ctx = TokenContext()
        logits = self.forward_head(self.forward_features(x, ctx))
        return logits, ctx.aux_totals()

    @staticmethod
    def _resolve_indices(indices, n: int) -> list[int]:
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: must be in 1..{n} (take the last n)")
            return list(range(n - indices, n))
        out = [i + n if i < 0 else i for i in indices]
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise ValueError(f"intermediate indices {bad} out of range 0..{n - 1}")
        return sorted(out)
