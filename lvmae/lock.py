"""One writer per run directory: an OS file lock (``filelock``) plus a note naming its holder.

The lock is ``DIR/.NAME.lock`` (``flock``: the kernel drops it when the holder dies, even
by SIGKILL, so a dead run's lock is simply taken over) and ``DIR/.NAME.owner`` says who
holds it (host, pid, start time), so a refused run can name it. Pretraining locks one file
per rank, probing one per run dir, extraction one per store shard.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lvmae.errors import LvmaeError
from lvmae.io import atomic_write_json

log = logging.getLogger("lvmae")


class LockedError(LvmaeError):
    """Another live process is writing into the same directory."""


def _holder(owner: Path) -> str:
    try:
        o = json.loads(owner.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["since"]))
        return f"host {o['host']}, pid {o['pid']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, name: str, what: str) -> Iterator[None]:
    """Hold ``DIR/.NAME.lock`` for the block; raise :class:`LockedError` at once if another process holds it."""
    from filelock import FileLock, Timeout

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(directory / f".{name}.lock", timeout=0), directory / f".{name}.owner"
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(f"{directory} is in use by another {what} ({_holder(owner)}); wait for it to end "
                          "or stop it, or use another output directory") from None
    try:
        if owner.exists():
            log.info("%s: taking over the lock of a process that ended without releasing it (%s)",
                     directory, _holder(owner))
        atomic_write_json(owner, {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                                  "argv": sys.argv})
        try:
            yield
        finally:
            owner.unlink(missing_ok=True)
    finally:
        lock.release()


def locked(directory: Callable[..., str | os.PathLike], name: Callable[..., str], what: str) -> Callable:
    """Decorator: run the function under :func:`dir_lock` (``directory``/``name`` computed from its arguments)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with dir_lock(directory(*args, **kwargs), name(*args, **kwargs), what):
                return fn(*args, **kwargs)

        return inner

    return wrap
