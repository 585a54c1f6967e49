"""Videos -> segment embeddings in a feature store: the Python API behind ``lvmae extract``.

>>> from lvmae.config import ExtractConfig
>>> summary = lvmae.extract(["videos/"], "feats", ExtractConfig())     # doctest: +SKIP
>>> ex = Extractor(ExtractConfig()); arrays, info = ex.embed("a.mp4")  # doctest: +SKIP

A run is resumable and idempotent: every finished video (ok or failed) is in the store's
manifest, so the same call again skips it and does only the rest; a video is recorded only
after its feature files are written (atomically). Ranks (``shard="i/n"`` or the launcher's
``RANK``/``WORLD_SIZE``) take disjoint slices of the sorted video list and write their own
manifest part. The store's config hash covers the segment rule, the encoders (name,
version, input, pooling) and the dtype: a store made with other settings is refused.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvmae.config import EncoderConfig, ExtractConfig, check_extract
from lvmae.encoders.base import Encoder, Waveforms, describe
from lvmae.errors import ConfigError, DataError, LvmaeError
from lvmae.extraction.inputs import VideoItem, collect_videos
from lvmae.extraction.segments import iter_segments
from lvmae.extraction.video import DecodeSpec, Segment
from lvmae.lock import dir_lock
from lvmae.store import FeatureStore, config_hash

RULE = ("v1: segment i = [i*stride, i*stride + seconds) on the video stream's clock; full segments "
        "kept; the trailing partial one kept if it covers >= min_last_fraction*seconds (it ends at "
        "the video's end); K frames at the centres of K equal sub-intervals, each the frame on screen")
SHORT_NOTE = "shorter than one segment"


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; None -> the launcher's ``RANK``/``WORLD_SIZE`` (else ``(0, 1)``)."""
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def cfg_workers(cfg: ExtractConfig) -> int:
    """Decode workers: ``extract.decode_workers``, or (0) one per core up to 8."""
    return cfg.decode_workers or max(1, min(8, os.cpu_count() or 1))


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere: macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()
TRIM_EVERY_S = 1.0  # at most one heap trim a second: ~1 % of the time even with fast (GPU) batches


def release_heap() -> bool:
    """Hand the free pages inside the C heaps back to the system (glibc); False where it cannot.

    Called after encoded batches, at most every :data:`TRIM_EVERY_S` (a trim takes about
    10 ms). The encoder's tensors are freed on the main thread's heap while the decode
    threads free segments on theirs, and small long-lived blocks (the rows kept until a video
    is written) land between them: the heaps fill with free pages glibc never returns, so
    without this the peak grew with the video's length (+130 KB per segment with the log-mel
    encoder alone).
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class _Trimmer:
    """``release_heap()`` at most every :data:`TRIM_EVERY_S` seconds (call it after each batch)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self.last >= TRIM_EVERY_S:
            release_heap()
            self.last = time.perf_counter()


def build_encoders(cfg: EncoderConfig, sample_rate: int = 16000) -> dict[str, Encoder]:
    """``{modality: encoder}`` for every modality the config names."""
    from lvmae.devices import resolve_device
    from lvmae.encoders.registry import build_encoder

    device = str(resolve_device(cfg.device, key="extract.encoder.device"))
    names = {"vision": cfg.vision, "audio": cfg.audio, "text": cfg.text}
    return {m: build_encoder(n, m, cfg, device, sample_rate) for m, n in names.items() if n}


def encode_segments(encoders: Mapping[str, Encoder], segs: Sequence[Segment]) -> dict[str, np.ndarray]:
    """``{modality: [B, D] float32}`` for a batch of segments (possibly of several videos).

    Segments without audio (no track, or past its end) or without text get zero rows.
    """
    import torch

    out = {}
    for mod, enc in encoders.items():
        if mod == "vision":
            out[mod] = _rows(enc.encode(torch.from_numpy(np.stack([s.frames for s in segs]))), len(segs), enc)
            continue
        values = [s.audio if mod == "audio" else s.text for s in segs]
        keep = [i for i, v in enumerate(values) if v is not None and len(v) > 0]
        rows = np.zeros((len(segs), enc.dim), np.float32)
        if keep:
            batch = _waveforms([values[i] for i in keep]) if mod == "audio" else [values[i] for i in keep]
            rows[keep] = _rows(enc.encode(batch), len(keep), enc)
        out[mod] = rows
    return out


