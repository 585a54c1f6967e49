"""The long-range synthetic feature benchmark: deterministic stores whose probe labels need
evidence far apart (and not a mean pool)."""

import csv
import subprocess
import sys

import numpy as np

from lvmae.store import FeatureStore
from lvmae.synth.features import FeatureSynthConfig, _World, generate, probe_video


def _small(**kw) -> FeatureSynthConfig:
    base = dict(num_videos=6, length=[40, 80], val_videos=2, val_length=120, probe_videos=12, probe_length=60)
    return FeatureSynthConfig(**{**base, **kw})


def test_generate_writes_stores_and_labels_deterministically(tmp_path):
    a, b = generate(_small(), tmp_path / "a"), generate(_small(), tmp_path / "b")
    for name in ("pretrain", "val", "probe"):
        sa, sb = FeatureStore.open(a[name]), FeatureStore.open(b[name])
        assert sa.video_ids == sb.video_ids and sa.config_hash == sb.config_hash
        for vid in sa.video_ids:
            np.testing.assert_array_equal(sa.load(vid), sb.load(vid))
    val = FeatureStore.open(a["val"])
    assert len(val) == 2 and all(val.num_segments(v) == 120 for v in val.video_ids)
    pre = FeatureStore.open(a["pretrain"])
    assert all(40 <= pre.num_segments(v) <= 80 for v in pre.video_ids)
    with open(a["labels"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["task"] for r in rows} == {"link", "order"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    # resuming writes nothing new and keeps the same store
    generate(_small(), tmp_path / "a")
    assert FeatureStore.open(a["probe"]).video_ids == FeatureStore.open(b["probe"]).video_ids


def test_link_evidence_is_far_apart_and_an_xor():
    cfg = _small(probe_length=200)
    w = _World(cfg)
    for i in range(20):
        x, label, truth = probe_video(cfg, w, "link", i)
        assert truth["cue_at"] < 20 and truth["echo_at"] >= 180
        assert (truth["cue"] == truth["echo"]) == bool(label)
        # the echo carries the signature it claims
        sig = x[truth["echo_at"]] - w.echo
        assert int(np.argmax(w.signatures @ sig)) == truth["echo"]


def test_order_classes_hold_the_same_segments():
    cfg = _small(probe_length=100)
    w = _World(cfg)
    for i in range(20):
        x, label, truth = probe_video(cfg, w, "order", i)
        assert (truth["a_at"] < truth["b_at"]) == bool(label)
        assert (truth["a_at"] < 50) != (truth["b_at"] < 50)  # different halves
        assert int(np.argmax(x @ w.a)) == truth["a_at"] and int(np.argmax(x @ w.b)) == truth["b_at"]


def test_cli_features(tmp_path):
    out = tmp_path / "f"
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "synth", "--features", "--out", str(out),
                        "num_videos=2", "probe_videos=4", "val_videos=1", "val_length=50"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(FeatureStore.open(out / "pretrain")) == 2
    bad = subprocess.run([sys.executable, "-m", "lvmae.cli", "synth", "--features", "--out", str(out), "nope=1"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr and "Traceback" not in bad.stderr
