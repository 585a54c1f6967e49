"""LVU 1.0: 7 classification and 2 regression tasks on movie clips.

Layout (as distributed with the public ViS4mer code)::

    LVU/<task>/{train,val,test}.csv   space-separated, one header line

Classification rows are ``class_id class_name youtube_id imdb_id``; ``class_id``
is used as given. Some splits lack some classes (e.g. director), and the public
LV-MAE code remaps ids per split, which misaligns labels between splits, so here
the number of classes is fixed by the task definition and ids are only checked
to lie in range. Regression rows are ``like_count dislike_count youtube_id imdb_id``
(target ``10*like/(like+dislike) - 9.1382``) and ``view_count youtube_id imdb_id``
(target ``log(views) - 11.7643``), both scored by MSE. Store ids are YouTube ids.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lvmae.benchmarks.base import (
    CLASSIFICATION,
    REGRESSION,
    SPLITS,
    BenchmarkLabels,
    LabelRecord,
    TaskLabels,
    TaskSpec,
    read_lines,
)
from lvmae.errors import DataError

NUM_CLASSES = {
    "relationship": 4,
    "way_speaking": 5,
    "scene": 6,
    "director": 10,
    "writer": 10,
    "year": 9,
    "genre": 4,
}
REGRESSION_TASKS = ("like_ratio", "view_count")
TASKS = (*NUM_CLASSES, *REGRESSION_TASKS)
LIKE_RATIO_OFFSET = 9.1382
VIEW_COUNT_OFFSET = 11.7643


def like_ratio_target(likes: float, dislikes: float) -> float:
    return 10.0 * likes / (likes + dislikes) - LIKE_RATIO_OFFSET


def view_count_target(views: float) -> float:
    return math.log(views) - VIEW_COUNT_OFFSET


def _parse_row(task: str, fields: list[str], where: str) -> tuple[str, int | None, float | None, dict]:
    """``(youtube_id, label, target, info)`` of one row; DataError naming file:line if malformed."""
    try:
        yid, imdb = fields[-2], fields[-1]
        info = {"imdb_id": imdb}
        if task in NUM_CLASSES:
            cid = int(fields[0])
            if not 0 <= cid < NUM_CLASSES[task] or len(fields) < 4:
                raise ValueError(f"class_id {cid} outside [0, {NUM_CLASSES[task]})")
            info["class_name"] = " ".join(fields[1:-2])
            return yid, cid, None, info
        if task == "like_ratio":
            likes, dislikes = float(fields[0]), float(fields[1])
            if likes + dislikes <= 0 or len(fields) != 4:
                raise ValueError("needs like_count dislike_count youtube_id imdb_id with likes + dislikes > 0")
            target = like_ratio_target(likes, dislikes)
        else:
            views = float(fields[0])
            if views <= 0 or len(fields) != 3:
                raise ValueError("needs view_count youtube_id imdb_id with view_count > 0")
            target = view_count_target(views)
        if not math.isfinite(target):
            raise ValueError(f"target {target} is not finite")
        return yid, None, target, info
    except (ValueError, IndexError) as e:
        raise DataError(f"{where}: malformed LVU {task} row {' '.join(fields)!r}: {e}") from None


def load_task(root: str | os.PathLike, task: str) -> TaskLabels:
    """All rows of one task's three split files."""
    if task not in TASKS:
        raise DataError(f"unknown LVU task {task!r}; LVU tasks are {', '.join(TASKS)}")
    records, names = [], {}
    for split in SPLITS:
        path = Path(root) / task / f"{split}.csv"
        lines = read_lines(path)
        for i, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            yid, label, target, info = _parse_row(task, line.split(), f"{path}:{i}")
            records.append(LabelRecord(yid, split, task, label, target, info=info))
            if label is not None:
                names.setdefault(label, info["class_name"])
    if task in NUM_CLASSES:
        n = NUM_CLASSES[task]
        spec = TaskSpec(task, CLASSIFICATION, n, tuple(names.get(c, str(c)) for c in range(n)))
    else:
        spec = TaskSpec(task, REGRESSION)
    return TaskLabels(spec, records)


def load(path: str | os.PathLike, tasks: list[str] | None = None) -> BenchmarkLabels:
    """LVU labels from the directory holding one folder per task (all 9 tasks by default)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"LVU label directory not found: {root} (expected <dir>/<task>/train.csv ...)")
    return BenchmarkLabels("lvu", {t: load_task(root, t) for t in (tasks or TASKS)}, source=str(root))
