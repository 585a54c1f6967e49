"""Pretraining throughput of the DeepSpeed and plain-PyTorch engines on the same run.

Builds a synthetic feature store, runs ``lvmae pretrain`` once per engine (each in its
own process, same config and data), and prints JSON: steps/s, segments/s, samples/s
(median over log windows after the first), the time to the first step, hardware, and
the ratio of each engine to the ``torch`` baseline measured in the same invocation.

    python tools/bench_pretrain.py                          # pretrain/tiny_cpu.yaml on CPU
    python tools/bench_pretrain.py --config pretrain/paper.yaml --dim 1024 --steps 60 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import ROOT, emit, hardware, make_store, versions


def run_engine(engine: str, args: argparse.Namespace, store: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "lvmae.cli", "pretrain", "-c", args.config, f"data.stores=[{store}]",
           f"run.out_dir={out}", f"deepspeed.engine={engine}", f"train.steps={args.steps}",
           f"train.log_every={args.log_every}", f"train.save_every={args.steps}", f"run.device={args.device}",
           "run.progress=false", "train.plot=false", *args.overrides]
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - tic
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = recs[1:] or recs

    def med(key: str) -> float:
        return statistics.median(r[key] for r in steady)

    train_s = sum(args.log_every / r["perf/steps_per_s"] for r in recs)
    return {"steps_per_s": med("perf/steps_per_s"), "segments_per_s": med("perf/segments_per_s"),
            "samples_per_s": med("perf/samples_per_s"), "wall_s": wall,
            "startup_and_io_s": wall - train_s, "final_loss": recs[-1]["train/loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "pretrain" / "tiny_cpu.yaml"))
    p.add_argument("--engines", nargs="+", default=["torch", "deepspeed"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--dim", type=int, default=1280, help="segment embedding size (efficientnet-lite0: 1280)")
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--max-segments", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make_store(store, args.videos, args.dim, args.max_segments)
        results = {e: run_engine(e, args, store, Path(tmp) / f"run_{e}") for e in args.engines}
    base = results.get("torch")
    if base:
        for r in results.values():
            r["steps_per_s_vs_torch"] = r["steps_per_s"] / base["steps_per_s"]
    emit({"config": args.config, "steps": args.steps, "dim": args.dim, "overrides": args.overrides,
          "hardware": hardware(), "versions": versions(), "results": results})


if __name__ == "__main__":
    main()
