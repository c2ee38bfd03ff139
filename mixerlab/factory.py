"""``create_model`` (zoo name + overrides -> module) and the weight loaders that need the zoo.

Stands above the zoo, the models, the weight files and the timm conversion, which import none of
this module.
"""
from __future__ import annotations

import os
import warnings

from torch import nn

from .convert.timm import (FAMILY_TITLES, TIMM_OPTIONS, TIMM_PAIRS, detect_timm_family,
                           guess_model_name, is_timm_state_dict, load_timm_weights,
                           timm_family_of_config)
from .models.config import config_from_dict
from .models.factory import build_model
from .weights import apply_saved_options, check_state_dict, read_weights, unwrap_state_dict
from .zoo.registry import get_model_info


def create_model(name: str, *, pretrained: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """Build zoo model ``name`` with overrides.

    Args:
        name: a name from ``list_models()`` (the ``mixerlab_`` prefix is accepted too).
        pretrained: optional path to a local weight file (a mixerlab checkpoint or weight file, or
            a timm state dict); nothing is downloaded, so ``True`` is refused with that advice.
        **overrides: the zoo builder's arguments (``depth=6, num_heads=4``; per-stage lists for
            hierarchical models; LaViT's ``layout``) and config fields (``num_classes=10,
            in_chans=1, img_size=32, drop_path_rate=0.1``). Unknown keys raise ``TypeError``
            listing the allowed ones.
    """
    if isinstance(pretrained, bool):  # timm's pretrained=True downloads; mixerlab reads a local file only
        if pretrained:
            raise ValueError(
                f"create_model({name!r}, pretrained=True): mixerlab downloads nothing; pretrained= takes a local "
                "weight file: a mixerlab weight file or training checkpoint, or a timm checkpoint "
                f"(e.g. create_model({name!r}, pretrained='convit_tiny.pth'), the file of "
                "timm.create_model('convit_tiny', pretrained=True).state_dict() saved with torch.save)")
        pretrained = None
    entry = get_model_info(name)
    model = build_model(entry.resolve(**overrides), name=entry.name)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: nn.Module, path_or_sd) -> nn.Module:
    """Load weights (a file path or a state dict) strictly into ``model``.

    A timm state dict (recognised by its key names) is converted with ``load_timm_weights``; for
    PoolFormer the model is switched to timm's head (``head_norm_first=False``) in place, so that
    it reproduces timm's logits. Options recorded in a ``save_weights`` file are applied the same
    way; a file that records its full model config warns when this model's config differs.
    """
    if isinstance(path_or_sd, (str, os.PathLike)):
        sd, meta = read_weights(path_or_sd)
        what = f"weights {os.fspath(path_or_sd)}"
    else:
        sd, meta, what = unwrap_state_dict(path_or_sd), {}, "state dict"
    if is_timm_state_dict(sd):
        return load_timm_weights(model, sd, adapt_head=True, what=what)
    check_state_dict(model, sd, what=what)
    apply_saved_options(model, meta, what=what)
    saved = _saved_config(meta, what)
    if saved is not None and saved != model.cfg:
        warnings.warn(f"{what} were saved from a model whose config differs from this one's (same "
                      "shapes); mixerlab.engine.build_from_checkpoint rebuilds the saved model exactly",
                      stacklevel=2)
    model.load_state_dict(sd, strict=True)
    return model


def model_from_weights(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model a ``save_weights`` file records (its ``model_config`` metadata: a zoo
    model, an override of one, or a model no zoo entry describes, e.g. one ``mixerlab ablate``
    wrote) and load its weights strictly. A file without that metadata is refused with the way out."""
    sd, meta = read_weights(path)
    what = f"weights {os.fspath(path)}"
    cfg = _saved_config(meta, what)
    if cfg is None:
        raise ValueError(f"{what} record no model config (written by a timm or an older mixerlab "
                         "save); use create_model(NAME, pretrained=PATH) or create_from_timm(PATH)")
    model = build_model(cfg, name=meta.get("model"))
    check_state_dict(model, sd, what=what)
    model.load_state_dict(sd, strict=True)
    return model


def _saved_config(meta: dict, what: str):
    import json
    if "model_config" not in meta:
        return None
    try:
        return config_from_dict(json.loads(meta["model_config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{what}: unreadable 'model_config' metadata ({e})") from None


def create_from_timm(state_dict, name: str | None = None, *, what: str | None = None,
                     **overrides) -> nn.Module:
    """Build the mixerlab model matching a timm state dict (``name`` guessed when None), with the
    options timm's architecture needs (PoolFormer: ``head_norm_first=False``), and load it.
    ``what`` names the weights in error messages; ``overrides`` are further model options."""
    if isinstance(state_dict, (str, os.PathLike)):
        what = what or f"weights {os.fspath(state_dict)}"
        sd = read_weights(state_dict)[0]
    else:
        sd, what = unwrap_state_dict(state_dict), what or "the state dict"
    if name is None:
        name = guess_model_name(sd)
        if name is None:
            fam = detect_timm_family(sd)
            kind = f"a timm {FAMILY_TITLES[fam]} state dict" if fam else "not a covered timm state dict"
            raise ValueError(f"cannot tell which mixerlab model {what} belongs to ({kind} of no "
                             f"covered size); pass the model name. Covered: {sorted(TIMM_PAIRS)}")
    family = timm_family_of_config(get_model_info(name).config, name)
    model = create_model(name, **{**TIMM_OPTIONS[family], **overrides})
    return load_timm_weights(model, sd, what=what)