def _waveforms(waves: list[np.ndarray]) -> Waveforms:
    import torch

    lengths = [len(w) for w in waves]
    wave = np.zeros((len(waves), max(lengths)), np.float32)
    for i, w in enumerate(waves):
        wave[i, : len(w)] = w
    return Waveforms(torch.from_numpy(wave), torch.tensor(lengths))


def _rows(t: Any, n: int, enc: Encoder) -> np.ndarray:
    a = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
    if a.shape != (n, enc.dim):
        raise LvmaeError(f"encoder {enc.name!r} returned shape {a.shape}, expected ({n}, {enc.dim})")
    return a


@dataclass
class _Video:
    """A video whose segments are being encoded (rows arrive out of order, across batches).

    Rows go into one ``[capacity, D]`` float32 array per modality, doubled when full, not
    into one small array per segment: those, kept until the video is written, lay scattered
    among the encoder's freed tensors and kept the heap from shrinking (the peak crept up
    with the video's length).
    """

    item: VideoItem
    expected: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    filled: set[int] = field(default_factory=set)

    def put(self, index: int, rows: Mapping[str, np.ndarray]) -> None:
        """Row ``index`` of every modality (``{modality: [D]}``)."""
        for m, row in rows.items():
            buf = self.buffers.get(m)
            if buf is None or index >= len(buf):
                grown = np.zeros((max(index + 1, 2 * len(buf) if buf is not None else 64), len(row)), np.float32)
                if buf is not None:
                    grown[: len(buf)] = buf
                self.buffers[m] = buf = grown
            buf[index] = row
        self.filled.add(index)

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.filled) >= self.expected

    def arrays(self, mods: list[str]) -> dict[str, np.ndarray]:
        return {m: self.buffers[m][: self.expected or 0] for m in mods}


