"""Decode workers: videos are decoded in parallel and handed over through a bounded queue.

The encoder (main thread) never waits for a video to finish decoding: each worker puts a
segment on the queue as soon as it is cut, so batches mix segments of several videos.
The queue bound (``prefetch_segments``) caps memory. Threads are the default (PyAV
releases the GIL while FFmpeg decodes); processes isolate FFmpeg crashes: a worker that
dies takes only its current video with it (recorded as failed) and is replaced.

Messages: ``("start", job, worker)``, ``("seg", job, Segment)``, ``("end", job, info, error)``
where ``error`` is None or the reason the video failed.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from typing import Any

from lvmae.errors import DataError
from lvmae.extraction.segments import iter_segments
from lvmae.extraction.video import DecodeSpec

_POLL = 0.1


def _put(q: Any, item: Any, stop: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def decode_worker(wid: int, tasks: Any, out: Any, spec: DecodeSpec, stop: Any) -> None:
    """Take ``(job, path)`` tasks until a None; put every segment, then the video's end."""
    while not stop.is_set():
        task = tasks.get()
        if task is None:
            return
        job, path = task
        if not _put(out, ("start", job, wid), stop):
            return
        info: dict[str, Any] = {}
        error = None
        try:
            for seg in iter_segments(path, spec, info):
                if not _put(out, ("seg", job, seg), stop):
                    return
        except DataError as e:
            error = str(e)
        except Exception as e:  # a decoder bug or an odd file must not stop the whole run
            error = f"{type(e).__name__}: {e}"
        if not _put(out, ("end", job, info, error), stop):
            return


class DecodePool:
    """Decode ``jobs`` (``[(job, path)]``) with ``workers`` threads or processes."""

    def __init__(self, jobs: list[tuple[int, str]], spec: DecodeSpec, workers: int = 2,
                 backend: str = "thread", prefetch: int = 64):
        self.spec, self.backend = spec, backend
        n = max(1, min(workers, len(jobs)))
        if backend == "process":
            self._ctx: Any = mp.get_context("spawn")
            self.tasks, self.out, self.stop = self._ctx.Queue(), self._ctx.Queue(prefetch), self._ctx.Event()
        else:
            self.tasks, self.out, self.stop = queue.Queue(), queue.Queue(prefetch), threading.Event()
        for job in jobs:
            self.tasks.put(job)
        for _ in range(n):
            self.tasks.put(None)
        self.workers: dict[int, Any] = {}
        self.current: dict[int, int] = {}  # worker id -> job being decoded
        for wid in range(n):
            self._spawn(wid)

    def _spawn(self, wid: int) -> None:
        args = (wid, self.tasks, self.out, self.spec, self.stop)
        if self.backend == "process":
            w = self._ctx.Process(target=decode_worker, args=args, daemon=True, name=f"lvmae-decode-{wid}")
        else:
            w = threading.Thread(target=decode_worker, args=args, daemon=True, name=f"lvmae-decode-{wid}")
        w.start()
        self.workers[wid] = w

    def get(self, timeout: float) -> tuple:
        """Next message (raises ``queue.Empty`` after ``timeout`` s)."""
        msg = self.out.get(timeout=timeout)
        if msg[0] == "start":
            self.current[msg[2]] = msg[1]
        elif msg[0] == "end":
            self.current = {w: j for w, j in self.current.items() if j != msg[1]}
        return msg

    def reap(self) -> list[tuple[int, str]]:
        """``[(job, reason)]`` for videos whose worker process died; replaces those workers."""
        dead = []
        if self.backend != "process":
            return dead
        for wid, w in list(self.workers.items()):
            if w.is_alive() or w.exitcode == 0:
                continue
            job = self.current.pop(wid, None)
            if job is not None:
                dead.append((job, f"decoder process died (exit code {w.exitcode})"))
            self._spawn(wid)  # its stop marker is still queued: the new worker takes it
        return dead

    def alive(self) -> bool:
        return any(w.is_alive() for w in self.workers.values())

    def close(self) -> None:
        """Stop the workers and free the queues (also on errors and Ctrl-C)."""
        self.stop.set()
        for w in self.workers.values():
            w.join(timeout=2.0)
            if self.backend == "process" and w.is_alive():
                w.terminate()
        if self.backend == "process":
            for q in (self.tasks, self.out):
                q.cancel_join_thread()
                q.close()
