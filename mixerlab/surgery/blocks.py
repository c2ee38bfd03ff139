"""Blocks as data: where each block's token mixer sits in a model and its config, and the model
with some mixers replaced (weights of everything else carried over).

A model's per-block mixers are an ordinary list in its config (``IsotropicConfig.mixers``,
``StageConfig.mixers``), so a replacement is a new config built like any zoo model, and the
transplanted model saves, loads and trains like one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..bench.flops import mixer_shapes
from ..mixers.base import AttentionMixer, get_mixer
from ..models.config import HierarchicalConfig, IsotropicConfig
from ..models.factory import build_model

# The replacements mixer surgery offers, in the order tables show them.
REPLACEMENTS = ("identity", "pooling", "token_ff", "mean_attention")


@dataclass(frozen=True)
class BlockSlot:
    """One block: its global index, stage (None in isotropic models), module path and mixer."""

    index: int
    stage: int | None
    module: str  # e.g. "blocks.3" or "stages.2.blocks.1"
    spec: tuple  # (mixer name, kwargs) from the config
    tokens: int  # sequence length the mixer sees (prefix tokens included)
    dim: int

    is_attention: bool = False  # the mixer is attention-family (the default cells)

    @property
    def mixer_name(self) -> str:
        return self.spec[0]

    @property
    def label(self) -> str:
        return f"block {self.index}" if self.stage is None else f"block {self.index} (stage {self.stage})"


def _specs(cfg) -> list[tuple[int | None, tuple]]:
    if isinstance(cfg, IsotropicConfig):
        return [(None, tuple(s) if not isinstance(s, str) else (s, {})) for s in cfg.mixers]
    if isinstance(cfg, HierarchicalConfig):
        return [(i, tuple(s) if not isinstance(s, str) else (s, {})) for i, st in enumerate(cfg.stages)
                for s in st.mixers]
    raise TypeError(f"expected a mixerlab model config, got {type(cfg).__name__}")


def block_slots(model: nn.Module) -> list[BlockSlot]:
    """The blocks of a mixerlab model, in forward order."""
    cfg = model.cfg
    shapes = mixer_shapes(model, (cfg.in_chans, *model.img_size))
    out, within = [], {}
    for i, (stage, spec) in enumerate(_specs(cfg)):
        if stage is None:
            module = f"blocks.{i}"
        else:
            j = within.get(stage, 0)
            within[stage] = j + 1
            module = f"stages.{stage}.blocks.{j}"
        sh = shapes[f"{module}.token_mixer"]
        mixer = model.get_submodule(f"{module}.token_mixer")
        out.append(BlockSlot(i, stage, module, spec, sh["tokens"], sh["dim"], isinstance(mixer, AttentionMixer)))
    return out


def with_mixers(cfg, replace: dict[int, tuple]):
    """``cfg`` with the mixer spec of each block index in ``replace`` swapped."""
    n = len(_specs(cfg))
    bad = sorted(i for i in replace if not 0 <= i < n)
    if bad:
        raise ValueError(f"block index(es) {bad} out of range: the model has {n} blocks (0-{n - 1})")
    if isinstance(cfg, IsotropicConfig):
        mixers = tuple(replace.get(i, s) for i, s in enumerate(cfg.mixers))
        return dataclasses.replace(cfg, mixers=mixers)
    stages, k = [], 0
    for st in cfg.stages:
        mixers = []
        for s in st.mixers:
            mixers.append(replace.get(k, s))
            k += 1
        stages.append(dataclasses.replace(st, mixers=tuple(mixers)))
    return dataclasses.replace(cfg, stages=tuple(stages))


def replacement_spec(model: nn.Module, slot: BlockSlot, name: str, *, keep_variable_size: bool = False,
                     token_ff_ratio: float = 4.0, pool_size: int = 3) -> tuple:
    """The mixer spec that replaces ``slot``'s mixer by ``name``; ``ValueError`` when the block
    cannot take it (saying why)."""
    if name not in REPLACEMENTS:
        raise ValueError(f"unknown replacement {name!r}; allowed: {', '.join(REPLACEMENTS)}")
    cls = get_mixer(name)
    if cls.fixed_num_tokens and keep_variable_size and not model.fixed_input_size:
        raise ValueError(f"{slot.label} cannot take {name}: it fixes the token count ({slot.tokens} "
                         "tokens) and the model must keep accepting other input sizes "
                         "(--keep-variable-size); choose identity or pooling")
    if name == "identity":
        return ("identity", {})
    if name == "pooling":
        return ("pooling", {"pool_size": pool_size})
    if name == "token_ff":
        return ("token_ff", {"mlp_ratio": token_ff_ratio})
    mixer = model.get_submodule(f"{slot.module}.token_mixer")
    vp = mixer.value_projection() if isinstance(mixer, AttentionMixer) else None
    if vp is None:
        raise ValueError(f"{slot.label} cannot take mean_attention: its mixer ({slot.mixer_name}) has "
                         "no attention map over the full token sequence to average")
    return ("mean_attention", {"num_heads": mixer.num_heads, "qkv_bias": vp[1] is not None})


def transplant(model: nn.Module, cfg, replaced: set[int]) -> nn.Module:
    """A model built from ``cfg`` with ``model``'s weights everywhere except the token mixers of
    the ``replaced`` blocks (and their pre-mixer norm when the new mixer asks for another kind)."""
    new = build_model(cfg, name=getattr(model, "zoo_name", None))
    new.to(next(model.parameters()).device)
    slots = {s.index: s for s in block_slots(new)}
    fresh = []
    for i in replaced:
        prefix = slots[i].module
        fresh.append(prefix + ".token_mixer.")
        if type(new.get_submodule(prefix + ".norm1")) is not type(model.get_submodule(prefix + ".norm1")):
            fresh.append(prefix + ".norm1.")
    old_sd, sd = model.state_dict(), new.state_dict()
    for k in sd:
        if any(k.startswith(p) for p in fresh):
            continue
        if k in old_sd and old_sd[k].shape == sd[k].shape:
            sd[k] = old_sd[k]
    new.load_state_dict(sd, strict=True)
    return new


def check_runs(model: nn.Module, what: str) -> None:
    """One forward on a blank image; a model that cannot run (e.g. a later layer reads a map the
    replaced layer no longer writes) is refused with ``ValueError`` naming ``what``."""
    x = torch.zeros(1, model.cfg.in_chans, *model.img_size, device=next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # any construction-time incompatibility, reported as bad input
        raise ValueError(f"{what}: the modified model does not run ({type(e).__name__}: {e})") from None
    finally:
        model.train(was)


def trainable_parameters(model: nn.Module, replaced: set[int]) -> list[nn.Parameter]:
    """The replaced blocks' token-mixer parameters and the norms of those blocks."""
    slots = {s.index: s for s in block_slots(model)}
    params = []
    for i in sorted(replaced):
        blk = model.get_submodule(slots[i].module)
        for part in ("token_mixer", "norm1", "norm2"):
            params += [p for p in blk.get_submodule(part).parameters()]
    return params


__all__ = ["BlockSlot", "REPLACEMENTS", "block_slots", "check_runs", "replacement_spec", "trainable_parameters",
           "transplant", "with_mixers"]
