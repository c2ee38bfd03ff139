"""What the isotropic and hierarchical backbones share: mixer resolution, the init walk, input
checks, auxiliary losses, classifier handling and the timm-style model API."""
from __future__ import annotations

from functools import partial

import torch
import torch.fx
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


def config_grid(cfg) -> tuple[int, int]:
    """The token grid of the last stage for the config's ``img_size`` (timm's ``pool_size``),
    from the config alone (no model is built)."""
    h, w = to_2tuple(cfg.img_size)
    if hasattr(cfg, "stages"):
        def conv(g, kernel, stride, padding):
            return (g + 2 * padding - kernel) // stride + 1
        h, w = conv(h, *cfg.stem), conv(w, *cfg.stem)
        for _ in cfg.stages[1:]:
            h, w = conv(h, *cfg.downsample), conv(w, *cfg.downsample)
        return h, w
    p = 16 if cfg.stem == "cnn" else cfg.patch_size
    return h // p, w // p


def config_mixer_specs(cfg) -> list:
    """Every mixer spec of a config, in block order."""
    if hasattr(cfg, "stages"):
        return [spec for st in cfg.stages for spec in st.mixers]
    return list(cfg.mixers)


_FIXED_CACHE: dict = {}


def config_fixed_input_size(cfg) -> bool | None:
    """Whether a mixer of the config fixes the sequence length (``fixed_num_tokens``), asked of
    one instance per distinct spec, built on the meta device (no memory, no init); None when a
    mixer can only be built on its real token grid (then build the model and ask it)."""
    dims = ([st.dim for st in cfg.stages for _ in st.mixers] if hasattr(cfg, "stages")
            else [cfg.dim] * len(cfg.mixers))
    for dim, spec in zip(dims, config_mixer_specs(cfg)):
        name, kwargs = (spec, {}) if isinstance(spec, str) else spec
        if getattr(get_mixer(name), "fixed_num_tokens", False) is True:
            return True
        key = (name, repr(sorted(kwargs.items())), dim)
        if key not in _FIXED_CACHE:
            try:
                with torch.device("meta"):
                    m = mixer_factory(spec, num_tokens=4, drop=0.0)(dim)
            except (ValueError, TypeError):
                # A mixer whose construction needs the real token grid (LaViT's): only a whole
                # model (built by the caller) can tell.
                return None
            _FIXED_CACHE[key] = bool(getattr(m, "fixed_num_tokens", False))
        if _FIXED_CACHE[key]:
            return True
    return False


def timm_pretrained_cfg(cfg, *, fixed_input_size: bool | None = None) -> dict:
    """timm's pretrained cfg of a model config: the data side (input size, mean/std, crop,
    interpolation), ``pool_size``, the first conv and the classifier (timm's ``_cfg`` keys)."""
    if fixed_input_size is None:
        fixed_input_size = config_fixed_input_size(cfg)
    if hasattr(cfg, "stages"):
        first_conv = "stem.conv"
    else:
        first_conv = "patch_embed.proj" if cfg.stem == "patch" else "patch_embed.conv1"
    out = {
        "input_size": (cfg.in_chans, *to_2tuple(cfg.img_size)),
        "pool_size": config_grid(cfg),
        "fixed_input_size": fixed_input_size,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "num_classes": cfg.num_classes,
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "first_conv": first_conv,
        # the last linear: a ConvFormer / CAFormer MLP head ends in head.fc2 (timm: head.fc.fc2)
        "classifier": "head.fc2" if getattr(cfg, "head", "linear") == "mlp" else "head",
    }
    if cfg.in_chans == 1:  # one-channel images: mean/std of the first channel are meaningless
        out["mean"], out["std"] = (0.5,), (0.5,)
    return out


@torch.fx.wrap
def check_images(x: torch.Tensor, in_chans: int, img_size: tuple[int, int], fixed: bool,
                 multiple: int, fixed_names: str) -> torch.Tensor:
    """Validate a (B, C, H, W) batch and return it. A leaf for ``torch.fx`` (the checks branch on
    the shape, which a symbolic trace does not know); the traced graph still runs them."""
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channel(s), got {x.shape[1]}; "
                         f"build the model with in_chans={x.shape[1]} to accept them")
    if fixed and tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f"this model accepts only {img_size[0]}x{img_size[1]} images, got "
            f"{x.shape[-2]}x{x.shape[-1]}: a token mixer with a fixed token count "
            f"({fixed_names}) sizes its weights to the sequence length; build the "
            f"model with img_size={tuple(x.shape[-2:])} instead")
    if multiple > 1 and (x.shape[-2] % multiple or x.shape[-1] % multiple):
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch "
                         f"size {multiple}")
    return x


class MixerModel(nn.Module):
    """Base class of mixerlab backbones (the timm model contract)."""

    num_prefix_tokens = 0
    input_multiple = 1  # the image sides must be multiples of this (isotropic: the patch size)

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
        self._fixed_names = self.fixed_mixer_names()
        self.pretrained_cfg = timm_pretrained_cfg(self.cfg, fixed_input_size=self.fixed_input_size)
        self.default_cfg = self.pretrained_cfg  # timm's older name for the same dict
        init_weights(self, conv_trunc_normal=conv_trunc_normal)

    # -- input checks -------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` if it is a batch this model accepts, else ``ValueError`` saying why."""
        return check_images(x, self.in_chans, self.img_size, self.fixed_input_size,
                            self.input_multiple, self._fixed_names)

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
        """A new head for ``num_classes`` (0: none, ``forward`` returns the pooled features),
        on the device and dtype of the model; ``global_pool`` (None: keep) as ``set_global_pool``."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        if num_classes > 0:
            ref = next(self.parameters())
            self.head = Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    def set_global_pool(self, global_pool: str) -> None:
        raise ValueError(f"{type(self).__name__} has no selectable global pool")

    def _prune_head(self, prune_head: bool) -> None:
        if prune_head:
            self.reset_classifier(0, "")

    def forward(self, x: torch.Tensor, *, return_aux: bool = False):
        """Images -> logits; with ``return_aux=True``, ``(logits, aux)`` where ``aux`` maps each
        auxiliary loss term the layers report (LaViT: ``dp_sym``, ``dp_diag``) to its sum over
        layers (empty for models without such terms). Returned, never stored on the module,
        so it goes through DDP and ``torch.compile`` like the logits."""
        if return_aux is not True:  # an identity test: torch.fx passes a Proxy here, `is` is not traced
            return self.forward_head(self.forward_features(x))
        ctx = TokenContext()
        logits = self.forward_head(self.forward_features(x, ctx))
        return logits, ctx.aux_totals()

    @staticmethod
    def _to_fmt(y: torch.Tensor, grid, prefix: int, output_fmt: str) -> torch.Tensor:
        """(B, prefix + N, C) tokens -> ``NCHW``/``NHWC`` maps of the patch tokens, or as they are
        (``NLC``)."""
        if output_fmt == "NLC":
            return y
        y = y[:, prefix:]
        b, _, c = y.shape
        y = y.reshape(b, grid[0], grid[1], c)  # (B, H, W, C)
        return y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y

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
