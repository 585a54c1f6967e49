"""Shared helpers of the ``tools/bench_*.py`` benchmarks: where the numbers come from
(hardware, versions), how they are timed (warm-up, then the median of N, with the CUDA
queue drained around every timed call), peak memory, a synthetic feature store, and the
JSON output (stdout, optionally an atomic file).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU model and cores, torch threads, GPU name/memory/capability, load at start."""
    import torch

    out: dict[str, Any] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                   gpu_capability=f"{p.major}.{p.minor}")
    return out


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip() or None
    return None


def versions() -> dict[str, Any]:
    """Package versions without importing the heavy ones (deepspeed, xformers)."""
    import torch

    import lvmae

    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "lvmae": lvmae.__version__, "git": git_commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "deepspeed": _dist_version("deepspeed"), "xformers": _dist_version("xformers"),
            "numpy": _dist_version("numpy")}


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sync(device: Any) -> None:
    """Wait for queued GPU work, so that host timers measure it (no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: Any, warmup: int = 3, repeats: int = 10) -> dict[str, Any]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``repeats`` timed ones, each
    between two device syncs. Returns the median (the figure to report), the min (the least
    disturbed call on a shared machine) and every time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tic)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def reset_peak_memory(device: Any) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> dict[str, float | None]:
    """CUDA: the allocator's peak since :func:`reset_peak_memory` (GiB). CPU: the process's
    peak resident size so far (GiB), which only grows over a run (no per-call reset)."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    if torch.device(device).type == "cuda":
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30, "process_max_rss_gib": rss}
    return {"peak_mem_gib": None, "process_max_rss_gib": rss}


def free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def matmul_tflops(device: Any, dtype: Any, n: int, repeats: int = 5) -> float:
    """Measured dense matmul throughput (TFLOP/s) of an ``n x n`` product on ``device``:
    the achievable peak that MFU is compared with, taken in the same run."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2.0 * n**3 / t["min_s"] / 1e12


def make_store(path: Path, videos: int, dim: int, max_segments: int, seed: int = 0, min_segments: int = 2) -> None:
    """A synthetic one-modality (``vision``) feature store: random-walk embeddings of
    ``min_segments..max_segments`` segments per video (smooth in time, like real features)."""
    import numpy as np

    from lvmae.store import FeatureStore

    store = FeatureStore.create(path, {"config_hash": f"bench-{dim}", "modalities": {"vision": {"dim": dim}}})
    w = store.writer()
    rng = np.random.default_rng(seed)
    for i in range(videos):
        n = int(rng.integers(min_segments, max_segments + 1))
        w.write(f"v{i}", {"vision": np.cumsum(rng.standard_normal((n, dim)) * 0.1, 0).astype(np.float32)})


def emit(result: dict[str, Any], out: str | None = None) -> None:
    """Print ``result`` as JSON on stdout; also write it atomically to ``out`` if given."""
    text = json.dumps(result, indent=2)
    if out:
        from lvmae.io import atomic_write_text

        atomic_write_text(out, text + "\n")
    print(text)
    sys.stdout.flush()


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
