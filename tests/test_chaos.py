"""Faults injected on purpose: concurrent runs, dead lock holders, full disks, kills.

The fast cases run by default; the soak (many random SIGKILLs of one pretraining run) is
marked slow.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pretrain_helpers import make_store
from test_train import TINY

from lvmae.config import load_config
from lvmae.lock import LockedError, dir_lock
from lvmae.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
FAST = [*TINY, "train.export=false", "train.plot=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s", [5, 9, 14, 20, 26, 33, 3, 40, 12, 18, 24, 7])


def cfg(store, out, *overrides):
    return load_config(overrides=[*FAST, f"data.stores=[{store.root}]", f"run.out_dir={out}", *overrides])


HOLD = textwrap.dedent("""
    import os, signal, sys, time
    from lvmae.lock import dir_lock
    with dir_lock(sys.argv[1], sys.argv[2], "test"):
        print("held", flush=True)
        if sys.argv[3] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
""")


def hold(directory, name, how="sleep"):
    """A subprocess holding ``name``'s lock in ``directory`` (``die``: SIGKILLed while holding it)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), name, how], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    if how == "die":
        p.wait(timeout=30)
    return p


def test_second_pretraining_into_one_dir_is_refused_naming_the_holder(store, tmp_path):
    out = tmp_path / "run"
    p = hold(out, "pretrain-rank00000")
    try:
        with pytest.raises(LockedError, match=rf"in use by another pretraining run \(host {socket.gethostname()}, "
                                               rf"pid {p.pid}, since"):
            pretrain(cfg(store, out, "train.steps=2"))
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    finally:
        p.kill()
        p.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(store, tmp_path, caplog):
    out = tmp_path / "run"
    p = hold(out, "pretrain-rank00000", "die")
    assert p.returncode == -signal.SIGKILL and (out / ".pretrain-rank00000.owner").exists()
    caplog.set_level("INFO", logger="lvmae")
    s = pretrain(cfg(store, out, "train.steps=2"))
    assert s["steps"] == 2 and f"pid {p.pid}" in caplog.text and "taking over" in caplog.text
    assert not (out / ".pretrain-rank00000.owner").exists()  # released at the end


def test_lock_is_released_after_an_error(tmp_path):
    with pytest.raises(ZeroDivisionError), dir_lock(tmp_path, "x", "test"):
        raise ZeroDivisionError
    with dir_lock(tmp_path, "x", "test"):
        pass


def test_probe_and_extraction_shards_are_locked(tmp_path):
    from test_probe import make_store as probe_store
    from test_probe import probe_args
    from videos import make_video, register_tiny

    from lvmae.config import EncoderConfig, ExtractConfig, SegmentConfig
    from lvmae.extraction.api import extract
    from lvmae.probe import run_probe

    probe_store(tmp_path, n_videos=20)
    pc = load_config(overrides=probe_args(tmp_path, "out", "probe.methods=[raw_mean_sklearn]"))
    with dir_lock(tmp_path / "out", "probe", "test"), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        run_probe(pc)
    assert not (tmp_path / "out" / "results.json").exists()

    register_tiny()
    (tmp_path / "v").mkdir()
    make_video(tmp_path / "v" / "a.mp4", seconds=6)
    ec = ExtractConfig(segment=SegmentConfig(frames=2), encoder=EncoderConfig(vision="tiny", audio=None,
                                                                              image_size=32))
    extract(tmp_path / "v", tmp_path / "feats", ec, shard="1/2", progress=False)  # creates the store
    with dir_lock(tmp_path / "feats", "extract-shard-0-of-2", "test"):
        with pytest.raises(LockedError, match="extraction of shard 0/2"):
            extract(tmp_path / "v", tmp_path / "feats", ec, shard="0/2", progress=False)
        extract(tmp_path / "v", tmp_path / "feats", ec, shard="1/2", progress=False)  # another shard: fine
    assert json.loads((tmp_path / "feats" / "store.json").read_text())["config_hash"]
