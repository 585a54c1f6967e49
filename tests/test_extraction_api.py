"""Extraction into a feature store: contents, bad files, resume after a crash or a kill,
shards merging into one store, the config-hash check, and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import make_corrupt, make_video, register_tiny

from lvmae.cli import main
from lvmae.config import EncoderConfig, ExtractConfig, SegmentConfig
from lvmae.errors import DataError
from lvmae.extraction.api import Extractor, extract
from lvmae.io import tmp_owner
from lvmae.store import FeatureStore

torch.set_num_threads(1)
register_tiny()
EXPECTED_SEGMENTS = {"a": 3, "b": 2, "c": 2, "d": 1}  # 13 s, 10 s, 8 s (3 s partial kept), 6 s (1 s dropped)


@pytest.fixture(scope="module")
def vdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a.mp4", seconds=13)
    make_video(d / "b.webm", seconds=10, audio=False)
    make_video(d / "c.avi", seconds=8)
    make_video(d / "d.mkv", seconds=6)
    make_video(d / "short.mp4", seconds=1)
    make_corrupt(d / "broken.avi")
    return d


@pytest.fixture(autouse=True)
def tiny_encoder():
    register_tiny()  # healthy "tiny" for every test (one test swaps in a failing one)
    yield
    register_tiny()


def cfg(**kw):
    enc = EncoderConfig(vision="tiny", audio="logmel", image_size=32, batch_frames=kw.pop("batch_frames", 16),
                        pooling=kw.pop("pooling", "mean"))
    seg = SegmentConfig(frames=kw.pop("frames", 4))
    return ExtractConfig(segment=seg, encoder=enc, **kw)


def features(store_dir):
    s = FeatureStore.open(store_dir)
    return {v: {m: np.asarray(s.load(v, m)) for m in s.modalities} for v in s.video_ids}


def manifest_lines(store_dir):
    return [json.loads(line) for p in sorted(Path(store_dir, "manifest").glob("*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for v in a:
        for m in a[v]:
            np.testing.assert_allclose(a[v][m].astype(np.float32), b[v][m].astype(np.float32), atol=atol)


@pytest.fixture(scope="module")
def reference(vdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    summary = extract(vdir, out, cfg(), progress=False)
    return out, summary


def test_store_contents_and_bad_files(vdir, reference):
    out, summary = reference
    assert (summary["done"], summary["failed"], summary["skipped"]) == (4, 2, 0)
    assert summary["segments"] == sum(EXPECTED_SEGMENTS.values())
    s = FeatureStore.open(out)
    assert s.video_ids == sorted(EXPECTED_SEGMENTS) and s.modalities == ["audio", "vision"]
    assert "too short" in s.failed["short"] and "cannot open" in s.failed["broken"]
    for vid, n in EXPECTED_SEGMENTS.items():
        vis, aud = s.load(vid, "vision"), s.load(vid, "audio")
        assert vis.shape == (n, 4) and aud.shape == (n, 128) and vis.dtype == aud.dtype == np.float16
    assert not s.load("b", "audio").any() and s.load("a", "audio").any()  # b.webm has no audio track
    rec = s.record("c")
    assert rec["duration"] == pytest.approx(8.0) and rec["path"].endswith("c.avi") and rec["has_audio"]
    assert rec["encoders"]["vision"] == "tiny@tiny-1" and rec["config_hash"] == s.config_hash
    assert s.meta["segment"]["seconds"] == 5.0 and s.meta["encoders"]["vision"]["pooling"] == "mean"


def test_store_rows_match_single_video_embedding(vdir, reference):
    """Batches mix segments of several videos: every row must still land on its own video."""
    feats = features(reference[0])
    ex = Extractor(cfg())
    for vid, path in [("a", "a.mp4"), ("c", "c.avi"), ("d", "d.mkv")]:
        arrays, info = ex.embed(vdir / path)
        assert info["num_segments"] == EXPECTED_SEGMENTS[vid]
        for m in arrays:
            np.testing.assert_array_equal(arrays[m].astype(np.float16), feats[vid][m])
    with pytest.raises(DataError, match="too short"):
        ex.embed(vdir / "short.mp4")


def test_rerun_skips_everything(vdir, reference):
    out, _ = reference
    before = len(manifest_lines(out))
    summary = extract(vdir, out, cfg(), progress=False)
    assert (summary["done"], summary["failed"], summary["skipped"]) == (0, 0, 6)
    assert len(manifest_lines(out)) == before


def test_deterministic_across_workers_and_backends(vdir, reference, tmp_path):
    extract(vdir, tmp_path / "w1", cfg(decode_workers=1, batch_frames=4), progress=False)
    assert_same(features(tmp_path / "w1"), features(reference[0]), atol=1e-3)
    extract(vdir, tmp_path / "proc", cfg(decode_workers=2, decode_backend="process"), progress=False)
    assert_same(features(tmp_path / "proc"), features(reference[0]), atol=1e-3)


def check_resumed(out, reference_dir):
    """Nothing lost, nothing twice: one record per video, features equal to an uninterrupted run."""
    ids = [r["video_id"] for r in manifest_lines(out)]
    assert sorted(ids) == sorted(set(ids)) == sorted([*EXPECTED_SEGMENTS, "short", "broken"])
    assert_same(features(out), features(reference_dir), atol=1e-3)


def test_resume_after_injected_encoder_failure(vdir, reference, tmp_path):
    out = tmp_path / "store"
    register_tiny(fail_after=4)  # one segment per call: a.mp4 (3) gets written, b.webm (2) not
    crashing = Extractor(cfg(decode_workers=1, batch_frames=4))
    with pytest.raises(RuntimeError, match="injected"):
        crashing.run(vdir, out, progress=False)
    register_tiny()
    partial = FeatureStore.open(out)
    assert 0 < len(partial) < 4  # some videos finished before the crash, not all
    summary = extract(vdir, out, cfg(decode_workers=1, batch_frames=4), progress=False)
    assert summary["skipped"] == len(partial) + len(partial.failed) and summary["done"] == 4 - len(partial)
    check_resumed(out, reference[0])


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from videos import register_tiny
from lvmae.config import EncoderConfig, ExtractConfig, SegmentConfig
from lvmae.extraction.api import extract
register_tiny(delay=0.4)
enc = EncoderConfig(vision="tiny", audio="logmel", image_size=32, batch_frames=4)
extract({videos!r}, {out!r}, ExtractConfig(segment=SegmentConfig(frames=4), encoder=enc, decode_workers=1),
        progress=False)
"""


