"""Position encodings as pure functions: HoPE hybrid rotary, plain RoPE and 1-D sin-cos.

Rotary embedding (RoFormer) rotates each pair of adjacent channels ``(x[2i], x[2i+1])``
of a query/key head by the angle ``pos * theta_i`` with ``theta_i = base^(-2i/d)``, so
that ``q_m . k_n`` depends only on the offset ``m - n``.

HoPE (hybrid of position embedding) keeps rotary position only on the highest-frequency
pairs and sets the lowest-frequency pairs to frequency zero (cos = 1, sin = 0): those
channels carry no position and serve semantic matching over any distance, which is what
lets a model trained on short crops generalise to much longer videos. Positions are
floats: during training each sequence's time positions are ``gamma * t`` with ``gamma``
drawn per sequence (dynamic temporal scaling).

Several position axes (time, modality) share one head: the rotary (non-zero) pairs are
dealt out to the axes, interleaved so that every axis gets a spread of frequencies, and
a pair rotates by ``sum_a pos_a * freq[a, i]`` (each pair has one non-zero axis).

All angles are computed in float32 with elementwise products (no matmul, which may run
in TF32 on GPUs and lose the angle at long positions); rotated values are cast back to
the input dtype, so the functions are bf16-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def rope_frequencies(
    head_dim: int, base: float = 10000.0, zero_fraction: float = 0.0, max_position: float | None = None
) -> Tensor:
    """Per-pair angular frequencies, highest first, the lowest ones set to 0.

    Returns ``[head_dim // 2]`` float32: ``theta_i = base^(-2i/head_dim)``, with the last
    ``round(zero_fraction * P)`` pairs set to 0, or, when ``max_position`` is given, every
    pair whose wavelength ``2 pi / theta_i`` exceeds it (HoPE: a pair that never turns a
    full cycle within the training positions only ever saw a narrow band of angles, so at
    longer offsets it produces scores the model never saw; at frequency 0 it carries none).
    """
    if head_dim % 2:
        raise ValueError(f"rotary head_dim must be even, got {head_dim}")
    n_pairs = head_dim // 2
    theta = base ** (-torch.arange(n_pairs, dtype=torch.float64) * 2.0 / head_dim)
    if max_position is not None:
        theta[2 * math.pi / theta > max_position] = 0.0
    else:
        n_zero = round(zero_fraction * n_pairs)
        theta[n_pairs - n_zero :] = 0.0
    return theta.float()


def interleave_axes(n_pairs: int, fractions: Sequence[float]) -> Tensor:
    """Deal ``n_pairs`` rotary pairs to axes, interleaved; ``[n_pairs]`` long axis ids.

    Axis ``a >= 1`` gets ``round(fractions[a] * n_pairs)`` pairs, axis 0 the rest. The
    ``k``-th pair of an axis with ``n`` pairs sits at relative place ``(k + 0.5) / n``
    and pairs are ordered by place, so each axis spans high to low frequencies (HoPE
    interleaves its spatial axes the same way).
    """
    counts = [round(f * n_pairs) for f in fractions[1:]]
    counts.insert(0, n_pairs - sum(counts))
    if min(counts) < 0:
        raise ValueError(f"axis fractions {list(fractions)} exceed one")
    if n_pairs == 0:
        return torch.zeros(0, dtype=torch.long)
    places = torch.cat([(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in counts if n > 0])
    axes = torch.cat([torch.full((n,), a, dtype=torch.long) for a, n in enumerate(counts) if n > 0])
    return axes[torch.argsort(places, stable=True)]


def axis_frequencies(
    head_dim: int,
    base: float = 10000.0,
    zero_fraction: float = 0.0,
    axis_fractions: Sequence[float] = (1.0,),
    max_position: float | None = None,
) -> Tensor:
    """Multi-axis frequency table ``[n_axes, head_dim // 2]`` float32.

    The zero pairs of :func:`rope_frequencies` are zero on every axis; the remaining (rotary)
    pairs are dealt to the axes by :func:`interleave_axes` (axis 0 is time), and each
    pair keeps its own ``theta_i`` on its axis and 0 on the others.
    """
    theta = rope_frequencies(head_dim, base, zero_fraction, max_position)
    n_rot = int((theta > 0).sum())
    table = torch.zeros(len(axis_fractions), theta.numel())
    axes = interleave_axes(n_rot, axis_fractions)
    table[axes, torch.arange(n_rot)] = theta[:n_rot]
    return table


def rotary_cos_sin(positions: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin of the rotation angles: ``positions [..., n_axes]``, ``freqs [n_axes, P]``
    -> two ``[..., P]`` float32 tensors (angle = ``sum_a pos_a * freq[a]``)."""
    angles = (positions.float().unsqueeze(-1) * freqs.float()).sum(-2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of ``x [..., D]`` by angles with ``cos/sin [..., D/2]``
    (broadcast against ``x``'s leading dims); computed in float32, returned in ``x.dtype``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def time_positions(index: Tensor, scale: Tensor) -> Tensor:
    """Dynamic temporal scaling: ``index [B, N]`` segment indices, ``scale [B]`` -> ``[B, N]``
    float32 positions ``scale[b] * index[b, n]``."""
    return index.float() * scale.float().unsqueeze(-1)


def alibi_slopes(heads: int, share: float = 1.0, span: float | None = None) -> Tensor:
    """Geometric slopes for the first ``m = round(share * heads)`` heads (at least one), 0 for
    the rest: ``[heads]`` float32. ALiBi's ``2^(-8 (h + 1) / m)``, or with ``span`` the slopes
    ``span^(-(h + 1) / m)``, whose shallowest is ``1 / span`` (a decay length of ``span``)."""
    m = min(heads, max(1, round(share * heads)))
    slopes = torch.zeros(heads)
    base = 2.0**8 if span is None else float(span)
    slopes[:m] = base ** (-torch.arange(1, m + 1, dtype=torch.float64) / m)
    return slopes


def distance_bias(positions: Tensor, slopes: Tensor) -> Tensor:
    """Additive attention bias ``-slope_h |t_i - t_j|`` for a [CLS] token + tokens at
    ``positions [B, N]``: ``[B, H, 1 + N, 1 + N]`` float32, zero in [CLS]'s row and column
    (the global token is never penalised, so far context still reaches every token through it)."""
    t = positions.float()
    dist = (t.unsqueeze(-1) - t.unsqueeze(-2)).abs()
    bias = -slopes.float().to(t.device)[None, :, None, None] * dist.unsqueeze(1)
    return torch.nn.functional.pad(bias, (1, 0, 1, 0))


def sincos_embedding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """1-D absolute sin-cos embedding (MAE / LV-MAE): ``positions [...]`` -> ``[..., dim]``
    float32, first half ``sin(pos * w_i)``, second half ``cos(pos * w_i)``, ``w_i = base^(-2i/dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = base ** (-torch.arange(dim // 2, dtype=torch.float64, device=positions.device) * 2.0 / dim)
    angles = positions.float().unsqueeze(-1) * omega.float()
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def sincos_table(n: int, dim: int, base: float = 10000.0) -> Tensor:
    """``[n, dim]`` table of :func:`sincos_embedding` at positions ``0..n-1``."""
    return sincos_embedding(torch.arange(n), dim, base)
