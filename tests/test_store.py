import numpy as np
import pytest

from lvmae.errors import DataError
from lvmae.store import FeatureStore, config_hash

META = {"config_hash": config_hash({"enc": "x"}), "modalities": {"vision": {"dim": 4}, "audio": {"dim": 3}}}


def rows(n):
    return {"vision": np.ones((n, 4)), "audio": np.ones((n, 3))}


def test_write_read_round_trip(tmp_path):
    s = FeatureStore.create(tmp_path / "s", META)
    w = s.writer()
    v = np.random.rand(5, 4).astype(np.float32)
    w.write("vid/a b", {"vision": v, "audio": np.zeros((5, 3))}, {"duration": 25.0})
    w.fail("bad", "corrupt file")
    s2 = FeatureStore.open(tmp_path / "s")
    assert s2.video_ids == ["vid/a b"] and s2.failed == {"bad": "corrupt file"}
    got = s2.load("vid/a b")
    assert got.dtype == np.float16 and got.shape == (5, 4)
    np.testing.assert_allclose(got, v, atol=1e-3)
    assert s2.num_segments("vid/a b") == 5 and s2.dim("audio") == 3


def test_hash_mismatch_refused(tmp_path):
    FeatureStore.create(tmp_path / "s", META)
    with pytest.raises(DataError, match="another encoder"):
        FeatureStore.create(tmp_path / "s", {**META, "config_hash": "different"})


def test_bad_arrays_rejected_and_nothing_recorded(tmp_path):
    s = FeatureStore.create(tmp_path / "s", META)
    w = s.writer()
    with pytest.raises(DataError, match="shape"):
        w.write("a", {"vision": np.zeros((5, 7)), "audio": np.zeros((5, 3))})
    with pytest.raises(DataError, match="NaN"):
        w.write("a", {"vision": np.full((5, 4), np.nan), "audio": np.zeros((5, 3))})
    assert "a" not in FeatureStore.open(tmp_path / "s")


def test_shard_parts_merge_and_torn_line(tmp_path):
    s = FeatureStore.create(tmp_path / "s", META)
    s.writer(0, 2).write("a", rows(2))
    w1 = s.writer(1, 2)
    w1.write("b", rows(3))
    with open(w1.part, "a") as f:
        f.write('{"video_id": "c", "sta')  # killed mid-line
    s2 = FeatureStore.open(tmp_path / "s")
    assert s2.video_ids == ["a", "b"]
    assert s2.writer(0, 2).finished() == {"a", "b"}


def test_atomic_write_uses_normal_permissions(tmp_path):
    import os

    from lvmae.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(mask)
    assert p.read_text() == "hi"
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)


def test_append_after_torn_line_keeps_the_new_record(tmp_path):
    s = FeatureStore.create(tmp_path / "s", META)
    w = s.writer()
    w.write("a", rows(2))
    with open(w.part, "a") as f:
        f.write('{"video_id": "c", "sta')  # killed mid-line
    FeatureStore.open(tmp_path / "s").writer().write("b", rows(1))
    assert FeatureStore.open(tmp_path / "s").video_ids == ["a", "b"]


def test_orphan_temp_files_of_dead_writers_are_removed(tmp_path):
    """SIGKILL mid-write leaves ``.NAME.HOST-PID.RAND.tmp``; only files no live writer can own go."""
    import os
    import subprocess
    import sys
    import time

    from lvmae.io import tmp_owner

    s = FeatureStore.create(tmp_path / "s", META)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    feats = tmp_path / "s" / "features"
    me, gone = tmp_owner(), tmp_owner().rsplit("-", 1)[0] + f"-{dead.pid}"
    files = {name: feats / name for name in (
        f".a.vision.npy.{gone}.x1.tmp",  # this host, dead writer: removed
        f".b.vision.npy.{me}.x2.tmp",  # this process, still writing: kept
        ".c.vision.npy.otherhost-7.x3.tmp",  # another node, fresh: kept
        ".d.vision.npy.otherhost-7.x4.tmp",  # another node, hours old: removed
    )}
    for p in files.values():
        p.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(files[".d.vision.npy.otherhost-7.x4.tmp"], (old, old))
    assert sorted(p.name for p in s.remove_orphans()) == [f".a.vision.npy.{gone}.x1.tmp", ".d.vision.npy.otherhost-7.x4.tmp"]
    assert sorted(p.name for p in feats.iterdir()) == [f".b.vision.npy.{me}.x2.tmp", ".c.vision.npy.otherhost-7.x3.tmp"]


def test_write_needs_every_modality(tmp_path):
    """A record without one of the store's modalities would break every reader of that modality."""
    s = FeatureStore.create(tmp_path / "s", META)
    for arrays in ({}, {"vision": np.ones((2, 4))}):
        with pytest.raises(DataError, match="missing (vision, )?audio"):
            s.writer().write("a", arrays)
    assert "a" not in FeatureStore.open(tmp_path / "s")


def test_merge_of_shards_with_duplicates(tmp_path):
    """The same video recorded by several writers (shard layouts changed, concurrent runs): the newest
    ok record wins; a later failure never hides features that exist."""
    s = FeatureStore.create(tmp_path / "s", META)
    s.writer(0, 3).fail("a", "first try")
    s.writer(1, 3).write("a", rows(2))
    s.writer(2, 3).write("b", rows(2))
    s.writer(0, 2).fail("b", "transient read error")  # another layout, later
    s.writer(1, 2).write("c", rows(1))
    s.writer(0, 1).write("c", rows(3))  # re-extracted later: the newest ok wins
    merged = FeatureStore.open(tmp_path / "s")
    assert merged.video_ids == ["a", "b", "c"] and merged.failed == {}
    assert merged.num_segments("c") == 3 and merged.load("c").shape == (3, 4)
