"""Held-out validation: masked-reconstruction loss at the training length and beyond.

Training loss alone cannot show overfitting, nor what happens past the crops the model
was trained on. A :class:`Validator` holds a fixed set of held-out windows (videos from
``data.val_stores``, or the share ``data.val_fraction`` of ``data.stores`` chosen by a
hash of the video id, which training then never reads) and fixed masks, so successive
evaluations differ only by the weights. For each length ``n`` (``data.max_len`` and
``train.eval_lengths``) it reports, over the masked segments of up to
``train.eval_windows`` consecutive windows of ``n`` segments per video:

- ``val/loss@n``: the training objective (``val/loss`` at ``data.max_len``);
- ``val/cos_gain@n``: mean cosine of each prediction to its own target minus the mean
  cosine to a far masked target of the same window (a shuffled baseline): 0 means
  the predictions carry nothing specific to their segment, unlike an in-batch
  retrieval rate that stays near 0 whenever many segments look alike.

The model runs in eval mode with its eval temporal scale, exactly as probing encodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lvmae.config import DataConfig, MaskingConfig
from lvmae.data.dataset import is_held_out
from lvmae.errors import DataError
from lvmae.masking import MaskBatch, build_masks

MAX_BATCH_TOKENS = 16384  # windows per forward: B * n <= this (the attention bias is B x H x n x n)


@dataclass
class _Windows:
    x: torch.Tensor  # [W, n, D] float32
    valid: torch.Tensor  # [W, n] bool (all True)
    masks: MaskBatch  # fixed masks of the W windows


class Validator:
    """Fixed held-out windows and masks; ``validator(module) -> {name: value}``."""

    def __init__(self, sequences: Sequence[np.ndarray], lengths: Sequence[int], masking: MaskingConfig,
                 windows_per_video: int = 4, seed: int = 0):
        """``lengths[0]`` is the training length (capped at the longest held-out video): its
        loss is also ``val/loss``. Longer lengths no held-out video reaches are left out."""
        if not sequences:
            raise DataError("the validation set is empty: raise data.val_fraction or set data.val_stores")
        base = min(int(lengths[0]), max(len(s) for s in sequences))
        self.sets: dict[int, _Windows] = {}
        for n in sorted({base, *(int(v) for v in lengths[1:])}):
            rows = [seq[s : s + n] for seq in sequences for s in range(0, len(seq) - n + 1, n)[:windows_per_video]]
            if not rows:
                continue
            x = torch.from_numpy(np.stack(rows)).float()
            valid = torch.ones(x.shape[:2], dtype=torch.bool)
            g = torch.Generator().manual_seed(seed * 1000003 + n)
            self.sets[n] = _Windows(x, valid, build_masks(x, valid, masking, g))
        self.base_length = base

    @property
    def lengths(self) -> list[int]:
        return sorted(self.sets)

    @torch.no_grad()
    def __call__(self, module: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        was_training = module.training
        module.eval()
        try:
            out: dict[str, float] = {}
            for n, w in self.sets.items():
                loss, gain = self._evaluate(module, w, torch.device(device))
                out[f"val/loss@{n}"], out[f"val/cos_gain@{n}"] = loss, gain
            out["val/loss"] = out[f"val/loss@{self.base_length}"]
            return out
        finally:
            module.train(was_training)

    def _evaluate(self, module: nn.Module, w: _Windows, device: torch.device) -> tuple[float, float]:
        n = w.x.shape[1]
        step = max(1, MAX_BATCH_TOKENS // n)
        loss_sum = gain_sum = count = 0.0
        for lo in range(0, len(w.x), step):
            sl = slice(lo, lo + step)
            masks = _slice_masks(w.masks, sl).to(device)
            res = module(w.x[sl].to(device), w.valid[sl].to(device), masks)
            seg = module.segment_loss(res["pred"], res["target"])  # [b, n]
            m = res["mask"]
            loss_sum += float((seg * m).sum())
            gain_sum += float(_cos_gain(res["pred"], res["target"], m).sum())
            count += float(m.sum())
        return loss_sum / max(count, 1.0), gain_sum / max(count, 1.0)


def _slice_masks(masks: MaskBatch, sl: slice) -> MaskBatch:
    return dataclasses.replace(masks, ids_keep=masks.ids_keep[sl], keep_valid=masks.keep_valid[sl],
                               ids_restore=masks.ids_restore[sl], mask=masks.mask[sl])


def _cos_gain(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per masked segment of windows with >= 2 of them: cos(pred, own target) minus cos(pred,
    the target of the masked segment half the window's masked count further on (cyclically),
    far enough to be another step rather than a look-alike neighbour)."""
    p, t = F.normalize(pred.float(), dim=-1), F.normalize(target.float(), dim=-1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # masked positions first, in order
    count = mask.sum(1, keepdim=True)
    rank = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    partner = (rank + count // 2) % count.clamp(min=1)
    d = p.shape[-1]
    p_m, t_m = (v.gather(1, order.unsqueeze(-1).expand(-1, -1, d)) for v in (p, t))
    t_partner = t_m.gather(1, partner.unsqueeze(-1).expand(-1, -1, d))
    gain = (p_m * t_m).sum(-1) - (p_m * t_partner).sum(-1)
    return gain[(rank < count) & (count >= 2)]


def load_sequences(data: DataConfig, held_out_of_train: bool) -> list[np.ndarray]:
    """Held-out videos as float32 ``[n, D]`` (modalities concatenated): every video of
    ``data.val_stores``, or (``held_out_of_train``) the hashed share of ``data.stores``."""
    from lvmae.store import FeatureStore

    roots = data.stores if held_out_of_train else data.val_stores
    out = []
    for root in roots:
        store = FeatureStore.open(root)
        for vid in store.video_ids:
            if held_out_of_train and not is_held_out(vid, data.val_fraction):
                continue
            parts = [np.asarray(store.load(vid, m), dtype=np.float32) for m in data.modalities]
            x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            if not np.isfinite(x).all():
                raise DataError(f"validation video {vid!r} in {root} has NaN or inf features")
            out.append(x)
    return out


def build_validator(data: DataConfig, masking: MaskingConfig, eval_lengths: Sequence[int],
                    windows: int, seed: int) -> Validator | None:
    """The run's validator, or None when no validation data is configured."""
    if not data.val_stores and data.val_fraction <= 0.0:
        return None
    seqs = load_sequences(data, held_out_of_train=not data.val_stores)
    return Validator(seqs, [data.max_len, *eval_lengths], masking, windows, seed)
