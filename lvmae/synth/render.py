"""Pixels and sound of a planned synthetic video, encoded to MP4 (H.264 + AAC) with PyAV.

Each step type has a fixed look (two colours, a texture kind, frequency, orientation,
drift speed) and a fixed sound (a tone with a beat rate), the same in every data set.
A filler step in scene state s > 0 (see :mod:`lvmae.synth.plan`) gets a coloured frame.
Nuisances are drawn per video from the seed: camera shake/zoom/roll (an AR(1) process
over the whole video), a moving grey blob, gain and tint, pixel noise and audio noise.

Everything a segment shows is stationary within a step (random texture phase at each
step start, continuous camera, continuous tone phase, one key frame per segment with
scene-cut detection off), so a segment's content does not reveal whether it is the
first or a middle segment of its step: pooling over segments learns nothing from step
boundaries, which keeps the count task out of a mean pool's reach.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lvmae.config import SynthConfig
from lvmae.io import atomic_write
from lvmae.synth.plan import VideoPlan

PATTERNS = ("stripes", "checker", "rings", "dots", "spiral")
STATE_COLOURS = ((1.0, 0.85, 0.1), (0.1, 0.85, 1.0))  # frame of filler steps in scene state 1, 2


@dataclass(frozen=True)
class Look:
    """Appearance and sound of one step type."""

    fg: tuple[float, float, float]
    bg: tuple[float, float, float]
    pattern: int
    freq: float  # radians per unit of the [-1, 1] frame
    angle: float
    speed: float  # texture drift, radians/s
    tone: float  # Hz
    beat: float  # amplitude modulation, Hz (0 = steady)


def look(t: int) -> Look:
    """Deterministic look of type ``t``: types sharing a texture (t, t+5) get opposite hues."""
    hue = (0.1 * t + 0.05 * (t // 10)) % 1.0
    fg = colorsys.hsv_to_rgb(hue, 0.6 + 0.35 * ((t * 0.7) % 1.0), 0.9 - 0.25 * ((t // 10) % 2))
    bg = colorsys.hsv_to_rgb((hue + 0.45) % 1.0, 0.5, 0.2 + 0.25 * ((t * 0.3) % 1.0))
    return Look(
        fg=fg, bg=bg, pattern=t % len(PATTERNS), freq=6.0 + (t * 2.3) % 9.0, angle=t * 0.9,
        speed=1.5 if t % 2 else -1.5, tone=180.0 * 2 ** (((t * 7) % 36) / 12), beat=(0.0, 1.5, 2.5, 4.0)[t % 4],
    )


def pattern_mask(lk: Look, x: np.ndarray, y: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Texture in [0, 1] at scene coordinates ``x, y`` [F, H, W]; ``phase`` [F, 1, 1]."""
    f, ca, sa = lk.freq, float(np.cos(lk.angle)), float(np.sin(lk.angle))
    xr, yr = ca * x + sa * y, -sa * x + ca * y
    if lk.pattern == 0:
        s = np.sin(f * xr + phase)
    elif lk.pattern == 1:
        s = np.sin(f * xr + phase) * np.sin(f * yr) * 2
    elif lk.pattern == 2:
        s = np.sin(f * np.hypot(x, y) - phase)
    elif lk.pattern == 3:
        s = np.cos(f * xr + phase) + np.cos(f * yr) - 0.8
    else:
        s = np.sin(3 * np.arctan2(y, x) + 0.6 * f * np.hypot(x, y) + phase)
    return 0.5 + 0.5 * np.tanh(2.0 * s)


def _border(img: np.ndarray, colour: tuple[float, float, float], width: int) -> None:
    """Paint a frame of ``width`` pixels around ``img [3, F, H, W]`` in place (screen space)."""
    for c, v in enumerate(colour):
        ch = img[c]
        ch[:, :width], ch[:, -width:], ch[:, :, :width], ch[:, :, -width:] = v, v, v, v


def _ar1(rng: np.random.Generator, n: int, dims: int, rho: float) -> np.ndarray:
    """[n, dims] stationary AR(1) with unit variance: smooth, camera-like drift."""
    eps = rng.standard_normal((n, dims)) * np.sqrt(1 - rho**2)
    out = np.empty((n, dims))
    out[0] = rng.standard_normal(dims)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + eps[i]
    return out


