"""Decode workers: a decoder process that dies (segfault, OOM killer) fails only its own video."""

import os
import queue
import signal
import time

from videos import make_video

from lvmae.extraction.video import DecodeSpec
from lvmae.extraction.workers import decode_pool


def drain(pool, jobs, deadline_s=60.0):
    """``({job: error or None}, {job: segments})`` once every job ended or was reaped."""
    ended, segs, t0 = {}, {}, time.time()
    while len(ended) < jobs and time.time() - t0 < deadline_s:
        try:
            msg = pool.get(timeout=0.2)
        except queue.Empty:
            ended.update(pool.reap())
            continue
        if msg[0] == "seg":
            segs[msg[1]] = segs.get(msg[1], 0) + 1
        elif msg[0] == "end":
            ended[msg[1]] = msg[3]
    return ended, segs


def test_killed_decoder_process_fails_only_its_video(tmp_path):
    long = make_video(tmp_path / "long.mp4", seconds=30)
    short = make_video(tmp_path / "short.mp4", seconds=8)
    # 8 frames of 112 px: a segment message is larger than a pipe buffer, so the worker is
    # killed in the middle of sending one (the case that used to hang the whole run)
    pool = decode_pool([(0, str(long)), (1, str(short))], DecodeSpec(image_size=112), workers=1, backend="process")
    try:
        assert pool.get(timeout=60)[:2] == ("start", 0)
        time.sleep(0.3)
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        ended, segs = drain(pool, 2)
    finally:
        pool.close()
    assert ended[0].startswith("decoder process died") and ended[1] is None
    assert segs[1] == 2  # the replacement decoded the other video in full: [0, 5) and [5, 8)
