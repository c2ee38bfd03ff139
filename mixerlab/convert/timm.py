"""Weight interoperability with timm: load timm state dicts into mixerlab models and export
mixerlab weights in timm's layout, with identical outputs.

Covered (timm model -> mixerlab zoo model): ``deit_{tiny,small,base}_patch16_224`` and
``vit_{tiny,small,base}_patch16_224`` -> ``deit_*``; ``convit_{tiny,small,base}`` -> ``convit_*``;
``poolformer_{s12,s24,s36,m36,m48}`` -> ``poolformer_*`` (MetaFormer v1);
``poolformerv2_{s12,...,m48}``, ``convformer_{s18,s36,m36,b36}``, ``caformer_{s18,...,b36}`` -> the
zoo models of the same names (MetaFormer v2, arXiv 2210.13452) (see ``TIMM_PAIRS``).

Layout facts used (read from timm 1.0 ``vision_transformer.py``, ``convit.py``, ``metaformer.py``;
no code taken):

* ViT/DeiT and ConViT keep the names mixerlab's isotropic models use, except that the token mixer
  lives under ``blocks.i.attn`` (mixerlab: ``blocks.i.token_mixer``). ConViT's GPSA parameters
  (``qk``, ``v``, ``pos_proj``, ``gating_param``) and its MHSA ``qkv`` (no bias) have the same
  names and shapes on both sides; its position table has no class slot and the class token joins
  before block ``local_up_to_layer`` = 10 (mixerlab: ``cls_token_at``).
* PoolFormer (timm's generic ``MetaFormer``): the channel MLP is a pair of 1x1 ``Conv2d``
  (weights (out, in, 1, 1); mixerlab: ``Linear`` (out, in)); LayerScale is
  ``layer_scale{1,2}.scale`` (mixerlab: ``ls{1,2}.gamma``); the head is ``head.norm`` (a
  LayerNorm2d, eps 1e-6, applied to the *pooled* vector) and ``head.fc``. The official PoolFormer
  (sail-sg/poolformer, arXiv 2111.11418) instead norms the map with GroupNorm(1) and then pools;
  the two heads differ numerically. mixerlab's default
  follows the paper; ``head_norm_first=False`` gives timm's head, and timm weights are only loaded
  into (or exported from) that variant.
* MetaFormer v2 (the same timm class with v2 options): stem ``stem.conv`` + ``stem.norm``,
  downsampling ``stages.i.downsample.norm`` (before the conv) + ``.conv``, residual scales
  ``res_scale{1,2}.scale`` (mixerlab: ``rs{1,2}.gamma``), StarReLU ``act.scale`` / ``act.bias``.
  timm keeps the conv-like stages in NCHW, so there the channel MLP and SepConv's pointwise
  layers are 1x1 convs (mixerlab: ``Linear``); in attention stages (CAFormer 3-4) they are
  linears on both sides. The head is ``head.norm`` (pooled vector, LayerNorm eps 1e-6) and
  ``head.fc`` (a Linear, or the MLP head ``head.fc.{fc1,norm,fc2}``; mixerlab ``head.{fc1,norm,fc2}``).
  timm's MLP head normalises with eps 1e-6 where the official code (sail-sg/metaformer) uses
  ``nn.LayerNorm``'s 1e-5: loading timm weights sets the model's ``head_hidden_norm_eps`` to 1e-6.

Loading is strict: the expected timm keys and shapes are derived from the model, and the first
missing, unexpected or mis-shaped key is named; nothing is loaded unless everything fits.
"""
from __future__ import annotations

import dataclasses
import os
import re

import torch
from torch import nn

from ..models.config import HierarchicalConfig, IsotropicConfig
from ..models.hierarchical import HierarchicalModel
from ..weights import read_state_dict, unwrap_state_dict
from ..zoo.registry import get_model_info

