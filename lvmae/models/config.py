"""Model configuration: plain dataclasses, no omegaconf (model code stays launcher-free)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RopeConfig:
    """Position encoding. ``kind``: hope (hybrid RoPE + dynamic temporal scaling),
    rope (plain rotary), sincos (1-D absolute, the LV-MAE paper's choice), none."""

    kind: str = "hope"
    base: float = 10000.0
    zero_freq_fraction: float = 0.25  # share of lowest-frequency pairs set to frequency 0
    train_scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    eval_scale: float = 1.0
    modality_axis_fraction: float = 0.25  # share of rotary pairs given to the modality axis


@dataclass
class ModelConfig:
    """LV-MAE sizes. Defaults are a small CPU-friendly model; see configs/paper.yaml."""

    in_dim: int = 1280
    num_modalities: int = 1
    modality_fusion: str = "concat"  # concat (then project) | tokens (one token per modality)
    l2_normalize_input: bool = True
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    dropout: float = 0.0
    loss: str = "mse"  # mse | cosine
    norm_target: bool = False
    attention: str = "sdpa"  # sdpa | xformers | math
    checkpoint_activations: bool = False
    max_len: int = 4096  # only bounds the sincos table
    rope: RopeConfig = field(default_factory=RopeConfig)
