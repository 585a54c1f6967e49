"""Seeded, resumable, length-bucketed batch plans over one or several stores.

Every rank computes the same global plan for an epoch from ``(seed, epoch)`` and
takes every ``world``-th batch, so ranks never overlap and no communication is
needed. The state to resume is just ``(epoch, position)``: the plan is recomputed
and iteration restarts at ``position``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lvmae.data.dataset import Crop, CropDataset, draw_lengths


def store_counts(sizes: Sequence[int], weights: Sequence[float]) -> np.ndarray:
    """Crops drawn per store per epoch.

    No weights: one pass over every video (each once). With weights: the epoch
    keeps the total number of videos and splits it by weight, so a small store
    with a large weight is repeated and a large one with a small weight is subsampled.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(weights):
        return sizes
    w = np.asarray(weights, dtype=np.float64)
    counts = np.floor(w / w.sum() * sizes.sum()).astype(np.int64)
    return np.where(w > 0, np.maximum(counts, 1), 0)


def _repeat_permutation(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` indices in ``[0, n)``: whole shuffled passes, then part of one more."""
    reps = -(-count // n)
    return np.concatenate([np.zeros(0, np.int64), *(rng.permutation(n) for _ in range(reps))])[:count]


class CropBatchSampler:
    """``batch_sampler`` for a DataLoader over :class:`CropDataset`: yields lists of Crops.

    ``bucket_window`` micro-batches' worth of crops are sorted by length and cut into
    batches (so a batch's crops have similar lengths and little compute goes to
    padding); batch order is then shuffled so lengths do not drift within an epoch.
    """

    def __init__(
        self,
        dataset: CropDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        weights: Sequence[float] = (),
        bucket_window: int | None = 32,
    ):
        if weights and len(weights) != len(dataset.stores):
            raise ValueError("one weight per store expected")
        self.dataset, self.batch_size = dataset, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.weights = list(weights)
        self.bucket_window = bucket_window
        self.epoch, self.position = 0, 0

    def set_state(self, epoch: int, position: int = 0) -> None:
        """Next iteration yields this rank's batches of ``epoch`` from batch ``position``."""
        self.epoch, self.position = epoch, position

    def global_plan(self, epoch: int) -> list[list[Crop]]:
        """All ranks' batches of ``epoch``, in order (a multiple of ``world``, at least ``world``)."""
        ds = self.dataset
        rng = np.random.default_rng([self.seed, epoch])
        counts = store_counts([len(v) for v in ds.video_ids], self.weights)
        source = np.concatenate([np.full(c, s) for s, c in enumerate(counts)])
        video = np.concatenate(
            [_repeat_permutation(rng, len(ds.video_ids[s]), c) for s, c in enumerate(counts)]
        )
        per_epoch = self.batch_size * self.world
        total = max(len(source) // per_epoch, 1) * per_epoch
        order = _repeat_permutation(rng, len(source), total)
        source, video = source[order], video[order]
        n = np.array([ds.num_segments[s][v] for s, v in zip(source, video)], dtype=np.int64)
        length, start = draw_lengths(n, rng, ds.min_len, ds.max_len, ds.short_policy)
        keys = rng.integers(0, 2**62, size=total)
        batches = self._batch_order(length, rng)
        return [
            [Crop(int(source[i]), int(video[i]), int(length[i]), int(start[i]), int(keys[i])) for i in b]
            for b in batches
        ]

    def _batch_order(self, length: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Item indices per batch: plain chunks, or length-sorted windows then shuffled batches."""
        idx = np.arange(len(length))
        bs = self.batch_size
        if self.bucket_window:
            win = bs * self.bucket_window
            idx = np.concatenate(
                [w[np.argsort(length[w], kind="stable")] for w in np.split(idx, range(win, len(idx), win))]
            )
        batches = np.split(idx, range(bs, len(idx), bs))
        if self.bucket_window:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return len(self.global_plan(self.epoch)) // self.world

    def __iter__(self) -> Iterator[list[Crop]]:
        plan = self.global_plan(self.epoch)[self.rank :: self.world]
        yield from plan[self.position :]
