"""Dense (per-segment) labels: time-stamped label intervals, the segment-grid rule, store matching.

Every dense source (Breakfast frame labels, COIN steps, synthetic step timelines, a
generic interval file; see :mod:`lvmae.benchmarks.dense_sources`) becomes
:class:`DenseLabels`: per task, per video, label intervals in seconds. A probe needs one
label per *stored segment*, so :func:`grid_labels` maps the intervals onto the store's
segment grid (segment ``i`` spans ``[i*stride, i*stride + seconds)``, the extraction rule):

- **majority by time**: a segment takes the label that covers the most of its span
  (clipped to the video's duration where it is known);
- **background where unlabelled**: for tasks with a background class, time no interval
  covers counts as background in that vote; for tasks without one (Breakfast labels
  every frame), a segment no interval touches is :data:`IGNORE` (not trained, not scored);
- **ties** go to the label that appears first in the video's timeline, background last.

The rule blurs boundaries that fall inside a segment; :class:`GridLoss` measures how much:
the share of labelled time whose label differs from the label of the segment it falls in
(each instant belongs to the last segment starting at or before it, so overlapping
segments are not counted twice), and the labelled time past the last segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvmae.benchmarks.base import (
    REGRESSION,
    SPLITS,
    BenchmarkLabels,
    LabelRecord,
    MatchReport,
    TaskLabels,
    TaskSpec,
    default_store_keys,
    match_to_store,
)
from lvmae.errors import DataError

IGNORE = -1  # label of a segment no label covers: neither trained on nor scored


@dataclass(frozen=True)
class Interval:
    """``label`` (a class id) holds over ``[start, end)`` seconds."""

    start: float
    end: float
    label: int


@dataclass
class DenseRecord:
    """One video's dense labels in one task (``keys``: other ids it may have in a store)."""

    video_id: str
    split: str
    intervals: tuple[Interval, ...]
    duration: float | None = None
    keys: tuple[str, ...] = ()


@dataclass
class DenseTask:
    """A dense task: fixed class names, which ids are background, and its videos.

    ``background`` ids are left out of the segmental metrics (edit, F1); ``fill`` is the
    label of unlabelled time (a background id, or :data:`IGNORE` where every instant is labelled).
    """

    name: str
    class_names: tuple[str, ...]
    records: list[DenseRecord]
    background: tuple[int, ...] = ()
    fill: int = IGNORE

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DenseLabels:
    name: str
    tasks: dict[str, DenseTask]
    store_keys: Callable[[str], list[str]] = default_store_keys
    source: str = ""


@dataclass
class GridLoss:
    """What the grid rule lost, in seconds: labelled time, the part of it relabelled, the part past the grid."""

    labelled_s: float = 0.0
    differs_s: float = 0.0
    beyond_s: float = 0.0

    def add(self, other: GridLoss) -> None:
        self.labelled_s += other.labelled_s
        self.differs_s += other.differs_s
        self.beyond_s += other.beyond_s

    def to_dict(self) -> dict[str, float]:
        return {"labelled_s": round(self.labelled_s, 3), "differs_s": round(self.differs_s, 3),
                "beyond_s": round(self.beyond_s, 3),
                "differs_fraction": self.differs_s / self.labelled_s if self.labelled_s else 0.0,
                "beyond_fraction": self.beyond_s / (self.labelled_s + self.beyond_s)
                if self.labelled_s + self.beyond_s else 0.0}


