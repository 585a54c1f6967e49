"""Dense label loaders on the real layouts, and the segment-grid rule at its edges (labels checked by hand)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lvmae.benchmarks.dense import IGNORE, Interval, grid_labels, match_dense
from lvmae.benchmarks.dense_sources import breakfast_video, load_dense
from lvmae.errors import DataError
from lvmae.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LVMAE_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
BREAKFAST = SHARED / "breakfast" / "segmentation_sample"
COIN = SHARED / "coin" / "COIN.sample.json"
needs_shared = pytest.mark.skipif(not BREAKFAST.is_dir(), reason=f"no shared datasets at {SHARED}")

# P03_cam01_P03_cereals.txt: SIL 0-45, take_bowl 45-135, pour_cereals 135-375, pour_milk 375-585,
# stir_cereals 585-780, SIL 780-840 (frames, 15 fps); 5-s segments are 75 frames.
CEREALS_5S = [0, 1, 2, 2, 2, 3, 3, 3, 4, 4, 0]


def make_store(root: Path, lengths: dict[str, int], seconds: float = 5.0, stride: float | None = None) -> FeatureStore:
    meta = {"config_hash": "t", "modalities": {"vision": {"dim": 2}}, "dtype": "float32",
            "segment": {"seconds": seconds, "stride": stride or seconds}}
    store = FeatureStore.create(root, meta)
    w = store.writer()
    for vid, n in lengths.items():
        w.write(vid, {"vision": np.zeros((n, 2), np.float32)})
    return store


def test_grid_rule_majority_background_and_ties():
    ivs = [Interval(2.5, 5.0, 7), Interval(5.0, 7.0, 8), Interval(7.0, 9.0, 9)]
    # seg0 [0,5): 7 covers 2.5 s, background 2.5 s -> tie -> the label (background loses ties)
    # seg1 [5,10): 8 and 9 tie at 2 s -> 8 (first in the timeline); seg2 [10,15): nothing -> background
    y, loss = grid_labels(ivs, 3, 5.0, fill=0)
    assert y.tolist() == [7, 8, 0]
    assert loss.labelled_s == pytest.approx(15.0) and loss.differs_s == pytest.approx(2.5 + 2.0 + 1.0)
    y, _ = grid_labels(ivs, 3, 5.0)  # no background class: an untouched segment is ignored
    assert y.tolist() == [7, 8, IGNORE]
    # background 3 s of seg0 beats the label's 2 s
    assert grid_labels([Interval(3.0, 5.0, 7)], 1, 5.0, fill=0)[0].tolist() == [0]
    # overlapping segments (stride 2.5): each instant is counted once, in the last segment started
    y, loss = grid_labels([Interval(0.0, 4.0, 1), Interval(4.0, 10.0, 2)], 3, 5.0, stride=2.5)
    assert y.tolist() == [1, 2, 2] and loss.labelled_s == pytest.approx(10.0)
    assert loss.differs_s == pytest.approx(1.5)  # [2.5, 4) is label 1 inside segment 1 (label 2)
    # time past the last segment is reported, not voted
    y, loss = grid_labels([Interval(0.0, 12.0, 1)], 2, 5.0)
    assert y.tolist() == [1, 1] and loss.beyond_s == pytest.approx(2.0)


@needs_shared
def test_breakfast_segmentation_sample_layout_and_grid(tmp_path):
    labels = load_dense("breakfast", BREAKFAST)
    task = labels.tasks["split1"]
    assert task.class_names[0] == "SIL" and len(task.class_names) == 9 and task.background == ()
    assert [(r.video_id, r.split) for r in task.records] == [
        ("P03-cam01-P03_cereals", "train"), ("P03-cam01-P03_coffee", "train"), ("P47-webcam01-P47_cereals", "test")]
    cereals = task.records[0]
    assert cereals.duration == 56.0 and cereals.intervals[1] == Interval(3.0, 9.0, 1)  # take_bowl, frames 45-135
    assert breakfast_video("P03_cam01_P03_cereals.txt") == ("P03-cam01-P03_cereals", "P03/cam01/P03_cereals")
    # store ids in the raw-video layout (relative paths with extension), as the classification loader matches them
    store = make_store(tmp_path / "s", {"P03/cam01/P03_cereals.avi": 11, "P03/cam01/P03_coffee.avi": 12,
                                        "P47/webcam01/P47_cereals.avi": 9})
    tasks, report = match_dense(labels, store, store.video_ids, val_fraction=0.5)
    m = tasks["split1"]
    by_id = {sid: y for sp in m.splits.values() for sid, y in zip(sp.store_ids, sp.labels)}
    assert by_id["P03/cam01/P03_cereals.avi"].tolist() == CEREALS_5S
    # coffee: take_cup 30-135 wins seg0 (45 of 75 frames) over SIL; pour_milk 435-615, spoon_sugar 615-765
    assert by_id["P03/cam01/P03_coffee.avi"].tolist() == [5, 5, 6, 6, 6, 6, 3, 3, 7, 7, 8, 8]
    assert m.splits["test"].store_ids == ["P47/webcam01/P47_cereals.avi"] and m.val_carved
    assert report.matched["split1"] == {"train": 2, "val": 0, "test": 1} and report.carved_val == {"split1": 1}
    # P47 (43 s = 9 segments, the last clipped to [40, 43)): seg2 150-225 has 30 take_bowl, 45 pour_cereals frames
    assert by_id["P47/webcam01/P47_cereals.avi"].tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 0]
    # resolution lost, by hand (frames): relabelled cereals 30+15+15+30, coffee 30+15+15+15+15, P47 15+30+15;
    # in the grid 825 + 900 + 645; past the last segment 15 + 30 + 0
    assert m.grid["labelled_s"] * 15 == pytest.approx(2370)
    assert m.grid["differs_s"] * 15 == pytest.approx(240)
    assert m.grid["beyond_s"] * 15 == pytest.approx(45)
    assert m.grid["differs_fraction"] == pytest.approx(240 / 2370)


@needs_shared
def test_breakfast_unknown_action_is_one_clear_error(tmp_path):
    shutil.copytree(BREAKFAST, tmp_path / "b")
    gt = tmp_path / "b" / "groundTruth" / "P03_cam01_P03_cereals.txt"
    gt.chmod(0o644)
    gt.write_text(gt.read_text().replace("pour_milk", "pour_juice", 1))
    with pytest.raises(DataError, match=r"P03_cam01_P03_cereals.txt:376: action 'pour_juice' is not in mapping"):
        load_dense("breakfast", tmp_path / "b")


@needs_shared
def test_coin_steps_background_between_steps(tmp_path):
    db = json.loads(COIN.read_text())
    db["database"]["copy-train"] = db["database"]["LtRSn-ntcLY"]  # a second training video to carve val from
    (tmp_path / "COIN.json").write_text(json.dumps(db))
    labels = load_dense("coin", tmp_path)
    task = labels.tasks["steps"]
    assert task.background == (0,) and task.fill == 0 and len(task.class_names) == 779
    assert task.class_names[259] == "unscrew the screw"
    store = make_store(tmp_path / "s", {"LtRSn-ntcLY": 26, "copy-train": 26, "sample-test-01": 48,
                                        "sample-val-02": 19})
    tasks, _ = match_dense(labels, store, store.video_ids)
    m = tasks["steps"]
    y = dict(zip(m.splits["test"].store_ids, m.splits["test"].labels))["sample-test-01"]
    # 259: 12-30.5 s, 260: 31-60 s, 261: 61-90 s; seg2 [10,15) 3 s of 259 beats 2 s of background,
    # seg6 [30,35) 260 (4 s) over 259 (0.5 s) and background (0.5 s)
    assert y[:19].tolist() == [0, 0] + [259] * 4 + [260] * 6 + [261] * 6 + [0]
    assert (y[19:] == 0).all()
    # the 'validation' subset is held out as test, as the COIN classification loader does
    assert "sample-val-02" in m.splits["test"].store_ids


def test_generic_dense_file_and_errors(tmp_path):
    path = tmp_path / "dense.csv"
    rows = ["video_id,split,task,start,end,label", "a,train,t,0,7.5,1", "a,train,t,7.5,10,2",
            "b,train,t,0,10,0", "c,test,t,2,10,2", "d,val,t,0,5,1"]
    path.write_text("\n".join(rows) + "\n")
    labels = load_dense("generic", path)
    task = labels.tasks["t"]
    assert task.class_names == ("0", "1", "2", "background") and task.background == (3,) and task.fill == 3
    store = make_store(tmp_path / "s", {"vids/a.mp4": 2, "vids/b.mp4": 2, "vids/c.mp4": 2, "vids/d.mp4": 2})
    tasks, _ = match_dense(labels, store, store.video_ids)
    got = {sid: y.tolist() for sp in tasks["t"].splits.values() for sid, y in zip(sp.store_ids, sp.labels)}
    # a: seg1 [5,10) has 2.5 s of 1 and 2.5 s of 2 -> 1 (first in the timeline); c: seg0 [0,5) 3 s of 2
    assert got == {"vids/a.mp4": [1, 1], "vids/b.mp4": [0, 0], "vids/c.mp4": [2, 2], "vids/d.mp4": [1, 3]}
    jsonl = tmp_path / "dense.jsonl"
    jsonl.write_text(json.dumps({"video_id": "a", "split": "train", "task": "t", "start": 3, "end": 1, "label": 0}))
    with pytest.raises(DataError, match=r"dense.jsonl:1: need 0 <= start < end"):
        load_dense("generic", jsonl)
    with pytest.raises(DataError, match="no dense labels for benchmark 'lvu'"):
        load_dense("lvu", path)


def test_store_without_segment_rule_is_refused(tmp_path):
    store = FeatureStore.create(tmp_path / "s", {"config_hash": "x", "modalities": {"vision": {"dim": 2}}})
    path = tmp_path / "dense.csv"
    path.write_text("video_id,split,task,start,end,label\na,train,t,0,5,0\n")
    with pytest.raises(DataError, match="does not record its segment length"):
        match_dense(load_dense("generic", path), store, [])


def _script_cfg(**kw):
    from lvmae.config import load_config

    over = ["synth.tasks=[script,appearance]", "synth.num_videos=30", "synth.segments_per_step=[1,2]",
            "synth.filler_steps=[6,9]", *(f"synth.{k}={v}" for k, v in kw.items())]
    return load_config([], over).synth


def test_synth_script_phases_follow_the_fillers_and_end_on_the_label():
    from lvmae.synth.plan import NUM_SPECIAL, plan_dataset

    cfg = _script_cfg(script_noise=0.0)
    turns = []
    for p in plan_dataset(cfg):
        fillers = [s for s in p.steps if s.type >= NUM_SPECIAL]
        assert p.steps[-1].phase == p.labels["script"]  # the label is the direction in force at the end
        for a, b in zip(fillers, fillers[1:]):  # without noise every pair of fillers follows its phase
            step = 1 if b.phase == 0 else -1
            assert b.type - NUM_SPECIAL == (a.type - NUM_SPECIAL + step) % cfg.filler_types
        changes = sum(a.phase != b.phase for a, b in zip(fillers, fillers[1:]))
        assert changes in (1, 2)
        turns.append(changes)
        for prev, s in zip(p.steps, p.steps[1:]):
            if s.type < NUM_SPECIAL:  # task steps keep the phase of the step before them
                assert s.phase == prev.phase
    assert set(turns) == {1, 2}


def test_synth_script_refuses_direction_too():
    from lvmae.errors import ConfigError
    from lvmae.synth.plan import check_config

    with pytest.raises(ConfigError, match="direction and script"):
        check_config(_script_cfg(tasks="[direction,script]"))


def test_synth_manifest_dense_tasks(tmp_path):
    from lvmae.synth import manifest
    from lvmae.synth.plan import plan_dataset

    cfg = _script_cfg()
    plans = plan_dataset(cfg)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest(cfg, plans, "h")))
    labels = load_dense("synth", tmp_path)
    assert list(labels.tasks) == ["step", "script"]
    assert labels.tasks["script"].class_names == ("forwards", "backwards")
    store = make_store(tmp_path / "s", {p.video_id: p.num_segments for p in plans}, seconds=cfg.segment_seconds)
    tasks, _ = match_dense(labels, store, store.video_ids)
    for name, want in (("step", lambda p: p.segment_types()),
                       ("script", lambda p: np.repeat([s.phase for s in p.steps], [s.segments for s in p.steps]))):
        got = {sid: y for sp in tasks[name].splits.values() for sid, y in zip(sp.store_ids, sp.labels)}
        assert all((got[p.video_id] == want(p)).all() for p in plans)
        assert tasks[name].grid["differs_fraction"] == 0.0
