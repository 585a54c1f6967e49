"""Probe heads trained on frozen sequences: linear (pooled) and attentive (learned query).

Both take ``x [B, L, D]``, ``valid [B, L]`` bool and optionally ``cls [B, D]`` and
return ``[B, out]`` (logits, or one regression value). Ragged batches are handled
with the padding mask only; nothing loops over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x [B, L, D]`` over valid positions -> ``[B, D]``."""
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class LinearProbe(nn.Module):
    """Pool (masked mean or [CLS]) -> BatchNorm1d without affine -> Linear (MAE's linear probe).

    The affine-free BatchNorm standardises features whose scale the frozen encoder
    chose, without adding capacity, so the head stays linear.
    """

    def __init__(self, dim: int, out: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, out)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, valid: Tensor, cls: Tensor | None = None) -> Tensor:
        if self.pooling == "cls":
            if cls is None:
                raise ValueError("pooling='cls' needs the encoder's [CLS] features")
            z = cls
        else:
            z = masked_mean(x, valid)
        return self.head(self.norm(z))


def pick_heads(dim: int, wanted: int) -> int:
    """Largest head count <= ``wanted`` that divides ``dim`` (any embedding width works)."""
    return next(h for h in range(max(1, min(wanted, dim)), 0, -1) if dim % h == 0)


class AttentiveProbe(nn.Module):
    """Learnable queries cross-attend over the frozen sequence, then a linear head.

    V-JEPA's attentive pooler: ``q <- q + CrossAttn(q, LN(x))`` with the padding as
    key mask, ``q <- q + MLP(LN(q))``, mean over the queries, LayerNorm, Linear.
    ``x [B, L, D]`` -> ``[B, out]``.

    With ``width`` below ``dim`` the tokens are first normalised without affine and
    projected to ``width`` (one shared ``D x width`` matrix; a LayerNorm affine before
    a Linear adds nothing the Linear cannot learn), and the pooler runs at ``width``.
    Only valid tokens are projected, and no gradient flows into the frozen ``x``: on
    1280-d raw features this is what makes the probe cheap (the full-width pooler spends
    nearly all its time in ``[B*L, D] x [D, D]`` key/value products and their backward).
    """

    def __init__(self, dim: int, out: int, heads: int = 8, num_queries: int = 1, mlp_ratio: float = 4.0,
                 width: int | None = None):
        super().__init__()
        width = dim if not width or width >= dim else width
        self.width = width
        if width == dim:
            self.norm_kv: nn.Module = nn.LayerNorm(dim)
            self.proj: nn.Module | None = None
        else:
            self.norm_kv = nn.LayerNorm(dim, elementwise_affine=False)
            self.proj = nn.Linear(dim, width)
        self.query = nn.Parameter(torch.zeros(1, num_queries, width))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(width, pick_heads(width, heads), batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.norm_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, out)

    def keys(self, x: Tensor, valid: Tensor) -> Tensor:
        """Normalised (and projected) tokens ``[B, L, width]``, zero at padding."""
        if self.proj is None:
            return self.norm_kv(x)
        kv = x.new_zeros(*valid.shape, self.width)
        kv[valid] = self.proj(self.norm_kv(x[valid]))
        return kv

    def forward(self, x: Tensor, valid: Tensor, cls: Tensor | None = None) -> Tensor:
        kv = self.keys(x, valid)
        q = self.query.expand(x.shape[0], -1, -1)
        a, _ = self.attn(q, kv, kv, key_padding_mask=~valid, need_weights=False)
        h = q + a
        h = h + self.mlp(self.norm_mlp(h))
        return self.head(self.norm_out(h.mean(1)))
