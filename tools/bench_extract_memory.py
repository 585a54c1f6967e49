"""Peak memory and threads of ``lvmae extract`` against video length: is memory flat?

    python tools/bench_extract_memory.py                     # 1, 15 and 60-minute videos
    python tools/bench_extract_memory.py --minutes 1 60 --out mem.json

Each length gets one generated h264 + aac video (moving noise, ``--size``, ``--fps``) and a
fresh ``lvmae extract VIDEO --out STORE`` process with the default encoders; the process's
resident memory (``VmRSS``) and live threads are sampled every 50 ms, and the peak RSS is
also read from ``getrusage`` after it exits. Prints (and with ``--out`` writes) one JSON
object: per length the peaks, the segments and the wall time, and ``rss_over_shortest_mb``,
each peak minus the shortest video's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import hardware, make_videos, versions  # noqa: E402


def _status(pid: int) -> tuple[float, int]:
    """(VmRSS MiB, threads) of a live process, (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0.0, 0
    return int(fields.get("VmRSS", "0 kB").split()[0]) / 1024, int(fields.get("Threads", "0"))


def measure(video: Path, store: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lvmae.cli", "extract", str(video), "--out", str(store), "--no-progress",
           "--json", *extra]
    tic = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_threads = 0.0
    while p.poll() is None:
        rss, threads = _status(p.pid)
        peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
        time.sleep(0.05)
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"extract failed ({p.returncode}): {err[-2000:]}")
    summary = json.loads(out)
    return {"sampled_peak_rss_mb": round(peak_rss, 1), "peak_threads": int(peak_threads),
            "segments": summary["segments"], "wall_s": round(time.perf_counter() - tic, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 15, 60])
    ap.add_argument("--size", default="160x120", help="WxH of the generated videos")
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("overrides", nargs="*", help="key=value overrides passed to lvmae extract")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            d = Path(tmp) / f"m{minutes:g}"
            d.mkdir()
            video = make_videos(d, 1, minutes * 60, (w, h), args.fps)[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            row = {"minutes": minutes, **measure(video, d / "store", args.overrides)}
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            # ru_maxrss of children is the largest so far: only a new maximum is this run's own
            row["getrusage_peak_rss_mb"] = round(after / 1024, 1) if after > before else None
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    base = rows[0]["sampled_peak_rss_mb"]
    result = {"tool": "bench_extract_memory", "hardware": hardware(), "versions": versions(),
              "size": args.size, "fps": args.fps, "overrides": args.overrides, "cpu_count": os.cpu_count(),
              "runs": rows, "rss_over_shortest_mb": {f"{r['minutes']:g}": round(r["sampled_peak_rss_mb"] - base, 1)
                                                      for r in rows}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
