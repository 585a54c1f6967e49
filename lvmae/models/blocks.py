"""Pre-LayerNorm transformer blocks with rotary positions applied inside attention.

A stack (:class:`Transformer`) takes padded tokens ``[B, N, C]`` with a validity mask
``[B, N]`` and, optionally, the rotary ``(cos, sin)`` of every token, each
``[B, N, 1, Dh/2]`` (broadcast over heads). With ``pack=True`` it gathers the valid
tokens of the whole batch into one row once, runs every block on that row with a packed
attention layout (varlen flash attention on CUDA) and scatters back at the end: no FLOP
is spent on padding, at the cost of one host sync per stack.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from lvmae.models.attention import AttnLayout, attention
from lvmae.models.rope import apply_rotary

Rope = tuple[Tensor, Tensor]
LN_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = True, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, rope: Rope | None = None, layout: AttnLayout | None = None, backend: str | None = None
    ) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, layout, backend or self.backend, dropout_p=p)
        return self.proj_drop(self.proj(out.reshape(b, n, c)))


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear (-> dropout)."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))


class Block(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0,
                 backend: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads, qkv_bias, dropout, backend)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio), dropout)

    def forward(
        self, x: Tensor, rope: Rope | None = None, layout: AttnLayout | None = None, backend: str | None = None
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, layout, backend)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """``depth`` blocks then a final LayerNorm, with optional packing and checkpointing."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, backend: str = "sdpa", checkpoint: bool = False, pack: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias, dropout, backend) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.checkpoint, self.pack = checkpoint, pack

    def forward(
        self, x: Tensor, valid: Tensor | None = None, rope: Rope | None = None,
        bias: Tensor | None = None, logit_scale: float | None = None,
    ) -> Tensor:
        """``x [B, N, C]``, ``valid [B, N]`` bool (None = all valid) -> ``[B, N, C]``.

        ``bias [B | 1, H, N, N]`` is added to every block's attention logits and
        ``logit_scale`` multiplies them (padded layout only). Outputs at invalid positions
        are meaningless (zero when packed)."""
        if self.pack and valid is not None:
            if bias is not None or logit_scale is not None:
                raise ValueError("a packed stack takes no attention bias or logit scale")
            return self._forward_packed(x, valid, rope)
        return self._run(x, AttnLayout(key_valid=valid, bias=bias, scale=logit_scale), rope)

    def _run(self, x: Tensor, layout: AttnLayout, rope: Rope | None) -> Tensor:
        ckpt = self.checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(blk, x, rope, layout, use_reentrant=False)
            else:
                x = blk(x, rope, layout)
        return self.norm(x)

    def _forward_packed(self, x: Tensor, valid: Tensor, rope: Rope | None) -> Tensor:
        b, n, c = x.shape
        idx = valid.flatten().nonzero().squeeze(1)
        layout = AttnLayout.packed(valid.sum(1))

        def pack(t: Tensor) -> Tensor:
            return t.flatten(0, 1).index_select(0, idx).unsqueeze(0)

        rope_p = (pack(rope[0]), pack(rope[1])) if rope is not None else None
        out = self._run(pack(x), layout, rope_p)
        return x.new_zeros(b * n, c).index_copy(0, idx, out[0].to(x.dtype)).view(b, n, c)