@dataclass
class _Stats:
    todo: int = 0
    done: int = 0
    failed: int = 0
    short: int = 0
    segments: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class Extractor:
    """Frozen encoders plus decode settings: build once, then :meth:`run` or :meth:`embed`.

    ``encoders`` (``{modality: Encoder}``) replaces the ones the config names, e.g. to use
    an encoder object built in Python without registering it.
    """

    def __init__(self, cfg: ExtractConfig | None = None, encoders: Mapping[str, Encoder] | None = None):
        self.cfg = cfg if cfg is not None else ExtractConfig()
        check_extract(self.cfg)
        self.encoders = (dict(encoders) if encoders is not None
                         else build_encoders(self.cfg.encoder, self.cfg.segment.audio_sample_rate))
        for m, e in self.encoders.items():
            if m != e.modality:
                raise ConfigError(f"encoder {e.name!r} is a {e.modality} encoder, given for {m}")
            need = e.input_spec().get("frames")
            if need and need != self.cfg.segment.frames:
                raise ConfigError(f"encoder {e.name!r} takes clips of {need} frames: "
                                  f"set extract.segment.frames={need} (it is {self.cfg.segment.frames})")
        self.decode_workers = cfg_workers(self.cfg)
        self.spec = self._decode_spec()
        self.meta = self._meta()
        self.batch_segments = max(1, self.cfg.encoder.batch_frames // self.cfg.segment.frames)

    @property
    def config_hash(self) -> str:
        return self.meta["config_hash"]

    def _decode_spec(self) -> DecodeSpec:
        cfg, seg = self.cfg, self.cfg.segment
        vision, audio = self.encoders.get("vision"), self.encoders.get("audio")
        vs = vision.input_spec() if vision is not None else {}
        threads = cfg.decode_threads or max(1, (os.cpu_count() or 1) // self.decode_workers)
        return DecodeSpec(
            seconds=seg.seconds, stride=seg.stride or seg.seconds, frames=seg.frames,
            min_last_fraction=seg.min_last_fraction, image_size=vs.get("image_size"),
            resize=vs.get("resize", cfg.encoder.resize),
            sample_rate=audio.input_spec()["sample_rate"] if audio is not None else None,
            text="text" in self.encoders, threads=threads, keep_truncated=cfg.keep_truncated,
        )

    def _meta(self) -> dict[str, Any]:
        from lvmae import __version__

        s = self.spec
        segment = {"seconds": s.seconds, "stride": s.stride, "frames": s.frames,
                   "min_last_fraction": s.min_last_fraction, "audio_sample_rate": s.sample_rate, "rule": RULE}
        ident = {"segment": segment, "encoders": {m: describe(e) for m, e in sorted(self.encoders.items())},
                 "dtype": self.cfg.dtype}
        mods = {m: {"dim": int(e.dim), "encoder": e.name} for m, e in sorted(self.encoders.items())}
        return {**ident, "config_hash": config_hash(ident), "modalities": mods,
                "id_from": self.cfg.id_from, "lvmae_version": __version__}

    def open_store(self, out: str | os.PathLike) -> FeatureStore:
        """Create the store, or reopen it if it was made with the same settings (else DataError)."""
        store = FeatureStore.create(out, self.meta)
        if store.meta.get("id_from", self.cfg.id_from) != self.cfg.id_from:
            raise DataError(f"feature store {out} names videos by {store.meta['id_from']!r}, "
                            f"not {self.cfg.id_from!r}; use the same id_from or a new store")
        return store

    def embed(self, path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One video in memory, no store: ``({modality: [N, D] float32}, info)``.

        Raises :class:`DataError` when the file cannot be used (the reason says why).
        """
        info: dict[str, Any] = {}
        chunks, buf, trim = [], [], _Trimmer()
        for seg in iter_segments(path, self.spec, info):
            buf.append(seg)
            if len(buf) >= self.batch_segments:
                chunks.append(encode_segments(self.encoders, buf))
                buf = []
                trim()
        if buf:
            chunks.append(encode_segments(self.encoders, buf))
        return {m: np.concatenate([c[m] for c in chunks]) for m in self.encoders}, info

    def run(self, videos: Any, out: str | os.PathLike | None = None, *, shard: str | None = None,
            progress: bool = True) -> dict[str, Any]:
        """Extract ``videos`` (see :func:`collect_videos`) into the store ``out``; returns a summary.

        Videos already in the store (ok or failed; ok only with ``retry_failed``) are skipped.
        """
        ignored: list[str] = []
        items = collect_videos(videos, self.cfg.id_from, ignored)
        if not items:
            raise DataError(f"no videos found in {videos!r}" + (f" ({len(ignored)} other files, e.g. {ignored[0]})"
                                                               if ignored else ""))
        rank, world = parse_shard(shard if shard is not None else self.cfg.shard)
        mine = items[rank::world]
        store = self.open_store(out if out is not None else self.cfg.out)
        with dir_lock(store.root, f"extract-shard-{rank}-of-{world}", f"extraction of shard {rank}/{world}"):
            orphans = store.remove_orphans()
            writer = store.writer(rank, world)
            finished = writer.finished()
            if self.cfg.retry_failed:
                finished = {v for v in finished if v in store}
            todo = [it for it in mine if it.video_id not in finished]
            stats = _Stats(todo=len(todo))
            if todo:
                _Run(self, todo, writer, stats, progress).loop()
        store.refresh()
        return {
            "store": str(store.root), "config_hash": self.config_hash, "shard": f"{rank}/{world}",
            "ok_in_store": sum(it.video_id in store for it in mine),
            "failed_in_store": sum(it.video_id in store.failed for it in mine),
            "ignored": len(ignored), "ignored_files": ignored[:20],
            "videos": len(mine), "skipped": len(mine) - len(todo), "done": stats.done,
            "failed": stats.failed, "short": stats.short, "segments": stats.segments,
            "video_hours": round(stats.seconds / 3600, 4), "elapsed_s": round(stats.elapsed, 3),
            "segments_per_s": round(stats.segments / max(stats.elapsed, 1e-9), 2),
            "store_videos": len(store), "store_failed": len(store.failed), "failures": stats.failures,
            "orphans_removed": len(orphans),
        }


def extract(videos: Any, out: str | os.PathLike | None = None, cfg: ExtractConfig | None = None, *,
            shard: str | None = None, progress: bool = True,
            encoders: Mapping[str, Encoder] | None = None) -> dict[str, Any]:
    """Videos -> feature store in one call (builds an :class:`Extractor`); returns the summary."""
    return Extractor(cfg, encoders).run(videos, out, shard=shard, progress=progress)


EXIT_SOME_FAILED, EXIT_ALL_FAILED = 3, 4


def exit_code(s: Mapping[str, Any]) -> int:
    """0: every listed video is in the store; 3: some failed (now or before); 4: none is in it."""
    if not s.get("failed_in_store"):
        return 0
    return EXIT_ALL_FAILED if not s.get("ok_in_store") else EXIT_SOME_FAILED


def summary_line(s: Mapping[str, Any]) -> str:
    """One human line for the end of a run."""
    short = f" ({s['short']} shorter than a segment)" if s.get("short") else ""
    ignored = f"; {s['ignored']} non-media files ignored (see --json)" if s.get("ignored") else ""
    return (f"extract [{s['shard']}]: {s['videos']} videos: {s['done']} done{short}, {s['failed']} failed, "
            f"{s['skipped']} already in store; {s['segments']} segments ({s['video_hours']:.2f} h of video) "
            f"in {s['elapsed_s']:.1f} s = {s['segments_per_s']:.1f} segments/s -> {s['store']} "
            f"({s['store_videos']} videos, {s['store_failed']} failed in store){ignored}")


def expected_segments(path: str, spec: DecodeSpec) -> int | None:
    """Segments a file should give, from the length its header announces (None: unknown)."""
    import av

    from lvmae.extraction.segments import announced_duration
    from lvmae.extraction.video import segment_windows

    try:
        with av.open(path) as c:
            d = announced_duration(c, c.streams.video[0]) if c.streams.video else None
    except Exception:  # any unreadable file: its decode worker reports why
        return None
    return len(segment_windows(d, spec.seconds, spec.stride, spec.min_last_fraction)) if d else None


class _Progress:
    """A bar in segments with an ETA: the total is what the files announce (read from their
    headers by a background thread), corrected by what each video really gave once it ends."""

    def __init__(self, todo: list[VideoItem], spec: DecodeSpec, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="seg", desc="extract", disable=not enabled, dynamic_ncols=True)
        self.videos = len(todo)
        self.est: dict[int, int] = {}  # announced segments of videos still going
        self.est_sum = self.finished_sum = 0  # ... and the real segments of ended ones
        self.got: dict[int, int] = {}
        self.done: set[int] = set()
        self.arrived: queue.SimpleQueue = queue.SimpleQueue()
        if enabled:
            threading.Thread(target=self._probe, args=(todo, spec), daemon=True).start()

    def _probe(self, todo: list[VideoItem], spec: DecodeSpec) -> None:
        for job, it in enumerate(todo):
            n = expected_segments(it.path, spec)
            if n is not None:
                self.arrived.put((job, n))

    def segments(self, jobs: list[int]) -> None:
        for job in jobs:
            self.got[job] = self.got.get(job, 0) + 1
        self.bar.update(len(jobs))
        self._total()

    def end(self, job: int, failed: int) -> None:
        self.done.add(job)
        self.finished_sum += self.got.pop(job, 0)
        self.est_sum -= self.est.pop(job, 0)
        self.bar.set_postfix(videos=f"{len(self.done)}/{self.videos}", failed=failed, refresh=False)
        self._total()

    def _total(self) -> None:
        while not self.arrived.empty():
            job, n = self.arrived.get()
            if job not in self.done:
                self.est[job], self.est_sum = n, self.est_sum + n
        if self.est:
            avg = self.est_sum / len(self.est)
        elif self.done:
            avg = self.finished_sum / len(self.done)
        else:
            return  # nothing known yet: no total, no ETA
        unknown = self.videos - len(self.done) - len(self.est)
        self.bar.total = max(self.bar.n, round(self.finished_sum + self.est_sum + unknown * avg))
        self.bar.refresh()

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class _Run:
    """One extraction pass: decode workers feed segments, the main thread batches and encodes.

    A batch mixes segments of several videos; a video is written once all its segments are
    encoded. A partial batch is encoded as soon as the queue runs dry, so the encoder never
    sits idle waiting for a full one.
    """

    def __init__(self, ex: Extractor, todo: list[VideoItem], writer: Any, stats: _Stats, progress: bool):
        self.ex, self.todo, self.writer, self.stats, self.progress = ex, todo, writer, stats, progress
        self.videos = {job: _Video(it) for job, it in enumerate(todo)}
        self.batch: list[tuple[int, Segment]] = []
        self.ended: set[int] = set()
        self.encoded = 0
        self.trim = _Trimmer()

    def loop(self) -> None:
        from lvmae.extraction.workers import decode_pool

        cfg = self.ex.cfg
        pool = decode_pool([(j, it.path) for j, it in enumerate(self.todo)], self.ex.spec,
                          self.ex.decode_workers, cfg.decode_backend, cfg.prefetch_segments)
        self.bar = _Progress(self.todo, self.ex.spec, self.progress)
        try:
            while len(self.ended) < len(self.todo):
                try:
                    msg = pool.get(timeout=0.05 if self.batch else 1.0)
                except queue.Empty:
                    self._idle(pool)
                    continue
                self._handle(msg)
            self._flush()
            for job in list(self.videos):  # cannot happen unless segments went missing
                self._fail(job, "internal error: not every segment came back from the encoder", {})
        finally:
            pool.close()
            self.bar.close()

    def _idle(self, pool: Any) -> None:
        """The queue is dry: encode what is waiting, or look for dead workers."""
        if self.batch:
            self._flush()
            return
        for job, reason in pool.reap():
            self._end(job, {}, reason)
        if not pool.alive():
            for job in set(range(len(self.todo))) - self.ended:
                self._end(job, {}, "not decoded: the decode workers stopped")

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "seg" and msg[1] in self.videos:
            self.batch.append((msg[1], msg[2]))
            if len(self.batch) >= self.ex.batch_segments:
                self._flush()
        elif msg[0] == "end":
            self._end(msg[1], msg[2], msg[3])

    def _end(self, job: int, info: dict, error: str | None) -> None:
        if job in self.ended:
            return
        self.ended.add(job)
        if error is not None:
            self.batch = [b for b in self.batch if b[0] != job]
            self._fail(job, error, info)
            return
        v = self.videos[job]
        v.expected, v.info = int(info["num_segments"]), info
        self._maybe_write(job)

    def _flush(self) -> None:
        if not self.batch:
            return
        rows = encode_segments(self.ex.encoders, [s for _, s in self.batch])
        for r, (job, seg) in enumerate(self.batch):
            self.videos[job].put(seg.index, {m: rows[m][r] for m in rows})
        jobs = {job for job, _ in self.batch}
        self.encoded += len(self.batch)
        self.bar.segments([job for job, _ in self.batch])
        self.batch = []
        self.trim()
        for job in sorted(jobs):
            self._maybe_write(job)

    def _record(self, v: _Video, info: dict) -> dict[str, Any]:
        keep = ("duration", "announced_duration", "format", "codec", "width", "height", "coded_size", "rotation",
                "fps", "has_audio", "text_source", "notes")
        seg = self.ex.spec
        return {"path": v.item.path, "segment_seconds": seg.seconds, "stride": seg.stride,
                "encoders": {m: f"{e.name}@{e.version}" for m, e in self.ex.encoders.items()},
                **{k: info[k] for k in keep if k in info}}

    def _maybe_write(self, job: int) -> None:
        v = self.videos.get(job)
        if v is None or not v.complete:
            return
        del self.videos[job]
        try:
            self.writer.write(v.item.video_id, v.arrays(list(self.ex.encoders)), self._record(v, v.info))
        except DataError as e:
            self._fail(job, f"features rejected: {e}", v.info, v)
            return
        s = self.stats
        s.done, s.segments, s.seconds = s.done + 1, s.segments + int(v.expected or 0), s.seconds + (v.info.get("duration") or 0.0)
        s.short += any(n.startswith(SHORT_NOTE) for n in v.info.get("notes", []))
        self.bar.end(job, s.failed)

    def _fail(self, job: int, reason: str, info: dict, v: _Video | None = None) -> None:
        v = v or self.videos.pop(job)
        self.videos.pop(job, None)
        self.writer.fail(v.item.video_id, reason, self._record(v, info))
        self.stats.failed += 1
        self.stats.failures[v.item.video_id] = reason
        if self.progress:
            self.bar.write(f"extract: failed: {v.item.video_id}: {reason}")
        self.bar.end(job, self.stats.failed)
