"""Action-segmentation metrics on the segment grid: accuracy, segmental edit score, F1@k.

The definitions are those of the MS-TCN evaluation code that the segmentation
literature (MS-TCN, ASFormer and their successors) reports on Breakfast:

- **accuracy**: correct positions / all positions, pooled over every video (frame
  accuracy there; here one position is one stored segment).
- **edit**: per video, ``(1 - Levenshtein(P, Y) / max(|P|, |Y|)) * 100`` where ``P`` and
  ``Y`` are the label sequences of the predicted and true *runs* (maximal stretches of
  one label); the mean over videos is reported. Two empty run sequences score 100.
- **F1@k**: per predicted run, the true run of the same label with the highest IoU;
  a true positive if that IoU >= k/100 and that true run is not already matched
  (otherwise a false positive); unmatched true runs are false negatives. TP/FP/FN are
  summed over all videos, then ``F1 = 2PR / (P + R) * 100``.

Background: runs of the ``background`` class ids are left out of edit and F1 (the
``bg_class`` argument of the MS-TCN code); accuracy counts every position. MS-TCN's
Breakfast evaluation passes no Breakfast class as background, so ``SIL`` counts as an
action there; the Breakfast loader follows it, while COIN's unannotated gaps are
background. Positions labelled :data:`IGNORE` (no label at all) are dropped before
anything is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from lvmae.benchmarks.dense import IGNORE

OVERLAPS = (10, 25, 50)


def runs(labels: Sequence[int] | np.ndarray, background: Iterable[int] = ()) -> tuple[list[int], np.ndarray,
                                                                                       np.ndarray]:
    """``(labels, starts, ends)`` of the maximal runs of ``labels`` (ends exclusive), background runs left out."""
    y = np.asarray(labels)
    if y.size == 0:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.flatnonzero(y[1:] != y[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(y)]])
    keep = ~np.isin(y[starts], list(background))
    return [int(v) for v in y[starts][keep]], starts[keep], ends[keep]


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Edit distance (insert, delete, substitute: cost 1 each) between two label sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, z in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != z))
        prev = cur
    return prev[-1]


def edit_score(pred: Sequence[int], true: Sequence[int], background: Iterable[int] = ()) -> float:
    """Segmental edit score in % of one video (100 = the same sequence of action runs)."""
    bg = list(background)
    p, y = runs(pred, bg)[0], runs(true, bg)[0]
    if not p and not y:
        return 100.0
    return (1.0 - levenshtein(p, y) / max(len(p), len(y))) * 100.0


def f1_counts(pred: Sequence[int], true: Sequence[int], overlap: float,
              background: Iterable[int] = ()) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of one video at IoU threshold ``overlap`` in [0, 1] (MS-TCN's ``f_score``)."""
    bg = list(background)
    p_lab, p_s, p_e = runs(pred, bg)
    y_lab, y_s, y_e = runs(true, bg)
    y_lab_a = np.asarray(y_lab)
    hits = np.zeros(len(y_lab), dtype=bool)
    tp = fp = 0
    for lab, s, e in zip(p_lab, p_s, p_e):
        if not len(y_lab):
            fp += 1
            continue
        inter = np.minimum(e, y_e) - np.maximum(s, y_s)
        union = np.maximum(e, y_e) - np.minimum(s, y_s)
        iou = inter / union * (y_lab_a == lab)
        j = int(iou.argmax())
        if iou[j] >= overlap and not hits[j]:
            tp += 1
            hits[j] = True
        else:
            fp += 1
    return tp, fp, int(len(y_lab) - hits.sum())


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 in % from summed counts (0 where precision and recall are both 0)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) * 100.0 if precision + recall else 0.0


def _strip(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = true != IGNORE
    return pred[keep], true[keep]


def segmentation_scores(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], background: Iterable[int] = (),
                        overlaps: Sequence[int] = OVERLAPS) -> dict[str, float]:
    """Every metric over a set of videos: ``acc``, ``acc_fg`` (accuracy on non-background
    positions; COIN's step-level accuracy), ``edit`` and ``f1@k`` for each ``k`` (all in %)."""
    bg = list(background)
    pairs = [_strip(np.asarray(p), np.asarray(t)) for p, t in zip(preds, trues, strict=True)]
    n = sum(len(t) for _, t in pairs)
    correct = sum(int((p == t).sum()) for p, t in pairs)
    fg = [(p[~np.isin(t, bg)], t[~np.isin(t, bg)]) for p, t in pairs]
    n_fg = sum(len(t) for _, t in fg)
    out = {"acc": correct / n * 100.0 if n else 0.0,
           "acc_fg": sum(int((p == t).sum()) for p, t in fg) / n_fg * 100.0 if n_fg else 0.0,
           "edit": float(np.mean([edit_score(p, t, bg) for p, t in pairs])) if pairs else 0.0}
    for k in overlaps:
        counts = np.sum([f1_counts(p, t, k / 100.0, bg) for p, t in pairs], axis=0) if pairs else (0, 0, 0)
        out[f"f1@{k}"] = f1_from_counts(*(int(c) for c in counts))
    return out


def per_class(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], num_classes: int) -> dict[str, list]:
    """Per-class position ``support``, ``recall`` and ``precision`` in % (None where undefined)."""
    pairs = [_strip(np.asarray(p), np.asarray(t)) for p, t in zip(preds, trues, strict=True)]
    p = np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0, np.int64)
    t = np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0, np.int64)
    hit = np.bincount(t[p == t], minlength=num_classes)[:num_classes]
    support = np.bincount(t, minlength=num_classes)[:num_classes]
    predicted = np.bincount(p[(p >= 0) & (p < num_classes)], minlength=num_classes)[:num_classes]
    return {"support": support.tolist(),
            "recall": [float(h / s * 100) if s else None for h, s in zip(hit, support)],
            "precision": [float(h / q * 100) if q else None for h, q in zip(hit, predicted)]}
