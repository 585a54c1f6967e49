"""The audio track, resampled to the encoder's rate and cut on the video's segment boundaries.

The track is read through its own demuxer (a second open of the file), pulled only as far
as the segment being cut needs: memory stays at about one segment of samples and no
assumption is made about how audio and video packets are interleaved. The first decoded
sample is placed at its timestamp on the video's timeline (leading silence or a lead-in
before time 0 are handled); after that the track is taken as contiguous.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np


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
        self._placed = False
        self._container = av.open(str(path))
        streams = self._container.streams.audio
        self.present = bool(streams)
        self._chunks = self._decode(streams[0]) if streams else iter(())
        self._eof = not self.present

    def _decode(self, stream: Any) -> Iterator[tuple[float | None, np.ndarray]]:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sr)
        try:
            for frame in self._container.decode(stream):
                t = float(frame.time) - self.origin if frame.time is not None else None
                for out in resampler.resample(frame):
                    yield t, out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield None, out.to_ndarray().reshape(-1)
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
        if not self._placed:
            self._placed = True
            offset = round((t or 0.0) * self.sr)
            if offset > 0:
                x = np.concatenate([np.zeros(offset, np.float32), x])
            else:
                x = x[-offset:]
        self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])

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
        self._container.close()
