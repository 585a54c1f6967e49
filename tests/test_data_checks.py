"""Data checks before compute: mixed stores, crops that mask nothing, the full store scan."""

import json

import numpy as np
import pytest
from pretrain_helpers import corrupt, make_store
from test_train import TINY

from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import ConfigError, DataError
from lvmae.store import FeatureStore
from lvmae.train import pretrain


def retag(store, **meta):
    """Rewrite a store's identity as another extraction config would have made it."""
    path = store.root / "store.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **meta}))


def args(stores, out, *extra):
    return [*TINY, f"data.stores=[{','.join(str(s.root) for s in stores)}]", f"run.out_dir={out}", "train.steps=2",
            "train.export=false", "train.plot=false", *extra]


def test_stores_of_different_extraction_configs_are_refused_unless_allowed(tmp_path):
    a = make_store(tmp_path / "a", [10] * 6, prefix="a")
    b = make_store(tmp_path / "b", [10] * 6, prefix="b")
    retag(a, config_hash="h1", segment={"seconds": 5.0})
    retag(b, config_hash="h2", segment={"seconds": 2.0})
    with pytest.raises(DataError, match=r"different segment \(segment: \{\"seconds\": 5.0\} vs \{\"seconds\": 2.0\}\)"
                                        r".*data.allow_mixed_stores=true"):
        pretrain(load_config(overrides=args([a, b], tmp_path / "run")))
    assert not (tmp_path / "run" / "checkpoints").exists()
    s = pretrain(load_config(overrides=args([a, b], tmp_path / "run", "data.allow_mixed_stores=true")))
    assert s["steps"] == 2


@pytest.mark.parametrize("overrides, crop", [(["data.min_len=1"], 1), (["masking.ratio=0.25"], 2),
                                             (["data.min_len=3", "data.max_len=3", "masking.ratio=0.1"], 3)])
def test_masking_that_can_mask_nothing_is_refused_at_config_time(overrides, crop):
    with pytest.raises(ConfigError, match=rf"masks nothing in a crop of {crop} segment"):
        load_config(overrides=["data.min_len=2", *overrides])


def test_masking_check_is_one_cli_line(capsys):
    assert main(["config", "data.min_len=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "raise data.min_len to 2" in err


def test_keep_policy_with_videos_too_short_to_mask_is_refused(tmp_path):
    s = make_store(tmp_path / "s", [10, 1, 12, 8])
    with pytest.raises(DataError, match=r"1 video\(s\) \(e.g. 'v1', 1 segment\(s\)\) are too short"):
        pretrain(load_config(overrides=args([s], tmp_path / "run", "data.short_policy=keep")))
    assert pretrain(load_config(overrides=args([s], tmp_path / "run", "data.short_policy=drop")))["steps"] == 2


def test_store_check_finds_nan_bad_shape_missing_and_orphan_files(tmp_path, capsys):
    s = make_store(tmp_path / "s", [10, 12, 14, 16])
    assert main(["store", "check", str(s.root)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ok"]
    corrupt(s, "v1", float("inf"))
    feats = s.root / "features"
    np.save(feats / s.record("v2")["files"]["vision"], np.zeros((14, 3), np.float16))
    (feats / s.record("v3")["files"]["vision"]).unlink()
    np.save(feats / "stray.vision.npy", np.zeros((2, 16), np.float16))
    assert main(["store", "check", str(s.root)]) == 3
    out = capsys.readouterr()
    rep = json.loads(out.out)[0]
    assert not rep["ok"] and rep["orphan_files"] == ["stray.vision.npy"]
    assert any("'v1' vision" in p and "NaN or inf" in p for p in rep["problems"])
    assert any("'v2' vision" in p and "shape [14, 3], the manifest says [14, 16]" in p for p in rep["problems"])
    assert any("'v3' vision" in p and "is missing" in p for p in rep["problems"])
    assert "3 problem(s)" in out.err


def test_pretraining_can_scan_the_stores_first(tmp_path):
    s = make_store(tmp_path / "s", [10, 12, 14, 16, 18, 20])
    corrupt(s, "v5")
    with pytest.raises(DataError, match=r"'v5' vision: .* holds NaN or inf"):
        pretrain(load_config(overrides=args([FeatureStore.open(s.root)], tmp_path / "run", "data.check_stores=true")))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
