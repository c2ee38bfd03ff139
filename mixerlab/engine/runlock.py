"""One writer per run folder: an exclusive ``flock`` on ``<run folder>/.lock``.

``with run_folder_lock(path):`` creates the folder if needed and takes a non-blocking exclusive
lock on the lock file in it; a second process (train, resume, compare) that asks for the same
folder gets :class:`RunFolderBusyError` naming the holder (pid, host, command, start time),
which the holder wrote into the lock file. The kernel releases the lock when the holder exits,
however it exits (``kill -9`` included), so a lock is never stale. The lock file itself is left
in place (unlinking it would let a waiter and a newcomer lock two different files); a holder
that finds the path re-pointed at another file after locking retries. The lock is re-entrant
within one process: ``compare`` may hold a run folder around its own checks and then call
``train``, which takes the same lock again without blocking itself.

``flock`` is advisory and per open file; it holds across processes on one machine and on most
network file systems that emulate it (NFSv4 maps it onto byte-range locks).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # folders this process holds -> nesting depth


class RunFolderBusyError(ValueError):
    """Another process holds the run folder (a ``ValueError``: the CLI prints one line, exit 2)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (no holder recorded)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {started} ({info.get('command', '?')})"


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike, *, what: str = "run folder") -> Iterator[Path]:
    """Hold ``folder`` exclusively for the ``with`` block; yields the lock file's path.

    Raises:
        RunFolderBusyError: another process holds it.
        OSError: the folder cannot be created or the lock file opened (read-only, not a folder).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = os.path.realpath(folder)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderBusyError(f"{what} {folder} is in use by {_holder(path)}; wait for it to finish "
                                         "or choose another folder") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was replaced while we waited for it: lock the new one
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(["mixerlab" if a.endswith("__main__.py") else a
                                       for a in [os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]])}
        with contextlib.suppress(OSError):  # a full disk: the holder is then just not named
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _HELD[key] = 1
        yield path
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
