"""Data checks before any compute: stores that may be mixed, crops that mask something, a full scan.

A wrong store found at step 40,000 wastes the run; these checks cost seconds (the scan
reads every feature file once, so it is optional: ``data.check_stores``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.errors import DataError
from lvmae.store import OK, FeatureStore

IDENTITY = ("segment", "encoders", "dtype")  # what config_hash covers in an extracted store


def check_mixable(stores: list[FeatureStore], allow_mixed: bool) -> None:
    """Refuse stores made with different encoders / segment rules (``config_hash``) unless allowed."""
    first = stores[0]
    for s in stores[1:]:
        if s.config_hash == first.config_hash or allow_mixed:
            continue
        what = [k for k in IDENTITY if s.meta.get(k) != first.meta.get(k)] or ["config_hash"]
        k = what[0]
        raise DataError(f"feature stores {first.root} and {s.root} were made with different {', '.join(what)} "
                        f"({k}: {_short(first.meta.get(k, first.config_hash))} vs {_short(s.meta.get(k, s.config_hash))}); "
                        "their embeddings do not mean the same thing. Re-extract one, or set "
                        "data.allow_mixed_stores=true if that is intended")


def _short(v: Any, n: int = 120) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_keep_policy(stores: list[FeatureStore], ratio: float, policy: str) -> None:
    """``short_policy=keep`` uses short videos whole: one too short to mask anything would train nothing."""
    if policy != "keep":
        return
    for s in stores:
        bare = [v for v in s.video_ids if s.num_segments(v) >= 1 and masked(s.num_segments(v), ratio) == 0]
        if bare:
            raise DataError(f"feature store {s.root}: {len(bare)} video(s) (e.g. {bare[0]!r}, "
                            f"{s.num_segments(bare[0])} segment(s)) are too short for masking.ratio={ratio} to "
                            "mask anything under data.short_policy=keep; use tile or drop")


def masked(length: int, ratio: float) -> int:
    """Masked segments of a crop of ``length`` (visible = max(1, round((1 - ratio) * length)), as in masking)."""
    return length - max(1, round((1.0 - ratio) * length))


@dataclass
class ScanReport:
    """What :func:`scan_store` found; ``problems`` empty means the store is sound."""

    store: str
    videos: int = 0
    failed: int = 0
    segments: int = 0
    problems: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "videos": self.videos, "failed": self.failed, "segments": self.segments,
                "ok": not self.problems, "problems": self.problems, "orphan_files": self.orphan_files}


def scan_store(root: str | os.PathLike, max_problems: int = 50) -> ScanReport:
    """Read every feature file of a store: present, shape ``[num_segments, dim]``, finite; files on disk
    that no record names are listed (harmless, but they take space)."""
    store = FeatureStore.open(root)
    rep = ScanReport(str(store.root), videos=len(store), failed=len(store.failed))
    named: set[str] = set()
    for vid in store.video_ids:
        rec = store.record(vid)
        if rec.get("status") != OK:
            continue
        rep.segments += int(rec["num_segments"])
        for m, name in rec["files"].items():
            named.add(name)
            why = _check_file(store.root / "features" / name, int(rec["num_segments"]), store.dim(m))
            if why:
                rep.problems.append(f"{vid!r} {m}: {why}")
        if len(rep.problems) >= max_problems:
            rep.problems.append("... (stopped after this many)")
            break
    features = store.root / "features"
    if features.is_dir() and len(rep.problems) < max_problems:
        rep.orphan_files = sorted(p.name for p in features.iterdir() if p.suffix == ".npy" and p.name not in named)
    return rep


def _check_file(path: Path, rows: int, dim: int) -> str | None:
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as e:
        return f"{path.name} is unreadable ({' '.join(str(e).split())[:120]})"
    if arr.ndim != 2 or arr.shape != (rows, dim):
        return f"{path.name} has shape {list(arr.shape)}, the manifest says [{rows}, {dim}]"
    for lo in range(0, rows, 4096):  # bounded memory for long videos
        if not np.isfinite(arr[lo : lo + 4096]).all():
            return f"{path.name} holds NaN or inf"
    return None


def check_before_training(stores: list[str], allow_mixed: bool, ratio: float, policy: str, scan: bool) -> None:
    """Everything above for a pretraining run's ``data.stores``, before a model is built."""
    if not stores:
        return  # the dataset says that no store was given
    opened = [FeatureStore.open(s) for s in stores]
    check_mixable(opened, allow_mixed)
    check_keep_policy(opened, ratio, policy)
    if scan:
        for s in opened:
            rep = scan_store(s.root)
            if rep.problems:
                more = f" (+{len(rep.problems) - 1} more; lvmae store check {s.root})" if len(rep.problems) > 1 else ""
                raise DataError(f"feature store {s.root}: {rep.problems[0]}{more}")
