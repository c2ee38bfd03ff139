"""Reading weight files safely and loading them into mixerlab models.

Files: ``.safetensors`` (preferred), or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)`` (never unpickles arbitrary objects). A mixerlab training
checkpoint (a dict with a ``model`` state dict, or a ``mixerlab-checkpoint`` safetensors file with
``model.``-prefixed tensors) is unwrapped. Loading is strict: a missing, unexpected or mis-shaped
key raises ``ValueError`` naming the first one.

Weight files written by ``save_weights`` (``mixerlab convert``) carry metadata: the zoo name, the
resolved model config (``model_config``, ``config.to_dict()`` as JSON), the mixerlab version and the
model options the weights need (e.g. ``head_norm_first=False`` for PoolFormer weights converted
from timm), which ``mixerlab.factory.load_pretrained`` applies or enforces (it also converts timm
state dicts).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .models.hierarchical import METAFORMER_VERSIONS, HierarchicalModel, metaformer_version
from .version import __version__

WEIGHTS_FORMAT = "mixerlab-weights/1"


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a weight file; ``ValueError`` for a truncated or foreign file.

    Metadata: the safetensors header's string map, or a ``.pth`` file's ``mixerlab_meta`` dict;
    empty when there is none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        else:
            with warnings.catch_warnings():  # torch's pickle warnings: the error below says it all
                warnings.simplefilter("ignore")
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and isinstance(sd.get("mixerlab_meta"), dict):
                meta = {str(k): str(v) for k, v in sd["mixerlab_meta"].items()}
    except pickle.UnpicklingError as e:  # weights_only refused a Python object in the pickle
        raise ValueError(unsafe_pickle_message(path, e)) from None
    except Exception as e:  # truncated or corrupt: say so, without a traceback wall
        raise ValueError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None
    if meta.get("format", "").startswith("mixerlab-checkpoint") and isinstance(sd, dict):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        if not sd:
            raise ValueError(f"training checkpoint {path} holds no model weights")
    return unwrap_state_dict(sd, source=str(path)), meta


def unsafe_pickle_message(path: str | os.PathLike, e: BaseException) -> str:
    """What a pickled weight file that holds more than tensors is, and how to convert it safely
    (the message of torch's refusal -- which suggests switching the safety check off -- is not
    relayed)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f" (it refers to {found.group(1)})" if found else ""
    return (f"{path} is a pickled PyTorch file that holds Python objects besides tensors{what}: a whole "
            "pickled model or training state, or a file made to run code when it is unpickled. mixerlab "
            "reads tensors only and never unpickles objects. If you trust where the file came from, "
            "convert it once in a separate, trusted environment: load it there with torch.load, take the "
            "state dict of tensors (model.state_dict() for a pickled model), save that with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors'), and pass the .safetensors "
            "file here; otherwise do not load it at all")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file; ``ValueError`` for a missing, truncated or foreign file."""
    return read_weights(path)[0]


def remove_dead_temps(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files ``.<name>.tmp-<pid>`` of ``path`` whose writer process is gone
    (a ``kill -9`` during :func:`save_weights`); a live writer's file is left alone."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp.name)
        except OSError:
            pass
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_weights(sd: dict[str, torch.Tensor], path: str | os.PathLike, *,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict atomically (temporary file in the same folder, fsync, rename).

    ``.safetensors`` (metadata in the header) or ``.pth``/``.pt``/``.bin`` (``{"model": sd,
    "mixerlab_meta": metadata}``). A failed write leaves no partial file and an existing target
    untouched.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"output {path}: unknown weight-file extension {path.suffix!r}; "
                         "allowed: .safetensors, .pth, .pt, .bin")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    remove_dead_temps(path)  # what a killed (kill -9) writer of this file left behind
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the usual mode, after the umask
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save
                f.write(save(tensors, metadata=dict(metadata or {})))
            else:
                payload = {"model": tensors}
                if metadata:
                    payload["mixerlab_meta"] = dict(metadata)
                torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def weights_metadata(model: nn.Module, options: dict | None = None) -> dict[str, str]:
    """Metadata ``save_weights`` stores for ``model``'s weights: format, zoo name, resolved model
    config, mixerlab version, options."""
    meta = {"format": WEIGHTS_FORMAT, "mixerlab_version": __version__,
            "model_config": json.dumps(model.cfg.to_dict())}
    if getattr(model, "zoo_name", None):
        meta["model"] = model.zoo_name
    if options:
        meta["options"] = json.dumps(options, sort_keys=True)
    return meta


def apply_saved_options(model: nn.Module, meta: dict[str, str], *, what: str) -> None:
    """Make ``model`` match the options recorded with its weights, or refuse.

    ``head_norm_first`` and ``head_hidden_norm_eps`` are switched in place (the weights define
    which head they belong to);
    any other differing option raises ``ValueError`` naming it.
    """
    if not meta.get("options"):
        return
    try:
        options = json.loads(meta["options"])
    except json.JSONDecodeError:
        raise ValueError(f"{what}: unreadable 'options' metadata {meta['options']!r}") from None
    cfg = getattr(model, "cfg", None)
    for key, value in sorted(options.items()):
        current = getattr(cfg, key, None)
        if isinstance(current, tuple):
            current = list(current)
        if current == value:
            continue
        if key == "head_norm_first" and isinstance(model, HierarchicalModel):
            model.set_head_norm_first(bool(value))
            continue
        if key == "head_hidden_norm_eps" and isinstance(model, HierarchicalModel):
            model.set_head_hidden_norm_eps(float(value))
            continue
        raise ValueError(f"{what} were saved from a model with {key}={value!r}, but this model has "
                         f"{key}={current!r}; create it with {key}={value!r}")


def unwrap_state_dict(sd, *, source: str = "state dict") -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, what: str = "state dict") -> None:
    """Raise ``ValueError`` naming the first key that is missing, unexpected or mis-shaped (or,
    for hierarchical MetaFormers, that the weights are of the other MetaFormer version)."""
    own = model.state_dict()
    theirs, ours = metaformer_version(sd), metaformer_version(own)
    if theirs and ours and theirs != ours:
        label = getattr(model, "zoo_name", None) or "this model"
        raise ValueError(f"{what}: {METAFORMER_VERSIONS[theirs]} weights, but {label} is a "
                         f"{METAFORMER_VERSIONS[ours]} model: v1 and v2 weights do not convert "
                         "into each other; create the matching zoo model")
    for k, v in own.items():
        if k not in sd:
            raise ValueError(f"{what} does not fit this model: missing key {k!r} "
                             f"(expected shape {tuple(v.shape)})")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{what} does not fit this model: {k!r} has shape "
                             f"{tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
    extra = [k for k in sd if k not in own]
    if extra:
        raise ValueError(f"{what} does not fit this model: unexpected key {extra[0]!r} "
                         f"({len(extra)} unexpected in all)")
