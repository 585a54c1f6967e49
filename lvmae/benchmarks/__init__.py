"""Benchmark label loaders (LVU, COIN, Breakfast, generic CSV/JSONL) and a registry.

Each loader is ``load(path, tasks=None) -> BenchmarkLabels``; :func:`load_labels`
picks one by name. :func:`match_to_store` maps the records to feature-store ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from lvmae.benchmarks import breakfast, coin, generic, lvu
from lvmae.benchmarks.base import (
    CLASSIFICATION,
    REGRESSION,
    SPLITS,
    BenchmarkLabels,
    LabelRecord,
    MatchedTask,
    MatchReport,
    Split,
    TaskLabels,
    TaskSpec,
    carve_val,
    match_to_store,
)
from lvmae.errors import DataError

Loader = Callable[..., BenchmarkLabels]

BENCHMARKS: dict[str, Loader] = {
    "lvu": lvu.load,
    "coin": coin.load,
    "breakfast": breakfast.load,
    "generic": generic.load,
}


def register(name: str, loader: Loader) -> None:
    """Add a benchmark: ``loader(path, tasks=None) -> BenchmarkLabels``."""
    BENCHMARKS[name] = loader


def load_labels(name: str, path: str | os.PathLike, tasks: list[str] | None = None) -> BenchmarkLabels:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    if not str(path):
        raise DataError(f"no label path given for benchmark {name!r} (set probe.labels)")
    return BENCHMARKS[name](path, tasks or None)


__all__ = [
    "BENCHMARKS", "CLASSIFICATION", "REGRESSION", "SPLITS", "BenchmarkLabels", "LabelRecord",
    "MatchReport", "MatchedTask", "Split", "TaskLabels", "TaskSpec", "carve_val", "load_labels",
    "match_to_store", "register",
]
