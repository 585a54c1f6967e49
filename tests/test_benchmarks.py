"""Benchmark label loaders on the real file formats, and matching labels to a store."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from lvmae.benchmarks import breakfast, coin, load_labels, lvu, match_to_store
from lvmae.benchmarks.base import carve_val
from lvmae.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
EXCERPTS = ROOT / "tests" / "data"
SHARED = Path(os.environ.get("LVMAE_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
needs_shared = pytest.mark.skipif(not (SHARED / "lvu_1.0").is_dir(), reason=f"no shared datasets at {SHARED}")
LABEL_ROOTS = [pytest.param(EXCERPTS, id="excerpts"), pytest.param(SHARED, id="shared", marks=needs_shared)]


def _rows(path: Path) -> list[list[str]]:
    """Independent reading of a label file: fields of every non-empty line after the header."""
    return [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]


def _lvu_tasks(root: Path) -> list[str]:
    return [t for t in lvu.TASKS if (root / "lvu_1.0" / t).is_dir()]


# ---- LVU ------------------------------------------------------------------


@pytest.mark.parametrize("root", LABEL_ROOTS)
def test_lvu_rows_labels_and_targets_match_the_files(root):
    tasks = _lvu_tasks(root)
    labels = load_labels("lvu", root / "lvu_1.0", tasks)
    assert list(labels.tasks) == tasks
    for task in tasks:
        tl = labels.tasks[task]
        for split in ("train", "val", "test"):
            rows = _rows(root / "lvu_1.0" / task / f"{split}.csv")
            recs = tl.split(split)
            assert len(recs) == len(rows) > 0
            assert [r.video_id for r in recs] == [f[-2] for f in rows]
            if task in lvu.NUM_CLASSES:
                assert [r.label for r in recs] == [int(f[0]) for f in rows]  # as given, never remapped
            elif task == "like_ratio":
                want = [10 * int(f[0]) / (int(f[0]) + int(f[1])) - 9.1382 for f in rows]
                assert np.allclose([r.target for r in recs], want)
            else:
                assert np.allclose([r.target for r in recs], [math.log(int(f[0])) - 11.7643 for f in rows])


@needs_shared
def test_lvu_all_nine_tasks_real_counts_and_fixed_class_counts():
    labels = lvu.load(SHARED / "lvu_1.0")
    assert list(labels.tasks) == list(lvu.TASKS) and len(labels.tasks) == 9
    expected = {"relationship": 4, "way_speaking": 5, "scene": 6, "director": 10, "writer": 10, "year": 9, "genre": 4}
    for task, n in expected.items():
        spec = labels.tasks[task].spec
        assert spec.kind == "classification" and spec.num_classes == n and spec.metric == "top1"
    for task in ("like_ratio", "view_count"):
        assert labels.tasks[task].spec.metric == "mse"
    director = labels.tasks["director"]
    test_ids = {r.label for r in director.split("test")}
    assert 9 not in test_ids and 9 in {r.label for r in director.split("train")}  # gaps stay gaps
    assert director.spec.class_names[0] == "nm0000229"


def test_lvu_bad_rows_name_file_and_line(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / "scene").mkdir(exist_ok=True)
        (tmp_path / "scene" / f"{split}.csv").write_text("class_id class_name youtube_id imdb_id\n0 office abc tt1\n")
    (tmp_path / "scene" / "val.csv").write_text("class_id class_name youtube_id imdb_id\n0 office abc tt1\n6 x y tt2\n")
    with pytest.raises(DataError, match=r"val.csv:3.*outside \[0, 6\)"):
        lvu.load(tmp_path, ["scene"])
    with pytest.raises(DataError, match="unknown LVU task"):
        lvu.load(tmp_path, ["scenes"])
    with pytest.raises(DataError, match="not found"):
        lvu.load(tmp_path, ["genre"])


# ---- Breakfast ------------------------------------------------------------


@pytest.mark.parametrize("root", [pytest.param(EXCERPTS, id="excerpts"),
                                  pytest.param(SHARED, id="shared", marks=needs_shared)])
def test_breakfast_rows_match_the_files(root):
    labels = breakfast.load(root / "breakfast")
    tl = labels.tasks["activity"]
    assert tl.spec.num_classes == 10
    for split in ("train", "test"):
        lines = [x.split(",") for x in (root / "breakfast" / f"{split}.csv").read_text().splitlines()[1:] if x]
        recs = tl.split(split)
        assert len(recs) == len(lines)
        assert [r.video_id for r in recs] == [f[0] for f in lines]
        assert [r.label for r in recs] == [int(f[3]) for f in lines]
    assert tl.counts()["val"] == 0


@needs_shared
def test_breakfast_real_split_and_names():
    tl = breakfast.load(SHARED / "breakfast").tasks["activity"]
    assert tl.counts() == {"train": 1357, "val": 0, "test": 355}
    assert all(r.video_id[:3] >= "P47" for r in tl.split("test"))
    assert tl.spec.class_names[0] == "cereals" and tl.spec.class_names[9] == "salat"


def test_breakfast_store_id_forms():
    labels = breakfast.load(EXCERPTS / "breakfast")
    recs = labels.tasks["activity"].records
    # P03_sandwich is filmed by several cameras (ambiguous stem); P03_coffee_ch0 only by the stereo camera
    ids = {r.video_id for r in recs}
    assert {"P03-cam01-P03_sandwich", "P03-webcam01-P03_sandwich"} <= ids
    store = ["BreakfastII_15fps_qvga_sync/P03/cam01/P03_sandwich.avi",  # relative path with prefix + ext
             "P03-webcam01-P03_sandwich",                                # label form
             "P03/stereo/P03_cereals_ch0",                               # relative path, no ext
             "P03_sandwich",                                             # ambiguous stem: must not match
             "P03_coffee_ch0"]                                           # unique stem
    tasks, report = match_to_store(labels, store + ["P47/cam01/P47_cereals"])
    sp = tasks["activity"].splits
    assert set(sp["train"].store_ids + sp["val"].store_ids) == set(store) - {"P03_sandwich"}
    assert sp["test"].store_ids == ["P47/cam01/P47_cereals"]
    missing = report.missing["activity"]
    assert "train:P03-stereo-P03_sandwich_ch0" in missing


def test_breakfast_relative_path_and_bad_header(tmp_path):
    assert breakfast.relative_path("P34-stereo-P34_tea_ch1") == "P34/stereo/P34_tea_ch1"
    (tmp_path / "train.csv").write_text("name,duration,action,class_id\n")
    (tmp_path / "test.csv").write_text("file_name,duration,action,class_id\n")
    with pytest.raises(DataError, match="expected header"):
        breakfast.load(tmp_path)


# ---- COIN -----------------------------------------------------------------


@pytest.mark.parametrize("root", [pytest.param(EXCERPTS, id="excerpts"),
                                  pytest.param(SHARED, id="shared", marks=needs_shared)])
def test_coin_sample(root):
    path = root / "coin" / "COIN.sample.json"
    db = json.loads(path.read_text())["database"]
    labels = load_labels("coin", path)
    tl = labels.tasks["task"]
    assert tl.spec.num_classes == 180
    assert [r.label for r in tl.records] == [e["recipe_type"] for e in db.values()]  # ids as given
    assert {r.video_id: r.split for r in tl.records} == {
        v: "train" if e["subset"] == "training" else "test" for v, e in db.items()}
    first = tl.records[0]
    assert first.video_id == "LtRSn-ntcLY" and first.label == 131
    assert tl.spec.class_names[131] == "ReplaceCDDriveWithSSD"
    steps = coin.steps_by_video(labels)["LtRSn-ntcLY"]
    assert [(s.id, s.start, s.end) for s in steps] == [(212, 60.0, 69.0), (216, 71.0, 82.0)]
    assert steps[0].label == "take out the laptop CD drive"


def test_coin_segment_step_labels():
    steps = (coin.Step(7, 12.0, 30.5, "a"), coin.Step(9, 31.0, 60.0, "b"))
    lab = coin.segment_step_labels(steps, num_segments=14, seconds=5.0)
    # segment i covers [5i, 5i+5): 0,1 background; 2 (10-15) overlaps step 7 by 3 s; 6 (30-35) step 9 by 4 s
    assert lab.tolist() == [-1, -1, 7, 7, 7, 7, 9, 9, 9, 9, 9, 9, -1, -1]
    assert coin.segment_step_labels((), 3).tolist() == [-1, -1, -1]


def test_coin_bad_recipe_type_is_named(tmp_path):
    p = tmp_path / "COIN.json"
    p.write_text(json.dumps({"database": {"vid1": {"recipe_type": 180, "subset": "training"}}}))
    with pytest.raises(DataError, match="vid1.*recipe_type 180"):
        coin.load(p)
    p.write_text("{}")
    with pytest.raises(DataError, match="not a COIN.json"):
        coin.load(p)


# ---- generic --------------------------------------------------------------


def _write_generic(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["video_id,split,task,label,target"]
        lines += [",".join(str(r.get(k, "")) for k in ("video_id", "split", "task", "label", "target")) for r in rows]
        path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_generic_csv_and_jsonl(tmp_path, suffix):
    rows = [{"video_id": "a", "split": "train", "task": "cls", "label": 0},
            {"video_id": "b", "split": "test", "task": "cls", "label": 3},
            {"video_id": "a", "split": "train", "task": "reg", "target": 1.5},
            {"video_id": "b", "split": "val", "task": "reg", "target": -2.0}]
    p = tmp_path / f"labels{suffix}"
    _write_generic(p, rows)
    labels = load_labels("generic", p)
    assert set(labels.tasks) == {"cls", "reg"}
    assert labels.tasks["cls"].spec.num_classes == 4 and labels.tasks["reg"].spec.kind == "regression"
    assert [r.target for r in labels.tasks["reg"].records] == [1.5, -2.0]
    assert list(load_labels("generic", p, ["reg"]).tasks) == ["reg"]


@pytest.mark.parametrize("row,msg", [
    ({"video_id": "a", "split": "dev", "task": "t", "label": 0}, "split 'dev'"),
    ({"video_id": "a", "split": "train", "task": "t", "label": 1, "target": 2.0}, "exactly one"),
    ({"video_id": "a", "split": "train", "task": "t"}, "exactly one"),
    ({"video_id": "a", "split": "train", "task": "t", "label": 1.5}, "not a class id"),
])
def test_generic_bad_rows(tmp_path, row, msg):
    p = tmp_path / "l.csv"
    _write_generic(p, [row])
    with pytest.raises(DataError, match=f"l.csv:2: .*{msg}"):
        load_labels("generic", p)


def test_generic_mixed_task_and_missing_column(tmp_path):
    p = tmp_path / "l.csv"
    _write_generic(p, [{"video_id": "a", "split": "train", "task": "t", "label": 1},
                       {"video_id": "b", "split": "train", "task": "t", "target": 0.5}])
    with pytest.raises(DataError, match="mixes"):
        load_labels("generic", p)
    p.write_text("video_id,split,label\n")
    with pytest.raises(DataError, match="header lacks"):
        load_labels("generic", p)
    with pytest.raises(DataError, match="unknown benchmark"):
        load_labels("kinetics", p)


# ---- matching to a store ----------------------------------------------------


def _generic_labels(tmp_path, n_train=10, n_val=0, n_test=4):
    rows = [{"video_id": f"v{i}", "split": s, "task": "t", "label": i % 2}
            for i, s in enumerate(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)]
    _write_generic(tmp_path / "l.csv", rows)
    return load_labels("generic", tmp_path / "l.csv")


def test_missing_features_are_reported_and_the_rest_goes_on(tmp_path):
    labels = _generic_labels(tmp_path, n_train=10, n_val=3, n_test=4)
    store = [f"v{i}" for i in range(17) if i not in (2, 11, 15)] + ["unlabelled"]
    tasks, report = match_to_store(labels, store)
    sp = tasks["t"].splits
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (9, 2, 3)
    assert sorted(report.missing["t"]) == ["test:v15", "train:v2", "val:v11"]
    assert report.summary() == ["t: train 9/10 val 2/3 test 3/4 (3 without features)"]
    assert sp["train"].y.tolist() == [i % 2 for i in range(10) if i != 2]


def test_stem_and_path_ids_match(tmp_path):
    labels = _generic_labels(tmp_path, n_train=3, n_val=1, n_test=1)
    tasks, report = match_to_store(labels, ["videos/v0.mp4", "v1", "v2", "x/v3.webm", "v4.MKV"])
    assert tasks["t"].splits["train"].store_ids == ["videos/v0.mp4", "v1", "v2"]
    assert not report.missing["t"]
    _, report = match_to_store(labels, ["a/v0.mp4", "b/v0.mp4", "v1", "v2", "v3", "v4"])
    assert report.ambiguous["t"] == ["train:v0"]


def test_empty_split_is_an_error_naming_it(tmp_path):
    labels = _generic_labels(tmp_path, n_train=4, n_val=1, n_test=2)
    with pytest.raises(DataError, match="no test video has features"):
        match_to_store(labels, ["v0", "v1", "v2", "v3"])


def test_val_is_carved_reproducibly_when_absent(tmp_path):
    labels = _generic_labels(tmp_path, n_train=20, n_val=0, n_test=2)
    ids = [f"v{i}" for i in range(22)]
    a, report = match_to_store(labels, ids, val_fraction=0.25)
    b, _ = match_to_store(labels, list(reversed(ids)) + ["other1", "other2"], val_fraction=0.25)
    va, vb = a["t"].splits["val"].store_ids, b["t"].splits["val"].store_ids
    assert len(va) == 5 and sorted(va) == sorted(vb)
    assert not set(va) & set(a["t"].splits["train"].store_ids)
    assert report.carved_val == {"t": 5} and a["t"].val_carved
    assert carve_val(["a", "b"], 0.01, "s").sum() == 1
    with pytest.raises(DataError, match="carve"):
        carve_val(["a"], 0.5, "s")


def test_classes_absent_from_train_are_counted(tmp_path):
    rows = [{"video_id": f"v{i}", "split": s, "task": "t", "label": c}
            for i, (s, c) in enumerate([("train", 0), ("train", 1), ("train", 0), ("val", 2), ("val", 1),
                                        ("test", 2), ("test", 2), ("test", 0), ("test", 3)])]
    _write_generic(tmp_path / "l.csv", rows)
    labels = load_labels("generic", tmp_path / "l.csv")
    tasks, report = match_to_store(labels, [f"v{i}" for i in range(9)])
    assert tasks["t"].spec.num_classes == 4
    assert report.unseen == {"t": {"val": 1, "test": 3}}
    assert "(classes absent from train: val 1, test 3 videos)" in report.summary()[0]


def test_one_class_in_train_is_an_error(tmp_path):
    rows = [{"video_id": f"v{i}", "split": s, "task": "t", "label": c}
            for i, (s, c) in enumerate([("train", 1), ("train", 1), ("val", 1), ("test", 0)])]
    _write_generic(tmp_path / "l.csv", rows)
    with pytest.raises(DataError, match="t: every train video with features has class 1"):
        match_to_store(load_labels("generic", tmp_path / "l.csv"), [f"v{i}" for i in range(4)])


def test_a_video_labelled_twice_in_a_task_is_an_error(tmp_path):
    rows = [{"video_id": v, "split": s, "task": "t", "label": c}
            for v, s, c in [("a", "train", 0), ("b", "train", 1), ("c", "train", 1), ("a", "test", 0)]]
    _write_generic(tmp_path / "l.csv", rows)
    with pytest.raises(DataError, match="'a' is labelled 2 times .*train, test"):
        match_to_store(load_labels("generic", tmp_path / "l.csv"), ["a", "b", "c"])
    _write_generic(tmp_path / "l.csv", rows[:3] + [{"video_id": "x/c.mp4", "split": "test", "task": "t",
                                                    "label": 1}])
    with pytest.raises(DataError, match="'x/c.mp4' is labelled 2 times"):  # two label ids, one store entry
        match_to_store(load_labels("generic", tmp_path / "l.csv"), ["a", "b", "x/c.mp4"])


@pytest.mark.parametrize("row", ["nan 3 yt tt1", "inf 1 yt tt1"])
def test_lvu_non_finite_target_is_named(tmp_path, row):
    d = tmp_path / "like_ratio"
    d.mkdir()
    for s in ("train", "val", "test"):
        (d / f"{s}.csv").write_text("like dislike youtube_id imdb_id\n" + (row if s == "val" else "5 1 a tt") + "\n")
    with pytest.raises(DataError, match="val.csv:2"):
        lvu.load(tmp_path, ["like_ratio"])
