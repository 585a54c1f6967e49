"""Feature store: one ``.npy`` per video and modality, plus a JSONL manifest.

Layout::

    STORE/store.json                      encoders, dims, segment rule, config hash
    STORE/manifest/part-R-of-N.jsonl      one record per finished video, per writer rank
    STORE/features/<key>.<modality>.npy   [num_segments, D] (float16 by default)

Why this shape: ``.npy`` files memory-map (pretraining reads random crops without
loading whole videos), a video is one file per modality (never one per segment),
each rank appends to its own manifest part (no locking across nodes) and opening
the store merges the parts. Feature files are written atomically before their
manifest line, so a killed run leaves at most an orphan temp file (removed by the
next run: :meth:`FeatureStore.remove_orphans`), never a record pointing at a half-written one. The config hash in ``store.json`` stops features
from different encoders or segmenting rules being mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.errors import DataError
from lvmae.io import append_line, atomic_write, atomic_write_json, remove_orphans

FORMAT_VERSION = 1
OK, FAILED = "ok", "failed"


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able description (encoder names, versions, settings)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _file_key(video_id: str) -> str:
    """Filesystem-safe, collision-free name for a video id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[:80]
    return f"{safe}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


class FeatureStore:
    """Read access to a store; :meth:`create` + :meth:`writer` to fill one."""

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]):
        self.root = Path(root)
        self.meta = meta
        self._records: dict[str, dict[str, Any]] = {}
        self.refresh()

    # ---- opening -------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, expect_hash: str | None = None) -> FeatureStore:
        """Open an existing store; with ``expect_hash``, refuse one made with another config."""
        root = Path(root)
        meta_path = root / "store.json"
        if not meta_path.is_file():
            raise DataError(f"{root} is not a feature store (no store.json)")
        meta = json.loads(meta_path.read_text())
        if expect_hash is not None and meta.get("config_hash") != expect_hash:
            raise DataError(
                f"feature store {root} was made with another encoder/segment config "
                f"(hash {meta.get('config_hash')} != {expect_hash}); use a new --out"
            )
        return cls(root, meta)

    @classmethod
    def create(cls, root: str | os.PathLike, meta: dict[str, Any]) -> FeatureStore:
        """Create a store, or reopen one made with the same ``meta['config_hash']``.

        ``meta`` must hold ``config_hash`` and ``modalities`` ({name: {"dim": D, ...}}).
        """
        if "config_hash" not in meta or "modalities" not in meta:
            raise ValueError("store meta needs 'config_hash' and 'modalities'")
        root = Path(root)
        if (root / "store.json").is_file():
            return cls.open(root, expect_hash=meta["config_hash"])
        (root / "manifest").mkdir(parents=True, exist_ok=True)
        (root / "features").mkdir(parents=True, exist_ok=True)
        full = {"format": FORMAT_VERSION, "created": time.time(), **meta}
        atomic_write_json(root / "store.json", full)
        return cls(root, full)

    def refresh(self) -> None:
        """Re-read every manifest part and merge them (see :func:`_wins` for duplicates)."""
        self._records = {}
        for part in sorted((self.root / "manifest").glob("*.jsonl")):
            with open(part, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from a killed writer
                    self._merge(rec)

    def _merge(self, rec: dict[str, Any]) -> None:
        old = self._records.get(rec["video_id"])
        if old is None or _wins(rec, old):
            self._records[rec["video_id"]] = rec

    # ---- reading -------------------------------------------------------
    @property
    def config_hash(self) -> str:
        return self.meta["config_hash"]

    @property
    def modalities(self) -> list[str]:
        return list(self.meta["modalities"])

    def dim(self, modality: str = "vision") -> int:
        self._check_modality(modality)
        return int(self.meta["modalities"][modality]["dim"])

    @property
    def video_ids(self) -> list[str]:
        """Videos with features, sorted."""
        return sorted(k for k, r in self._records.items() if r["status"] == OK)

    @property
    def failed(self) -> dict[str, str]:
        """Videos that could not be extracted, with the reason."""
        return {k: r.get("reason", "") for k, r in self._records.items() if r["status"] == FAILED}

    def __contains__(self, video_id: str) -> bool:
        rec = self._records.get(video_id)
        return rec is not None and rec["status"] == OK

    def __len__(self) -> int:
        return len(self.video_ids)

    def record(self, video_id: str) -> dict[str, Any]:
        if video_id not in self._records:
            raise KeyError(f"video {video_id!r} is not in feature store {self.root}")
        return self._records[video_id]

    def num_segments(self, video_id: str) -> int:
        return int(self.record(video_id)["num_segments"])

    def load(self, video_id: str, modality: str = "vision", mmap: bool = True) -> np.ndarray:
        """``[num_segments, D]`` array (memory-mapped by default; copy before writing)."""
        self._check_modality(modality)
        rec = self.record(video_id)
        if rec["status"] != OK:
            raise DataError(f"video {video_id!r} failed extraction: {rec.get('reason')}")
        path = self.root / "features" / rec["files"][modality]
        return np.load(path, mmap_mode="r" if mmap else None)

    def _check_modality(self, modality: str) -> None:
        if modality not in self.meta["modalities"]:
            raise DataError(f"feature store {self.root} has no {modality!r} features (has {self.modalities})")

    # ---- writing -------------------------------------------------------
    def writer(self, rank: int = 0, world_size: int = 1) -> StoreWriter:
        return StoreWriter(self, rank, world_size)

    def remove_orphans(self, max_age_s: float = 3600.0) -> list[Path]:
        """Delete half-written temp files of killed writers (see :func:`lvmae.io.remove_orphans`)."""
        return remove_orphans(self.root / "features", max_age_s) + remove_orphans(self.root, max_age_s)


class StoreWriter:
    """Appends finished videos to this rank's manifest part."""

    def __init__(self, store: FeatureStore, rank: int, world_size: int):
        self.store = store
        self.part = store.root / "manifest" / f"part-{rank:05d}-of-{world_size:05d}.jsonl"

    def finished(self) -> set[str]:
        """Video ids already recorded (ok or failed) by any rank: skipped on resume."""
        self.store.refresh()
        return set(self.store._records)

    def write(self, video_id: str, arrays: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> None:
        """Store ``{modality: [N, D]}`` for one video, then record it."""
        mods = self.store.meta["modalities"]
        dtype = np.dtype(self.store.meta.get("dtype", "float16"))
        missing = [m for m in mods if m not in arrays]
        if missing:
            raise DataError(f"{video_id}: missing {', '.join(missing)} features (store has {list(mods)})")
        lengths = {a.shape[0] for a in arrays.values()}
        if len(lengths) != 1:
            raise DataError(f"{video_id}: modalities have different segment counts {sorted(lengths)}")
        files = {}
        key = _file_key(video_id)
        for m, arr in arrays.items():
            if m not in mods:
                raise DataError(f"{video_id}: unknown modality {m!r} (store has {list(mods)})")
            if arr.ndim != 2 or arr.shape[1] != int(mods[m]["dim"]):
                raise DataError(f"{video_id}: {m} features have shape {arr.shape}, store expects [N, {mods[m]['dim']}]")
            if not np.isfinite(arr).all():
                raise DataError(f"{video_id}: {m} features contain NaN or inf")
            name = f"{key}.{m}.npy"
            data = np.ascontiguousarray(arr, dtype=dtype)
            atomic_write(self.store.root / "features" / name, lambda tmp, d=data: _save_npy(tmp, d))
            files[m] = name
        self._append({**(info or {}), "video_id": video_id, "status": OK,
                      "num_segments": lengths.pop(), "files": files})

    def fail(self, video_id: str, reason: str, info: dict[str, Any] | None = None) -> None:
        self._append({**(info or {}), "video_id": video_id, "status": FAILED, "reason": reason})

    def _append(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "config_hash": self.store.config_hash, "time": time.time()}
        append_line(self.part, json.dumps(rec, sort_keys=True, default=str))
        self.store._merge(rec)


def _wins(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Which of two records of one video counts: an ok one over a failure (a failure from a
    concurrent run or another shard layout must not hide features that exist), else the newer
    (by time, across parts: a retry replaces an older failure, a re-extraction older features)."""
    if (new["status"] == OK) != (old["status"] == OK):
        return new["status"] == OK
    return new.get("time", 0.0) >= old.get("time", 0.0)


def _save_npy(path: str, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, data)
