"""What an output folder holds: each command marks the folders it writes, and refuses another's.

``claim_folder(path, "train")`` is called by a command before it writes into ``path``. It reads
the folder's mark, ``.mixerlab-folder.json`` (``{"kind": ..., "version": ..., "mixerlab": ...}``),
or, in a folder written before marks existed, tells the kind from the files in it
(:data:`SIGNATURES`). A folder of another kind is refused with one line (a ``ValueError``, so the
CLI prints it and exits 2) before anything is written; an empty, new or same-kind folder gets the
mark and is returned. The kinds: ``train`` (a run folder), ``compare``, ``ablate``, ``analyze``,
``eval`` and ``dense`` (a detection / segmentation run). Sub-folders are folders of their own: a run folder's ``analysis/`` is an
``analyze`` folder, a compare folder's ``runs/<name>`` are ``train`` folders.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

MARK_NAME = ".mixerlab-folder.json"
FORMAT_VERSION = 1
KINDS = ("train", "compare", "ablate", "analyze", "eval", "dense")

# The command that writes each kind, for the messages.
COMMAND = {"train": "mixerlab train", "compare": "mixerlab compare", "ablate": "mixerlab ablate",
           "analyze": "mixerlab analyze", "eval": "mixerlab eval", "dense": "mixerlab dense"}

# An unmarked folder's kind, from files only that kind writes (first match wins; ``analyze``
# before ``ablate``/``compare`` since those never write analysis.json at their top level).
SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train", ("last.safetensors", "best.safetensors", "metrics.jsonl", "summary.csv")),
    ("ablate", ("settings.json", "ablated.safetensors", "heatmap.png", "cells")),
    ("compare", ("results.csv", "lr_sweep.json", "runs")),
    ("analyze", ("analysis.json",)),
)


class FolderKindError(ValueError):
    """The folder holds another command's output (a ``ValueError``: one line, exit 2)."""


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind of output ``path`` holds: its mark, else what its files say, else ``None``
    (absent, empty or unknown content)."""
    path = Path(path)
    mark = path / MARK_NAME
    if mark.is_file():
        try:
            kind = json.loads(mark.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind in KINDS:
            return kind
    if not path.is_dir():
        return None
    cfg = path / "config.yaml"  # a dense run folder written before marks: its config says so
    if cfg.is_file() and "\nkind: dense\n" in "\n" + cfg.read_text(errors="replace"):
        return "dense"
    for kind, names in SIGNATURES:
        if any((path / n).exists() for n in names):
            return kind
    if any(path.glob("eval*.json")) and not (path / "config.yaml").exists():
        return "eval"
    return None


def check_folder(path: str | os.PathLike, kind: str, *, option: str = "--out") -> None:
    """Refuse ``path`` when it holds another kind's output (:class:`FolderKindError`), or is a file."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; one of {', '.join(KINDS)}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderKindError(f"{option} {path} is a file, not a folder")
    held = folder_kind(path)
    if held is not None and held != kind:
        raise FolderKindError(
            f"{option} {path} is a {held} folder (written by {COMMAND[held]}); {COMMAND[kind]} does not "
            f"write into it: choose another {option}")


def claim_folder(path: str | os.PathLike, kind: str, *, option: str = "--out") -> Path:
    """Check ``path`` (:func:`check_folder`), create it and mark it as ``kind``; returns it.

    Raises:
        FolderKindError: it holds another command's output.
        OSError: it cannot be created or written.
    """
    check_folder(path, kind, option=option)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mark = path / MARK_NAME
    if not mark.is_file():
        from ..version import __version__
        from .checkpoint import atomic_write_text
        atomic_write_text(mark, json.dumps({"kind": kind, "version": FORMAT_VERSION, "mixerlab": __version__}) + "\n")
    return path


def unmark_folder(path: str | os.PathLike) -> None:
    """Remove the mark (a command that wrote nothing else takes it back)."""
    with contextlib.suppress(OSError):
        (Path(path) / MARK_NAME).unlink()
