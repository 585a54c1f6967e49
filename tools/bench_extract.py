"""Extraction throughput next to pure-decode throughput, on the same files, in the same run.

    python tools/bench_extract.py                      # 4 generated 60-s 320x240 25-fps videos
    python tools/bench_extract.py --videos DIR          # your own files instead
    python tools/bench_extract.py --quick               # tiny sizes (CI smoke run)

Three measurements, each a fresh pass over the same files:

1. ``decode``: what the decode workers do and nothing else: demux, decode every frame,
   pick K frames per segment, resize/crop them, cut the audio (same workers, same queue);
2. ``extract``: the full ``Extractor.run`` into a fresh feature store (decode + encoders +
   writes);
3. ``encoder``: the vision encoder alone on random frames, ms/frame at each ``--sizes``
   (median and best of the repeats: on a shared machine the best is the less disturbed).

``extract_vs_decode`` = extraction segments/s over decode segments/s: 1.0 means the encoder
keeps up with decoding (decoding is the bottleneck); lower means the encoder is. Prints one
JSON object with hardware, versions and the config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import statistics
import tempfile
import time
from pathlib import Path


def hardware() -> dict:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    import av
    import numpy
    import torch

    import lvmae

    return {"lvmae": lvmae.__version__, "torch": torch.__version__, "av": av.__version__,
            "ffmpeg": ".".join(map(str, av.ffmpeg_version_info)) if hasattr(av, "ffmpeg_version_info") else None,
            "numpy": numpy.__version__}


def make_videos(d: Path, n: int, seconds: float, size: tuple[int, int], fps: int) -> list[Path]:
    """Moving-noise h264 + aac clips (motion keeps the decoder honest)."""
    import av
    import numpy as np

    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = d / f"v{i}.mp4"
        base = rng.integers(0, 256, (size[1], size[0] * 2, 3), dtype=np.uint8)
        with av.open(str(path), "w") as c:
            v = c.add_stream("libx264", rate=fps)
            v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
            for k in range(int(seconds * fps)):
                x0 = (k * 3) % size[0]
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, x0:x0 + size[0]]), format="rgb24")
                f.pts = k
                for p in v.encode(f):
                    c.mux(p)
            for p in v.encode():
                c.mux(p)
            samples = (0.1 * np.sin(np.arange(int(seconds * 16000)) * 0.2)).astype(np.float32)
            for s in range(0, len(samples), 1024):
                fr = av.AudioFrame.from_ndarray(samples[None, s:s + 1024], format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, s
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
        out.append(path)
    return out


def bench_decode(paths: list[Path], ex) -> dict:
    """The decode workers alone: segments/s with the extractor's spec, workers and queue."""
    from lvmae.extraction.workers import decode_pool

    cfg = ex.cfg
    t0, cpu0 = time.perf_counter(), time.process_time()
    pool = decode_pool([(i, str(p)) for i, p in enumerate(paths)], ex.spec, ex.decode_workers,
                      cfg.decode_backend, cfg.prefetch_segments)
    segments, ended, failed = 0, 0, 0
    try:
        while ended < len(paths):
            try:
                msg = pool.get(timeout=1.0)
            except queue.Empty:
                continue
            segments += msg[0] == "seg"
            if msg[0] == "end":
                ended += 1
                failed += msg[3] is not None
    finally:
        pool.close()
    wall = time.perf_counter() - t0
    return {"segments": segments, "failed": failed, "wall_s": round(wall, 3),
            "cpu_s_main_process": round(time.process_time() - cpu0, 3),
            "segments_per_s": round(segments / wall, 2)}


def warm_up(ex) -> None:
    """One untimed batch per encoder: first-call kernel setup is not throughput."""
    import numpy as np

    from lvmae.extraction.api import encode_segments
    from lvmae.extraction.video import Segment

    s, k = ex.spec, ex.spec.frames
    frames = np.zeros((k, s.image_size, s.image_size, 3), np.uint8) if s.image_size else None
    audio = np.zeros(int(s.seconds * s.sample_rate), np.float32) if s.sample_rate else None
    seg = Segment(0, 0.0, s.seconds, np.zeros(k), frames, audio, "warm up" if s.text else None)
    encode_segments(ex.encoders, [seg] * ex.batch_segments)


