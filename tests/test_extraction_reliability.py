"""Extraction faults: inputs that were skipped in silence, misreported, or stopped the run."""

import json
import os
import re
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from torch import nn
from videos import frame_rgb, make_audio_only, make_video, register_tiny

from lvmae.cli import main
from lvmae.config import EncoderConfig, ExtractConfig, SegmentConfig
from lvmae.encoders import register_torch_module
from lvmae.extraction.api import extract
from lvmae.store import FeatureStore

torch.set_num_threads(1)
SETS = ["extract.encoder.vision=tiny", "extract.encoder.audio=null", "extract.segment.frames=2",
        "extract.encoder.image_size=32", "run.progress=false"]


@pytest.fixture(autouse=True)
def tiny():
    register_tiny()


def cfg(**kw):
    return ExtractConfig(segment=SegmentConfig(frames=2), encoder=EncoderConfig(vision=kw.pop("vision", "tiny"),
                         audio=None, image_size=32), **kw)


def reasons(store):
    return FeatureStore.open(store).failed


def test_clip_encoder_without_preprocess(tmp_path):
    """frame_level=False crashed: the default preprocess permuted a 5-D clip as frames."""
    conv = nn.Sequential(nn.Conv3d(3, 5, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    register_torch_module("clip3d", conv, frame_level=False, overwrite=True)
    make_video(tmp_path / "a.mp4", seconds=10)
    s = extract(tmp_path / "a.mp4", tmp_path / "store", cfg(vision="clip3d"), progress=False)
    assert s["done"] == 1 and FeatureStore.open(tmp_path / "store").load("a").shape == (2, 5)


def test_directory_scan_keeps_what_ffmpeg_reads_and_names_the_rest(tmp_path):
    """.m4a (audio only), broken links and symlinked dirs were skipped silently."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    make_video(d / "a.mp4", seconds=6)
    make_video(tmp_path / "elsewhere.mp4", seconds=6)
    (tmp_path / "linked").mkdir()
    make_video(tmp_path / "linked" / "b.mp4", seconds=6)
    os.symlink(tmp_path / "linked", d / "sub" / "link")
    os.symlink(tmp_path / "gone.mp4", d / "dangling.mp4")
    make_audio_only(d / "song.m4a")
    (d / "notes.xyz").write_text("x")
    (d / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")
    os.symlink(d, d / "sub" / "loop")  # a cycle is walked once
    s = extract(d, tmp_path / "store", cfg(), progress=False)
    assert s["done"] == 2 and sorted(FeatureStore.open(tmp_path / "store").video_ids) == ["a", "b"]
    failed = reasons(tmp_path / "store")
    assert "broken symbolic link" in failed["dangling"] and "no video stream" in failed["song"]
    assert s["ignored"] == 1 and s["ignored_files"] == [str(d / "notes.xyz")]


def test_fifo_is_named_as_such(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    make_video(tmp_path / "a.mp4", seconds=6)
    extract(tmp_path, tmp_path / "store", cfg(), progress=False)
    assert "named pipe (FIFO)" in reasons(tmp_path / "store")["pipe"]


def faststart(path, seconds=20, fps=4):
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        v = c.add_stream("libx264", rate=fps)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            f = av.VideoFrame.from_ndarray(frame_rgb(i), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    return path


def test_truncated_faststart_mp4_gets_the_keep_truncated_hint(tmp_path):
    p = faststart(tmp_path / "fast.mp4")
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
    extract(p, tmp_path / "store", cfg(), progress=False)
    assert "keep_truncated" in reasons(tmp_path / "store")["fast"]


def test_exit_status_says_whether_videos_failed_and_a_missing_path_is_recorded(tmp_path, capsys):
    make_video(tmp_path / "a.mp4", seconds=6)
    store = str(tmp_path / "store")
    assert main(["extract", str(tmp_path / "a.mp4"), "--out", store, *SETS]) == 0
    assert main(["extract", str(tmp_path / "a.mp4"), str(tmp_path / "missing.mp4"), "--out", store, *SETS]) == 3
    assert "file not found" in reasons(store)["missing"]
    assert main(["extract", str(tmp_path / "missing.mp4"), "--out", store, *SETS]) == 4  # all listed failed
    capsys.readouterr()


def test_rotated_video_records_the_upright_size(tmp_path):
    make_video(tmp_path / "r.mp4", seconds=6, size=64, width=96, rotation=90)
    extract(tmp_path / "r.mp4", tmp_path / "store", cfg(), progress=False)
    rec = FeatureStore.open(tmp_path / "store").record("r")
    assert (rec["width"], rec["height"], rec["coded_size"], rec["rotation"]) == (64, 96, [96, 64], 90)


def test_progress_counts_segments_with_an_eta(tmp_path, capsys):
    make_video(tmp_path / "long.mp4", seconds=40)  # one video: a bar in videos sat at 0/1
    extract(tmp_path / "long.mp4", tmp_path / "store", cfg(), progress=True)
    err = capsys.readouterr().err
    assert "seg/s" in err and re.search(r"\b8/8\b", err), err[-500:]


def test_decode_threads_stay_bounded(tmp_path):
    """FFmpeg's scaler started a thread pool per frame: 160+ live threads for a 1-minute video."""
    make_video(tmp_path / "v.mp4", seconds=60, fps=4)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        extract(tmp_path / "v.mp4", tmp_path / "store", ExtractConfig(
            segment=SegmentConfig(frames=8), encoder=EncoderConfig(vision="tiny", audio=None, image_size=48),
            decode_workers=1), progress=False)
    finally:
        stop.set()
        t.join()
    assert peak[0] < 24, peak[0]
    assert np.isfinite(FeatureStore.open(tmp_path / "store").load("v")).all()
    assert json.loads((tmp_path / "store" / "store.json").read_text())
