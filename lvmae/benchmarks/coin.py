"""COIN: task classification over 180 ``recipe_type``s, with step annotations.

``COIN.json`` is ``{"database": {youtube_id: {duration, class, video_url, start, end,
subset, recipe_type, annotation: [{id, segment: [s, e], label}]}}}``. ``recipe_type``
(an int in ``[0, 180)``) is the class id, used as given; ``class`` is its name.
``subset`` is ``training`` or ``testing`` in the released file (``validation`` in
its README): everything but ``training`` is held out as test, and the probe runner
carves a reproducible validation split from training (:func:`~lvmae.benchmarks.base.carve_val`).
Step annotations are parsed into :class:`Step` (in ``LabelRecord.info["steps"]``) and
:func:`segment_step_labels` turns them into one label per stored segment for
step-level tasks. Store ids are YouTube ids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvmae.benchmarks.base import CLASSIFICATION, BenchmarkLabels, LabelRecord, TaskLabels, TaskSpec
from lvmae.errors import DataError

NUM_TASKS = 180
TASK = "task"
TASKS = (TASK,)


@dataclass(frozen=True)
class Step:
    """One annotated step: global step id (COIN has 778), time span in seconds, text."""

    id: int
    start: float
    end: float
    label: str


def _steps(vid: str, entry: dict) -> tuple[Step, ...]:
    out = []
    for a in entry.get("annotation", []):
        try:
            s, e = (float(t) for t in a["segment"])
            out.append(Step(int(a["id"]), s, e, str(a.get("label", ""))))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"COIN video {vid}: malformed step annotation {a!r}: {err}") from None
    return tuple(out)


def _record(vid: str, entry: dict) -> LabelRecord:
    try:
        rt = entry["recipe_type"]
        subset = entry["subset"]
    except (KeyError, TypeError) as e:
        raise DataError(f"COIN video {vid}: missing field {e}") from None
    if not isinstance(rt, int) or isinstance(rt, bool) or not 0 <= rt < NUM_TASKS:
        raise DataError(f"COIN video {vid}: recipe_type {rt!r} is not an int in [0, {NUM_TASKS})")
    split = "train" if subset == "training" else "test"
    info = {"class_name": str(entry.get("class", rt)), "subset": subset, "steps": _steps(vid, entry),
            "duration": entry.get("duration"), "start": entry.get("start"), "end": entry.get("end")}
    return LabelRecord(vid, split, TASK, label=rt, info=info)


def load(path: str | os.PathLike, tasks: list[str] | None = None) -> BenchmarkLabels:
    """COIN labels from ``COIN.json`` (or a directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "COIN.json"
    if not p.is_file():
        raise DataError(f"COIN label file not found: {p}")
    unknown = set(tasks or TASKS) - set(TASKS)
    if unknown:
        raise DataError(f"unknown COIN task(s) {sorted(unknown)}; COIN tasks are {list(TASKS)}")
    try:
        db = json.loads(p.read_text(encoding="utf-8-sig"))["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{p} is not a COIN.json file ({{'database': {{...}}}}): {e}") from None
    records = [_record(vid, entry) for vid, entry in db.items()]
    names = {r.label: r.info["class_name"] for r in records}
    spec = TaskSpec(TASK, CLASSIFICATION, NUM_TASKS, tuple(names.get(c, str(c)) for c in range(NUM_TASKS)))
    return BenchmarkLabels("coin", {TASK: TaskLabels(spec, records)}, source=str(p))


def segment_step_labels(steps: tuple[Step, ...], num_segments: int, seconds: float = 5.0,
                        stride: float | None = None) -> np.ndarray:
    """Step id per stored segment ``[num_segments]`` int64; -1 where no step covers it.

    Segment ``i`` spans ``[i*stride, i*stride + seconds)`` (the extraction rule); it takes
    the step that overlaps it longest (ties: the earlier step).
    """
    stride = seconds if stride is None else stride
    out = np.full(num_segments, -1, dtype=np.int64)
    if not steps or num_segments == 0:
        return out
    starts = np.arange(num_segments) * stride
    ends = starts + seconds
    s = np.asarray([st.start for st in steps])[:, None]
    e = np.asarray([st.end for st in steps])[:, None]
    overlap = np.clip(np.minimum(ends, e) - np.maximum(starts, s), 0.0, None)  # [S, N]
    best = overlap.argmax(0)
    has = overlap.max(0) > 0
    out[has] = np.asarray([st.id for st in steps])[best[has]]
    return out


def steps_by_video(labels: BenchmarkLabels) -> dict[str, tuple[Step, ...]]:
    """``{youtube_id: steps}`` for every COIN video."""
    return {r.video_id: r.info["steps"] for r in labels.tasks[TASK].records}

