"""Frozen segment encoders: one small protocol and a registry of named factories.

Importing this package is cheap; torch, the EfficientNet package and transformers are
imported only when an encoder is built (:func:`build_encoder`).
"""

from lvmae.encoders.base import MODALITIES, POOLINGS, Encoder, Waveforms, describe
from lvmae.encoders.registry import (
    available_encoders,
    build_encoder,
    register_encoder,
    register_torch_module,
)

__all__ = [
    "MODALITIES", "POOLINGS", "Encoder", "Waveforms", "available_encoders", "build_encoder",
    "describe", "register_encoder", "register_torch_module",
]
