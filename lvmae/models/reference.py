"""A deliberately naive LV-MAE path, mirroring the public LV-MAE code's structure.

It computes the same function as :class:`~lvmae.models.lvmae.LVMAE` with the same
parameters (the class is a subclass, so state dicts interchange), but the way the public
code does it:

- the encoder runs over *all* ``L`` padded tokens, in original order, and drops the
  masked and padded ones through the attention mask (instead of gathering the visible
  tokens first);
- every attention is explicit float32 ``softmax(QK^T / sqrt(d)) V`` with an ``[B, H, N, N]``
  score matrix (the ``math`` backend);
- the decoder input is assembled sequence by sequence in a Python loop (visible tokens in
  shuffle order + mask tokens, un-shuffled with ``ids_restore``, padded back to ``L``),
  with a host sync per sequence.

It exists as the correctness oracle for the fast path (tests compare loss and gradients)
and as the baseline of the GPU benchmark. Like the public code, it needs padding at the
end of each sequence (``valid`` a prefix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from lvmae.errors import DataError
from lvmae.models.attention import AttnLayout
from lvmae.models.blocks import Rope, Transformer
from lvmae.models.lvmae import LVMAE, _check_masks
from lvmae.models.rope import time_positions

if TYPE_CHECKING:
    from lvmae.masking import MaskBatch


def _run_naive(stack: Transformer, x: Tensor, valid: Tensor, rope: Rope | None,
               extras: tuple[Tensor | None, float | None] = (None, None)) -> Tensor:
    """A block stack with explicit attention and a key-padding mask, never packed."""
    layout = AttnLayout(key_valid=valid, bias=extras[0], scale=extras[1])
    for blk in stack.blocks:
        x = blk(x, rope, layout, backend="math")
    return stack.norm(x)


class ReferenceLVMAE(LVMAE):
    """Naive LV-MAE (see the module docstring); ``forward`` only."""

    def forward(self, x: Tensor, valid: Tensor, masks: MaskBatch, scale: Tensor | float | None = None) -> dict:
        x = self.prepare_inputs(x, valid)
        _check_masks(masks, valid)
        b, n = valid.shape
        lengths = valid.sum(1)
        if not torch.equal(valid, torch.arange(n, device=valid.device) < lengths[:, None]):
            raise DataError("the reference path needs padding at the end of each sequence")
        scale = self.resolve_scale(scale, b, x.device, self.training)
        seg_pos = time_positions(torch.arange(n, device=x.device).expand(b, n), scale)
        visible = valid & ~masks.mask
        latent = _run_naive(self.encoder, *self.encoder_inputs(x, seg_pos, visible),
                            self.attn_extras(seg_pos, self.enc_slopes, n))
        y = self.decoder_embed(latent)
        tokens = self._restore_per_sequence(y, masks, lengths)
        out = _run_naive(self.decoder, *self.decoder_inputs(y[:, :1], tokens, valid, scale),
                         self.attn_extras(seg_pos, self.dec_slopes, n))
        pred = self.head(out[:, 1:])
        target = self.targets(x)
        return {"loss": self.objective(pred, target, masks.mask, valid), "pred": pred, "target": target,
                "mask": masks.mask}

    def _restore_per_sequence(self, y: Tensor, masks: MaskBatch, lengths: Tensor) -> Tensor:
        """``y [B, 1 + L*T, Cd]`` in original order -> decoder tokens ``[B, L*T, Cd]``."""
        b, n = masks.mask.shape
        t, cd = self.n_tok, y.shape[-1]
        seg = y[:, 1:].unflatten(1, (n, t))
        rows = []
        for i in range(b):
            n_valid, n_keep = int(lengths[i]), int(masks.keep_valid[i].sum())
            vis = seg[i, masks.ids_keep[i, :n_keep]]
            full = torch.cat([vis, self.mask_token.view(1, 1, cd).expand(n_valid - n_keep, t, cd)])
            restored = full[masks.ids_restore[i, :n_valid]]
            rows.append(F.pad(restored, (0, 0, 0, 0, 0, n - n_valid)))
        return torch.stack(rows).flatten(1, 2)
