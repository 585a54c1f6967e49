"""Subtitles and captions cut on segment boundaries (the text modality).

Sources, in order: a sidecar file next to the video (``NAME.srt``, ``.vtt``, ``.ass``,
``.ssa``, then language-tagged ones such as ``NAME.en.srt``), else the first text subtitle
stream inside the container (SubRip, WebVTT, ASS, mov_text). FFmpeg parses every format,
so sidecars and embedded streams go through one code path. Bitmap subtitles (DVD, PGS)
carry no text and are ignored. A segment's text is every cue overlapping it, in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

SIDECAR_EXTS = (".srt", ".vtt", ".ass", ".ssa")
TEXT_CODECS = {"subrip", "srt", "webvtt", "ass", "ssa", "mov_text", "text", "microdvd", "sami"}
DEFAULT_CUE_SECONDS = 3.0  # cues with no duration
_TAGS = re.compile(r"\{[^}]*\}|<[^>]*>")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def find_sidecar(video: str | Path) -> Path | None:
    """``NAME.srt`` (or .vtt/.ass/.ssa) beside ``video``, else ``NAME.<tag>.srt`` etc."""
    video = Path(video)
    for ext in SIDECAR_EXTS:
        p = video.with_suffix(ext)
        if p.is_file():
            return p
    for ext in SIDECAR_EXTS:
        tagged = sorted(video.parent.glob(f"{glob_escape(video.stem)}.*{ext}"))
        if tagged:
            return tagged[0]
    return None


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def clean(text: str) -> str:
    """Drop ASS override blocks and HTML-ish tags, turn line breaks into spaces."""
    text = _TAGS.sub("", text.replace("\\N", " ").replace("\\n", " "))
    return " ".join(text.split())


def _rect_text(rect: Any) -> str:
    for attr in ("dialogue", "text"):
        val = getattr(rect, attr, None)
        if val:
            return val.decode("utf-8", "replace") if isinstance(val, bytes) else str(val)
    return ""


def _items(decoded: Any) -> list[Any]:
    """Subtitle rects from ``packet.decode()`` (a flat list or sets of rects, by PyAV version)."""
    out = []
    for item in decoded:
        if hasattr(item, "dialogue") or hasattr(item, "text"):
            out.append(item)
        else:
            out.extend(item)
    return out


def read_cues(path: str | Path, origin: float = 0.0) -> tuple[list[Cue], str | None]:
    """Cues of the first text subtitle stream of ``path`` (a subtitle file or a video).

    Returns ``(cues, codec)``; ``codec`` is None when there is no text subtitle stream.
    """
    with av.open(str(path)) as c:
        streams = [s for s in c.streams.subtitles if s.codec_context.name in TEXT_CODECS]
        if not streams:
            return [], None
        stream, cues = streams[0], []
        tb = stream.time_base
        for packet in c.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * tb) - origin
            end = start + (float(packet.duration * tb) if packet.duration else DEFAULT_CUE_SECONDS)
            text = clean(" ".join(_rect_text(r) for r in _items(packet.decode())))
            if text:
                cues.append(Cue(start, end, text))
        return sorted(cues, key=lambda q: q.start), stream.codec_context.name


def load_cues(video: str | Path, origin: float) -> tuple[list[Cue], str]:
    """``(cues, source)`` for a video; ``source`` says where they came from ("none" if nowhere)."""
    side = find_sidecar(video)
    if side is not None:
        cues, _ = read_cues(side)
        return cues, f"sidecar:{side.name}"
    cues, codec = read_cues(video, origin)
    return cues, (f"stream:{codec}" if codec else "none")


def text_in(cues: list[Cue], start: float, end: float) -> str:
    """Text of every cue overlapping ``[start, end)``, in order, repeats collapsed."""
    parts: list[str] = []
    for q in cues:
        if q.start < end and q.end > start and (not parts or parts[-1] != q.text):
            parts.append(q.text)
    return " ".join(parts)
