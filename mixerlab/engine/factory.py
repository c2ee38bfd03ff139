"""Where the engine gets its models: a new one for a run (zoo name + the run's data shape), or the
one a checkpoint was trained with (:func:`build_from_checkpoint`, the only rebuild path: resume,
eval, analyze, compare and convert all use it).

A checkpoint stores the resolved model config (``model.cfg.to_dict()``), so a model is rebuilt
from that value, as nanoGPT rebuilds from the ``model_args`` its checkpoint carries: changing a
zoo default later (even one that keeps every shape, e.g. ``locality_strength``) does not change
the model an old checkpoint rebuilds. Checkpoints written before the config was stored are rebuilt
from their zoo name and overrides, with a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from ..models.config import config_from_dict
from ..models.factory import build_model
from ..models.timm_model import TIMM_CONFIG_FORMAT, TimmModel, TimmModelConfig, is_timm_name, timm_model_config
from ..zoo.registry import get_model_info
from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, read_config, read_model_config,
                         read_state, resolve_checkpoint)
from .config import TrainConfig, config_from_dict as train_config_from_dict


def model_for_run(cfg: TrainConfig, *, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised zoo model ``cfg.model`` for ``num_classes`` classes of ``in_chans``-
    channel ``cfg.img_size`` images, with ``cfg.model_args`` (builder arguments or config fields).
    Unknown names/keys raise ``ValueError``/``TypeError`` from the zoo. ``timm:NAME`` builds timm's
    model ``NAME`` (random weights; ``model_args`` are timm's keywords), see ``models/timm_model.py``."""
    if is_timm_name(cfg.model):
        return TimmModel(timm_model_config(cfg.model, num_classes=num_classes, in_chans=in_chans,
                                           img_size=cfg.img_size, drop_path_rate=cfg.drop_path_rate,
                                           model_args=cfg.model_args))
    entry = get_model_info(cfg.model)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=cfg.img_size,
                  drop_path_rate=cfg.drop_path_rate)
    kwargs.update(cfg.model_args or {})
    return build_model(entry.resolve(**kwargs), name=entry.name)


def _legacy_model(train_cfg: dict, state: dict, where) -> nn.Module:
    warnings.warn(f"{where} was written before checkpoints stored their model config; rebuilding "
                  f"{train_cfg.get('model')!r} from today's zoo defaults (a changed default changes "
                  "the model)", stacklevel=3)
    cfg = train_config_from_dict(train_cfg)
    di = state.get("data_info", {})
    if "num_classes" not in di:
        raise CheckpointError(f"{where} records neither its model config nor its data shape")
    return model_for_run(cfg, num_classes=di["num_classes"], in_chans=di["in_chans"])


def build_from_checkpoint(source: str | Path | Checkpoint, *, weights: str | None = "model",
                          ) -> tuple[nn.Module, Checkpoint | None]:
    """Rebuild the model a training checkpoint holds.

    Args:
        source: a checkpoint file, a run folder (its ``best``, else ``last``) or a loaded
            :class:`Checkpoint`.
        weights: ``"model"`` or ``"ema"``: load those weights (strict); None: build only (reads
            just the header; under ``torch.device("meta")`` nothing is allocated).

    Returns:
        ``(model, checkpoint)``; ``checkpoint`` is None when ``weights`` is None. The model is
        in training mode on the CPU, as ``create_model`` returns it.
    """
    if weights not in ("model", "ema", None):
        raise ValueError(f"weights={weights!r}; allowed: 'model', 'ema', None")
    if isinstance(source, Checkpoint):
        ckpt, where = source, source.path
    else:
        where = resolve_checkpoint(source)
        ckpt = load_checkpoint(where) if weights is not None else None
    if ckpt is not None:
        model_config, train_cfg, state = ckpt.model_config, ckpt.config, ckpt.state
    else:
        model_config, train_cfg, state = read_model_config(where), read_config(where), read_state(where)
    if model_config is None:
        model = _legacy_model(train_cfg, state, where)
    else:
        try:
            if isinstance(model_config, dict) and model_config.get("format") == TIMM_CONFIG_FORMAT:
                model = TimmModel(TimmModelConfig.from_dict(model_config))
            else:
                model = build_model(config_from_dict(model_config), name=train_cfg.get("model"))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {where} has an unreadable model config: {e}") from None
    if weights is not None:
        if weights == "ema" and not ckpt.has_ema:
            raise CheckpointError(f"checkpoint {where} holds no EMA weights (trained with ema_decay=null)")
        ckpt.load_model(model, prefix=weights)
    return model, ckpt
