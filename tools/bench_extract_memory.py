"""Peak memory and threads of ``lvmae extract`` against video length: is memory flat?

    python tools/bench_extract_memory.py                     # 1, 15 and 60-minute videos
    python tools/bench_extract_memory.py --minutes 1 60 --out mem.json
    python tools/bench_extract_memory.py --env GLIBC_TUNABLES=glibc.malloc.hugetlb=1  # under a setting

Each length gets one generated h264 + aac video (moving noise, ``--size``, ``--fps``) and a
fresh ``lvmae extract VIDEO --out STORE`` process with the default encoders; the process's
resident memory (``VmRSS``) and live threads are sampled every 50 ms, and the peak RSS is
also read from the kernel (``wait4``) when it exits. The videos are generated in a separate
process: a child's kernel peak starts from its parent's high-water mark (fork + exec), so
generating a long video here would show up as the extraction's peak. Prints (and with
``--out`` writes) one JSON object: per length the peaks, the segments and the wall time, and
``rss_over_shortest_mb`` (``kernel_peak_over_shortest_mb``): each sampled (kernel) peak minus
the shortest video's. :func:`render` makes the table of docs/reliability.md from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import hardware, make_videos, versions  # noqa: E402

SIZE, FPS = "160x120", 5  # the generated videos' defaults


def _status(pid: int) -> tuple[float, int]:
    """(VmRSS MiB, threads) of a live process, (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0.0, 0
    return int(fields.get("VmRSS", "0 kB").split()[0]) / 1024, int(fields.get("Threads", "0"))


def measure(video: Path, store: Path, extra: list[str], env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "lvmae.cli", "extract", str(video), "--out", str(store), "--no-progress",
           "--json", *extra]
    tic = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        peak_rss = peak_threads = 0.0
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)  # this child's own rusage, once it exits
            if pid:
                break
            rss, threads = _status(p.pid)
            peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"extract failed ({p.returncode}): {err.read()[-2000:]}")
        summary = json.loads(out.read())
    return {"sampled_peak_rss_mb": round(peak_rss, 1), "getrusage_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_threads": int(peak_threads), "segments": summary["segments"],
            "wall_s": round(time.perf_counter() - tic, 1)}


def _over(rows: list[dict], key: str) -> dict[str, float]:
    """``{minutes: peak - the first (shortest) video's peak}`` in MB."""
    return {f"{r['minutes']:g}": round(r[key] - rows[0][key], 1) for r in rows}


def make_video(d: Path, seconds: float, size: tuple[int, int], fps: int) -> Path:
    """One generated video, made in a fresh process so that this one stays small (see the docstring)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(make_videos, (d, 1, seconds, size, fps))[0]


def render(doc: dict) -> str:
    """The docs' table of one run (tools/render_docs.py kind ``bench_extract_memory``)."""
    hw, v = doc["hardware"], doc["versions"]
    minutes = " ".join(f"{r['minutes']:g}" for r in doc["runs"])
    env = "".join(f" --env {key}={value}" for key, value in doc.get("env", {}).items())
    shape = "".join(f" --{k} {doc[k]}" for k, default in (("size", SIZE), ("fps", FPS)) if str(doc[k]) != str(default))
    overrides = "".join(f" {o}" for o in doc.get("overrides", []))
    lines = [f"`python tools/bench_extract_memory.py --minutes {minutes}{shape}{env}{overrides}` on {hw['cpu']}, {hw['cores']} cores, "
             f"{hw['torch_threads']} torch thread(s), torch {v['torch']}, PyAV {v['av']}; generated {doc['size']} "
             f"{doc['fps']}-fps h264 + aac videos, default encoders:", "",
             "| video | segments | peak RSS (sampled) | peak RSS (kernel) | kernel peak over the shortest | threads | wall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    over = doc.get("kernel_peak_over_shortest_mb", {})
    for r in doc["runs"]:
        kernel = r.get("getrusage_peak_rss_mb")
        extra = over.get(f"{r['minutes']:g}")
        lines.append(f"| {r['minutes']:g} min | {r['segments']} | {r['sampled_peak_rss_mb']:.0f} MB | "
                     f"{f'{kernel:.0f} MB' if kernel is not None else '-'} | "
                     f"{f'{extra:+.0f} MB' if extra is not None else '-'} | {r['peak_threads']} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 15, 60])
    ap.add_argument("--size", default=SIZE, help="WxH of the generated videos")
    ap.add_argument("--fps", type=int, default=FPS)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the extraction processes (repeatable), e.g. an allocator setting")
    ap.add_argument("overrides", nargs="*", help="key=value overrides passed to lvmae extract")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    bad = [e for e in args.env if "=" not in e]
    if bad:
        ap.error(f"--env takes KEY=VALUE, got {bad[0]!r}")
    env = dict(e.split("=", 1) for e in args.env)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            d = Path(tmp) / f"m{minutes:g}"
            d.mkdir()
            video = make_video(d, minutes * 60, (w, h), args.fps)
            row = {"minutes": minutes, **measure(video, d / "store", args.overrides, env)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"tool": "bench_extract_memory", "hardware": hardware(), "versions": versions(),
              "size": args.size, "fps": args.fps, "overrides": args.overrides, "env": env, "cpu_count": os.cpu_count(),
              "runs": rows, "rss_over_shortest_mb": _over(rows, "sampled_peak_rss_mb"),
              "kernel_peak_over_shortest_mb": _over(rows, "getrusage_peak_rss_mb")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
