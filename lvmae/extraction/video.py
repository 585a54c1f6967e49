"""Decode one video with PyAV and cut it into segments: streaming, bounded memory.

The segment rule (also in the README):

- Time 0 is the start of the video stream. Segment ``i`` covers ``[i*stride, i*stride + seconds)``.
- A segment is *full* when the decoded video reaches its end (within half a frame); every
  full segment is kept. The first segment that is not full is the trailing partial one: it
  is kept when it covers at least ``min_last_fraction * seconds``, and it ends at the end
  of the video. Nothing after it is kept.
- A video with no kept segment (shorter than ``min_last_fraction * seconds``) fails as too short.
- In each kept segment ``[start, end)``, ``K`` frames are sampled at the centres of ``K``
  equal sub-intervals; the frame taken for time ``t`` is the one on screen at ``t`` (the
  last frame whose timestamp is ``<= t``).

The video's length is never taken from ``stream.frames``/``stream.duration`` (webm/mkv
report none, others may lie): frames are decoded in one pass to the end, each sampled frame
is converted to a small RGB array as soon as it is picked, and a segment is handed on as
soon as it is known to be full. Only the trailing partial segment, whose sampling times
depend on where the video really ends, is decoded a second time (a seek to its start).
Memory is a few segments of small frames, whatever the video's length.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from lvmae.errors import DataError


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker produces for each segment (picklable, hashed via the store meta)."""

    seconds: float = 5.0
    stride: float = 5.0
    frames: int = 8
    min_last_fraction: float = 0.5
    image_size: int | None = 112  # None: sample no frames (timeline only)
    resize: str = "center_crop"  # center_crop | squash
    sample_rate: int | None = 16000  # None: no audio
    text: bool = False  # cut subtitles (sidecar or embedded) per segment
    threads: int = 0  # FFmpeg decoding threads per file (0: FFmpeg decides)
    keep_truncated: bool = False  # mid-file decode error: keep what came before it


@dataclass
class Segment:
    """One segment of one video, ready for the encoders."""

    index: int
    start: float
    end: float
    frame_times: np.ndarray  # [K] float64: timestamps (s) of the sampled frames
    frames: np.ndarray | None = None  # [K, S, S, 3] uint8 RGB
    audio: np.ndarray | None = None  # [n] float32 mono (None: the file has no audio)
    text: str | None = None  # subtitle text overlapping the segment ("" when none)


def segment_windows(duration: float, seconds: float, stride: float, min_last_fraction: float,
                    eps: float = 1e-6) -> list[tuple[float, float]]:
    """Kept ``(start, end)`` windows of a video lasting ``duration`` seconds (the rule above)."""
    out, i = [], 0
    while True:
        start = i * stride
        if start + seconds <= duration + eps:
            out.append((start, start + seconds))
            i += 1
            continue
        if duration > start and duration - start >= min_last_fraction * seconds - 1e-9:
            out.append((start, duration))
        return out


def sample_times(start: float, end: float, k: int) -> np.ndarray:
    """``[k]`` centres of ``k`` equal sub-intervals of ``[start, end)``."""
    return start + (np.arange(k) + 0.5) * (end - start) / k


class _Frame:
    """A decoded frame with its time; converted to a small RGB array once, when first picked."""

    __slots__ = ("t", "dur", "_frame", "_array", "turns")

    def __init__(self, t: float, dur: float, frame: Any, turns: int = 0):
        self.t, self.dur, self._frame, self._array, self.turns = t, dur, frame, None, turns

    def array(self, size: int | None, resize: str) -> np.ndarray | None:
        if self._array is None and size is not None:
            self._array = to_rgb(self._frame, size, resize, self.turns)
        self._frame = None
        return self._array


@dataclass
class _Window:
    """A segment being filled: sampling targets and the frames picked for them so far."""

    index: int
    start: float
    end: float
    targets: np.ndarray
    times: list[float] = field(default_factory=list)
    arrays: list[np.ndarray | None] = field(default_factory=list)
    partial: bool = False

    @property
    def done(self) -> bool:
        return len(self.times) == len(self.targets)

    def feed(self, t: float, shown: _Frame, spec: DecodeSpec) -> None:
        """Every target before ``t`` gets ``shown`` (the frame on screen until ``t``)."""
        while not self.done and self.targets[len(self.times)] < t:
            self.times.append(shown.t)
            self.arrays.append(shown.array(spec.image_size, spec.resize))