class VideoRenderer:
    """Frames and audio of one planned video, one segment at a time (bounded memory)."""

    def __init__(self, plan: VideoPlan, cfg: SynthConfig):
        self.cfg = cfg
        self.fpseg = round(cfg.fps * cfg.segment_seconds)
        self.spseg = round(cfg.audio_rate * cfg.segment_seconds)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, plan.index, 1]))
        n_frames = plan.num_segments * self.fpseg
        ar = _ar1(rng, n_frames, 6, rho=0.97)
        cam = [ar[:, 0] * cfg.jitter * 2, ar[:, 1] * cfg.jitter * 2, 1.0 + 0.12 * ar[:, 2], 0.08 * ar[:, 3],
               0.6 * np.tanh(ar[:, 4]), 0.6 * np.tanh(ar[:, 5])]  # shift x, y, zoom, roll, blob x, y
        self.cam = np.stack(cam, axis=1).astype(np.float32)[:, :, None, None]  # [n_frames, 6, 1, 1]
        self.gain = np.float32(rng.uniform(0.85, 1.15))
        self.tint = rng.uniform(-0.05, 0.05, size=(3, 1, 1, 1)).astype(np.float32)
        self.noise = (rng.standard_normal((3, 8, cfg.size, cfg.size)) * cfg.noise).astype(np.float32)
        self.noise_idx = rng.integers(0, 8, size=n_frames)
        self.seg_step = np.repeat(np.arange(len(plan.steps)), [s.segments for s in plan.steps])
        self.steps = plan.steps
        self.phase0 = rng.uniform(0, 2 * np.pi, size=len(plan.steps)).astype(np.float32)
        self.audio_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, plan.index, 2]))
        self.audio_gain = np.float32(rng.uniform(0.2, 0.35))
        self.carrier = 0.0
        g = np.linspace(-1.0, 1.0, cfg.size, dtype=np.float32)
        self.v, self.u = np.meshgrid(g, g, indexing="ij")

    def frames(self, seg: int) -> np.ndarray:
        """uint8 [fps * segment_seconds, size, size, 3] RGB frames of segment ``seg``."""
        step = self.steps[self.seg_step[seg]]
        lk = look(step.type)
        idx = np.arange(seg * self.fpseg, (seg + 1) * self.fpseg)
        t = (idx / self.cfg.fps - step.start * self.cfg.segment_seconds).astype(np.float32)[:, None, None]
        sx, sy, z, r, bx, by = self.cam[idx].transpose(1, 0, 2, 3)  # each [F, 1, 1]
        cr, sr = np.cos(r) / z, np.sin(r) / z
        x = cr * self.u - sr * self.v + sx
        y = sr * self.u + cr * self.v + sy
        m = pattern_mask(lk, x, y, self.phase0[self.seg_step[seg]] + lk.speed * t)
        blob = np.clip((0.07 - (x - bx) ** 2 - (y - by) ** 2) * 40.0, 0.0, 0.8)
        fg, bg = (np.asarray(c, np.float32)[:, None, None, None] * self.gain + self.tint for c in (lk.fg, lk.bg))
        grey = np.float32(0.5) * self.gain + self.tint
        img = bg + (fg - bg) * m  # channels first: [3, F, H, W] keeps numpy's inner loops long
        img += (grey - img) * blob
        if step.state:
            _border(img, STATE_COLOURS[(step.state - 1) % len(STATE_COLOURS)], max(2, self.cfg.size // 8))
        img += self.noise[:, self.noise_idx[idx]]
        return np.ascontiguousarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 3, 0))

    def audio(self, seg: int) -> np.ndarray:
        """float32 [audio_rate * segment_seconds] mono samples of segment ``seg``."""
        lk = look(self.steps[self.seg_step[seg]].type)
        sr, n = self.cfg.audio_rate, self.spseg
        ph64 = self.carrier + (2 * np.pi * lk.tone / sr) * np.arange(1, n + 1)
        self.carrier = float(ph64[-1] % (2 * np.pi))
        ph = (ph64 % (2 * np.pi)).astype(np.float32)
        wave = np.sin(ph) + 0.3 * np.sin(2 * ph)
        if lk.beat:
            t = ((seg * n + np.arange(n)) / sr).astype(np.float32)
            wave *= 0.65 + 0.35 * np.sin((2 * np.pi * lk.beat) * t)
        wave *= self.audio_gain
        wave += self.audio_rng.standard_normal(n, dtype=np.float32) * 0.02
        return wave


def write_video(plan: VideoPlan, cfg: SynthConfig, path: str | Path) -> Path:
    """Encode ``plan`` to ``path`` (MP4: H.264 yuv420p, AAC mono), atomically."""
    return atomic_write(path, lambda tmp: _encode(plan, cfg, tmp))


def _encode(plan: VideoPlan, cfg: SynthConfig, out: str) -> None:
    import av

    rend = VideoRenderer(plan, cfg)
    with av.open(out, "w", format="mp4") as box:
        vs = box.add_stream("libx264", rate=cfg.fps)
        vs.width = vs.height = cfg.size
        vs.pix_fmt = "yuv420p"
        # One key frame per segment and no scene-cut key frames: step changes leave no codec trace.
        k = str(rend.fpseg)
        vs.options = {"preset": "ultrafast", "crf": "23", "g": k, "keyint_min": k, "sc_threshold": "0"}
        vs.codec_context.thread_count = 1
        aus = None
        if cfg.audio:
            aus = box.add_stream("aac", rate=cfg.audio_rate)
            aus.layout = "mono"
            aus.options = {"aac_coder": "fast", "aac_pns": "0", "aac_tns": "0", "aac_is": "0", "aac_ms": "0"}
        for seg in range(plan.num_segments):
            for j, img in enumerate(rend.frames(seg)):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = seg * rend.fpseg + j, Fraction(1, cfg.fps)
                box.mux(vs.encode(frame))
            if aus is not None:
                frame = av.AudioFrame.from_ndarray(rend.audio(seg)[None], format="fltp", layout="mono")
                frame.sample_rate = cfg.audio_rate
                frame.pts = seg * rend.spseg
                frame.time_base = Fraction(1, cfg.audio_rate)
                box.mux(aus.encode(frame))
        box.mux(vs.encode(None))
        if aus is not None:
            box.mux(aus.encode(None))
