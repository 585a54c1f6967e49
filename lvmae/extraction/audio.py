"""The audio track, resampled to the encoder's rate and cut on the video's segment boundaries.

The track is read through its own demuxer (a second open of the file), pulled only as far
as the segment being cut needs: memory stays at about one segment of samples and no
assumption is made about how audio and video packets are interleaved. Samples are placed
at their timestamps on the video's timeline: a track that starts late, pauses (a gap in
its timestamps) or begins before the picture stays in sync; gaps become silence. Jitter
under :data:`SLACK_S` is ignored (the track is then taken as contiguous), as FFmpeg's
``aresample`` does below its ``min_hard_comp``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

SLACK_S = 0.04  # timestamp jumps up to this are jitter, not gaps


class AudioCutter:
    """``cut(start, end)`` -> mono float32 samples of ``[start, end)`` s; windows in start order.

    ``present`` is False when the file has no audio stream (``cut`` then returns None).
    Samples past the end of the track are not invented: the returned array is shorter.
    """

    def __init__(self, path: str | Path, sample_rate: int, origin: float):
        self.sr, self.origin = int(sample_rate), origin
        self.notes: list[str] = []
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # sample index (on the video timeline) of _buf[0]
        self._placed = False  # no sample kept yet: the first ones go exactly at their timestamp
        self._slack = round(SLACK_S * self.sr)
        self._gaps = [0, 0]  # silences inserted: count, samples
        self._container = av.open(str(path))
        streams = self._container.streams.audio
        self.present = bool(streams)
        self._chunks = self._decode(streams[0]) if streams else iter(())
        self._eof = not self.present

    def _decode(self, stream: Any) -> Iterator[tuple[float | None, np.ndarray]]:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sr)
        try:
            for frame in self._container.decode(stream):
                for out in resampler.resample(frame):
                    yield self._time(out), out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield self._time(out), out.to_ndarray().reshape(-1)
        except (av.error.FFmpegError, ValueError) as e:
            self.notes.append(f"audio ends early: decode error at {self._end / self.sr:.1f} s ({e})")

    @property
    def _end(self) -> int:
        return self._buf_start + len(self._buf)

    def _pull(self) -> None:
        try:
            t, x = next(self._chunks)
        except StopIteration:
            self._eof = True
            return
        shift = round(t * self.sr) - self._end if t is not None else 0  # > 0: a gap; < 0: overlap
        if shift and (not self._placed or abs(shift) > self._slack):
            if shift < 0:
                x = x[-shift:]
            else:
                x = np.concatenate([np.zeros(shift, np.float32), x])
                if self._placed:
                    self._gaps = [self._gaps[0] + 1, self._gaps[1] + shift]
        self._placed = self._placed or len(x) > 0
        self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])

    def _time(self, frame: Any) -> float | None:
        """Start of a resampled frame on the video's timeline (s), None if it has no timestamp."""
        return float(frame.time) - self.origin if frame.time is not None else None

    def cut(self, start: float, end: float) -> np.ndarray | None:
        if not self.present:
            return None
        s0, s1 = round(start * self.sr), round(end * self.sr)
        while not self._eof and self._end < s1:
            self._pull()
        if s0 > self._buf_start:  # later windows start no earlier: drop what is behind
            self._buf = self._buf[s0 - self._buf_start:]
            self._buf_start = s0
        return self._buf[: max(0, s1 - self._buf_start)].copy()

    def close(self) -> None:
        if self._gaps[0]:
            self.notes.append(f"audio has {self._gaps[0]} gap(s), {self._gaps[1] / self.sr:.2f} s in all: filled with silence")
        self._container.close()
