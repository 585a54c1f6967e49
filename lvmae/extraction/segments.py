"""One video file -> its segments with every modality (what a decode worker runs).

Vision drives the timeline (see :mod:`lvmae.extraction.video` for the segment rule);
audio (:mod:`~lvmae.extraction.audio`) and subtitles (:mod:`~lvmae.extraction.subtitles`)
are cut on the same ``[start, end)`` boundaries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from lvmae.errors import DataError
from lvmae.extraction.audio import AudioCutter
from lvmae.extraction.subtitles import load_cues, text_in
from lvmae.extraction.video import (
    DecodeSpec,
    Segment,
    _Window,
    iter_frames,
    iter_windows,
    open_video,
    stream_origin,
)

TRUNCATED_SLACK_S, TRUNCATED_SLACK = 2.0, 0.1  # decoded this much short of the announced length: truncated


def probe_info(container: Any, stream: Any) -> dict[str, Any]:
    """What the file announces (kept in the manifest next to what was decoded)."""
    cc = stream.codec_context
    return {
        "format": container.format.name, "codec": cc.name, "width": cc.width, "height": cc.height,
        "fps": float(stream.average_rate) if stream.average_rate else None,
        "announced_duration": announced_duration(container, stream),
        "has_audio": bool(container.streams.audio), "notes": [],
    }


def announced_duration(container: Any, stream: Any) -> float | None:
    """The video stream's length as the file states it (s), else the container's.

    The container's duration is its longest stream's: a soundtrack that outlasts the
    picture would otherwise make a whole file look truncated. Matroska/WebM keep the
    stream's length in a ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``).
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    m = re.fullmatch(r"\s*(\d+):(\d+):(\d+(?:\.\d*)?)\s*", tag or "")
    if m:
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    return container.duration / 1e6 if container.duration else None


def iter_segments(path: str | Path, spec: DecodeSpec, info: dict[str, Any] | None = None) -> Iterator[Segment]:
    """Decode ``path`` once, yielding its kept segments in order; fills ``info`` as it goes.

    Raises :class:`DataError` (with the reason) for files that cannot be used: unreadable,
    empty, no video stream, no decodable frame, too short, or truncated (a decode error
    mid-file, or decoded more than max(2 s, 10 %) short of the length the container
    announces) unless ``spec.keep_truncated``.
    """
    info = {} if info is None else info
    container, stream = open_video(path)
    audio = None
    try:
        info.update(probe_info(container, stream))
        origin = stream_origin(container, stream)
        if spec.sample_rate and info["has_audio"]:
            audio = AudioCutter(path, spec.sample_rate, origin)
        cues = _cues(path, origin, info) if spec.text else None
        n = 0
        frames = iter_frames(container, stream, origin, info, spec.keep_truncated, spec.threads)
        for w in iter_windows(frames, spec, info):
            if w.partial:
                w = repick(path, spec, w)
            yield _segment(w, audio, cues)
            n += 1
            info["num_segments"] = n
        _finish(info, spec, n)
    finally:
        container.close()
        if audio is not None:
            audio.close()
            info["notes"].extend(audio.notes)


def _segment(w: _Window, audio: AudioCutter | None, cues: list | None) -> Segment:
    frames = np.stack(w.arrays) if w.arrays and w.arrays[0] is not None else None
    return Segment(
        w.index, w.start, w.end, np.asarray(w.times, dtype=np.float64), frames,
        audio.cut(w.start, w.end) if audio is not None else None,
        text_in(cues, w.start, w.end) if cues is not None else None,
    )


def _cues(path: str | Path, origin: float, info: dict) -> list:
    try:
        cues, info["text_source"] = load_cues(path, origin)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        info["text_source"] = "none"
        info["notes"].append(f"subtitles unreadable: {e}")
        return []
    return cues


def _finish(info: dict, spec: DecodeSpec, n: int) -> None:
    """Check the decoded length; record the duration and notes."""
    end = info.get("decoded_end")
    if n == 0:
        need = spec.min_last_fraction * spec.seconds
        raise DataError(f"too short: {end or 0.0:.2f} s of video, a segment needs at least {need:.2f} s "
                        f"(segment.min_last_fraction x segment.seconds)")
    info["duration"] = end
    if end is not None and end < spec.seconds:
        info["notes"].append(f"shorter than one segment ({end:.2f} s < {spec.seconds:g} s): "
                             "kept as one partial segment")
    said = info.get("announced_duration")
    if not said or end is None or abs(said - end) <= max(TRUNCATED_SLACK_S, TRUNCATED_SLACK * said):
        return
    note = f"decoded {end:.1f} s of the {said:.1f} s the container announces"
    if end < said and not spec.keep_truncated:
        raise DataError(f"truncated: {note} (extract.keep_truncated=true keeps the decodable part)")
    info["notes"].append(f"truncated: {note}" if end < said else note)


def repick(path: str | Path, spec: DecodeSpec, w: _Window) -> _Window:
    """Sample the trailing partial window again, now that its end is known: seek + decode.

    If the file cannot seek, it is decoded from the start (slow, but right).
    """
    for seek in (True, False):
        container, stream = open_video(path)
        try:
            origin = stream_origin(container, stream)
            if seek:
                container.seek(int((w.start + origin) / stream.time_base), stream=stream, backward=True)
            fresh, prev = _Window(w.index, w.start, w.end, w.targets), None
            for fr in iter_frames(container, stream, origin, {}, True, spec.threads):
                if prev is None and seek and fr.t > w.targets[0]:
                    break  # the seek overshot: decode from the start instead
                fresh.feed(fr.t, prev or fr, spec)
                prev = fr
                if fresh.done:
                    break
            else:
                if prev is not None:
                    fresh.feed(math.inf, prev, spec)
            if fresh.done:
                return fresh
        except av.error.FFmpegError:
            pass
        finally:
            container.close()
    raise DataError(f"could not decode the last segment again ({w.start:.1f}-{w.end:.1f} s)")
