"""Ragged embedding sequences in memory, served as padded batches.

A probe run touches every labelled video many times (epochs x seeds x methods x
tasks), so the sequences are read from the feature store once and packed end to
end into one ``flat [T, D]`` tensor with ``offsets``/``lengths`` per video. A batch
is then a single gather: ``x[b, l] = flat[offsets[b] + l]`` where ``l < lengths[b]``,
zero elsewhere, with a ``valid`` mask -- no Python loop over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lvmae.errors import DataError


@dataclass
class Batch:
    """``x [B, L, D]`` float, ``valid [B, L]`` bool, ``cls [B, D]`` or None."""

    x: Tensor
    valid: Tensor
    cls: Tensor | None = None


@dataclass
class SequenceBank:
    """Packed ragged sequences: ``flat [T, D]``, ``offsets``/``lengths [N]`` long, ``cls [N, D]`` or None.

    Row ``i`` of the bank is video ``ids[i]``; its sequence is
    ``flat[offsets[i] : offsets[i] + lengths[i]]``.
    """

    ids: list[str]
    flat: Tensor
    offsets: Tensor
    lengths: Tensor
    cls: Tensor | None = None

    def __post_init__(self) -> None:
        self._row = {v: i for i, v in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.flat.shape[1])

    def rows(self, ids: Sequence[str]) -> Tensor:
        """Bank rows ``[len(ids)]`` long of the given video ids."""
        try:
            return torch.as_tensor([self._row[v] for v in ids], dtype=torch.long)
        except KeyError as e:
            raise DataError(f"video {e.args[0]!r} is not in the loaded features") from None

    def to(self, device: torch.device | str) -> SequenceBank:
        """The same bank with its tensors on ``device`` (batches are then gathered there)."""
        cls = self.cls.to(device) if self.cls is not None else None
        return SequenceBank(self.ids, self.flat.to(device), self.offsets.to(device), self.lengths.to(device), cls)

    def batch(self, rows: Tensor, device: torch.device | str | None = None) -> Batch:
        """Padded float32 batch of the given rows, moved to ``device``."""
        rows = rows.to(self.flat.device)
        lengths = self.lengths[rows]
        steps = torch.arange(int(lengths.max()), device=rows.device)
        valid = steps[None, :] < lengths[:, None]
        index = torch.where(valid, self.offsets[rows][:, None] + steps[None, :], 0)
        x = self.flat[index].float() * valid[..., None]
        cls = self.cls[rows].float() if self.cls is not None else None
        if device is not None:
            x, valid = x.to(device, non_blocking=True), valid.to(device, non_blocking=True)
            cls = cls.to(device, non_blocking=True) if cls is not None else None
        return Batch(x, valid, cls)

    def mean(self) -> Tensor:
        """Mean over each sequence, ``[N, D]`` float32 (one scatter-add, no loop)."""
        order = torch.argsort(self.offsets)  # rows in the order their sequences lie in flat
        owner = torch.repeat_interleave(order, self.lengths[order])
        sums = torch.zeros(len(self), self.dim, device=self.flat.device).index_add_(0, owner, self.flat.float())
        return sums / self.lengths[:, None].clamp(min=1).float()


def pooled_bank(bank: SequenceBank) -> SequenceBank:
    """``bank`` with each sequence replaced by its float32 mean: one row per video, ``cls`` kept."""
    n = len(bank)
    rows = torch.arange(n, device=bank.flat.device)
    return SequenceBank(list(bank.ids), bank.mean(), rows, torch.ones_like(rows), bank.cls)


def subsample_index(n: int, max_len: int) -> np.ndarray:
    """Positions kept from a sequence of ``n`` segments: all, or ``max_len`` spread uniformly.

    Uniform subsampling keeps the whole video's span (a crop would drop its end).
    """
    if max_len <= 0 or n <= max_len:
        return np.arange(n)
    return np.linspace(0, n - 1, max_len).round().astype(np.int64)


def load_bank(
    store,
    ids: Sequence[str],
    modalities: Sequence[str] = ("vision",),
    max_len: int = 0,
    progress: bool = False,
) -> SequenceBank:
    """Read ``ids`` from a :class:`~lvmae.store.FeatureStore` into one bank.

    Modalities are concatenated along D in the given order (the pretraining
    convention). Sequences longer than ``max_len`` (> 0) are subsampled uniformly.
    """
    from tqdm.auto import tqdm

    if not modalities:
        raise DataError("no modalities given to read from the feature store")
    dims = [store.dim(m) for m in modalities]
    kept = [len(subsample_index(store.num_segments(v), max_len)) for v in ids]
    lengths = torch.as_tensor(kept, dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    dtype = np.float32 if np.dtype(store.meta.get("dtype", "float16")) == np.float32 else np.float16
    flat = np.empty((int(lengths.sum()), sum(dims)), dtype=dtype)
    bar = tqdm(ids, desc="loading features", unit="video", disable=not progress, leave=False)
    for i, vid in enumerate(bar):
        keep = subsample_index(store.num_segments(vid), max_len)
        start = int(offsets[i])
        arrays = [np.asarray(store.load(vid, m))[keep] for m in modalities]
        flat[start:start + len(keep)] = np.concatenate(arrays, axis=1)
    return SequenceBank(list(ids), torch.from_numpy(flat), offsets, lengths)