# timm model name -> mixerlab zoo name.
TIMM_PAIRS: dict[str, str] = {
    "deit_tiny_patch16_224": "deit_tiny",
    "deit_small_patch16_224": "deit_small",
    "deit_base_patch16_224": "deit_base",
    "vit_tiny_patch16_224": "deit_tiny",
    "vit_small_patch16_224": "deit_small",
    "vit_base_patch16_224": "deit_base",
    "convit_tiny": "convit_tiny",
    "convit_small": "convit_small",
    "convit_base": "convit_base",
    "poolformer_s12": "poolformer_s12",
    "poolformer_s24": "poolformer_s24",
    "poolformer_s36": "poolformer_s36",
    "poolformer_m36": "poolformer_m36",
    "poolformer_m48": "poolformer_m48",
    **{f"poolformerv2_{s}": f"poolformerv2_{s}" for s in ("s12", "s24", "s36", "m36", "m48")},
    **{f"{f}_{s}": f"{f}_{s}" for f in ("convformer", "caformer") for s in ("s18", "s36", "m36", "b36")},
}

FAMILY_TITLES = {"vit": "ViT/DeiT", "convit": "ConViT",
                 "poolformer": "PoolFormer v1 (MetaFormer v1, timm MetaFormer)",
                 "metaformer_v2": "MetaFormer v2 (PoolFormerV2/ConvFormer/CAFormer, timm MetaFormer)"}

# Model options a mixerlab model needs to reproduce timm's outputs, per family.
TIMM_OPTIONS = {"vit": {}, "convit": {}, "poolformer": {"head_norm_first": False},
                "metaformer_v2": {"head_hidden_norm_eps": 1e-6}}
V2_MIXERS = {  # mixer -> the keyword arguments timm's v2 models fix
    "pooling": {"pool_size": 3},
    "sepconv": {"expansion_ratio": 2.0, "kernel_size": 7, "bias": False, "act": "starrelu"},
    "attention": {"head_dim": 32, "qkv_bias": False, "proj_bias": False, "sr_ratio": 1},
}


# -- which mixerlab models have a timm counterpart --------------------------------------------
def _spec(spec) -> tuple[str, dict]:
    return (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))


def _model_label(model: nn.Module) -> str:
    return getattr(model, "zoo_name", None) or type(model).__name__


