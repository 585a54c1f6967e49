"""Segmentation metrics against sequences worked out by hand (and MS-TCN's reference code)."""

import numpy as np
import pytest

from lvmae.probe.dense_metrics import (
    IGNORE,
    edit_score,
    f1_counts,
    f1_from_counts,
    levenshtein,
    per_class,
    runs,
    segmentation_scores,
)

# true runs (1, 0-7), (2, 7-10); predicted runs (1, 0-2) (2, 2-3) (1, 3-6) (2, 6-9) (3, 9-10)
TRUE_A = [1, 1, 1, 1, 1, 1, 1, 2, 2, 2]
PRED_A = [1, 1, 2, 1, 1, 1, 2, 2, 2, 3]
# one true run (1, 0-10); predicted (1, 0-2) then background 0
TRUE_B = [1] * 10
PRED_B = [1, 1] + [0] * 8


def test_runs_and_levenshtein():
    labels, starts, ends = runs(PRED_A)
    assert labels == [1, 2, 1, 2, 3] and starts.tolist() == [0, 2, 3, 6, 9] and ends.tolist() == [2, 3, 6, 9, 10]
    labels, starts, ends = runs([0, 0, 4, 4, 0, 5], background=[0])
    assert labels == [4, 5] and starts.tolist() == [2, 5] and ends.tolist() == [4, 6]
    assert runs([])[0] == []
    assert levenshtein([1, 2, 1, 2, 3], [1, 2]) == 3
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein([], [1, 2]) == 2


def test_edit_score_by_hand():
    assert edit_score(PRED_A, TRUE_A) == pytest.approx(40.0)  # 1 - 3 / 5
    assert edit_score(PRED_B, TRUE_B) == pytest.approx(50.0)  # background kept: P = [1, 0], Y = [1]
    assert edit_score(PRED_B, TRUE_B, background=[0]) == 100.0  # background runs are not actions
    assert edit_score([0, 0], [0, 0, 0], background=[0]) == 100.0  # nothing vs nothing
    assert edit_score([3, 3], [0, 0], background=[0]) == 0.0


def test_f1_counts_at_each_overlap_by_hand():
    # IoUs of the predicted runs with their best same-label true run: 2/7, -, 3/7 (run already hit), 1/2, -
    assert f1_counts(PRED_A, TRUE_A, 0.10) == (2, 3, 0)
    assert f1_counts(PRED_A, TRUE_A, 0.25) == (2, 3, 0)
    assert f1_counts(PRED_A, TRUE_A, 0.50) == (1, 4, 1)  # 2/7 and 3/7 < 0.5; 1/2 counts (>=)
    # a single predicted run with IoU 0.2
    assert f1_counts(PRED_B, TRUE_B, 0.10, background=[0]) == (1, 0, 0)
    assert f1_counts(PRED_B, TRUE_B, 0.25, background=[0]) == (0, 1, 1)
    assert f1_from_counts(2, 3, 0) == pytest.approx(400 / 7)  # P 2/5, R 1
    assert f1_from_counts(1, 4, 1) == pytest.approx(200 / 7)  # P 1/5, R 1/2
    assert f1_from_counts(0, 0, 0) == 0.0


def test_scores_pool_counts_over_videos_and_average_edit():
    s = segmentation_scores([np.array(PRED_A), np.array(PRED_B)], [np.array(TRUE_A), np.array(TRUE_B)],
                            background=[0])
    assert s["acc"] == pytest.approx(45.0)  # (7 + 2) / 20
    assert s["acc_fg"] == pytest.approx(45.0)  # no true background position
    assert s["edit"] == pytest.approx(70.0)  # (40 + 100) / 2
    assert s["f1@10"] == pytest.approx(f1_from_counts(3, 3, 0))  # 66.7
    assert s["f1@25"] == pytest.approx(f1_from_counts(2, 4, 1))
    assert s["f1@50"] == pytest.approx(f1_from_counts(1, 5, 2))


def test_ignored_positions_are_dropped_and_fg_accuracy_skips_background():
    true = np.array([IGNORE, 0, 0, 2, 2, IGNORE])
    pred = np.array([2, 2, 0, 2, 1, 0])
    s = segmentation_scores([pred], [true], background=[0])
    assert s["acc"] == pytest.approx(50.0)  # [2,0,2,1] vs [0,0,2,2]
    assert s["acc_fg"] == pytest.approx(50.0)  # [2,1] vs [2,2]
    c = per_class([pred], [true], 3)
    assert c["support"] == [2, 0, 2]
    assert c["recall"] == [50.0, None, 50.0] and c["precision"] == [100.0, 0.0, 50.0]


def _reference(recognized, ground_truth, overlap, bg_class):
    """MS-TCN eval.py ``get_labels_start_end_time`` + ``f_score``, transcribed as an oracle."""
    def segs(fl):
        labels, starts, ends = [], [], []
        last = fl[0]
        if fl[0] not in bg_class:
            labels.append(fl[0])
            starts.append(0)
        for i in range(len(fl)):
            if fl[i] != last:
                if fl[i] not in bg_class:
                    labels.append(fl[i])
                    starts.append(i)
                if last not in bg_class:
                    ends.append(i)
                last = fl[i]
        if last not in bg_class:
            ends.append(len(fl))
        return labels, starts, ends

    pl, ps, pe = segs(recognized)
    yl, ys, ye = segs(ground_truth)
    tp = fp = 0
    hits = np.zeros(len(yl))
    for j in range(len(pl)):
        inter = np.minimum(pe[j], ye) - np.maximum(ps[j], ys)
        union = np.maximum(pe[j], ye) - np.minimum(ps[j], ys)
        iou = (1.0 * inter / union) * np.array([pl[j] == yl[x] for x in range(len(yl))])
        idx = np.array(iou).argmax() if len(yl) else 0
        if len(yl) and iou[idx] >= overlap and not hits[idx]:
            tp += 1
            hits[idx] = 1
        else:
            fp += 1
    return tp, fp, len(yl) - int(hits.sum())


def test_f1_matches_the_reference_code_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        true = np.repeat(rng.integers(0, 4, 8), rng.integers(1, 6, 8))[:n].tolist()
        pred = np.repeat(rng.integers(0, 4, 10), rng.integers(1, 5, 10))[:n].tolist()
        for k in (0.1, 0.25, 0.5):
            for bg in ([], [0]):
                m = min(len(pred), len(true))
                assert f1_counts(pred[:m], true[:m], k, bg) == _reference(pred[:m], true[:m], k, bg)
