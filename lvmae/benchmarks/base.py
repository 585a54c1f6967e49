"""Common record types for benchmark labels, and matching them to a feature store.

Every loader turns its benchmark's own label files into :class:`BenchmarkLabels`:
one :class:`TaskLabels` per task, each a flat list of :class:`LabelRecord` rows
(one per labelled video and split, exactly as in the files: nothing is remapped
or dropped at parse time). :func:`match_to_store` then looks every record up in
a feature store. Real benchmark downloads are never complete, so videos without
features are *reported* (:class:`MatchReport`) and the rest go on; only a split
that ends empty is an error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.errors import DataError

SPLITS = ("train", "val", "test")
CLASSIFICATION, REGRESSION = "classification", "regression"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv")


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts. ``num_classes`` is fixed by the task definition, never by the data."""

    name: str
    kind: str  # classification | regression
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        """``top1`` (accuracy in %, higher is better) or ``mse`` (lower is better)."""
        return "top1" if self.kind == CLASSIFICATION else "mse"


@dataclass
class LabelRecord:
    """One labelled video of one task and split.

    ``video_id`` is the id as the label file writes it; ``keys`` are other ids the
    same video may have in a store (e.g. a relative path), tried in order after it.
    Classification rows fill ``label``; regression rows fill ``target``.
    """

    video_id: str
    split: str
    task: str
    label: int | None = None
    target: float | None = None
    keys: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskLabels:
    spec: TaskSpec
    records: list[LabelRecord]

    def split(self, name: str) -> list[LabelRecord]:
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.split == s for r in self.records) for s in SPLITS}


def stem_key(video_id: str) -> str:
    """The bare name of a store id: directory and known video extension removed."""
    name = video_id.replace("\\", "/").rsplit("/", 1)[-1]
    root, ext = os.path.splitext(name)
    return root if ext.lower() in VIDEO_EXTENSIONS else name


def default_store_keys(store_id: str) -> list[str]:
    """Ids a store entry answers to: itself, then its stem (``dir/abc.mp4`` -> ``abc``)."""
    return [store_id, stem_key(store_id)]


@dataclass
class BenchmarkLabels:
    """All tasks of one benchmark, plus how the benchmark's videos are named in a store."""

    name: str
    tasks: dict[str, TaskLabels]
    store_keys: Callable[[str], list[str]] = default_store_keys
    source: str = ""


# ---------------------------------------------------------------------------
# matching records to store entries
# ---------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a matched task: store ids and their labels (``[N]`` int64 or float32)."""

    store_ids: list[str]
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.store_ids)


@dataclass
class MatchedTask:
    spec: TaskSpec
    splits: dict[str, Split]
    val_carved: bool = False


@dataclass
class MatchReport:
    """Which labelled videos have features, per task and split; every unmatched id by name."""

    labelled: dict[str, dict[str, int]] = field(default_factory=dict)
    matched: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)  # task -> "split:video_id"
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    carved_val: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> split -> videos of untrained classes

    def summary(self) -> list[str]:
        """One line per task, e.g. ``genre: train 2900/3063 val 560/597 test 610/647 (256 without features)``."""
        lines = []
        for task, lab in self.labelled.items():
            got = self.matched.get(task, {})
            parts = " ".join(f"{s} {got.get(s, 0)}/{lab[s]}" for s in SPLITS if lab.get(s))
            n_missing = len(self.missing.get(task, []))
            extra = f" ({n_missing} without features)" if n_missing else ""
            if self.ambiguous.get(task):
                extra += f" ({len(self.ambiguous[task])} ambiguous ids)"
            if task in self.carved_val:
                extra += f" (val: {self.carved_val[task]} carved from train)"
            if self.unseen.get(task):
                counts = ", ".join(f"{s} {n}" for s, n in self.unseen[task].items())
                extra += f" (classes absent from train: {counts} videos)"
            lines.append(f"{task}: {parts}{extra}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "matched": self.matched, "missing": self.missing,
                "ambiguous": self.ambiguous, "carved_val": self.carved_val, "unseen": self.unseen}


def _index_store(store_ids: Iterable[str], store_keys: Callable[[str], list[str]]) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for sid in store_ids:
        for key in store_keys(sid):
            index.setdefault(key, set()).add(sid)
    return index


def _resolve(rec: LabelRecord, exact: set[str], index: dict[str, set[str]]) -> tuple[str | None, bool]:
    """Store id of a record (exact id first, then each key); second value True if only ambiguous hits."""
    if rec.video_id in exact:
        return rec.video_id, False
    ambiguous = False
    for key in (rec.video_id, *rec.keys):
        hits = index.get(key, set())
        if len(hits) == 1:
            return next(iter(hits)), False
        ambiguous |= len(hits) > 1
    return None, ambiguous


