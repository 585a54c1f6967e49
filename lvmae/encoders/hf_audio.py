"""Learned audio encoders from transformers (``encoder.audio=hf_audio``), on each segment's audio.

``extract.encoder.audio_checkpoint`` names a local directory or Hub id; its ``config.json``
``model_type`` picks the recipe, and its feature extractor (``preprocessor_config.json``,
loaded with ``AutoFeatureExtractor``) turns each segment's waveform into the model's input
at the model's own sample rate (the extractor decodes the audio at that rate):

=============================== ===================================================== =======
model_type                      segment embedding                                     rate
=============================== ===================================================== =======
clap                            CLAP's projected, L2-normalised audio embedding        48 kHz
                                (``get_audio_features``; the text tower is not used)
audio-spectrogram-transformer   AST's pooled output (mean of its [CLS] and             16 kHz
                                distillation tokens)
whisper                         Whisper encoder states averaged over the frames        16 kHz
                                that hold the segment (its input is padded to 30 s)
wav2vec2, hubert, wavlm,        last hidden states averaged over the segment's frames  16 kHz
data2vec-audio                  (segments of one length run together, unpadded)
=============================== ===================================================== =======

Segments shorter than ``MIN_SECONDS`` are zero-padded to it (the convolutional front ends
need a minimum input). The rates shown are the usual checkpoints'; the feature extractor's
``sampling_rate`` is what is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.config import EncoderConfig
from lvmae.encoders.base import Waveforms
from lvmae.encoders.hf import checkpoint_dir, load_kw, quiet, transformers_module
from lvmae.encoders.torch_module import TorchEncoder
from lvmae.errors import ConfigError

MIN_SECONDS = 0.1
KINDS = {"clap": "clap", "audio-spectrogram-transformer": "ast", "whisper": "whisper",
         "wav2vec2": "frames", "hubert": "frames", "wavlm": "frames", "data2vec-audio": "frames"}


class AudioTower(nn.Module):
    """Feature-extractor output (keyword tensors) -> ``[B, D]`` segment embeddings."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, samples: Tensor, **x: Tensor) -> Tensor:
        device = next(self.model.parameters()).device
        x = {k: v.to(device) for k, v in x.items()}
        if self.kind == "clap":
            return self.model.get_audio_features(**x).pooler_output
        if self.kind == "ast":
            return self.model(**x).pooler_output
        if self.kind == "whisper":
            hidden = self.model(x["input_features"]).last_hidden_state  # [B, T/2, D]
            frames = torch.div(x["attention_mask"].sum(1) + 1, 2, rounding_mode="floor")
        else:
            return self._by_length(x["input_values"], samples.to(device))
        valid = torch.arange(hidden.shape[1], device=device)[None] < frames.clamp(min=1)[:, None]
        m = valid.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)

    def _by_length(self, values: Tensor, samples: Tensor) -> Tensor:
        """Mean states of wav2vec2-style models, one forward per distinct segment length, unpadded.

        Their first conv layer's GroupNorm (base models) normalises over time, padding included,
        so a padded batch would change a short segment's embedding; segments of one length (all
        but a video's last) need no padding and still go in together.
        """
        out = values.new_empty(len(values), self.model.config.hidden_size)
        for n in samples.unique().tolist():
            rows = (samples == n).nonzero().squeeze(1)
            out[rows] = self.model(values[rows, :n]).last_hidden_state.mean(1)
        return out


class FeaturePreprocess:
    """``Waveforms`` -> the feature extractor's tensors (plus ``samples [B]``, the valid lengths)."""

    def __init__(self, extractor: Any, kind: str):
        self.extractor, self.kind = extractor, kind
        self.rate = int(extractor.sampling_rate)

    def __call__(self, batch: Waveforms) -> dict[str, Any]:
        n_min = max(1, int(MIN_SECONDS * self.rate))
        lengths = batch.lengths.cpu().long().clamp(min=n_min)
        wave = batch.wave.float().cpu().numpy()
        waves = [np.pad(w[:n], (0, max(0, n - len(w[:n])))).astype(np.float32) for w, n in zip(wave, lengths.tolist())]
        kw: dict[str, Any] = {"sampling_rate": self.rate, "return_tensors": "pt"}
        if self.kind == "whisper":
            kw["return_attention_mask"] = True
        elif self.kind == "frames":
            kw.update(padding=True, return_attention_mask=False)
        out = dict(self.extractor(waves, **kw))
        return {"samples": lengths, **out}


def build_audio(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    path = checkpoint_dir(cfg.audio_checkpoint, "encoder.audio=hf_audio", "encoder.audio_checkpoint", cfg)
    tf, kw = transformers_module(), load_kw(cfg)
    with quiet():
        conf = tf.AutoConfig.from_pretrained(path, **kw)
        kind = KINDS.get(conf.model_type)
        if kind is None:
            raise ConfigError(f"encoder.audio_checkpoint={cfg.audio_checkpoint}: model type {conf.model_type!r} "
                              f"is not an audio encoder lvmae knows ({', '.join(KINDS)})")
        try:
            extractor = tf.AutoFeatureExtractor.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            raise ConfigError(f"encoder.audio_checkpoint={cfg.audio_checkpoint}: no usable feature extractor "
                              f"(preprocessor_config.json): {str(e).splitlines()[0]}") from None
        if kind == "clap":
            model = tf.ClapModel.from_pretrained(path, **kw)
        elif kind == "whisper":
            model = tf.WhisperModel.from_pretrained(path, **kw).get_encoder()
        else:
            model = tf.AutoModel.from_pretrained(path, **kw)
    pre = FeaturePreprocess(extractor, kind)
    return TorchEncoder("hf_audio", AudioTower(model, kind), "audio", preprocess=pre, output=_identity,
                        sample_rate=pre.rate, device=device, precision=cfg.precision)


def _identity(x: Tensor) -> Tensor:
    return x
