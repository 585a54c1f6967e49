"""One attention function for every block, with interchangeable backends.

Backends (``q, k, v`` are ``[B, N, H, Dh]``, the layout a fused qkv projection gives):

- ``sdpa`` (default): :func:`torch.nn.functional.scaled_dot_product_attention`, which
  picks flash / memory-efficient / cuDNN kernels on GPUs. Key padding is a boolean
  ``[B, 1, 1, N]`` mask broadcast by the kernel, never an ``[B, N, N]`` matrix. For a
  packed layout on CUDA in fp16/bf16 it calls ``torch.nn.attention.varlen.varlen_attn``
  (flash attention over concatenated sequences, no padding at all).
- ``xformers``: ``memory_efficient_attention`` when xformers imports and the tensors are
  on CUDA (packed: ``BlockDiagonalMask``; padded: an expanded additive bias). Otherwise
  it falls back to ``sdpa`` with a one-time warning, so configs stay portable.
- ``math``: explicit float32 softmax(QK^T / sqrt(d)) V, the reference the others are
  tested against.

Every query must have at least one valid key (the model's [CLS] token guarantees it);
a query with none gives NaN in ``math`` and undefined values elsewhere.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "xformers", "math")
_warned: set[str] = set()


@dataclass
class AttnLayout:
    """How a batch's tokens are laid out.

    Padded: tensors are ``[B, N, ...]`` and ``key_valid [B, N]`` bool marks real tokens
    (None = all real). Packed: the real tokens of ``S`` sequences are concatenated into
    one row ``[1, T, ...]`` and ``cu_seqlens [S + 1]`` int32 holds the sequence offsets;
    ``max_len`` is the longest sequence (a host int, as varlen kernels need).
    """

    key_valid: Tensor | None = None
    cu_seqlens: Tensor | None = None
    max_len: int = 0
    bias: Tensor | None = None  # padded only: additive float logits bias [B | 1, H, N, N]
    scale: float | None = None  # logits multiplier on top of 1/sqrt(Dh) (None = 1)

    @classmethod
    def packed(cls, lengths: Tensor) -> AttnLayout:
        """Layout for sequences of ``lengths [S]`` tokens (one host sync for ``max_len``)."""
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        return cls(cu_seqlens=cu, max_len=int(lengths.max()))

    @property
    def is_packed(self) -> bool:
        return self.cu_seqlens is not None

    def dense_mask(self, n: int) -> Tensor | None:
        """Boolean mask broadcastable to ``[B, H, N, N]`` (True = attend), or None.

        Padded: ``[B, 1, 1, N]``. Packed: block-diagonal ``[1, 1, T, T]``, built only for
        the math path and the CPU fallback of ``sdpa``. With a ``bias`` it is that float
        bias (-inf at invalid keys).
        """
        if self.bias is not None:
            if self.key_valid is None:
                return self.bias
            return self.bias.masked_fill(~self.key_valid[:, None, None, :], float("-inf"))
        if self.cu_seqlens is not None:
            cu = self.cu_seqlens
            seq = torch.searchsorted(cu[1:], torch.arange(n, device=cu.device, dtype=cu.dtype), right=True)
            return (seq[:, None] == seq[None, :])[None, None]
        if self.key_valid is not None:
            return self.key_valid[:, None, None, :]
        return None


def _xformers_ops():
    try:
        import xformers.ops as xops
    except Exception:  # ImportError, or a build that does not match this torch
        return None
    return xops


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will actually run: ``xformers`` needs the package and CUDA."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "xformers" and (device.type != "cuda" or _xformers_ops() is None):
        if "xformers" not in _warned:
            _warned.add("xformers")
            warnings.warn("xformers unavailable (not installed or not on CUDA); using sdpa", stacklevel=2)
        return "sdpa"
    return backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: AttnLayout | None = None,
    backend: str = "sdpa",
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention: ``q, k, v [B, N, H, Dh]`` -> ``[B, N, H, Dh]``."""
    layout = layout or AttnLayout()
    backend = resolve_backend(backend, q.device)
    if backend == "xformers":
        return _xformers(q, k, v, layout, dropout_p)
    if backend == "sdpa" and layout.is_packed and _varlen_ok(q, dropout_p):
        from torch.nn.attention.varlen import varlen_attn

        cu = layout.cu_seqlens
        return varlen_attn(q[0], k[0], v[0], cu, cu, layout.max_len, layout.max_len)[None]
    mask = layout.dense_mask(q.shape[1])
    scale = (layout.scale or 1.0) / math.sqrt(q.shape[-1])
    if backend == "math":
        return _math(q, k, v, mask, dropout_p, scale)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p,
        scale=scale,
    )
    return out.transpose(1, 2)


def _varlen_ok(q: Tensor, dropout_p: float) -> bool:
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return False
    if dropout_p > 0:
        if "varlen_dropout" not in _warned:
            _warned.add("varlen_dropout")
            warnings.warn("varlen flash attention has no dropout; using a block-diagonal mask", stacklevel=3)
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float) -> Tensor:
    """Explicit attention matrices in float32 (reference); a float ``mask`` is added."""
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = (qf @ kf.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask.float() if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return (probs @ vf).transpose(1, 2).to(q.dtype)


def _xformers(q: Tensor, k: Tensor, v: Tensor, layout: AttnLayout, dropout_p: float) -> Tensor:
    xops = _xformers_ops()
    bias = None
    if layout.bias is not None or layout.scale is not None:
        return attention(q, k, v, layout, "sdpa", dropout_p)  # xformers path: masks only
    if layout.is_packed:
        lengths = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
        bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(lengths)
    elif layout.key_valid is not None:
        b, n, h, _ = q.shape
        padded = -(-n // 8) * 8  # the kernel wants bias rows aligned to 8 elements
        bias = q.new_zeros(b, 1, 1, padded)
        bias[..., :n].masked_fill_(~layout.key_valid[:, None, None, :], float("-inf"))
        bias = bias[..., :n].expand(b, h, n, n)
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)
