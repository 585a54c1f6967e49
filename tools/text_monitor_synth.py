"""The video-text retrieval monitor end to end on generated data, against chance; writes JSON.

1. ``lvmae synth`` videos, with their caption sidecars (one ``step <type>`` cue per step).
2. An aligned pair of tiny encoders, built here: vision = a chroma-weighted hue histogram of
   each frame (24-d, mean over a segment's frames); text = that same vision encoder applied to a
   clean rendering (no noise, no camera jitter) of the caption's step type, i.e. "what step X
   looks like". So a caption and a segment of its step land close in one space, as a
   CLIP-style pair would put them, without either encoder seeing labels.
3. Extraction (vision + the captions as text), pretraining a tiny LV-MAE with
   ``data.text_monitor=true``, and R@1 / R@5 of the reconstructed masked segments against the
   batch's captions from ``metrics.jsonl``; chance = random predictions ranked against the
   same captions on the same batches.

    python tools/text_monitor_synth.py --out runs/text_monitor --json docs/results/text_monitor.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from _bench import emit, hardware, log, versions  # noqa: E402

# order_trace off: the coloured frame that A/B leave on later fillers would change their hues.
# Steps of 3..5 segments: a masked segment then usually has a visible neighbour of its own step
# (a step shown in one segment only cannot be told from its context, by any model).
SYNTH = dict(num_videos=40, segment_seconds=1.0, fps=4, size=32, audio=False, tasks=["order", "appearance"],
             order_trace=False, segments_per_step=[3, 5])
PRETRAIN = ["model.width=64", "model.depth=2", "model.heads=4", "model.decoder_width=32", "model.decoder_depth=1",
            "model.decoder_heads=2", "data.min_len=8", "data.max_len=32", "deepspeed.engine=torch",
            "deepspeed.micro_batch=8", "optim.base_lr=0.064", "optim.warmup_steps=20", "train.log_every=20",
            "train.save_every=1000", "train.export=false", "train.plot=false", "run.progress=false",
            "run.device=cpu", "model.norm_target=true", "data.text_monitor=true"]


class HueHistogram(nn.Module):
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, 24]``: each frame's hue histogram weighted by chroma
    (grey pixels, e.g. the moving blob, count little), soft-binned, centred. Gain and texture
    position barely move it, so it tells the step types' colours apart."""

    bins = 24

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx, mn = x.max(1).values, x.min(1).values
        chroma = mx - mn
        r, g, b = x.unbind(1)
        c = chroma.clamp_min(1e-6)
        hue = torch.where(mx == r, ((g - b) / c) % 6, torch.where(mx == g, (b - r) / c + 2, (r - g) / c + 4)) / 6
        centres = (torch.arange(self.bins, device=x.device) + 0.5) / self.bins
        dist = (hue[:, None] - centres[None, :, None, None]).abs()
        dist = torch.minimum(dist, 1 - dist)  # hue is circular
        hist = (torch.exp(-(dist * self.bins) ** 2) * chroma[:, None]).flatten(2).sum(-1)
        return hist / hist.sum(1, keepdim=True).clamp_min(1e-6) - 1.0 / self.bins


