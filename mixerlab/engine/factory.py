"""Where every model comes from: one resolver, :func:`open_model`.

A *source* is any of

* a zoo name (``deit_micro``; ``mixerlab_`` prefix accepted) -> a new model (random init, or
  ``pretrained=FILE``);
* ``timm:NAME`` -> timm's architecture ``NAME`` wrapped for the engine (random init,
  ``models/timm_model.py``);
* a run folder or a training checkpoint (``mixerlab train``) -> the model it was trained with,
  rebuilt from the config the checkpoint stores (:func:`build_from_checkpoint`);
* a mixerlab weight file (``save_weights``, ``mixerlab convert``, ``mixerlab ablate``) -> the model
  its metadata records;
* a timm checkpoint of a covered architecture -> the matching zoo model with timm's weights;
* a bare state dict (tensors, no metadata) -> the zoo model ``name=`` names, loaded strictly.

What a file is comes from its contents (the safetensors header's ``format``, the metadata a weight
file carries, timm's key names), never from an error message; :func:`identify` is that one test.
``train`` (new runs through :func:`model_for_run`, resumed ones through the checkpoint), ``eval``,
``analyze``, ``ablate``, ``convert``, ``compare`` and ``bench`` all open models here.

The run config owns the input shape: ``img_size`` and ``drop_path_rate`` are ``TrainConfig``
fields and ``in_chans`` / ``num_classes`` come from the data, so a ``model_args`` entry that
contradicts them is refused (:func:`check_model_args`) instead of silently building a model for
other data.

A checkpoint stores the resolved model config (``model.cfg.to_dict()``), so a model is rebuilt
from that value, as nanoGPT rebuilds from the ``model_args`` its checkpoint carries: changing a
zoo default later (even one that keeps every shape, e.g. ``locality_strength``) does not change
the model an old checkpoint rebuilds. Checkpoints written before the config was stored are rebuilt
from their zoo name and overrides, with a warning.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..convert.timm import is_timm_state_dict
from ..factory import create_from_timm, create_model, load_pretrained, model_from_weights
from ..models.config import config_from_dict
from ..models.factory import build_model
from ..models.timm_model import TimmModel, is_timm_name, timm_model_config
from ..weights import read_weights
from ..zoo.registry import get_model_info
from .checkpoint import (FORMAT as CHECKPOINT_FORMAT, Checkpoint, CheckpointError, load_checkpoint,
                         read_config, read_model_config, read_state, resolve_checkpoint)
from .config import RUN_OWNED, TrainConfig, check_model_args, config_from_dict as train_config_from_dict

ZOO, TIMM, RUN_FOLDER, CHECKPOINT, WEIGHTS, TIMM_CHECKPOINT, STATE_DICT = (
    "zoo", "timm", "run folder", "training checkpoint", "mixerlab weights", "timm checkpoint", "state dict")
KINDS = (ZOO, TIMM, RUN_FOLDER, CHECKPOINT, WEIGHTS, TIMM_CHECKPOINT, STATE_DICT)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """What :func:`open_model` opened.

    Attributes:
        kind: one of ``KINDS``.
        name: the zoo name (or ``timm:NAME``) of the model built.
        path: the file read (a run folder's checkpoint file), None for a name.
        weights: where the weights came from: ``"random init"``, ``"model"`` / ``"ema"`` (of a
            checkpoint), or the weight file's path.
        train_config: the ``TrainConfig`` a training run stored (run folders and checkpoints).
        state: the training state stored with it (epoch, step, ``data_info``).
    """

    kind: str
    name: str
    path: str | None = None
    weights: str = "random init"
    train_config: dict | None = None
    state: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = field(default=None, repr=False, compare=False)

    @property
    def data(self) -> str | None:
        return (self.train_config or {}).get("data")

    @property
    def data_dir(self) -> str | None:
        return (self.train_config or {}).get("data_dir")


def _safetensors_metadata(path: Path) -> dict | None:
    """The header metadata of a safetensors file; None when the file is not one."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # not a (readable) safetensors file: the full reader below says what it is
        return None


def _refuse_dense(file: Path, source: Path) -> None:
    """A detection / segmentation run (``mixerlab dense``) holds a detector, not a classifier."""
    if read_config(file).get("kind") == "dense":
        raise ValueError(f"{source} is a detection/segmentation run (mixerlab dense), not a classification "
                         f"model; evaluate it with `mixerlab dense eval {source}`")


def identify(source: str | os.PathLike) -> str:
    """The kind of ``source`` (one of ``KINDS``) from its contents, without building a model.

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError`` for a file that
    is none of the kinds and for an unknown model name (with close matches)."""
    if isinstance(source, str) and is_timm_name(source):
        return TIMM
    path = Path(source)
    if path.is_dir():
        _refuse_dense(resolve_checkpoint(path), path)  # CheckpointError when the folder holds no checkpoint
        return RUN_FOLDER
    if path.is_file():
        meta = _safetensors_metadata(path) if path.suffix == ".safetensors" else None
        if meta is not None and meta.get("format") == CHECKPOINT_FORMAT:
            _refuse_dense(path, path)
            return CHECKPOINT
        if meta is not None and meta.get("format", "").startswith("mixerlab-checkpoint"):
            raise ValueError(f"{path} is a training checkpoint of an unsupported format {meta['format']!r} "
                             f"(this mixerlab reads {CHECKPOINT_FORMAT!r})")
        sd, meta = read_weights(path)  # ValueError for a truncated or foreign file, naming it
        if "model_config" in meta or meta.get("model"):
            return WEIGHTS
        if is_timm_state_dict(sd):
            return TIMM_CHECKPOINT
        return STATE_DICT  # tensors without metadata: which model they belong to must be named
    if isinstance(source, os.PathLike) or path.suffix in WEIGHT_SUFFIXES or os.sep in str(source):
        raise FileNotFoundError(f"model source not found: {path} (neither a file nor a folder)")
    get_model_info(str(source))  # ValueError naming close zoo names
    return ZOO


def open_model(source: str | os.PathLike, *, weights: str | None = "model",
               pretrained: str | os.PathLike | None = None, name: str | None = None,
               **overrides) -> tuple[nn.Module, ModelSource]:
    """The model a source names, and what it was (:class:`ModelSource`). See the module docstring.

    Args:
        source: a zoo name, ``timm:NAME``, a run folder, a training checkpoint, a mixerlab weight
            file or a timm checkpoint.
        weights: of a run folder or training checkpoint: ``"model"``, ``"ema"``, or None (build
            only, reading the header: under ``torch.device("meta")`` nothing is allocated).
        pretrained: for a zoo name: a weight file to load (mixerlab or timm layout).
        name: the zoo model expected (a timm checkpoint: which model it is, when its shapes do not
            tell; any other file: a check that it holds that model).
        **overrides: for a zoo name: builder arguments and config fields (``create_model``); for
            ``timm:NAME``: ``num_classes``, ``in_chans``, ``img_size``, ``drop_path_rate`` and timm's
            own keywords; for a timm checkpoint or a weight file recording only its zoo name:
            options of the zoo model. A trained model (run folder, checkpoint, weight file with its
            config) is rebuilt exactly as saved and takes none.
    """
    kind = identify(source)
    if weights not in ("model", "ema", None):
        raise ValueError(f"weights={weights!r}; allowed: 'model', 'ema', None")
    if pretrained is not None and kind != ZOO:
        raise ValueError(f"pretrained= applies to a zoo name, not to a {kind} ({source})")
    if kind in (RUN_FOLDER, CHECKPOINT, WEIGHTS) and overrides and not (kind == WEIGHTS and _zoo_only_weights(source)):
        raise TypeError(f"{source} is a {kind}: the model is rebuilt exactly as it was saved, so options "
                        f"{sorted(overrides)} cannot be applied")
    if kind == ZOO:
        model = create_model(str(source), pretrained=pretrained, **overrides)
        origin = ModelSource(ZOO, model.zoo_name, weights=os.fspath(pretrained) if pretrained else "random init")
    elif kind == TIMM:
        shape = {k: overrides.pop(k) for k in RUN_OWNED if k in overrides}
        cfg = timm_model_config(str(source), num_classes=shape.get("num_classes", 1000),
                                in_chans=shape.get("in_chans", 3), img_size=shape.get("img_size"),
                                drop_path_rate=shape.get("drop_path_rate", 0.0), model_args=overrides)
        model = TimmModel(cfg)
        origin = ModelSource(TIMM, model.zoo_name)
    elif kind in (RUN_FOLDER, CHECKPOINT):
        model, ckpt = build_from_checkpoint(source, weights=weights)
        file = ckpt.path if ckpt is not None else resolve_checkpoint(source)
        train_cfg = ckpt.config if ckpt is not None else read_config(file)
        state = ckpt.state if ckpt is not None else read_state(file)
        origin = ModelSource(kind, model.zoo_name, str(file), weights or "none (header only)",
                             train_cfg, state, ckpt)
    elif kind == STATE_DICT:
        if name is None:
            raise ValueError(f"{source} is not a mixerlab run folder, training checkpoint or weight file, nor a timm "
                             "checkpoint of a covered architecture: its tensors record no model; if they are a "
                             "mixerlab state dict, name the zoo model they belong to (name=..., --model NAME)")
        model = create_model(name, pretrained=source, **overrides)
        origin = ModelSource(STATE_DICT, model.zoo_name, os.fspath(source), os.fspath(source))
    elif kind == WEIGHTS:
        if _zoo_only_weights(source):  # a file that records its zoo name, not its whole config
            meta = read_weights(source)[1]
            model = load_pretrained(create_model(meta["model"], **overrides), source)
        else:
            model = model_from_weights(source)
        origin = ModelSource(WEIGHTS, model.zoo_name, os.fspath(source), os.fspath(source))
    else:
        model = create_from_timm(source, name, what=f"timm checkpoint {os.fspath(source)}", **overrides)
        origin = ModelSource(TIMM_CHECKPOINT, model.zoo_name, os.fspath(source), os.fspath(source))
    if name is not None and kind not in (ZOO, TIMM, TIMM_CHECKPOINT, STATE_DICT) and model.zoo_name != name.removeprefix("mixerlab_"):
        raise ValueError(f"{source} holds a {model.zoo_name} model, not {name}")
    return model, origin


def _zoo_only_weights(path) -> bool:
    meta = read_weights(path)[1]
    return "model_config" not in meta and bool(meta.get("model"))


def model_for_run(cfg: TrainConfig, *, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised model ``cfg.model`` (zoo name or ``timm:NAME``) for ``num_classes``
    classes of ``in_chans``-channel ``cfg.img_size`` images, with ``cfg.model_args`` (builder
    arguments / config fields; timm's keywords for ``timm:NAME``). ``model_args`` that contradict
    the run's shape raise ``ValueError`` (:func:`check_model_args`); unknown names/keys raise
    ``ValueError``/``TypeError``."""
    check_model_args(cfg, num_classes=num_classes, in_chans=in_chans)
    args = {k: v for k, v in (cfg.model_args or {}).items() if k not in RUN_OWNED}
    model, _ = open_model(cfg.model, num_classes=num_classes, in_chans=in_chans, img_size=cfg.img_size,
                          drop_path_rate=cfg.drop_path_rate, **args)
    return model


def _legacy_model(train_cfg: dict, state: dict, where) -> nn.Module:
    warnings.warn(f"{where} was written before checkpoints stored their model config; rebuilding "
                  f"{train_cfg.get('model')!r} from today's zoo defaults (a changed default changes "
                  "the model)", stacklevel=3)
    cfg = train_config_from_dict(train_cfg)
    di = state.get("data_info", {})
    if "num_classes" not in di:
        raise CheckpointError(f"{where} records neither its model config nor its data shape")
    # as the model was built then: model_args applied over the run's shape, unchecked
    kwargs = dict(num_classes=di["num_classes"], in_chans=di["in_chans"], img_size=cfg.img_size,
                  drop_path_rate=cfg.drop_path_rate)
    kwargs.update(cfg.model_args or {})
    model, _ = open_model(cfg.model, **kwargs)
    return model


def build_from_checkpoint(source: str | Path | Checkpoint, *, weights: str | None = "model",
                          ) -> tuple[nn.Module, Checkpoint | None]:
    """Rebuild the model a training checkpoint holds (what :func:`open_model` does for run
    folders and checkpoints; the training loop's resume calls it with the loaded checkpoint).

    Args:
        source: a checkpoint file, a run folder (its ``best``, else ``last``) or a loaded
            :class:`Checkpoint`.
        weights: ``"model"`` or ``"ema"``: load those weights (strict); None: build only (reads
            just the header; under ``torch.device("meta")`` nothing is allocated).

    Returns:
        ``(model, checkpoint)``; ``checkpoint`` is None when ``weights`` is None. The model is
        in training mode on the CPU, as ``create_model`` returns it.
    """
    from ..models.timm_model import TIMM_CONFIG_FORMAT, TimmModelConfig
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


__all__ = ["CHECKPOINT", "KINDS", "RUN_FOLDER", "STATE_DICT", "TIMM", "TIMM_CHECKPOINT", "WEIGHTS", "ZOO", "ModelSource", "RUN_OWNED", "build_from_checkpoint", "check_model_args", "identify",
           "model_for_run", "open_model"]
