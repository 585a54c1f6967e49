"""Analytic FLOPs of an LV-MAE training step, and model-FLOPs utilisation (MFU).

Only matrix products are counted (a multiply-add is 2 FLOPs); LayerNorm, GELU, softmax,
rotary rotations, L2 normalisation and the loss are elementwise and below 1 % at any
useful size. For one transformer stack of ``depth`` pre-LN blocks, width ``C``, MLP
hidden ``H = int(C * mlp_ratio)``, over one sequence of ``n`` tokens (forward)::

    per block = 2n·C·3C (qkv) + 2n·C·C (out proj) + 2·2n·C·H (MLP) + 2·2n²·C (QKᵀ and AV)
              = 8nC² + 4nCH + 4n²C

LV-MAE forward on one sequence with ``e`` segments in the encoder, ``d`` in the decoder,
``T`` tokens per segment (1 with ``concat`` fusion, one per modality with ``tokens``):

- input projection ``2·e·Σ d_in·C`` over projected modalities (identity when the
  modality's dim already equals ``C``, as in the paper: 0);
- encoder stack on ``1 + e·T`` tokens ([CLS] + visible tokens);
- decoder embedding ``2·(1 + e·T)·C·C_d``;
- decoder stack (width ``C_d``) on ``1 + d·T`` tokens;
- head ``2·d·C_d·in_dim``.

A training step is forward + backward; backward costs two forwards for every matmul
(gradient of the input and of the weight), except the input projection, whose input
needs no gradient: ``step = 3·forward − input projection``. Activation checkpointing
recomputes the stacks' forward: that is extra *executed* work, not model FLOPs.

*Model FLOPs* (what MFU counts, the same for every implementation) use each sequence's
real counts: ``e`` = its visible segments, ``d`` = its valid segments. *Executed* FLOPs
count what an implementation computes: the naive reference runs the encoder and
decoder over all ``L`` padded segments (``e = d = L``); the fast path pads the visible
segments to the batch's largest visible count ``K`` (``e = K``, ``d = L``).
MFU = model FLOPs per step / step time / peak FLOP/s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from lvmae.model_config import ModelConfig, modality_dims

# Dense (no sparsity) bf16 tensor-core peaks from the datasheets, TFLOP/s. Matched by
# substring of the CUDA device name, most specific first.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "GH200": 989.4,
    "H200": 989.4,
    "H800": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}


@dataclass
class FlopCount:
    """Forward FLOPs of one LV-MAE pass, by part (summed over the batch)."""

    embed: float = 0.0
    encoder: float = 0.0
    decoder_embed: float = 0.0
    decoder: float = 0.0
    head: float = 0.0

    @property
    def forward(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def train_step(self) -> float:
        """Forward + backward (see the module docstring)."""
        return 3.0 * self.forward - self.embed

    def as_dict(self) -> dict[str, float]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "forward": self.forward, "train_step": self.train_step}


def stack_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of ``depth`` blocks on one sequence of ``tokens`` tokens."""
    n, c, h = float(tokens), float(width), float(int(width * mlp_ratio))
    return depth * (8 * n * c * c + 4 * n * c * h + 4 * n * n * c)


def _tokens_per_segment(cfg: ModelConfig) -> tuple[int, list[int]]:
    """(T, the input dims of each token kind) for the configured fusion."""
    dims = modality_dims(cfg)
    return (len(dims), dims) if cfg.modality_fusion == "tokens" else (1, [cfg.in_dim])


def forward_flops(cfg: ModelConfig, enc_segments: Sequence[int], dec_segments: Sequence[int]) -> FlopCount:
    """Forward FLOPs of LV-MAE over a batch: sequence ``i`` has ``enc_segments[i]`` segments
    in the encoder and ``dec_segments[i]`` in the decoder (see the module docstring)."""
    if len(enc_segments) != len(dec_segments):
        raise ValueError(f"{len(enc_segments)} encoder counts but {len(dec_segments)} decoder counts")
    t, token_dims = _tokens_per_segment(cfg)
    projected = sum(d for d in token_dims if d != cfg.width)
    c, cd = cfg.width, cfg.decoder_width
    out = FlopCount()
    for e, d in zip(enc_segments, dec_segments):
        n_enc, n_dec = 1 + int(e) * t, 1 + int(d) * t
        out.embed += 2.0 * int(e) * projected * c
        out.encoder += stack_flops(n_enc, c, cfg.depth, cfg.mlp_ratio)
        out.decoder_embed += 2.0 * n_enc * c * cd
        out.decoder += stack_flops(n_dec, cd, cfg.decoder_depth, cfg.mlp_ratio)
        out.head += 2.0 * int(d) * cd * cfg.in_dim
    return out


def model_flops(cfg: ModelConfig, valid_counts: Sequence[int], keep_counts: Sequence[int]) -> FlopCount:
    """Model FLOPs: the encoder on each sequence's visible segments, the decoder on its valid ones."""
    return forward_flops(cfg, keep_counts, valid_counts)


def reference_flops(cfg: ModelConfig, batch: int, length: int) -> FlopCount:
    """Executed FLOPs of the naive reference: encoder and decoder over all ``length`` padded segments."""
    return forward_flops(cfg, [length] * batch, [length] * batch)


def peak_tflops(device_name: str | None) -> float | None:
    """Datasheet dense bf16 peak for a CUDA device name (e.g. ``NVIDIA H100 80GB HBM3``), or None."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Utilisation: ``flops_per_step / step_seconds / peak`` (peak in FLOP/s); None without a peak."""
    if not peak or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak
