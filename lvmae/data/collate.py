"""Batching: pad ragged crops, build the MAE masks and draw the HoPE scale per sequence.

Masks are built here, in the loader (as V-JEPA does), not in the model or the loop,
so worker processes overlap masking with compute. Each batch's randomness comes
from a generator seeded by its first crop's key, so a batch is the same whether it
is produced in the first run or after a resume, in a worker or in the main process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lvmae.config import MaskingConfig


def pad_batch(seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[len_i, D]`` arrays -> ``x [B, L, D]`` float32 (zeros at padding), ``valid [B, L]`` bool."""
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.empty(len(seqs), int(lengths.max()), seqs[0].shape[1])  # zero only the padding below
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(s)
        x[i, len(s) :] = 0
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return x, valid


class MaskCollate:
    """``collate_fn``: items from :class:`~lvmae.data.dataset.CropDataset` -> a training batch.

    Returns ``{"x": [B, L, D] float32, "valid": [B, L] bool, "masks": MaskBatch,
    "scale": [B] float32 (γ drawn from ``train_scales``, or None if empty), "num_masked": int (loss
    positions, counted on the host so the loop can weight micro-batches without a device sync),
    "video_ids": list[str]}``, and ``"monitor": [B, L, D_m]`` when the items carry a monitored modality.
    """

    def __init__(self, masking: MaskingConfig, train_scales: Sequence[float] = ()):
        self.masking = masking
        self.train_scales = torch.tensor(list(train_scales), dtype=torch.float32)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from lvmae.masking import build_masks

        x, valid = pad_batch([it["x"] for it in items])
        g = torch.Generator().manual_seed(int(items[0]["key"]))
        masks = build_masks(x, valid, self.masking, g)
        scale = None
        if len(self.train_scales):
            scale = self.train_scales[torch.randint(len(self.train_scales), (len(items),), generator=g)]
        out = {"x": x, "valid": valid, "masks": masks, "scale": scale, "num_masked": int(masks.mask.sum()),
               "video_ids": [it["video_id"] for it in items]}
        if "monitor" in items[0]:
            out["monitor"] = pad_batch([it["monitor"] for it in items])[0]
        return out
