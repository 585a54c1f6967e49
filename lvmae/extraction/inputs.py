"""Which videos to extract: files, directories, list files -> ``VideoItem(video_id, path)``.

Video ids are what the rest of lvmae joins on (label files name videos by id):
``stem`` (default) is the file name without extension, e.g. a YouTube id for LVU/COIN;
``relpath`` is the path below the directory (or list file) it was found through, without
extension, e.g. ``P03/cam01/P03_cereals`` for Breakfast. Two different files with one id
are refused up front: they would overwrite each other's features.

Directory scans follow symbolic links to directories (each real directory once) and keep
broken links to media files (they are recorded as failed, not skipped in silence); other
files are counted and named in the summary (``ignored``). A path given on the command
line that does not exist is recorded as failed too, and the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lvmae.config import ID_FROM
from lvmae.errors import DataError

VIDEO_EXTS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv",
    ".ts", ".mts", ".m2ts", ".3gp", ".ogv", ".vob", ".mxf", ".divx", ".dv", ".gif", ".webp", ".apng",
    # audio-only files: FFmpeg reads them; they fail as "no video stream" unless vision is off
    ".m4a", ".mp3", ".wav", ".flac", ".aac", ".ogg", ".oga", ".opus", ".wma",
})
SIDECARS = frozenset({".srt", ".vtt", ".ass", ".ssa"})  # subtitles next to a video: not ignored files
LIST_EXTS = frozenset({".txt", ".lst", ".list"})


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: str


def _make_id(path: Path, base: Path, id_from: str) -> str:
    if id_from == "stem":
        return path.stem
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def _from_dir(d: Path, id_from: str, ignored: list[str]) -> list[VideoItem]:
    """Media files below ``d`` (symlinked dirs followed, each real dir once); others go to ``ignored``."""
    files, seen = [], set()
    for root, dirs, names in os.walk(d, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in names:
            p = Path(root) / name
            ext = p.suffix.lower()
            if ext in VIDEO_EXTS:
                files.append(p)  # a broken link or a FIFO fails with its reason
            elif ext not in SIDECARS and ext not in LIST_EXTS:
                ignored.append(str(p))
    return [VideoItem(_make_id(p, d, id_from), str(p)) for p in sorted(files)]


def _from_list(f: Path, id_from: str) -> list[VideoItem]:
    """One video per line (``PATH`` or ``ID<TAB>PATH``); relative paths are below the list's folder.

    Listed files that do not exist are kept: they are recorded as failed, not fatal.
    """
    out = []
    for line in f.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vid, _, path = line.rpartition("\t")
        p = Path(path.strip()) if Path(path.strip()).is_absolute() else f.parent / path.strip()
        out.append(VideoItem(vid.strip() or _make_id(p, f.parent, id_from), str(p)))
    return out


def collect_videos(inputs: str | os.PathLike | Iterable | Mapping, id_from: str = "stem",
                   ignored: list[str] | None = None) -> list[VideoItem]:
    """Expand ``inputs`` into videos sorted by id.

    ``inputs``: a path or a list of paths (video files, directories searched recursively for
    video extensions, ``.txt``/``.lst``/``.list`` files listing videos), a ``{id: path}``
    mapping, or ``(id, path)`` pairs / :class:`VideoItem` objects. Files of directories that
    are not media are appended to ``ignored``.
    """
    ignored = [] if ignored is None else ignored
    if id_from not in ID_FROM:
        raise DataError(f"id_from must be one of {list(ID_FROM)}, got {id_from!r}")
    if isinstance(inputs, Mapping):
        items = [VideoItem(str(k), str(v)) for k, v in inputs.items()]
    else:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        items = []
        for x in inputs:
            items.extend(_expand(x, id_from, ignored))
    return _dedupe(items)


def _expand(x: object, id_from: str, ignored: list[str]) -> list[VideoItem]:
    if isinstance(x, VideoItem):
        return [x]
    if isinstance(x, tuple) and len(x) == 2:
        return [VideoItem(str(x[0]), str(x[1]))]
    p = Path(x)  # type: ignore[arg-type]
    if p.is_dir():
        return _from_dir(p, id_from, ignored)
    if p.is_file() and p.suffix.lower() in LIST_EXTS:
        return _from_list(p, id_from)
    return [VideoItem(_make_id(p, p.parent, id_from), str(p))]  # a missing one is recorded as failed


def _dedupe(items: list[VideoItem]) -> list[VideoItem]:
    paths: dict[str, dict[Path, str]] = {}
    for it in items:
        paths.setdefault(it.video_id, {}).setdefault(Path(it.path).resolve(), it.path)
    clashes = [f"{vid!r}: {', '.join(p.values())}" for vid, p in paths.items() if len(p) > 1]
    if clashes:
        more = f" (+{len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise DataError(f"{len(clashes)} video id(s) name several files: {'; '.join(clashes[:3])}{more}; "
                        "use id_from=relpath (--id-from relpath) or rename them")
    return sorted((VideoItem(vid, next(iter(p.values()))) for vid, p in paths.items()), key=lambda it: it.video_id)
