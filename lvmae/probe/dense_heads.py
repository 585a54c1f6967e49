"""Dense probe heads: one prediction per token of a frozen sequence.

Both take ``x [B, L, D]`` and ``valid [B, L]`` bool and return logits ``[B, L, C]``
(zero at padding). Padding never leaks into a valid position: the linear head sees
each token alone, and the temporal head zeroes padded positions before every
convolution (MS-TCN masks the same way).
"""

from __future__ import annotations

from torch import Tensor, nn


class TokenLinear(nn.Module):
    """Per token: BatchNorm1d without affine -> Linear (MAE's linear probe, applied to every token).

    Statistics come from the valid tokens only, so a batch's padding does not move them.
    """

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, out)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        out = x.new_zeros(*valid.shape, self.head.out_features)
        out[valid] = self.head(self.norm(x[valid]))
        return out


class _DilatedResidual(nn.Module):
    """MS-TCN's layer: dilated conv (kernel 3) -> ReLU -> 1x1 conv, added to the input."""

    def __init__(self, width: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        return (h + self.drop(self.mix(nn.functional.relu(self.conv(h))))) * mask


class TemporalConv(nn.Module):
    """A light temporal head: one MS-TCN stage (``layers`` dilated residual convs, dilations 1, 2, 4, ...).

    Tokens are normalised without affine and projected to ``width`` first; the receptive
    field is ``2**(layers+1) - 1`` positions. ``x [B, L, D]`` -> ``[B, L, out]``.
    """

    def __init__(self, dim: int, out: int, width: int = 64, layers: int = 4, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj = nn.Linear(dim, width)
        self.layers = nn.ModuleList(_DilatedResidual(width, 2 ** i, dropout) for i in range(layers))
        self.head = nn.Conv1d(width, out, 1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        mask = valid[:, None, :].to(x.dtype)
        h = (self.proj(self.norm(x)) * valid[..., None]).transpose(1, 2)  # [B, W, L]
        for layer in self.layers:
            h = layer(h, mask)
        return (self.head(h) * mask).transpose(1, 2)
