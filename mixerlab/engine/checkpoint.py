"""One-file training checkpoints in safetensors: atomic to write, safe to read.

A checkpoint is a single ``.safetensors`` file:

* tensors ``model.<key>`` (the model's state dict), ``ema.<key>``, ``optimizer.<param id>.<key>``,
  ``rng.torch``, ``rng.cuda.<i>``, ``rng.numpy``;
* metadata (JSON strings): ``format``, ``config`` (the resolved TrainConfig), ``model_config``
  (the resolved model config, ``model.cfg.to_dict()``: what :func:`build_from_checkpoint` rebuilds
  the model from, independent of today's zoo defaults), ``mixerlab_version``, ``state``
  (epoch, step, best metric, optimizer param groups, python RNG, grad-scaler state, running
  sums of the current epoch) and ``sha256`` (over every tensor's name and bytes).

Writing goes to a temporary file in the same folder, is fsync'ed and then ``os.replace``d over
the target, so a killed writer leaves the previous file intact (and at most a hidden
``.<name>.tmp-<pid>`` file, which :func:`clean_stale_temps` removes when the run resumes). Reading never unpickles:
safetensors only holds tensors and strings; a truncated file, a bad digest or a foreign file
raises :class:`CheckpointError` (a ``ValueError``, so the CLI prints one line and exits 2).
Weights alone: :func:`load_weights` returns the ``model.`` tensors with the prefix removed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..version import __version__

FORMAT = "mixerlab-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or mismatched."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, read-only, quota): an ``OSError`` with ``errno``,
    ``strerror`` (ENOSPC: "No space left on device (disk full)") and ``filename`` = the target;
    the previous file at that path and no temporary file is left. The CLI prints it as one line
    and exits 2 (it maps every ``OSError``)."""


_OS_ERROR = re.compile(r"os error (\d+)|code: (\d+)")


def write_error(e: BaseException, path: Path) -> CheckpointWriteError:
    """``e`` (an ``OSError``, or safetensors' ``SafetensorError`` wrapping one: "I/O error: No
    space left on device (os error 28)") as a :class:`CheckpointWriteError` naming ``path``."""
    code = getattr(e, "errno", None)
    if code is None:
        m = _OS_ERROR.search(str(e))
        code = int(m.group(1) or m.group(2)) if m else errno.EIO
    reason = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += " (disk full)"
    elif not isinstance(e, OSError):
        reason += f" ({type(e).__name__}: {e})"
    return CheckpointWriteError(code, reason, str(path))


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA generator states (copies)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _rng_to_file(rng: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    version, internal, gauss = rng["python"]
    name, keys, pos, has_gauss, cached = rng["numpy"]
    tensors = {"rng.torch": rng["torch"], "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(rng["cuda"])})
    meta = {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)],
            "cuda": len(rng["cuda"])}
    return tensors, meta