class CaptionEncoder:
    """Text encoder: ``"step X"`` -> the vision embedding of a clean rendering of step type X."""

    name, modality, version = "synth_captions", "text", "clean-render-v1"

    def __init__(self, prototypes: dict[str, torch.Tensor]):
        self.prototypes = prototypes
        self.dim = int(next(iter(prototypes.values())).shape[-1])

    def input_spec(self) -> dict[str, Any]:
        return {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        zero = torch.zeros(self.dim)
        return torch.stack([self.prototypes.get(t.strip(), zero) for t in texts])


def prototypes(cfg: Any, vision: Any) -> dict[str, torch.Tensor]:
    from lvmae.synth import Step, VideoPlan, VideoRenderer
    from lvmae.synth.plan import type_names

    clean = dataclasses.replace(cfg, noise=0.0, jitter=0.0)
    out = {}
    for t, name in enumerate(type_names(cfg)):
        plan = VideoPlan(f"proto_{t}", 100_000 + t, "train", {}, [Step(type=t, start=0, segments=1)])
        frames = torch.from_numpy(VideoRenderer(plan, clean).frames(0))[None]  # [1, F, H, W, 3]
        out[f"step {name}"] = vision.encode(frames)[0]
    return out


def chance(cfg: Any, batches: int = 40) -> tuple[float, float]:
    """R@1, R@5 of random predictions against the same captions, on the pretraining stream's batches."""
    from lvmae.data import build_stream
    from lvmae.train.text_monitor import text_retrieval_hits

    stream = build_stream(cfg.data, cfg.masking, [], cfg.deepspeed.micro_batch, seed=cfg.run.seed)
    g, hits = torch.Generator().manual_seed(0), []
    for _ in range(batches):
        b = next(stream)
        noise = torch.randn(b["monitor"].shape, generator=g)
        hits.append(text_retrieval_hits(noise, b["monitor"], b["masks"].mask, b["valid"]).tolist())
    r = np.mean(hits, axis=0)
    return float(r[0]), float(r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/text_monitor", help="work directory (synth set, store, run)")
    ap.add_argument("--steps", type=int, default=400, help="pretraining steps")
    ap.add_argument("--json", help="also write the result here (atomically)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import lvmae
    from lvmae.config import EncoderConfig, ExtractConfig, SegmentConfig, SynthConfig, load_config
    from lvmae.encoders import build_encoder, register_encoder, register_torch_module
    from lvmae.synth import generate
    from lvmae.train import pretrain
    from lvmae.train.metrics import read_metrics

    out = Path(args.out)
    syn = SynthConfig(out=str(out / "synth"), **SYNTH)
    log("rendering the synthetic set (with caption sidecars)")
    generate(syn, progress=False)
    register_torch_module("synth_hue", HueHistogram(), image_size=syn.size, version="hue-histogram-v1")
    vision = build_encoder("synth_hue", "vision", EncoderConfig(image_size=syn.size))
    protos = prototypes(syn, vision)
    register_encoder("synth_captions", "text", lambda cfg, device, sr: CaptionEncoder(protos), overwrite=True)
    log("extracting vision + caption features")
    ext = ExtractConfig(segment=SegmentConfig(seconds=syn.segment_seconds, frames=4), encoder=EncoderConfig(
        vision="synth_hue", audio=None, text="synth_captions", image_size=syn.size))
    lvmae.extract([str(out / "synth" / "videos")], str(out / "store"), ext, progress=False)
    cfg = load_config(overrides=[*PRETRAIN, f"data.stores=[{out / 'store'}]", f"run.out_dir={out / 'run'}",
                                 f"train.steps={args.steps}", "train.restart=true"])
    log(f"pretraining {args.steps} steps with data.text_monitor=true")
    pretrain(cfg)
    recs = read_metrics(out / "run" / "metrics.jsonl")
    late = recs[-5:]
    c1, c5 = chance(cfg)
    result = {
        "what": "video-text retrieval monitor on lvmae synth with an aligned tiny encoder pair",
        "command": "python tools/text_monitor_synth.py --out runs/text_monitor --json docs/results/text_monitor.json",
        "synth": SYNTH, "pretrain": PRETRAIN + [f"train.steps={args.steps}"],
        "curve": [{"step": r["step"], "text_top1": r["train/text_retrieval_top1"],
                   "text_top5": r["train/text_retrieval_top5"], "loss": r["train/loss"]} for r in recs],
        "first_top1": recs[0]["train/text_retrieval_top1"],
        "late_top1": float(np.mean([r["train/text_retrieval_top1"] for r in late])),
        "late_top5": float(np.mean([r["train/text_retrieval_top5"] for r in late])),
        "chance_top1": c1, "chance_top5": c5, "late_logs": len(late),
        "hardware": hardware(), "versions": versions(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
