"""Generic labels so users can probe their own data without code.

One row per (video, task), as CSV with a header or as JSONL (``.jsonl``/``.ndjson``),
with fields ``video_id, split, task, label, target``: ``split`` is train|val|test;
classification rows fill ``label`` (int class id >= 0, or a class name) and leave ``target``
empty; regression rows fill ``target`` (float) and leave ``label`` empty. A task with no
val rows gets a validation split carved reproducibly from train. The number of
classes of a task is its largest label + 1 over all splits; a task labelled by names gets
the ids of its sorted names (the names are kept as the task's class names, in the results).
Files may start with a UTF-8 byte-order mark (Excel's "CSV UTF-8"). Store ids are matched
exactly, then by stem (``dir/name.mp4`` in the store answers to ``name``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from lvmae.benchmarks.base import (
    CLASSIFICATION,
    REGRESSION,
    SPLITS,
    BenchmarkLabels,
    LabelRecord,
    TaskLabels,
    TaskSpec,
)
from lvmae.errors import DataError

FIELDS = ("video_id", "split", "task", "label", "target")


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _parse(row: dict[str, Any], where: str) -> tuple[LabelRecord, str | None]:
    """The row as a record, and its class name when ``label`` is one (the id is set later)."""
    vid, split, task = (str(row.get(k) or "").strip() for k in ("video_id", "split", "task"))
    label, target = row.get("label"), row.get("target")
    try:
        if not vid or not task:
            raise ValueError("video_id and task must not be empty")
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {'|'.join(SPLITS)}")
        if _empty(label) == _empty(target):
            raise ValueError("fill exactly one of label (classification) and target (regression)")
        if not _empty(label):
            try:
                f = float(label)
            except ValueError:  # a class name
                return LabelRecord(vid, split, task, label=-1), str(label).strip()
            if not math.isfinite(f) or f != int(f) or f < 0:
                raise ValueError(f"label {label!r} is not a class id >= 0 (or a class name)")
            return LabelRecord(vid, split, task, label=int(f)), None
        t = float(target)
        if not math.isfinite(t):
            raise ValueError(f"target {target!r} is not finite")
        return LabelRecord(vid, split, task, target=t), None
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: {e}") from None


def read_rows(path: Path, fields: tuple[str, ...] = FIELDS) -> list[tuple[dict[str, Any], str]]:
    """``(row, "file:line")`` of a JSONL file, or of a CSV whose header must hold ``fields``."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                try:
                    out.append((json.loads(line), f"{path}:{i}"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not JSON: {e}") from None
        return out
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataError(f"{path} is empty; need a header {','.join(FIELDS)} and one row per video and task")
        missing = set(fields) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: header lacks {sorted(missing)} (need {','.join(fields)})")
        return [(row, f"{path}:{i}") for i, row in enumerate(reader, start=2)]


def _spec(name: str, records: list[LabelRecord], names: list[str | None]) -> TaskSpec:
    """The task's kind and classes; class names become ids in sorted order (set on the records)."""
    kinds = {r.label is None for r in records}
    if len(kinds) > 1:
        raise DataError(f"generic task {name!r} mixes label (classification) and target (regression) rows")
    if kinds == {True}:
        return TaskSpec(name, REGRESSION)
    named = sorted({n for n in names if n is not None})
    if named:
        ids = [r.label for r, n in zip(records, names) if n is None]
        if ids:
            raise DataError(f"generic task {name!r} mixes class ids (e.g. {ids[0]}) and class names (e.g. "
                            f"{named[0]!r}) in its label column: use one or the other")
        index = {n: i for i, n in enumerate(named)}
        for r, n in zip(records, names):
            r.label = index[n]
        return TaskSpec(name, CLASSIFICATION, len(named), tuple(named))
    n = max(r.label for r in records) + 1  # type: ignore[type-var]
    return TaskSpec(name, CLASSIFICATION, n, tuple(str(c) for c in range(n)))


def load(path: str | os.PathLike, tasks: list[str] | None = None) -> BenchmarkLabels:
    """Generic labels from a CSV or JSONL file (all tasks in it by default)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label file not found: {p}")
    by_task: dict[str, list[LabelRecord]] = {}
    names: dict[str, list[str | None]] = {}
    for row, where in read_rows(p):
        rec, name = _parse(row, where)
        by_task.setdefault(rec.task, []).append(rec)
        names.setdefault(rec.task, []).append(name)
    if not by_task:
        raise DataError(f"{p} has no label rows (only a header, or empty); need one row per video and task: "
                        f"{','.join(FIELDS)}")
    wanted = tasks or list(by_task)
    unknown = [t for t in wanted if t not in by_task]
    if unknown:
        raise DataError(f"{p}: no rows for task(s) {unknown}; tasks in the file: {sorted(by_task)}")
    return BenchmarkLabels(
        "generic", {t: TaskLabels(_spec(t, by_task[t], names[t]), by_task[t]) for t in wanted}, source=str(p)
    )
