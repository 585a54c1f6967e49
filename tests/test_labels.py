"""Probe label files as people make them: Excel's BOM, a header alone, class names instead of ids."""

import json

import pytest
from test_probe import make_store, probe_args

from lvmae.benchmarks import load_labels
from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import DataError
from lvmae.probe import run_probe

HEADER = "video_id,split,task,label,target\n"


def test_utf8_bom_is_accepted(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: it gave "header lacks ['video_id']"."""
    p = tmp_path / "l.csv"
    p.write_bytes(b"\xef\xbb\xbf" + (HEADER + "a,train,t,1,\nb,test,t,0,\n").encode())
    assert [r.video_id for r in load_labels("generic", p).tasks["t"].records] == ["a", "b"]
    j = tmp_path / "l.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"video_id": "a", "split": "train", "task": "t", "label": 2}).encode())
    assert load_labels("generic", j).tasks["t"].records[0].label == 2


@pytest.mark.parametrize("text", [HEADER, "", "\n"])
def test_header_only_or_empty_file_is_one_line(tmp_path, text, capsys):
    """It was an AssertionError traceback."""
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(DataError, match="has no label rows" if text == HEADER else "is empty; need a header"):
        load_labels("generic", p)
    (tmp_path / "store").mkdir()
    assert main(["probe", f"probe.labels={p}", f"probe.store={tmp_path / 'store'}",
                 f"run.out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_class_names_become_ids_and_the_mapping_is_in_the_results(tmp_path):
    """They gave "could not convert string to float"."""
    make_store(tmp_path, n_videos=40)
    names = ["cat", "dog", "eel", "fox"]
    rows = [line.split(",") for line in (tmp_path / "labels.csv").read_text().splitlines()[1:]]
    named = [f"{v},{s},{t},{names[int(lab)]}," for v, s, t, lab, _ in rows if t == "dominant"]
    (tmp_path / "labels.csv").write_text(HEADER + "\n".join(named) + "\n")
    task = load_labels("generic", tmp_path / "labels.csv").tasks["dominant"]
    assert task.spec.class_names == tuple(names) and task.spec.num_classes == 4
    ids = {r.video_id: r.label for r in task.records}
    assert all(ids[v] == names.index(lab) for v, _, t, lab, _ in (r.split(",") for r in named))
    res = run_probe(load_config(overrides=probe_args(tmp_path, "out", "probe.methods=[raw_mean_sklearn]")))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"]["dominant"]["class_names"] == names == res["tasks"]["dominant"]["class_names"]


def test_ids_and_names_in_one_task_are_refused(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(HEADER + "a,train,t,1,\nb,train,t,cat,\n")
    with pytest.raises(DataError, match="mixes class ids .* and class names .*'cat'"):
        load_labels("generic", p)