def carve_val(store_ids: Sequence[str], fraction: float, salt: str) -> np.ndarray:
    """Boolean mask ``[N]`` choosing a reproducible validation subset of a training split.

    Videos are ranked by a hash of ``salt`` and their id (not by file order or an RNG
    stream), so the split is reproducible and unaffected by the order of the ids or by
    unlabelled videos in the store. At least one video goes to val and one stays in train.
    """
    n = len(store_ids)
    if n < 2:
        raise DataError(f"cannot carve a validation split from {n} training video(s)")
    k = min(n - 1, max(1, round(fraction * n)))
    rank = sorted(range(n), key=lambda i: hashlib.sha1(f"{salt}/{store_ids[i]}".encode()).hexdigest())
    mask = np.zeros(n, dtype=bool)
    mask[rank[:k]] = True
    return mask


def _labels_array(spec: TaskSpec, recs: list[LabelRecord]) -> np.ndarray:
    if spec.kind == CLASSIFICATION:
        return np.asarray([r.label for r in recs], dtype=np.int64)
    return np.asarray([r.target for r in recs], dtype=np.float32)


def _check_unique(task: str, kept: dict[str, tuple[list[str], list[LabelRecord]]]) -> None:
    """A store entry labelled twice in one task (a duplicate row, or the same video in train and test) is an error."""
    seen: dict[str, list[str]] = {}
    for split, (ids, _) in kept.items():
        for sid in ids:
            seen.setdefault(sid, []).append(split)
    dup = {sid: splits for sid, splits in seen.items() if len(splits) > 1}
    if dup:
        sid, splits = next(iter(dup.items()))
        raise DataError(f"task {task}: video {sid!r} is labelled {len(splits)} times ({', '.join(splits)}); "
                        f"{len(dup)} such video(s) in all. Each video needs exactly one label per task")


def _check_classes(name: str, splits: dict[str, Split], report: MatchReport) -> None:
    """Train needs two classes; val/test videos of classes train lacks are counted (they stay, scored as errors)."""
    train = set(np.unique(splits["train"].y).tolist())
    if len(train) < 2:
        raise DataError(f"{name}: every train video with features has class {next(iter(train))}; "
                        "a classifier needs at least two classes in train")
    unseen = {s: int((~np.isin(splits[s].y, list(train))).sum()) for s in ("val", "test")}
    unseen = {s: n for s, n in unseen.items() if n}
    if unseen:
        report.unseen[name] = unseen


def _match_task(tl: TaskLabels, exact: set[str], index: dict[str, set[str]], report: MatchReport) -> dict[str, Split]:
    name = tl.spec.name
    report.labelled[name] = tl.counts()
    report.missing[name], report.ambiguous[name] = [], []
    kept: dict[str, tuple[list[str], list[LabelRecord]]] = {s: ([], []) for s in SPLITS}
    for rec in tl.records:
        sid, ambiguous = _resolve(rec, exact, index)
        if sid is None:
            (report.ambiguous if ambiguous else report.missing)[name].append(f"{rec.split}:{rec.video_id}")
            continue
        kept[rec.split][0].append(sid)
        kept[rec.split][1].append(rec)
    report.matched[name] = {s: len(kept[s][0]) for s in SPLITS}
    _check_unique(name, kept)
    return {s: Split(ids, _labels_array(tl.spec, recs)) for s, (ids, recs) in kept.items()}


def match_to_store(
    labels: BenchmarkLabels,
    store_ids: Iterable[str],
    val_fraction: float = 0.1,
    val_salt: str = "lvmae-val",
) -> tuple[dict[str, MatchedTask], MatchReport]:
    """Map every task's records to store ids; carve val from train where it is empty.

    Raises :class:`DataError` if a task's train or test split ends with no video, if
    a video is labelled twice in one task, or if a classification task's train split
    holds a single class. Val/test videos of classes absent from train are kept (the
    official splits are scored as they are) and counted in ``report.unseen``.
    """
    store_ids = list(store_ids)
    exact, index = set(store_ids), _index_store(store_ids, labels.store_keys)
    report, out = MatchReport(), {}
    for name, tl in labels.tasks.items():
        splits = _match_task(tl, exact, index, report)
        for s in ("train", "test"):
            if not len(splits[s]):
                raise DataError(
                    f"{labels.name}/{name}: no {s} video has features in the store "
                    f"({report.labelled[name][s]} labelled); check probe.store and the video ids"
                )
        carved = not len(splits["val"])
        if carved:
            tr = splits["train"]
            mask = carve_val(tr.store_ids, val_fraction, f"{val_salt}/{name}")
            ids = np.asarray(tr.store_ids, dtype=object)
            splits["val"] = Split(list(ids[mask]), tr.y[mask])
            splits["train"] = Split(list(ids[~mask]), tr.y[~mask])
            report.carved_val[name] = int(mask.sum())
        if tl.spec.kind == CLASSIFICATION:
            _check_classes(name, splits, report)
        out[name] = MatchedTask(tl.spec, splits, carved)
    return out, report


def read_lines(path: str | os.PathLike) -> list[str]:
    """Text lines of a label file, or a DataError naming the missing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label file not found: {p}")
    return p.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Excel) is not part of the first line