def timm_family(model: nn.Module) -> str:
    """``'vit'``, ``'convit'``, ``'poolformer'`` (v1) or ``'metaformer_v2'``: the timm
    architecture ``model`` corresponds to.

    Raises ``ValueError`` saying why when the model has no timm counterpart (another mixer, a
    norm, stem, class-token placement or head that timm's models do not have).
    """
    cfg = getattr(model, "cfg", None)
    label = _model_label(model)

    def no(reason: str):
        raise ValueError(f"{label} has no timm counterpart: {reason}; covered timm models: "
                         f"{sorted(TIMM_PAIRS)}")

    if isinstance(cfg, IsotropicConfig):
        names = [_spec(s) for s in cfg.mixers]
        for i, (n, kw) in enumerate(names):
            if n not in ("attention", "gpsa"):
                no(f"block {i} uses the {n!r} mixer (timm's ViT/DeiT/ConViT use attention or gpsa)")
            if n == "attention" and kw.get("sr_ratio", 1) != 1:
                no(f"block {i} uses spatial-reduction attention (sr_ratio={kw['sr_ratio']})")
        if cfg.stem != "patch":
            no(f"stem={cfg.stem!r} (timm: a patch-embedding conv)")
        if not cfg.class_token or not cfg.pos_embed or cfg.global_pool != "token":
            no("it needs a class token, a position embedding and global_pool='token'")
        b = cfg.block
        if b.norm != "layernorm" or b.scale_adjustment is not None or b.mlp_first:
            no(f"block options norm={b.norm!r}, scale_adjustment={b.scale_adjustment}, "
               f"mlp_first={b.mlp_first} (timm: LayerNorm eps 1e-6, none, False)")
        n_gpsa = sum(n == "gpsa" for n, _ in names)
        if n_gpsa == 0:
            if cfg.cls_token_at != 0 or not cfg.pos_embed_cls_slot:
                no("ViT/DeiT put the class token first with a position slot of its own")
            return "vit"
        if any(n != "gpsa" for n, _ in names[:n_gpsa]):
            no("ConViT's GPSA blocks must come first, then the attention blocks")
        if cfg.cls_token_at != n_gpsa or cfg.pos_embed_cls_slot:
            no(f"ConViT adds the class token after the last GPSA block (cls_token_at={n_gpsa}, "
               "no class slot in the position table)")
        if b.layer_scale_init is not None:
            no("timm's ConViT has no LayerScale")
        return "convit"
    if isinstance(cfg, HierarchicalConfig) and _is_v2(cfg):
        return _check_v2(cfg, no)
    if isinstance(cfg, HierarchicalConfig):
        for i, st in enumerate(cfg.stages):
            for n, kw in map(_spec, st.mixers):
                if n != "pooling" or kw.get("pool_size", 3) != 3:
                    no(f"stage {i} uses the {n!r} mixer {kw or ''} (timm's PoolFormer: "
                       "pooling, pool_size 3)".replace(" {}", ""))
            if st.pos_embed is not None:
                no(f"stage {i} has a position embedding")
        b = cfg.block
        if b.norm != "groupnorm1" or b.layer_scale_init is None or b.scale_adjustment is not None \
                or b.mlp_first:
            no("timm's PoolFormer uses GroupNorm(1) norms and LayerScale in every block")
        if tuple(cfg.stem) != (7, 4, 2) or tuple(cfg.downsample) != (3, 2, 1) or \
                cfg.embed_norm is not None:
            no(f"stem {tuple(cfg.stem)}, downsampling {tuple(cfg.downsample)}, embed_norm "
               f"{cfg.embed_norm!r} (timm: (7, 4, 2), (3, 2, 1), None)")
        return "poolformer"
    no("not a mixerlab zoo backbone (no IsotropicConfig/HierarchicalConfig)")
    raise AssertionError  # unreachable


def _is_v2(cfg: HierarchicalConfig) -> bool:
    """The MetaFormer v2 layout: a norm before each downsampling conv (v1 has none)."""
    return cfg.downsample_norm_first and cfg.embed_norm is not None


def _check_v2(cfg: HierarchicalConfig, no) -> str:
    for i, st in enumerate(cfg.stages):
        for n, kw in map(_spec, st.mixers):
            if n not in V2_MIXERS:
                no(f"stage {i} uses the {n!r} mixer (timm's MetaFormer v2 models: "
                   f"{', '.join(sorted(V2_MIXERS))})")
            if n == "attention" and "num_heads" in kw:
                kw["head_dim"] = st.dim // kw.pop("num_heads")
            fixed = V2_MIXERS[n]
            merged = {**fixed, **kw}
            bad = {k: v for k, v in merged.items() if k not in fixed or fixed[k] != v}
            if bad:
                no(f"stage {i}: {n} with {bad} (timm's MetaFormer v2: {fixed})")
        if len({_spec(m)[0] for m in st.mixers}) != 1:
            no(f"stage {i} mixes token mixers (timm: one mixer per stage)")
        if st.pos_embed is not None:
            no(f"stage {i} has a position embedding")
    b = cfg.block
    if b.norm not in ("groupnorm1_nobias", "layernorm_nobias") or b.layer_scale_init is not None \
            or b.scale_adjustment is not None or b.mlp_first or b.mlp_act != "starrelu" or b.mlp_bias:
        no("timm's MetaFormer v2 blocks use bias-free GroupNorm(1) or LayerNorm (eps 1e-6), a "
           "bias-free StarReLU MLP and no LayerScale")
    if tuple(cfg.stem) != (7, 4, 2) or tuple(cfg.downsample) != (3, 2, 1) or \
            cfg.embed_norm != "layernorm_nobias" or cfg.head_norm_first:
        no(f"stem {tuple(cfg.stem)}, downsampling {tuple(cfg.downsample)}, embed_norm "
           f"{cfg.embed_norm!r}, head_norm_first={cfg.head_norm_first} (timm v2: (7, 4, 2), "
           "(3, 2, 1), 'layernorm_nobias', False)")
    if any(st.mlp_ratio != 4 for st in cfg.stages):
        no("timm's MetaFormer uses MLP ratio 4")
    return "metaformer_v2"