def bench_extract(paths: list[Path], ex, store: Path) -> dict:
    warm_up(ex)
    t0 = time.perf_counter()
    s = ex.run([str(p) for p in paths], store, progress=False)
    wall = time.perf_counter() - t0
    return {"segments": s["segments"], "failed": s["failed"], "wall_s": round(wall, 3),
            "segments_per_s": round(s["segments"] / wall, 2)}


def bench_encoder(ex, sizes: list[int], batch: int, repeats: int) -> dict:
    """ms/frame of the configured vision encoder at each size (median of ``repeats`` batches)."""
    import dataclasses

    import torch

    from lvmae.extraction.api import build_encoders

    out = {}
    for size in sizes:
        enc_cfg = dataclasses.replace(ex.cfg.encoder, image_size=size, audio=None, text=None)
        enc = build_encoders(enc_cfg, ex.cfg.segment.audio_sample_rate)["vision"]
        size = enc.input_spec()["image_size"]
        x = torch.randint(0, 256, (batch, 1, size, size, 3), dtype=torch.uint8)
        enc.encode(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            enc.encode(x)
            times.append(time.perf_counter() - t)
        out[str(size)] = {"ms_per_frame": round(statistics.median(times) / batch * 1000, 3),
                          "ms_per_frame_best": round(min(times) / batch * 1000, 3),
                          "batch": batch, "encoder": enc.name}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", help="directory/list of videos to use instead of generated ones")
    ap.add_argument("--num", type=int, default=4, help="generated videos")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--sizes", type=int, nargs="*", default=[112, 224], help="encoder-only image sizes")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. extract.encoder.image_size=224")
    args = ap.parse_args()
    if args.quick:
        args.num, args.seconds, args.width, args.height, args.fps, args.sizes = 2, 12.0, 64, 48, 8, [64]

    from lvmae.config import load_config
    from lvmae.extraction.api import Extractor
    from lvmae.extraction.inputs import collect_videos

    cfg = load_config([], args.overrides).extract
    ex = Extractor(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos:
            paths = [Path(it.path) for it in collect_videos(args.videos)]
        else:
            t = time.perf_counter()
            paths = make_videos(Path(tmp), args.num, args.seconds, (args.width, args.height), args.fps)
            gen_s = time.perf_counter() - t
        decode = bench_decode(paths, ex)
        extract = bench_extract(paths, ex, Path(tmp) / "store")
    encoder = bench_encoder(ex, args.sizes, batch=16, repeats=3 if args.quick else 9) if "vision" in ex.encoders else {}
    print(json.dumps({
        "benchmark": "extract_vs_decode", "date": time.strftime("%Y-%m-%d"), "hardware": hardware(),
        "versions": versions(),
        "videos": {"count": len(paths), "generated": not args.videos,
                   **({} if args.videos else {"seconds": args.seconds, "size": [args.width, args.height],
                                              "fps": args.fps, "generate_s": round(gen_s, 2)})},
        "config": {"segment": dataclasses_dict(cfg.segment), "encoder": dataclasses_dict(cfg.encoder),
                   "decode_workers": ex.decode_workers, "decode_backend": cfg.decode_backend,
                   "decode_threads_per_file": ex.spec.threads, "device": str(getattr(ex.encoders.get("vision"), "device", "cpu"))},
        "decode": decode, "extract": extract,
        "extract_vs_decode": round(extract["segments_per_s"] / max(decode["segments_per_s"], 1e-9), 3),
        "encoder_only": encoder,
    }, indent=2))


def dataclasses_dict(x) -> dict:
    import dataclasses

    return dataclasses.asdict(x)


if __name__ == "__main__":
    main()