def test_kill_and_resume(vdir, reference, tmp_path):
    """A run killed with SIGKILL mid-way; the same call again finishes the job exactly once."""
    out = tmp_path / "store"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), videos=str(vdir), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if sum(r["status"] == "ok" for r in (manifest_lines(out) if (out / "manifest").is_dir() else [])) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = FeatureStore.open(out)
    assert 1 <= len(partial) < 4
    torn = out / "features" / f".x.vision.npy.{tmp_owner().rsplit('-', 1)[0]}-{proc.pid}.abc.tmp"
    torn.write_bytes(b"half")  # as if killed inside atomic_write
    summary = extract(vdir, out, cfg(decode_workers=1), progress=False)
    assert summary["done"] == 4 - len(partial) and summary["orphans_removed"] == 1 and not torn.exists()
    check_resumed(out, reference[0])


def test_shards_merge_into_one_store(vdir, reference, tmp_path, monkeypatch):
    out = tmp_path / "store"
    s0 = extract(vdir, out, cfg(shard="0/2"), progress=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s1 = extract(vdir, out, cfg(), progress=False)  # rank from the launcher's environment
    assert (s0["shard"], s1["shard"]) == ("0/2", "1/2") and s0["videos"] + s1["videos"] == 6
    parts = sorted(p.name for p in (out / "manifest").glob("*.jsonl"))
    assert parts == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    check_resumed(out, reference[0])


def test_config_hash_refuses_other_settings(vdir, reference, tmp_path):
    out = tmp_path / "store"
    extract([vdir / "d.mkv"], out, cfg(), progress=False)
    for other in (cfg(frames=2), cfg(pooling="mean_std"), cfg(dtype="float32")):
        with pytest.raises(DataError, match="another encoder/segment config"):
            extract([vdir / "a.mp4"], out, other, progress=False)
    with pytest.raises(DataError, match="names videos by"):
        extract([vdir / "a.mp4"], out, cfg(id_from="relpath"), progress=False)
    ok = extract([vdir / "a.mp4"], out, cfg(decode_workers=1, batch_frames=4), progress=False)
    assert ok["done"] == 1  # batch size and workers do not change the features


def test_retry_failed(vdir, tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    make_corrupt(d / "x.mp4")
    out = tmp_path / "store"
    assert extract(d, out, cfg(), progress=False)["failed"] == 1
    make_video(d / "x.mp4", seconds=6)  # the file was fixed
    assert extract(d, out, cfg(), progress=False)["skipped"] == 1
    summary = extract(d, out, cfg(retry_failed=True), progress=False)
    assert summary["done"] == 1 and FeatureStore.open(out).video_ids == ["x"]


def test_cli(vdir, tmp_path, capsys):
    out = tmp_path / "store: yes"  # --out is a literal path, not YAML
    sets = ["extract.encoder.vision=tiny", "extract.encoder.audio=null", "extract.segment.frames=2",
            "extract.encoder.image_size=32"]
    assert main(["extract", str(vdir), "--out", str(out), "--no-progress", *sets]) == 3  # some failed
    line = capsys.readouterr().out.strip()
    assert "4 done" in line and "2 failed" in line and "segments/s" in line
    listing = tmp_path / "list.txt"
    listing.write_text(f"{vdir / 'a.mp4'}\n{vdir / 'c.avi'}\n")
    assert main(["extract", "--no-progress", str(listing), "-o", str(out), "--json", *sets]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert FeatureStore.open(out).modalities == ["vision"]
    assert main(["extract", str(tmp_path / "missing.mp4"), "--out", str(out), *sets]) == 4  # recorded, all failed
    assert "file not found" in FeatureStore.open(out).failed["missing"]


def test_default_encoders_end_to_end(vdir, tmp_path):
    """The shipped defaults (EfficientNet-Lite0 + log-mel), small frames: shapes and determinism."""
    c = ExtractConfig(segment=SegmentConfig(frames=2), encoder=EncoderConfig(image_size=64))
    videos = [vdir / "c.avi", vdir / "d.mkv"]
    a = extract(videos, tmp_path / "s1", c, progress=False)
    extract(videos, tmp_path / "s2", c, progress=False)
    assert a["done"] == 2
    s = FeatureStore.open(tmp_path / "s1")
    assert s.dim("vision") == 1280 and s.load("c", "vision").shape == (2, 1280)
    assert_same(features(tmp_path / "s1"), features(tmp_path / "s2"))


def test_retry_under_another_shard_layout_wins(vdir, tmp_path):
    """A failure recorded by shard 0/2, fixed and retried without shards: the newer record wins."""
    d = tmp_path / "v"
    d.mkdir()
    make_corrupt(d / "a.mp4")
    out = tmp_path / "store"
    extract(d, out, cfg(shard="0/2"), progress=False)
    make_video(d / "a.mp4", seconds=6)
    extract(d, out, cfg(retry_failed=True), progress=False)  # writes part-00000-of-00001
    s = FeatureStore.open(out)
    assert s.video_ids == ["a"] and s.failed == {}


def test_audio_only_store(vdir, reference, tmp_path):
    """``encoder.vision=null`` (YAML/CLI) keeps just the audio modality, rows equal to the two-modality run."""
    from lvmae.config import load_config

    enc = load_config(overrides=["extract.encoder.vision=null"]).extract.encoder
    assert enc.vision is None
    c = cfg()
    c.encoder.vision = enc.vision
    extract([vdir / "a.mp4", vdir / "c.avi"], tmp_path / "s", c, progress=False)
    got, ref = features(tmp_path / "s"), features(reference[0])
    assert FeatureStore.open(tmp_path / "s").modalities == ["audio"]
    assert_same(got, {v: {"audio": ref[v]["audio"]} for v in got})
