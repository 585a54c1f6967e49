"""Dense label sources in their real layouts, each ``load(path, tasks=None) -> DenseLabels``.

Keys of :data:`DENSE_BENCHMARKS` (``probe.benchmark`` with ``probe.dense: true``):

- ``breakfast``: the action-segmentation release of Breakfast (MS-TCN / ASFormer layout):
  ``mapping.txt`` (``<id> <name>``), ``groundTruth/<name>.txt`` (one action name per frame
  at 15 fps) and ``splits/{train,test}.split<k>.bundle``. Task ``split<k>`` per split found;
  val is carved from train. ``SIL`` is a class, as in MS-TCN's evaluation (no background).
  ``P03_cam01_P03_cereals`` is the raw video ``P03/cam01/P03_cereals.avi``: store ids are
  matched as in :mod:`lvmae.benchmarks.breakfast` (relative path, label form, unique stem).
- ``coin``: ``COIN.json`` step annotations in seconds; class ``k`` is COIN's global
  step id ``k`` (1..778), class 0 is the background between steps. ``training`` is train,
  any other subset test; val carved from train.
- ``synth``: a synthetic set's ``manifest.json``: task ``step`` (the step type of each
  segment) and, where generated, ``script`` (the script direction in force, see
  :mod:`lvmae.synth.plan`).
- ``generic``: CSV (header) or JSONL rows ``video_id, split, task, start, end, label``
  (seconds, int class id >= 0). Time no row covers is background, an extra last class.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lvmae.benchmarks import breakfast, coin
from lvmae.benchmarks.base import SPLITS, read_lines
from lvmae.benchmarks.dense import IGNORE, DenseLabels, DenseRecord, DenseTask, Interval
from lvmae.benchmarks.generic import read_rows
from lvmae.errors import DataError
from lvmae.synth.plan import SCRIPT_PHASES

BREAKFAST_FPS = 15.0
COIN_STEPS = 778


def _pick(tasks: list[str] | None, have: Iterable[str], what: str) -> list[str]:
    have = list(have)
    unknown = [t for t in tasks or [] if t not in have]
    if unknown:
        raise DataError(f"unknown {what} task(s) {unknown}; available: {have}")
    return list(tasks or have)


def frame_intervals(names: list[str], classes: dict[str, int], fps: float, where: str) -> tuple[Interval, ...]:
    """Runs of one class name per frame -> intervals in seconds (frame ``f`` spans ``[f, f+1) / fps``)."""
    out, start = [], 0
    for f in range(1, len(names) + 1):
        if f == len(names) or names[f] != names[start]:
            if names[start] not in classes:
                raise DataError(f"{where}:{start + 1}: action {names[start]!r} is not in mapping.txt")
            out.append(Interval(start / fps, f / fps, classes[names[start]]))
            start = f
    return tuple(out)


def _mapping(root: Path) -> tuple[str, ...]:
    names: dict[int, str] = {}
    for i, line in enumerate(read_lines(root / "mapping.txt"), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise DataError(f"{root / 'mapping.txt'}:{i}: expected '<id> <name>', got {line!r}")
            names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{root / 'mapping.txt'}: class ids must be 0..{len(names) - 1} without gaps")
    return tuple(names[i] for i in range(len(names)))


def breakfast_video(gt_name: str) -> tuple[str, str]:
    """``P03_cam01_P03_cereals(.txt)`` -> label form ``P03-cam01-P03_cereals`` and path ``P03/cam01/P03_cereals``."""
    stem = gt_name[:-4] if gt_name.endswith(".txt") else gt_name
    parts = stem.split("_", 2)
    if len(parts) != 3:
        raise DataError(f"Breakfast groundTruth name {gt_name!r} is not PERSON_CAMERA_STEM")
    return "-".join(parts), "/".join(parts)


def load_breakfast(path: str | os.PathLike, tasks: list[str] | None = None) -> DenseLabels:
    """Breakfast segmentation labels from the directory holding mapping.txt, groundTruth/ and splits/."""
    root = Path(path)
    names = _mapping(root)
    classes = {n: i for i, n in enumerate(names)}
    found = sorted({p.name.split(".")[1] for p in (root / "splits").glob("*.split*.bundle")},
                   key=lambda s: int(s[5:]) if s[5:].isdigit() else 0)
    if not found:
        raise DataError(f"{root / 'splits'}: no <train|test>.split<k>.bundle files")
    cache: dict[str, DenseRecord] = {}

    def record(gt: str, split: str) -> DenseRecord:
        if gt not in cache:
            frames = [ln.strip() for ln in read_lines(root / "groundTruth" / gt) if ln.strip()]
            label_form, rel = breakfast_video(gt)
            ivs = frame_intervals(frames, classes, BREAKFAST_FPS, str(root / "groundTruth" / gt))
            cache[gt] = DenseRecord(label_form, split, ivs, len(frames) / BREAKFAST_FPS, (rel,))
        r = cache[gt]
        return DenseRecord(r.video_id, split, r.intervals, r.duration, r.keys)

    out = {}
    for task in _pick(tasks, found, "Breakfast segmentation"):
        recs = [record(gt.strip(), split) for split in ("train", "test")
                for gt in read_lines(root / "splits" / f"{split}.{task}.bundle") if gt.strip()]
        stems = Counter(r.keys[0].rsplit("/", 1)[-1] for r in recs)
        for r in recs:
            stem = r.keys[0].rsplit("/", 1)[-1]
            r.keys = (r.keys[0], stem) if stems[stem] == 1 else r.keys[:1]
        out[task] = DenseTask(task, names, recs)
    return DenseLabels("breakfast", out, breakfast.store_keys, str(root))


def load_coin(path: str | os.PathLike, tasks: list[str] | None = None) -> DenseLabels:
    """COIN step labels (task ``steps``) from ``COIN.json`` or the directory holding it."""
    _pick(tasks, ["steps"], "COIN")
    labels = coin.load(path)
    names = ["background"] + [str(k) for k in range(1, COIN_STEPS + 1)]
    recs = []
    for r in labels.tasks[coin.TASK].records:
        steps = r.info["steps"]
        for st in steps:
            if not 1 <= st.id <= COIN_STEPS:
                raise DataError(f"COIN video {r.video_id}: step id {st.id} outside 1..{COIN_STEPS}")
            names[st.id] = st.label or names[st.id]
        dur = r.info.get("duration")
        recs.append(DenseRecord(r.video_id, r.split, tuple(Interval(st.start, st.end, st.id) for st in steps),
                                float(dur) if dur else None))
    task = DenseTask("steps", tuple(names), recs, background=(0,), fill=0)
    return DenseLabels("coin", {"steps": task}, source=labels.source)


SYNTH_TASKS: dict[str, Callable[[dict[str, Any]], int]] = {
    "step": lambda st: int(st["type_id"]),
    "script": lambda st: int(st["phase"]),
}


def load_synth(path: str | os.PathLike, tasks: list[str] | None = None) -> DenseLabels:
    """Dense tasks of a synthetic set from its ``manifest.json`` (or the directory holding it)."""
    p = Path(path)
    p = p / "manifest.json" if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"synthetic manifest not found: {p}")
    man = json.loads(p.read_text(encoding="utf-8"))
    have = ["step"] + (["script"] if "script" in man.get("tasks", {}) else [])
    out = {}
    for task in _pick(tasks, have, "synthetic dense"):
        label = SYNTH_TASKS[task]
        names = tuple(t["name"] for t in man["step_types"]) if task == "step" else SCRIPT_PHASES
        recs = [DenseRecord(v["video_id"], v["split"],
                            tuple(Interval(float(st["start"]), float(st["end"]), label(st)) for st in v["steps"]),
                            float(v["duration"])) for v in man["videos"]]
        out[task] = DenseTask(task, names, recs)
    return DenseLabels("synth", out, source=str(p))


DENSE_FIELDS = ("video_id", "split", "task", "start", "end", "label")


def _dense_row(row: dict[str, Any], where: str) -> tuple[str, str, str, Interval]:
    vid, split, task = (str(row.get(k) or "").strip() for k in ("video_id", "split", "task"))
    try:
        if not vid or not task or split not in SPLITS:
            raise ValueError(f"need video_id, task and split in {'|'.join(SPLITS)}")
        start, end, label = float(row["start"]), float(row["end"]), float(row["label"])
        if not 0 <= start < end or label != int(label) or label < 0:
            raise ValueError("need 0 <= start < end and an int label >= 0")
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{where}: {e}") from None
    return vid, split, task, Interval(start, end, int(label))


def load_generic(path: str | os.PathLike, tasks: list[str] | None = None) -> DenseLabels:
    """Generic interval labels; classes ``0..max`` as given plus ``background`` (``max + 1``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label file not found: {p}")
    by_task: dict[str, dict[str, tuple[str, list[Interval]]]] = {}
    for row, where in read_rows(p, DENSE_FIELDS):
        vid, split, task, iv = _dense_row(row, where)
        prev_split, ivs = by_task.setdefault(task, {}).setdefault(vid, (split, []))
        if prev_split != split:
            raise DataError(f"{where}: video {vid!r} of task {task!r} is in {prev_split} and {split}")
        ivs.append(iv)
    out = {}
    for task in _pick(tasks, by_task, f"{p}"):
        videos = by_task[task]
        n = max(iv.label for _, ivs in videos.values() for iv in ivs) + 1
        recs = [DenseRecord(v, split, tuple(ivs)) for v, (split, ivs) in videos.items()]
        out[task] = DenseTask(task, (*(str(c) for c in range(n)), "background"), recs, background=(n,), fill=n)
    return DenseLabels("generic", out, source=str(p))


DENSE_BENCHMARKS: dict[str, Callable[..., DenseLabels]] = {
    "breakfast": load_breakfast, "coin": load_coin, "synth": load_synth, "generic": load_generic,
}


def load_dense(name: str, path: str | os.PathLike, tasks: list[str] | None = None) -> DenseLabels:
    """Dense labels of benchmark ``name`` (a key of :data:`DENSE_BENCHMARKS`) from ``path``."""
    if name not in DENSE_BENCHMARKS:
        raise DataError(f"no dense labels for benchmark {name!r}; dense benchmarks: {', '.join(DENSE_BENCHMARKS)}")
    if not str(path):
        raise DataError(f"no label path given for dense benchmark {name!r} (set probe.labels)")
    return DENSE_BENCHMARKS[name](path, tasks or None)


__all__ = ["DENSE_BENCHMARKS", "IGNORE", "load_dense", "load_breakfast", "load_coin", "load_generic", "load_synth"]