# -- key mapping ------------------------------------------------------------------------------
_HIER_LS = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.ls([12])\.gamma$")
_HIER_MLP = re.compile(r"^stages\.\d+\.blocks\.\d+\.mlp\.fc[12]\.weight$")
_HIER_HEAD = {"norm.weight": "head.norm.weight", "norm.bias": "head.norm.bias",
              "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}
_V2_RS = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.rs([12])\.gamma$")
_V2_CONV1x1 = re.compile(r"^stages\.(\d+)\.blocks\.\d+\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$")


def _to_timm_key(family: str, key: str, nchw_stages=frozenset()) -> tuple[str, bool]:
    """mixerlab key -> (timm key, whether the tensor is a 1x1-conv weight in timm).
    ``nchw_stages``: the v2 stages timm runs in NCHW (no attention), where linears are 1x1 convs."""
    if family in ("vit", "convit"):
        return re.sub(r"^(blocks\.\d+)\.token_mixer\.", r"\1.attn.", key), False
    if family == "metaformer_v2":
        m = _V2_RS.match(key)
        if m:
            return f"{m.group(1)}.res_scale{m.group(2)}.scale", False
        if key in ("norm.weight", "norm.bias"):
            return f"head.{key}", False
        if key.startswith("head."):
            return f"head.fc.{key[len('head.'):]}", False
        m = _V2_CONV1x1.match(key)
        return key, bool(m and int(m.group(1)) in nchw_stages)
    m = _HIER_LS.match(key)
    if m:
        return f"{m.group(1)}.layer_scale{m.group(2)}.scale", False
    if key in _HIER_HEAD:
        return _HIER_HEAD[key], False
    return key, bool(_HIER_MLP.match(key))


def _key_plan(model: nn.Module, family: str) -> list[tuple[str, str, bool, tuple]]:
    """(mixerlab key, timm key, conv1x1, timm shape) for every entry of the model's state dict."""
    plan = []
    nchw = frozenset()
    if family == "metaformer_v2":
        nchw = frozenset(i for i, st in enumerate(model.cfg.stages)
                         if _spec(st.mixers[0])[0] != "attention")
    for k, v in model.state_dict().items():
        tk, conv = _to_timm_key(family, k, nchw)
        shape = tuple(v.shape) + ((1, 1) if conv else ())
        plan.append((k, tk, conv, shape))
    return plan


# -- recognising a timm state dict ------------------------------------------------------------
def detect_timm_family(sd: dict) -> str | None:
    """The timm family a state dict comes from (``vit``, ``convit``, ``poolformer``,
    ``metaformer_v2``), or None when it does not look like one of timm's covered layouts (e.g. a
    mixerlab state dict)."""
    keys = list(sd)
    if any(re.search(r"\.res_scale[12]\.scale$", k) for k in keys) or (
            "stem.norm.weight" in sd and any(k.startswith("head.fc.") for k in keys)):
        return "metaformer_v2"
    if any(k.endswith(".attn.gating_param") for k in keys):
        return "convit"
    if "cls_token" in sd and any(re.match(r"^blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys):
        return "vit"
    if "head.fc.weight" in sd or any(re.search(r"\.layer_scale[12]\.scale$", k) for k in keys):
        return "poolformer"
    return None


def is_timm_state_dict(sd: dict) -> bool:
    return detect_timm_family(sd) is not None


def _signature_of_sd(sd: dict, family: str):
    try:
        if family in ("vit", "convit"):
            depth = len({int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))})
            patch = tuple(sd["patch_embed.proj.weight"].shape[-2:])
            return family, int(sd["cls_token"].shape[-1]), depth, patch[0], int(sd["pos_embed"].shape[1])
        stages = {}
        for k in sd:
            m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight$", k)
            if m:
                stages.setdefault(int(m.group(1)), []).append(int(sd[k].shape[0]))
        dims = tuple(v[0] for _, v in sorted(stages.items()))
        depths = tuple(len(v) for _, v in sorted(stages.items()))
        kinds = tuple("attention" if f"stages.{i}.blocks.0.token_mixer.qkv.weight" in sd else
                      "sepconv" if f"stages.{i}.blocks.0.token_mixer.pwconv1.weight" in sd else
                      "pooling" for i in sorted(stages))
        return family, dims, depths, kinds
    except (KeyError, IndexError, AttributeError):
        return None


def _signature_of_cfg(cfg, family: str):
    if family in ("vit", "convit"):
        h, w = cfg.img_size
        n_pos = (h // cfg.patch_size) * (w // cfg.patch_size) + (1 if family == "vit" else 0)
        return family, cfg.dim, len(cfg.mixers), cfg.patch_size, n_pos
    return (family, tuple(s.dim for s in cfg.stages), tuple(len(s.mixers) for s in cfg.stages),
            tuple(_spec(s.mixers[0])[0] for s in cfg.stages))


def guess_model_name(sd: dict) -> str | None:
    """The covered mixerlab zoo model whose timm counterpart produced ``sd``, or None."""
    family = detect_timm_family(sd)
    if family is None:
        return None
    sig = _signature_of_sd(sd, family)
    for name in dict.fromkeys(TIMM_PAIRS.values()):
        cfg = get_model_info(name).config
        if timm_family(_ConfigView(cfg, name)) == family and _signature_of_cfg(cfg, family) == sig:
            return name
    return None


def timm_names_for(mixerlab_name: str) -> list[str]:
    return [t for t, m in TIMM_PAIRS.items() if m == mixerlab_name]


# -- load / export ----------------------------------------------------------------------------
def set_head_norm_first(model: nn.Module, value: bool) -> None:
    """Switch a hierarchical model's head order in place (see
    ``HierarchicalModel.set_head_norm_first``); other models have no such head."""
    if not isinstance(model, HierarchicalModel):
        raise ValueError(f"{_model_label(model)} is not a hierarchical model: head_norm_first "
                         "does not apply")
    model.set_head_norm_first(value)


def _as_state_dict(state_dict, what: str | None):
    if isinstance(state_dict, (str, os.PathLike)):
        return read_state_dict(state_dict), what or f"weights {os.fspath(state_dict)}"
    return unwrap_state_dict(state_dict), what or "the state dict"


def load_timm_weights(model: nn.Module, state_dict, *, adapt_head: bool = False,
                      what: str | None = None) -> nn.Module:
    """Load a timm state dict (tensors, or a ``.pth``/``.bin``/``.safetensors`` path) into ``model``.

    Keys are renamed and 1x1-conv weights reshaped (see the module docstring). Everything is
    checked before anything is loaded: a state dict of another family, size or class count
    raises ``ValueError`` naming the first mismatched key and its shapes.

    Args:
        model: a mixerlab model with a timm counterpart (``timm_family``).
        state_dict: timm weights.
        adapt_head: for PoolFormer, switch a model built with the official head
            (``head_norm_first=True``) to timm's head in place instead of refusing.
            ``create_model(name, pretrained=PATH)`` does this.
        what: how to name the weights in error messages.

    Returns:
        ``model``, with the weights loaded.
    """
    sd, what = _as_state_dict(state_dict, what)
    family = timm_family(model)
    label = _model_label(model)
    found = detect_timm_family(sd)
    if found is None:
        raise ValueError(f"{what} is not a timm ViT/DeiT, ConViT or PoolFormer (v1, v2, ConvFormer, "
                         "CAFormer) state dict "
                         f"(first keys: {list(sd)[:3]})")
    if found != family:
        guess = guess_model_name(sd)
        hint = f" (it looks like timm {'/'.join(timm_names_for(guess))})" if guess else ""
        raise ValueError(f"{what} holds a timm {FAMILY_TITLES[found]} model{hint}, but "
                         f"{label} is a {FAMILY_TITLES[family]} model")
    plan = _key_plan(model, family)
    for _, tk, _, shape in plan:
        if tk not in sd:
            raise ValueError(f"{what} does not fit {label}: missing key {tk!r} "
                             f"(expected shape {shape}){_size_hint(sd, label)}")
        if tuple(sd[tk].shape) != shape:
            raise ValueError(f"{what} does not fit {label}: {tk!r} has shape "
                             f"{tuple(sd[tk].shape)}, {label} expects {shape}{_size_hint(sd, label)}")
    expected = {tk for _, tk, _, _ in plan}
    extra = [k for k in sd if k not in expected]
    if extra:
        raise ValueError(f"{what} does not fit {label}: unexpected key {extra[0]!r} "
                         f"(shape {tuple(sd[extra[0]].shape)}; {len(extra)} unexpected in all)"
                         f"{_size_hint(sd, label)}")
    if family == "poolformer" and model.head_norm_first:
        if not adapt_head:
            raise ValueError(
                f"{label} was built with the official PoolFormer head (head_norm_first=True: "
                "GroupNorm on the map, then pooling); timm pools first and then applies a "
                "LayerNorm, so timm's weights cannot reproduce timm's logits in this model. "
                f"Build it with mixerlab.create_model({label!r}, head_norm_first=False), or use "
                f"mixerlab.create_model({label!r}, pretrained=PATH), which does so")
        set_head_norm_first(model, False)
    if family == "metaformer_v2":  # timm's MLP head: LayerNorm eps 1e-6 (official: 1e-5)
        model.set_head_hidden_norm_eps(TIMM_OPTIONS[family]["head_hidden_norm_eps"])
    mapped = {k: (sd[tk].reshape(sd[tk].shape[:2]) if conv else sd[tk]) for k, tk, conv, _ in plan}
    model.load_state_dict(mapped, strict=True)
    return model


def _size_hint(sd: dict, label: str) -> str:
    guess = guess_model_name(sd)
    if guess and guess != label:
        return f" (the state dict looks like timm {'/'.join(timm_names_for(guess))} -> mixerlab {guess})"
    return ""


def export_timm_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as a timm state dict (for ``timm.create_model(<timm name>)``).

    PoolFormer models must use timm's head (``head_norm_first=False``): the official head norms
    before pooling, which no timm PoolFormer can reproduce, so it is refused.
    """
    family = timm_family(model)
    if family == "poolformer" and model.head_norm_first:
        label = _model_label(model)
        raise ValueError(
            f"{label} uses the official PoolFormer head (head_norm_first=True: GroupNorm on the "
            "map, then pooling); timm's PoolFormer pools first and then applies a LayerNorm, so "
            "these weights cannot give the same outputs in timm. Only a model built (and "
            f"trained) with mixerlab.create_model({label!r}, head_norm_first=False) can be exported")
    own = model.state_dict()
    return {tk: own[k].detach().reshape(shape).clone() if conv else own[k].detach().clone()
            for k, tk, conv, shape in _key_plan(model, family)}


def timm_family_of_config(cfg, name: str) -> str:
    """``timm_family`` of the model a config would build (without building it)."""
    return timm_family(_ConfigView(cfg, name))


class _ConfigView:
    """Just enough of a model for ``timm_family`` (checks a config without building it)."""

    def __init__(self, cfg, name: str):
        self.cfg, self.zoo_name = cfg, name
