"""Atomic file writes: a reader never sees a half-written file.

The temp file is ``.NAME.HOST-PID.RANDOM.tmp`` beside the target: a writer killed with
SIGKILL leaves it behind, and its name says whose it was, so :func:`remove_orphans` can
delete it without touching a file another live process (or node) is still writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lvmae.errors import LvmaeError

_HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()) or "host"
_TMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; finished files get the usual permissions instead.
_FILE_MODE = 0o666 & ~_umask()


class WriteError(LvmaeError):
    """A file could not be written: disk full, file-size limit or quota."""


_FULL = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large",
         errno.EDQUOT: "disk quota exceeded"}


def _cause(e: BaseException, path: Path) -> str | None:
    """Why writing ``path`` failed, if it is a disk-full kind of failure; None for any other error.

    torch, numpy and safetensors do not always keep the OS error: torch raises a RuntimeError
    ("unexpected pos ..."), numpy "N requested and M written". Then the disk and the
    file-size limit are asked.
    """
    codes = [getattr(e, "errno", None)] + [c for c in _FULL if os.strerror(c) in str(e)]
    code = next((c for c in codes if c in _FULL), None)
    if code is not None:
        cause = _FULL[code]
    elif isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
        cause = _diagnose(path)
        if cause is None:
            return None
    else:
        return None
    if code == errno.EFBIG or cause.startswith("file too large"):
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            cause = f"file too large (this process may write at most {soft} bytes per file: ulimit -f)"
    return cause


def _diagnose(path: Path) -> str | None:
    directory = next((p for p in [path, *path.parents] if p.is_dir()), Path("."))
    with contextlib.suppress(OSError):
        if shutil.disk_usage(directory).free < 1 << 20:
            return "no space left on device"
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft != resource.RLIM_INFINITY and path.exists() and path.stat().st_size >= soft - (1 << 16):
        return "file too large"
    return None


@contextlib.contextmanager
def guard_write(path: str | os.PathLike, name: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a disk-full, size-limit or quota failure while writing ``path`` into one :class:`WriteError`
    (naming ``name``, the file the user knows, when ``path`` is its temp file)."""
    try:
        yield
    except LvmaeError:
        raise
    except Exception as e:
        cause = _cause(e, Path(path))
        if cause is None:
            raise
        raise WriteError(f"cannot write {name or path}: {cause}; nothing was replaced (free some space or "
                         "raise the limit, then run the same command again)") from e


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file in the same directory, fsync, rename over ``path``.

    A full disk or a file-size limit raises :class:`WriteError` naming ``path``; the old file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tmp_owner()}.", suffix=".tmp")
    os.close(fd)
    try:
        with guard_write(tmp, path):
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (no newline) plus a newline to a JSONL-style log, durably (fsync).

    A writer killed mid-line leaves a torn last line; the new record then starts on a
    line of its own, so readers lose only the torn one (they skip lines they cannot parse).
    """
    data = (line + "\n").encode("utf-8")
    with guard_write(path), open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def tmp_owner() -> str:
    """``HOST-PID`` of this process, as written into its temp file names."""
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_orphans(directory: str | os.PathLike, max_age_s: float = 3600.0) -> list[Path]:
    """Delete temp files of :func:`atomic_write` left by killed writers; returns them.

    A file goes when its writer was on this host and is gone, or (any host: a shared
    filesystem) when it has not changed for ``max_age_s``. Files of live writers stay.
    """
    removed, now = [], time.time()
    for p in Path(directory).glob(".*.tmp"):
        m = _TMP.match(p.name)
        try:
            mine = m is not None and m["host"] == _HOST
            if (mine and not _alive(int(m["pid"]))) or now - p.stat().st_mtime > max_age_s:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            continue  # renamed into place or removed by another rank meanwhile
    return removed