def to_rgb(frame: av.VideoFrame, size: int, resize: str = "center_crop", turns: int | None = None) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB of the frame as displayed (its display rotation applied,
    as players and FFmpeg do): short side scaled to ``size`` then centre-cropped, or squashed.

    ``turns``: the video's :func:`quarter_turns`, read from the frame when None (one-off calls).
    ``threads=1``: FFmpeg's scaler would otherwise start its own thread pool for every frame
    (one thread per core each, kept until the garbage collector frees the scaler: hundreds of
    live threads and memory growing with the video's length); a small frame is faster alone."""
    k = quarter_turns(frame) if turns is None else turns
    w, h = frame.width, frame.height
    if resize == "squash":
        return upright(frame.reformat(size, size, "rgb24", interpolation="AREA", threads=1).to_ndarray(), k)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = upright(frame.reformat(nw, nh, "rgb24", interpolation="AREA", threads=1).to_ndarray(), k)
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def quarter_turns(frame: av.VideoFrame) -> int:
    """The frame's display rotation (portrait phone video) in quarter turns (``np.rot90``'s k).

    Read once per video, from its first frame: reading a frame's side data makes PyAV keep
    an object that points back at the frame, a reference cycle that holds the frame's
    decoded picture until Python's cycle collector runs. Read for every sampled frame, that
    kept up to a few hundred decoded pictures alive at a time (about 3 MB each at 1080p).
    """
    return round(frame.rotation / 90) % 4 if frame.side_data else 0


def upright(img: np.ndarray, turns: int) -> np.ndarray:
    """Turn ``img`` ``[H, W, 3]`` by ``turns`` quarter turns (see :func:`quarter_turns`)."""
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def open_video(path: str | Path) -> tuple[Any, Any]:
    """``(container, video stream)``; a clear :class:`DataError` for files that cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(not_a_file(path))
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot open: {_msg(e)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise DataError(f"no video stream ({', '.join(kinds)} only)")
    return container, container.streams.video[0]


def not_a_file(path: Path) -> str:
    """Why ``path`` is no readable file, in words (a FIFO is not "not found")."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link: {path} -> {os.readlink(path)}"
    if not path.exists():
        return f"file not found: {path}"
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return f"{path} is a named pipe (FIFO), not a file: save the stream to a file first"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory"
    return f"{path} is not a regular file (a device or socket)"


def stream_origin(container: Any, stream: Any) -> float:
    """Time 0 of the segment timeline (s): the video stream's start, else the container's."""
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return container.start_time / 1e6 if container.start_time is not None else 0.0


def iter_frames(container: Any, stream: Any, origin: float, info: dict,
                keep_truncated: bool, threads: int = 0) -> Iterator[_Frame]:
    """Decoded frames in presentation order with times relative to ``origin`` (monotone).

    A decode error ends the video: raised as :class:`DataError`, or (``keep_truncated``)
    recorded in ``info["notes"]`` with the frames before it kept.
    """
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    rate = float(stream.average_rate) if stream.average_rate else 25.0
    tb = stream.time_base
    last_t, turns = -math.inf, 0
    try:
        for frame in container.decode(stream):
            if last_t == -math.inf:
                turns = quarter_turns(frame)
                _upright_size(turns, info)
            if frame.pts is not None and tb:
                t = max(float(frame.pts * tb) - origin, last_t)
            else:
                t = last_t + 1.0 / rate if last_t > -math.inf else 0.0
            dur = float(frame.duration * tb) if getattr(frame, "duration", 0) and tb else 1.0 / rate
            last_t = t
            yield _Frame(t, dur, frame, turns)
    except (av.error.FFmpegError, ValueError) as e:
        at = max(last_t, 0.0)
        if not keep_truncated:
            raise DataError(f"decode error at {at:.1f} s: {_msg(e)} (a truncated file? "
                            "extract.keep_truncated=true keeps the decodable part)") from None
        info.setdefault("notes", []).append(f"truncated: decode error at {at:.1f} s ({_msg(e)})")


def _upright_size(k: int, info: dict) -> None:
    """The size as embedded (``k`` quarter turns applied, see :func:`upright`), not as coded."""
    if k:
        info["rotation"] = 90 * k
    if k % 2 and "width" in info:
        info["coded_size"] = [info["width"], info["height"]]
        info["width"], info["height"] = info["height"], info["width"]


def iter_windows(frames: Iterator[_Frame], spec: DecodeSpec, info: dict | None = None) -> Iterator[_Window]:
    """Full windows as soon as they are known to be full, then the trailing partial one.

    The partial window is yielded with ``partial=True``, ``end`` = the video's end and no
    frames: its sampling times are only known now, so the caller decodes it again.
    """
    k, stride, seconds = spec.frames, spec.stride, spec.seconds
    open_: deque[_Window] = deque()
    nxt, prev = 0, None

    def new_window(i: int) -> _Window:
        return _Window(i, i * stride, i * stride + seconds, sample_times(i * stride, i * stride + seconds, k))

    for fr in frames:
        while nxt * stride <= fr.t:
            open_.append(new_window(nxt))
            nxt += 1
        for w in open_:
            w.feed(fr.t, prev or fr, spec)
        while open_ and open_[0].done and open_[0].end <= fr.t + 1.5 * fr.dur:
            yield open_.popleft()  # full: the current frame stays on screen past its end
        prev = fr
    if prev is None:
        raise DataError("no decodable video frames")
    end = prev.t + prev.dur
    if info is not None:
        info["decoded_end"] = end
    while nxt * stride < end:
        open_.append(new_window(nxt))
        nxt += 1
    for w in open_:
        w.feed(math.inf, prev, spec)
        if w.end <= end + 0.5 * prev.dur:
            yield w
            continue
        if end - w.start >= spec.min_last_fraction * seconds - 1e-9:
            yield _Window(w.index, w.start, end, sample_times(w.start, end, k), partial=True)
        return


def _msg(e: BaseException) -> str:
    """First line of an FFmpeg error, without the ``[Errno N]`` noise."""
    line = (str(e).splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[Errno -?\d+\] ", "", line)[:200]
