"""The pretraining input stream: an endless, resumable iterator of masked batches."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lvmae.config import DataConfig, MaskingConfig
from lvmae.data.collate import MaskCollate
from lvmae.data.dataset import CropDataset
from lvmae.data.sampler import CropBatchSampler


class DataStream:
    """Endless iterator over this rank's micro-batches that knows where it is.

    The position counts batches *consumed* by the loop (not prefetched by workers),
    so ``state_dict()`` taken at a step boundary resumes at exactly the next batch.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: CropBatchSampler):
        self.loader, self.sampler = loader, sampler
        self.epoch, self.position = 0, 0
        self._it = None

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._it is None:
                self.sampler.set_state(self.epoch, self.position)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None


def build_stream(
    data: DataConfig,
    masking: MaskingConfig,
    train_scales: list[float],
    micro_batch: int,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataStream:
    """Dataset + bucketed sampler + masking collate for one rank, as a :class:`DataStream`.

    Workers persist across epochs: the sampler runs in the main process, so a new
    epoch (or a resumed position) only changes which crops are sent to them. The
    loader has its own generator, so creating an iterator (each epoch, and once more
    after a resume) never advances the global RNG that dropout draws from.
    """
    held_out = 0.0 if data.val_stores else data.val_fraction
    ds = CropDataset(data.stores, data.modalities, data.min_len, data.max_len, data.short_policy, held_out,
                     monitor="text" if data.text_monitor else None)
    sampler = CropBatchSampler(
        ds, micro_batch, seed=seed, rank=rank, world=world, weights=data.weights,
        bucket_window=data.bucket_window if data.bucket_by_length else None,
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, collate_fn=MaskCollate(masking, train_scales),
        num_workers=data.num_workers, persistent_workers=data.num_workers > 0, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # each new iterator draws a seed: not from the global RNG
    )
    return DataStream(loader, sampler)


def to_device(batch: dict[str, Any], device: torch.device, x_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Move tensors (and the MaskBatch's) to ``device``; cast the input ``x`` to ``x_dtype`` if given."""

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if dataclasses.is_dataclass(v):
            return dataclasses.replace(v, **{f.name: move(getattr(v, f.name)) for f in dataclasses.fields(v)})
        return v

    out = {k: move(v) for k, v in batch.items()}
    if x_dtype is not None:
        out["x"] = out["x"].to(x_dtype)
    return out
