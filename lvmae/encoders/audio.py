"""Log-mel statistics: an audio encoder that needs no model and no download.

Pure torch (torchaudio does not load with this torch): 25 ms Hann windows every 10 ms,
power spectrum, HTK mel filterbank, natural log; the segment embedding is the mean and the
standard deviation of each mel band over the segment's valid frames (``2 * n_mels`` dims).
Crude next to a learned audio model, but it separates silence, tones, speech and noise,
and it is exactly reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lvmae.config import EncoderConfig
from lvmae.encoders.base import Waveforms
from lvmae.encoders.torch_module import cpu_chunks
from lvmae.errors import ConfigError

VERSION = "logmel-v1"
CPU_CHUNK = 1  # segments per spectrogram on the CPU (see LogMelEncoder.encode)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular HTK-mel filters ``[n_mels, n_freqs]`` over the rfft bins of ``[0, sr/2]``."""
    f_max = sample_rate / 2 if f_max is None else f_max

    def to_mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    mels = torch.linspace(float(to_mel(torch.tensor(f_min))), float(to_mel(torch.tensor(f_max))), n_mels + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs - lo) / (mid - lo).clamp_min(1e-6)
    down = (hi - freqs) / (hi - mid).clamp_min(1e-6)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMelEncoder:
    """``Waveforms(wave [B, S], lengths [B])`` -> ``[B, 2 * n_mels]`` (band means, band stds).

    A segment with fewer valid samples than one window gets a zero embedding.
    """

    name = "logmel"
    modality = "audio"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, device: str = "cpu"):
        if sample_rate < 1000 or n_mels < 1:
            raise ConfigError(f"logmel needs sample_rate >= 1000 and n_mels >= 1 (got {sample_rate}, {n_mels})")
        self.sample_rate, self.n_mels = int(sample_rate), int(n_mels)
        self.n_fft = int(round(0.025 * sample_rate))
        self.hop = int(round(0.010 * sample_rate))
        self.device = torch.device(device)
        self.window = torch.hann_window(self.n_fft, device=self.device)
        self.fb = mel_filterbank(self.n_fft // 2 + 1, n_mels, sample_rate).to(self.device)
        self.dim = 2 * n_mels
        self.version = VERSION

    def input_spec(self) -> dict:
        return {"sample_rate": self.sample_rate, "n_mels": self.n_mels, "n_fft": self.n_fft, "hop": self.hop}

    @torch.inference_mode()
    def encode(self, batch: Waveforms) -> Tensor:
        """On the CPU one segment at a time (:data:`CPU_CHUNK`): the same rows at the same speed.

        A whole batch's spectrograms were the largest short-lived blocks of an extraction; once
        decoding and encoding overlap they sit on top of the decoder's memory, which made a long
        video's peak higher than a short one's (docs/reliability.md).
        """
        wave = torch.as_tensor(batch.wave, dtype=torch.float32, device=self.device)
        lengths = torch.as_tensor(batch.lengths, device=self.device)
        return cpu_chunks(self._encode, self.device, CPU_CHUNK, wave, lengths)

    def _encode(self, wave: Tensor, lengths: Tensor) -> Tensor:
        if wave.shape[1] < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - wave.shape[1]))
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=False,
                          return_complex=True).abs().pow(2)  # [B, F, T]
        logmel = torch.log(self.fb @ spec + 1e-6)  # [B, M, T]
        n_valid = torch.clamp(torch.div(lengths - self.n_fft, self.hop, rounding_mode="floor") + 1, min=0)
        t = torch.arange(logmel.shape[-1], device=self.device)
        mask = (t[None, :] < n_valid[:, None]).to(logmel.dtype)[:, None, :]  # [B, 1, T]
        count = mask.sum(-1).clamp_min(1.0)
        mean = (logmel * mask).sum(-1) / count
        std = (((logmel - mean[..., None]) ** 2 * mask).sum(-1) / count).sqrt()
        out = torch.cat([mean, std], -1) * (n_valid > 0).to(logmel.dtype)[:, None]
        return out.cpu()


def build(cfg: EncoderConfig, device: str, sample_rate: int) -> LogMelEncoder:
    from lvmae.devices import resolve_device

    return LogMelEncoder(sample_rate, cfg.n_mels, resolve_device(device, key="extract.encoder.device"))

