"""Small synthetic feature stores for the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmae.store import FeatureStore


def make_store(
    path: Path, lengths: list[int], dims: dict[str, int] | None = None, seed: int = 0, prefix: str = "v"
) -> FeatureStore:
    """A store with one video per entry of ``lengths`` (``{prefix}{i}``), smooth random features.

    Features are a random walk per video (neighbouring segments are similar), so a
    masked segment is predictable from its context and training losses can fall.
    """
    dims = dims or {"vision": 16}
    store = FeatureStore.create(path, {"config_hash": f"test-{sorted(dims.items())}",
                                       "modalities": {m: {"dim": d} for m, d in dims.items()}})
    w = store.writer()
    rng = np.random.default_rng(seed)
    for i, n in enumerate(lengths):
        arrays = {}
        for m, d in dims.items():
            steps = rng.standard_normal((n, d)) * 0.3
            arrays[m] = (rng.standard_normal(d) + np.cumsum(steps, axis=0)).astype(np.float32)
        w.write(f"{prefix}{i}", arrays)
    return FeatureStore.open(path)


def corrupt(store: FeatureStore, video_id: str, value: float = float("nan"), modality: str = "vision") -> None:
    """Write ``value`` into every row of a stored video (the store's writer refuses NaN)."""
    arr = np.load(store.root / "features" / store.record(video_id)["files"][modality], mmap_mode="r+")
    arr[:] = value
    arr.flush()