def _overlap(s: np.ndarray, e: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[K, N]`` seconds that interval k (``s, e [K]``) shares with span n (``lo, hi [N]``)."""
    return np.clip(np.minimum(e[:, None], hi[None]) - np.maximum(s[:, None], lo[None]), 0.0, None)


def grid_labels(intervals: tuple[Interval, ...] | list[Interval], num_segments: int, seconds: float,
                stride: float | None = None, fill: int = IGNORE,
                duration: float | None = None) -> tuple[np.ndarray, GridLoss]:
    """One label per segment ``[num_segments]`` int64 by the module's rule, and the rule's :class:`GridLoss`."""
    stride = seconds if stride is None else stride
    lo = np.arange(num_segments) * stride
    hi = lo + seconds if duration is None else np.minimum(lo + seconds, duration)
    ivs = sorted(intervals, key=lambda iv: iv.start)
    s = np.asarray([iv.start for iv in ivs], dtype=np.float64)
    e = np.asarray([iv.end for iv in ivs], dtype=np.float64)
    lab = np.asarray([iv.label for iv in ivs], dtype=np.int64)
    order = list(dict.fromkeys(lab.tolist()))  # labels by first appearance: the tie order
    vote = np.zeros((len(order) + 1, num_segments))  # last row: background
    np.add.at(vote, [order.index(v) for v in lab.tolist()], _overlap(s, e, lo, hi))
    if fill != IGNORE:
        vote[-1] = np.clip((hi - lo) - vote[:-1].sum(0), 0.0, None)
    labels = np.asarray(order + [fill], dtype=np.int64)[vote.argmax(0)]
    labels[vote.max(0) <= 0] = IGNORE
    if not num_segments:
        return labels, GridLoss(0.0, 0.0, float((e - s).sum()))
    own_hi = np.minimum(np.append(lo[1:], np.inf), hi)  # each instant belongs to the last segment started
    ov = _overlap(s, e, lo, own_hi)
    labelled, differs = float(ov.sum()), float((ov * (lab[:, None] != labels[None])).sum())
    if fill != IGNORE:  # unlabelled time is background: labelled too
        bg = np.clip((own_hi - lo) - ov.sum(0), 0.0, None)
        labelled += float(bg.sum())
        differs += float((bg * (labels != fill)).sum())
    beyond = float(np.clip(e - np.maximum(s, hi[-1]), 0.0, None).sum())
    return labels, GridLoss(labelled, differs, beyond)


# ---------------------------------------------------------------------------
# matching dense records to a feature store
# ---------------------------------------------------------------------------


@dataclass
class DenseSplit:
    """Store ids and one ``[num_segments]`` label array per video."""

    store_ids: list[str]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.store_ids)


@dataclass
class MatchedDenseTask:
    task: DenseTask
    splits: dict[str, DenseSplit]
    grid: dict[str, Any] = field(default_factory=dict)
    val_carved: bool = False


def segment_rule(store: Any) -> tuple[float, float]:
    """``(seconds, stride)`` of a store's segments, from its ``store.json``."""
    seg = store.meta.get("segment") or {}
    if not seg.get("seconds"):
        raise DataError(f"feature store {store.root} does not record its segment length (store.json 'segment'); "
                        "dense labels need it to place segments in time")
    return float(seg["seconds"]), float(seg.get("stride") or seg["seconds"])


def match_dense(labels: DenseLabels, store: Any, video_ids: list[str], val_fraction: float = 0.1,
                keep: Callable[[int], np.ndarray] | None = None) -> tuple[dict[str, MatchedDenseTask], MatchReport]:
    """Every dense task's videos -> store ids and per-segment labels on the store's grid.

    Matching reuses :func:`~lvmae.benchmarks.base.match_to_store` (missing and ambiguous
    ids reported, duplicates refused, val carved from train where a source has none):
    each record rides through it as a regression row whose target is its index.
    ``keep(num_segments)`` picks the segment positions a probe reads (e.g. a uniform
    subsample of long videos); the labels are taken at the same positions.
    """
    seconds, stride = segment_rule(store)
    proxy = BenchmarkLabels(labels.name, {
        name: TaskLabels(TaskSpec(name, REGRESSION),
                         [LabelRecord(r.video_id, r.split, name, target=float(i), keys=r.keys)
                          for i, r in enumerate(t.records)])
        for name, t in labels.tasks.items()}, labels.store_keys, labels.source)
    matched, report = match_to_store(proxy, video_ids, val_fraction, val_salt="lvmae-dense-val")
    out = {}
    for name, m in matched.items():
        task, loss, splits = labels.tasks[name], GridLoss(), {}
        for split in SPLITS:
            sp = m.splits[split]
            arrays = []
            for sid, idx in zip(sp.store_ids, sp.y):
                rec = task.records[int(idx)]
                n = store.num_segments(sid)
                y, lost = grid_labels(rec.intervals, n, seconds, stride, task.fill, rec.duration)
                loss.add(lost)
                arrays.append(y[keep(n)] if keep is not None else y)
            splits[split] = DenseSplit(list(sp.store_ids), arrays)
        if not any((y != IGNORE).any() for y in splits["train"].labels):
            raise DataError(f"{labels.name}/{name}: no train segment carries a label")
        grid = {"seconds": seconds, "stride": stride, **loss.to_dict()}
        out[name] = MatchedDenseTask(task, splits, grid, m.val_carved)
    return out, report
