"""Tiny real video files for the extraction tests, written with PyAV.

Frame ``i`` is a flat colour that encodes ``i`` (red = 8 * (i % 32), green = 64 * (i // 32)),
so a test can tell which frame the decoder sampled from its pixels, through lossy codecs.
Audio is a linear ramp in time (``t / seconds``), so a test can tell where a cut starts.
:class:`TinyEncoder` is a fast stand-in vision encoder for plumbing tests.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from lvmae.encoders import register_torch_module

CODECS = {".mp4": ("libx264", "aac"), ".webm": ("libvpx-vp9", "libopus"),
          ".avi": ("mpeg4", "pcm_s16le"), ".mkv": ("libx264", "pcm_s16le")}


def frame_rgb(i: int, size: int = 64) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = (i % 32) * 8
    img[..., 1] = (i // 32) % 4 * 64
    return img


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`frame_rgb` from the centre of a decoded frame ``[H, W, 3]``."""
    h, w = rgb.shape[:2]
    c = rgb[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3).astype(float).mean(0)
    return int(round(c[0] / 8)) + 32 * int(round(c[1] / 64))


def _add_audio(c: av.container.OutputContainer, codec: str, seconds: float, rate: int) -> av.stream.Stream:
    a = c.add_stream(codec, rate=48000 if codec == "libopus" else rate)
    a.layout = "mono"
    return a


def _encode_audio(c, a, seconds: float, spans: list[tuple[float, float]] | None = None) -> None:
    """A ramp ``t / seconds`` over ``spans`` (``[(t0, t1)]`` s, default the whole ``[0, seconds)``);
    nothing between spans (a gap in the timestamps, as in a recording that paused)."""
    sr = a.rate
    fmt = "s16" if a.codec_context.name == "pcm_s16le" else "fltp"
    if a.codec_context.name in ("aac", "libopus"):
        fmt = a.codec_context.format.name
    total, step = seconds * sr, a.frame_size or 1024
    for t0, t1 in spans or [(0.0, seconds)]:
        t, end = int(round(t0 * sr)), int(round(t1 * sr))
        while t < end:
            n = min(step, end - t)
            x = (np.arange(t, t + n) / total).astype(np.float32)[None]  # ramp 0 -> 1
            data = np.round(x * 32767).astype(np.int16) if fmt == "s16" else x
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, t, Fraction(1, sr)
            for p in a.encode(frame):
                c.mux(p)
            t += n
    for p in a.encode():
        c.mux(p)


def make_video(path: str | Path, seconds: float = 12.0, fps: int = 4, size: int = 64,
               audio: bool = True, audio_rate: int = 16000, width: int | None = None,
               audio_seconds: float | None = None, audio_spans: list[tuple[float, float]] | None = None,
               video_start: float = 0.0, rotation: int = 0) -> Path:
    """A ``seconds``-long video at ``fps``; codec from the extension (mp4/webm/avi/mkv).

    ``audio_seconds``: the audio track's length when it differs from the video's;
    ``audio_spans``: the only times that have audio (see :func:`_encode_audio`);
    ``video_start``: the first frame's timestamp (audio always starts its clock at 0);
    ``rotation``: display rotation (degrees counter-clockwise, as phones store portrait video).
    """
    path = Path(path)
    vcodec, acodec = CODECS[path.suffix]
    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = width or size, size, "yuv420p"
        v.bit_rate = 2_000_000  # flat colours must survive mpeg4's default quantiser
        if rotation:
            v.set_display_rotation(rotation)
        a = _add_audio(c, acodec, seconds, audio_rate) if audio else None
        for i in range(int(round(seconds * fps))):
            img = frame_rgb(i, size)
            if width:
                img = np.concatenate([img, np.zeros((size, width - size, 3), np.uint8)], 1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i + int(round(video_start * fps))
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            _encode_audio(c, a, audio_seconds or seconds, audio_spans)
    return path



def make_vfr(path: str | Path, times: list[float], size: int = 64) -> Path:
    """A variable-frame-rate video (mkv/mp4): frame ``i`` (see :func:`frame_rgb`) shown from ``times[i]``."""
    path = Path(path)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=1000)
        v.width = v.height = size
        v.pix_fmt, v.time_base, v.options = "yuv420p", Fraction(1, 1000), {"qp": "0"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i, size), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    return path

def make_audio_only(path: str | Path, seconds: float = 6.0) -> Path:
    path = Path(path)
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        _encode_audio(c, a, seconds)
    return path


def make_corrupt(path: str | Path, seed: int = 0) -> Path:
    """Random bytes behind a plausible name."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Path(path)


def make_empty(path: str | Path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def truncate(src: str | Path, dst: str | Path, keep: float = 0.6) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def write_srt(path: str | Path, cues: list[tuple[float, float, str]]) -> Path:
    def ts(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    blocks = [f"{i + 1}\n{ts(a)} --> {ts(b)}\n{text}\n" for i, (a, b, text) in enumerate(cues)]
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
    return Path(path)


def make_mkv_with_subtitles(path: str | Path, srt: str | Path, seconds: float = 12.0, fps: int = 4) -> Path:
    """An mkv whose subtitle stream is copied from ``srt`` (FFmpeg's SubRip demuxer)."""
    with av.open(str(srt)) as src, av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        s = c.add_stream_from_template(src.streams.subtitles[0])
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i), format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        for packet in src.demux(src.streams.subtitles[0]):
            if packet.size:
                packet.stream = s
                c.mux(packet)
    return Path(path)



class TinyEncoder(nn.Module):
    """Frames ``[N, 3, H, W]`` -> ``[N, 4]``: a fixed random conv, spatially averaged.

    A stand-in for a real tower in plumbing tests. ``delay`` slows each call (so a run can
    be killed mid-way); ``fail_after`` raises after that many calls (an injected failure).
    """

    def __init__(self, delay: float = 0.0, fail_after: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.1)
        self.delay, self.fail_after, self.calls = delay, fail_after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected encoder failure")
        time.sleep(self.delay)
        return self.conv(x).mean((2, 3))


def register_tiny(name: str = "tiny", delay: float = 0.0, fail_after: int | None = None) -> None:
    """Register :class:`TinyEncoder` under ``name`` (same weights and version every time)."""
    register_torch_module(name, TinyEncoder(delay, fail_after), dim=4, version="tiny-1", overwrite=True)
