"""Decode workers: videos are decoded in parallel and handed over as they are cut.

The encoder (main thread) never waits for a video to finish decoding: each worker hands on
a segment as soon as it is cut, so batches mix segments of several videos.

- ``thread`` (default; PyAV releases the GIL while FFmpeg decodes): the workers share a
  bounded queue (``prefetch_segments``, the memory cap).
- ``process``: isolates FFmpeg crashes. Each worker has its own pipe to the main process
  and gets its next video from the main process over it, so a worker that dies (a
  segfault, the OOM killer) can only break its own pipe, even mid-message: its video is
  recorded as failed and a fresh worker with a fresh pipe takes over. (A queue shared by
  all workers would be left locked or holding half a message, hanging the run.) A worker
  blocks once its pipe is full: memory is about one segment per worker.

Messages: ``("start", job, worker)``, ``("seg", job, Segment)``, ``("end", job, info, error)``
where ``error`` is None or the reason the video failed.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
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


def decode_one(job: int, path: str, spec: DecodeSpec, wid: int, put: Callable[[tuple], bool]) -> bool:
    """Decode one video into ``put`` messages; False when ``put`` says to stop."""
    if not put(("start", job, wid)):
        return False
    info: dict[str, Any] = {}
    error = None
    try:
        for seg in iter_segments(path, spec, info):
            if not put(("seg", job, seg)):
                return False
    except DataError as e:
        error = str(e)
    except Exception as e:  # a decoder bug or an odd file must not stop the whole run
        error = f"{type(e).__name__}: {e}"
    return put(("end", job, info, error))


def decode_worker(wid: int, tasks: Any, out: Any, spec: DecodeSpec, stop: Any) -> None:
    """Thread worker: take ``(job, path)`` tasks until a None; messages go to the shared ``out``."""
    while not stop.is_set():
        task = tasks.get()
        if task is None or not decode_one(*task, spec, wid, lambda m: _put(out, m, stop)):
            return


def process_worker(wid: int, conn: Any, spec: DecodeSpec) -> None:
    """Process worker: ``(job, path)`` tasks and messages both go over its own pipe ``conn``."""
    def send(msg: tuple) -> bool:
        conn.send(msg)
        return True

    try:
        while (task := conn.recv()) is not None:
            decode_one(*task, spec, wid, send)
    except (EOFError, OSError):
        pass  # the main process closed the pipe: stop


def decode_pool(jobs: list[tuple[int, str]], spec: DecodeSpec, workers: int = 2, backend: str = "thread",
                prefetch: int = 64) -> ThreadDecodePool | ProcessDecodePool:
    """Decode ``jobs`` (``[(job, path)]``) with ``workers`` threads or processes.

    Both pools answer ``get(timeout)`` (next message, ``queue.Empty`` after ``timeout`` s),
    ``reap()`` (``[(job, reason)]`` for videos whose worker died), ``alive()`` and ``close()``.
    """
    n = max(1, min(workers, len(jobs)))
    if backend == "process":
        return ProcessDecodePool(jobs, spec, n)
    return ThreadDecodePool(jobs, spec, n, prefetch)


class ThreadDecodePool:
    """Worker threads sharing a task queue and a bounded message queue (``prefetch``: the memory cap)."""

    def __init__(self, jobs: list[tuple[int, str]], spec: DecodeSpec, n: int, prefetch: int):
        self.tasks, self.out, self.stop = queue.Queue(), queue.Queue(prefetch), threading.Event()
        self.current: dict[int, int] = {}  # worker id -> job being decoded
        for job in jobs:
            self.tasks.put(job)
        for _ in range(n):
            self.tasks.put(None)
        self.workers = {wid: threading.Thread(target=decode_worker, args=(wid, self.tasks, self.out, spec, self.stop),
                                              daemon=True, name=f"lvmae-decode-{wid}") for wid in range(n)}
        for w in self.workers.values():
            w.start()

    def get(self, timeout: float) -> tuple:
        msg = self.out.get(timeout=timeout)
        if msg[0] == "start":
            self.current[msg[2]] = msg[1]
        elif msg[0] == "end":
            self.current = {w: j for w, j in self.current.items() if j != msg[1]}
        return msg

    def reap(self) -> list[tuple[int, str]]:
        return []  # decode_one turns every decode error into its video's "end" message: threads do not die

    def alive(self) -> bool:
        return any(w.is_alive() for w in self.workers.values())

    def close(self) -> None:
        """Stop the workers (also on errors and Ctrl-C)."""
        self.stop.set()
        for w in self.workers.values():
            w.join(timeout=2.0)


class ProcessDecodePool:
    """Worker processes, each with its own pipe for its tasks and its messages (see the module docstring)."""

    def __init__(self, jobs: list[tuple[int, str]], spec: DecodeSpec, n: int):
        self.spec, self._ctx = spec, mp.get_context("spawn")
        self.pending, self.conns, self.ready = deque(jobs), {}, deque()
        self.workers: dict[int, Any] = {}
        self.current: dict[int, int] = {}  # worker id -> job being decoded
        for wid in range(n):
            self._spawn(wid)

    def _spawn(self, wid: int) -> None:
        mine, theirs = self._ctx.Pipe()
        w = self._ctx.Process(target=process_worker, args=(wid, theirs, self.spec), daemon=True,
                              name=f"lvmae-decode-{wid}")
        w.start()
        theirs.close()  # only the worker holds its end: its death is EOF here
        self.conns[wid] = mine
        self.workers[wid] = w
        self._next(wid)

    def _next(self, wid: int) -> None:
        """Give worker ``wid`` its next video (None: no more, it exits)."""
        task = self.pending.popleft() if self.pending else None
        try:
            self.conns[wid].send(task)
        except OSError:
            if task is not None:
                self.pending.appendleft(task)  # it died meanwhile: reap() replaces it
            return
        if task is not None:
            self.current[wid] = task[0]

    def get(self, timeout: float) -> tuple:
        if not self.ready:
            by_conn = {c: wid for wid, c in self.conns.items()}
            for conn in wait(list(by_conn), timeout):
                self._receive(by_conn[conn])
        if not self.ready:
            raise queue.Empty
        return self.ready.popleft()

    def _receive(self, wid: int) -> None:
        try:
            msg = self.conns[wid].recv()
        except (EOFError, OSError):
            self.conns.pop(wid).close()  # the worker died (reap() reports and replaces it)
            return
        self.ready.append(msg)
        if msg[0] == "end":
            self.current.pop(wid, None)
            self._next(wid)

    def reap(self) -> list[tuple[int, str]]:
        """``[(job, reason)]`` for videos whose worker process died; replaces those workers."""
        dead: list[tuple[int, str]] = []
        for wid, w in list(self.workers.items()):
            if w.is_alive() or (w.exitcode == 0 and wid not in self.current):
                continue
            w.join(timeout=1.0)
            if w.is_alive():
                continue
            conn = self.conns.pop(wid, None)
            if conn is not None:
                conn.close()
            job = self.current.pop(wid, None)
            if job is not None:
                dead.append((job, f"decoder process died (exit code {w.exitcode})"))
            del self.workers[wid]
            if self.pending:
                self._spawn(wid)
        return dead

    def alive(self) -> bool:
        return any(w.is_alive() for w in self.workers.values())

    def close(self) -> None:
        """Stop the workers (also on errors and Ctrl-C)."""
        for conn in self.conns.values():
            conn.close()  # a worker blocked on its pipe gets an error and exits
        for w in self.workers.values():
            w.join(timeout=2.0)
            if w.is_alive():
                w.terminate()
