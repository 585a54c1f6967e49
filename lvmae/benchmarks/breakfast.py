"""Breakfast: 10-activity classification with the ViS4mer train/test split.

``{train,test}.csv`` rows are ``file_name,duration,action,class_id``, e.g.
``P03-cam01-P03_cereals,56,cereals,0`` (train P03-P46, test P47-P54). The raw video
of that row is ``BreakfastII_15fps_qvga_sync/P03/cam01/P03_cereals.avi``, so a store
may name it in several ways, all accepted:

- the label form ``P03-cam01-P03_cereals``;
- the relative path ``P03/cam01/P03_cereals`` (with or without a leading directory
  and ``.avi`` extension);
- the bare stem ``P03_cereals``, *only* where the stem is unique among the labelled
  videos: the same activity is filmed by up to five cameras, so most stems are
  ambiguous. Extract Breakfast with relative-path ids to keep every camera.

The validation split is carved reproducibly from training by the probe runner.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from lvmae.benchmarks.base import (
    CLASSIFICATION,
    VIDEO_EXTENSIONS,
    BenchmarkLabels,
    LabelRecord,
    TaskLabels,
    TaskSpec,
)
from lvmae.errors import DataError

NUM_CLASSES = 10
TASK = "activity"
TASKS = (TASK,)
_FIELDS = ("file_name", "duration", "action", "class_id")


def relative_path(file_name: str) -> str:
    """``P03-cam01-P03_cereals`` -> ``P03/cam01/P03_cereals`` (the raw-video layout, no extension)."""
    parts = file_name.split("-", 2)
    if len(parts) != 3:
        raise DataError(f"Breakfast file_name {file_name!r} is not PERSON-CAMERA-STEM")
    return "/".join(parts)


def store_keys(store_id: str) -> list[str]:
    """Ids a store entry answers to: itself, its label form, and its stem."""
    path = store_id.replace("\\", "/")
    root, ext = os.path.splitext(path)
    if ext.lower() in VIDEO_EXTENSIONS:
        path = root
    parts = path.split("/")
    keys = [store_id, path]
    if len(parts) >= 3:
        keys.append("-".join(parts[-3:]))
    keys.append(parts[-1])
    return keys


def _read_split(path: Path, split: str) -> list[LabelRecord]:
    if not path.is_file():
        raise DataError(f"Breakfast label file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != _FIELDS:
            raise DataError(f"{path}: expected header {','.join(_FIELDS)}, got {reader.fieldnames}")
        out = []
        for i, row in enumerate(reader, start=2):
            try:
                cid = int(row["class_id"])
                if not 0 <= cid < NUM_CLASSES:
                    raise ValueError(f"class_id {cid} outside [0, {NUM_CLASSES})")
                name = row["file_name"]
                info = {"action": row["action"], "duration": float(row["duration"]),
                        "relative_path": relative_path(name)}
            except (ValueError, TypeError, DataError) as e:
                raise DataError(f"{path}:{i}: malformed Breakfast row {row}: {e}") from None
            out.append(LabelRecord(name, split, TASK, label=cid, info=info))
    return out


def load(path: str | os.PathLike, tasks: list[str] | None = None) -> BenchmarkLabels:
    """Breakfast labels from the directory holding ``train.csv`` and ``test.csv``."""
    root = Path(path)
    unknown = set(tasks or TASKS) - set(TASKS)
    if unknown:
        raise DataError(f"unknown Breakfast task(s) {sorted(unknown)}; Breakfast tasks are {list(TASKS)}")
    records = _read_split(root / "train.csv", "train") + _read_split(root / "test.csv", "test")
    stems = Counter(r.info["relative_path"].rsplit("/", 1)[-1] for r in records)
    for r in records:
        rel = r.info["relative_path"]
        stem = rel.rsplit("/", 1)[-1]
        r.keys = (rel, stem) if stems[stem] == 1 else (rel,)
    names = {r.label: r.info["action"] for r in records}
    spec = TaskSpec(TASK, CLASSIFICATION, NUM_CLASSES, tuple(names.get(c, str(c)) for c in range(NUM_CLASSES)))
    return BenchmarkLabels("breakfast", {TASK: TaskLabels(spec, records)}, store_keys, source=str(root))