def _rng_from_file(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = meta["python"]
    name, pos, has_gauss, cached = meta["numpy"]
    return {
        "python": (version, tuple(internal), gauss),
        "numpy": (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "torch": tensors["rng.torch"],
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(meta["cuda"])],
    }


# ----------------------------------------------------------------------------- digest
def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- test hook
def pause_for_tests(point: str, number: int) -> None:
    """Test-only: stop at ``point`` (e.g. ``save:last``, ``metrics``, ``step``) of epoch/step ``number``.

    Active only when ``MIXERLAB_TEST_PAUSE`` is ``POINT@NUMBER`` (the interrupt tests of
    ``tests/test_run_folder.py`` set it in a child process): prints ``mixerlab-test-pause POINT@NUMBER``
    on stderr, then waits until the file named by ``MIXERLAB_TEST_RELEASE`` exists (at most 60 s),
    so that a test can signal or kill the process at exactly that moment.
    """
    spec = os.environ.get("MIXERLAB_TEST_PAUSE")
    if not spec or spec != f"{point}@{number}":
        return
    print(f"mixerlab-test-pause {spec}", file=sys.stderr, flush=True)
    release = os.environ.get("MIXERLAB_TEST_RELEASE")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(0.02)


# ----------------------------------------------------------------------------- files
_TEMP = re.compile(r"^\..+\.tmp(-\d+)?$")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, *, pause: tuple[str, int] | None = None) -> Path:
    """Replace ``path`` by ``text`` atomically (temporary file, fsync, rename): readers and a
    killed writer see the old or the new content, never part of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if pause:
            pause_for_tests(*pause)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a byte copy of ``src`` atomically (temporary file, fsync, rename).

    A copy, not a hard link: a link would share its bytes with ``src``, so anything that rewrote
    ``last`` in place (``cp x last.safetensors``) would rewrite ``best`` too."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def clean_stale_temps(folder: str | Path) -> list[str]:
    """Remove the hidden temporary files (``.<name>.tmp`` / ``.<name>.tmp-<pid>``) a killed writer
    left in ``folder``; call it only while holding the folder's lock. Returns the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TEMP.match(p.name) and p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    state: dict[str, Any],
    model_config: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    ema: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a complete training checkpoint to ``path`` atomically.

    Args:
        path: target file (``.safetensors``).
        model: the unwrapped model (not DDP / compiled).
        config: resolved config as a plain dict.
        model_config: the resolved model config (``model.cfg.to_dict()``), what
            ``build_from_checkpoint`` rebuilds the model from.
        state: JSON-able loop state (epoch, step, best metric, ...).
        optimizer, ema, scaler: optional parts to restore on resume.
        rng: RNG snapshot from :func:`capture_rng`; defaults to the current state.

    Raises:
        CheckpointWriteError: (an ``OSError``) the file cannot be written (disk full, read-only);
            ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", model), ("ema", ema)):
        if module is not None:
            for k, v in module.state_dict().items():
                tensors[f"{prefix}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
    full_state = dict(state)
    if optimizer is not None:
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in opt["state"].items():
            for k, v in pstate.items():
                if torch.is_tensor(v):
                    tensors[f"optimizer.{pid}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        full_state["optimizer"] = {"param_groups": opt["param_groups"], "scalars": scalars,
                                   "ids": [int(pid) for pid in opt["state"]]}
    if scaler is not None and scaler.is_enabled():
        full_state["scaler"] = {k: (v.item() if torch.is_tensor(v) else v) for k, v in scaler.state_dict().items()}
    rng_tensors, rng_meta = _rng_to_file(rng if rng is not None else capture_rng())
    tensors.update(rng_tensors)
    full_state["rng"] = rng_meta
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config),
        "mixerlab_version": __version__,
        "state": json.dumps(full_state),
        "sha256": _digest(tensors),
    }
    if model_config is not None:
        metadata["model_config"] = json.dumps(model_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except CheckpointWriteError:
            raise
        except Exception as e:  # OSError, or SafetensorError (not an OSError) wrapping ENOSPC/EIO
            if not isinstance(e, OSError) and "error while serializing" not in str(e).lower():
                raise
            raise write_error(e, path) from None
        pause_for_tests(f"save:{path.stem}", int(state.get("epoch", -1)))
        try:
            os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
            _fsync_dir(path.parent)
        except OSError as e:
            raise write_error(e, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class Checkpoint:
    """A loaded checkpoint: ``config`` (dict), ``state`` (dict) and tensors by prefix."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        self.path = path
        self.tensors = tensors
        self.config: dict[str, Any] = json.loads(metadata["config"])
        self.state: dict[str, Any] = json.loads(metadata["state"])
        # the resolved model config (None in checkpoints written before it was stored)
        self.model_config: dict[str, Any] | None = (json.loads(metadata["model_config"])
                                                    if "model_config" in metadata else None)
        self.version: str | None = metadata.get("mixerlab_version")

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def has_ema(self) -> bool:
        return any(k.startswith("ema.") for k in self.tensors)

    def load_model(self, model: torch.nn.Module, prefix: str = "model") -> None:
        """Load weights strictly; a mismatch (another model/config) raises CheckpointError."""
        weights = self.part(prefix)
        own = model.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if keys
            )
            raise CheckpointError(
                f"checkpoint {self.path} does not fit model {self.config.get('model')!r} as configured "
                f"(was it written for another model or config?): {detail}"
            )
        model.load_state_dict(weights)

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        meta = self.state["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for pid in meta["ids"]:
            entry = dict(meta["scalars"].get(str(pid), {}))
            entry.update(self.part(f"optimizer.{pid}"))
            state[pid] = entry
        try:
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {self.path} does not fit this model: {e}") from None

    def rng(self) -> dict[str, Any]:
        return _rng_from_file(self.tensors, self.state["rng"])


def _open(path: str | Path, *, tensors: bool) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    """(path, metadata, tensors) of a mixerlab checkpoint; tensors only when asked for."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" if not path.is_dir() else
                              f"{path} is a folder, not a checkpoint file")
    kind = _foreign_kind(path)
    if kind:
        raise CheckpointError(f"{path} is {kind}, not a mixerlab training checkpoint (a .safetensors file written "
                              "by `mixerlab train`); weight files go to create_model(name, pretrained=FILE) or "
                              "`mixerlab analyze NAME --weights FILE`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # SafetensorError, OSError, header JSON errors: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mixerlab training checkpoint (format {metadata.get('format')!r})")
    return path, metadata, loaded


def _foreign_kind(path: Path) -> str | None:
    """What a file that is certainly no safetensors file is (by its first bytes), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch zip file (torch.save, e.g. a .pth state dict)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an old-style torch.save file)"
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint file (safetensors only, nothing unpickled)."""
    path, metadata, tensors = _open(path, tensors=True)
    if _digest(tensors) != metadata.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match the stored sha256")
    try:
        return Checkpoint(path, tensors, metadata)
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has damaged metadata: {e}") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """The config stored in a checkpoint, reading only its header (no tensors, no digest check)."""
    return _read_header(path, "config")


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The resolved model config stored in a checkpoint (header only); None for old checkpoints."""
    path, metadata, _ = _open(path, tensors=False)
    if "model_config" not in metadata:
        return None
    return _read_header(path, "model_config")


def read_state(path: str | Path) -> dict[str, Any]:
    """The training state stored in a checkpoint (epoch, step, ``data_info``, ...), header only."""
    return _read_header(path, "state")


def _read_header(path: str | Path, key: str) -> dict[str, Any]:
    path, metadata, _ = _open(path, tensors=False)
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has damaged metadata: {type(e).__name__}: {e}") from None


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A file, or a run folder -> its ``best.safetensors`` (or ``last``), per ``prefer``.

    A run killed between writing ``last`` and ``best`` at the end of a best epoch leaves ``best``
    one best behind; ``last`` then holds those very weights (its state says ``best_epoch`` is its
    own epoch), so it is returned instead, until a resume completes the folder."""
    path = Path(path)
    if path.is_dir():
        order = ("best", "last") if prefer == "best" else ("last", "best")
        if prefer == "best" and (path / "last.safetensors").is_file() and best_is_stale(path):
            order = ("last",)
        for name in order:
            if (path / f"{name}.safetensors").is_file():
                return path / f"{name}.safetensors"
        raise CheckpointError(f"no checkpoint (best.safetensors / last.safetensors) in run folder {path}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def best_is_stale(run_dir: str | Path) -> bool:
    """True when ``last.safetensors`` says the best epoch is its own (written at that epoch's
    end) but ``best.safetensors`` is missing, unreadable or from another epoch/step."""
    run_dir = Path(run_dir)
    try:
        last = read_state(run_dir / "last.safetensors")
    except CheckpointError:
        return False
    if last.get("best_epoch") is None or last.get("best_epoch") != last.get("epoch") or last.get("step_in_epoch"):
        return False
    try:
        best = read_state(run_dir / "best.safetensors")
    except CheckpointError:
        return True
    return (best.get("epoch"), best.get("step")) != (last.get("epoch"), last.get("step"))


def load_weights(path: str | Path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model (or EMA) state dict stored in a checkpoint file or run folder."""
    ckpt = load_checkpoint(resolve_checkpoint(path))
    return ckpt.part("ema" if ema else "model")
