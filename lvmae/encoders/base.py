"""The frozen-encoder protocol: what every segment encoder looks like from outside.

An encoder turns a batch of segments of *one* modality into one embedding per segment.
Its input is what the decoder produces for that modality:

- ``vision``: ``uint8`` tensor ``[B, K, H, W, 3]`` (RGB, ``H = W = input_spec()["image_size"]``,
  ``K`` frames sampled per segment);
- ``audio``: :class:`Waveforms` (``wave [B, S]`` float32 mono at ``input_spec()["sample_rate"]``,
  zero-padded, ``lengths [B]`` valid samples);
- ``text``: ``list[str]`` of length ``B`` (never empty strings: segments without text get a
  zero embedding from the extractor and are not sent to the encoder).

``encode`` returns ``[B, dim]`` float32 on the CPU. ``version`` identifies the weights (it
goes into the feature store's config hash, so features of different weights never mix).
This module imports nothing heavy: encoders import torch/transformers when built.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

MODALITIES = ("vision", "audio", "text")
POOLINGS = {"mean": 1, "mean_std": 2, "mean_diff": 2}  # frame pooling -> dim multiplier
RESIZE_MODES = ("center_crop", "squash")


class Waveforms(NamedTuple):
    """A batch of mono waveforms: ``wave [B, S]`` float32 (zero-padded), ``lengths [B]`` int64."""

    wave: Any
    lengths: Any


@runtime_checkable
class Encoder(Protocol):
    """A frozen segment encoder (see the module docstring for the input of each modality)."""

    name: str
    modality: str  # vision | audio | text
    dim: int
    version: str

    def input_spec(self) -> dict[str, Any]:
        """What the decoder must produce (vision: image_size, resize; audio: sample_rate)."""
        ...

    def encode(self, batch: Any) -> Any:
        """``[B, dim]`` float32 CPU tensor, one row per segment of ``batch``."""
        ...


def describe(enc: Encoder) -> dict[str, Any]:
    """Everything about an encoder that changes its output: hashed into the store meta."""
    return {"name": enc.name, "modality": enc.modality, "dim": int(enc.dim),
            "version": enc.version, **enc.input_spec()}
