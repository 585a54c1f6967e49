"""Peak training memory of LV-MAE at long sequence lengths, fitted on small models.

    python tools/bench_memory.py --preset paper --threads 2                  # any machine, minutes
    python tools/bench_memory.py --preset paper --device cuda                # same fit, measured on a GPU
    python tools/bench_memory.py --preset cpu-tiny --threads 1 --fit-lengths 64 128 --check 3,2,512
    python tools/bench_memory.py --render OUT.json                            # Markdown tables

Why: whether one 32,768-segment sequence trains at the paper's size on an 80 GB GPU
should be answerable before a GPU is at hand, and a user should be able to ask
"which length fits on my card" without trying each one.

Method. One training step through the project's engine (``bench_model``'s variants:
autocast, clipping, AdamW) is split in two phases whose peaks are measured separately
(CPU: ``torch.distributed._tools.mem_tracker.MemTracker``, which counts the bytes of
live tensors; CUDA: the allocator's ``max_memory_allocated``), after one warm-up step so
that AdamW's moments exist:

- forward + backward: ``peak_fb(e, d, n) = b0 + b1 n + e (E0 + E1 n) + d (D0 + D1 n)`` for
  ``e`` encoder and ``d`` decoder blocks and ``n`` segments. Linear in blocks because the
  peak is reached at the start of backward, when every block's saved activations (and,
  in the intercepts, every block's weights, gradients and moments) are alive; linear in
  ``n`` because no kernel keeps an ``n x n`` matrix (SDPA's flash / memory-efficient
  kernels; the batch has no padding, so no mask). Six measurements ((1, 1), (2, 1),
  (1, 2) blocks at two lengths) determine the six coefficients exactly.
- optimizer step: ``peak_opt(e, d) = o0 + e O_e + d O_d`` (weights, gradients, moments and
  the foreach AdamW's temporaries; no activations), fitted on the same runs.

The forward+backward peak is reached either at the start of backward (every block's saved
activations alive) or at its end (every block's gradients alive, activations gone),
whichever is larger; the formula holds within one regime, so the fit lengths should be
long enough that a block's activations outweigh its gradients. Because a fit in the
gradient regime would miss the activations' growth, the live bytes at the end of forward
(``fwd_end``: every saved activation, no gradient) get the same linear fit, and the
prediction for the configured depth is ``max(fwd_end, peak_fb, peak_opt)``: a lower bound
that is exact within the activation regime (the checks show how close it is). ``--check`` points
(blocks and length outside the fit, e.g. 3 encoder + 2 decoder blocks at 4x the longest fit
length) are measured and compared with the prediction, which tests both assumptions; the
JSON reports the relative error. On a GPU the allocator adds fragmentation (and the CUDA
context ~0.5 GiB lies outside ``memory_allocated``), so ``--headroom`` (default 10 %) is
kept free when deciding what fits in ``--gpu-gib``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from _bench import emit, hardware, log, now_utc, versions
from bench_model import (
    PRESETS,
    Context,
    build_model,
    engine_for,
    engine_inputs,
    guarded,
    load_bench_config,
    make_batch,
    parse_variant,
)

FIT_BLOCKS = ((1, 1), (2, 1), (1, 2))
GIB = 2**30


def _fb_row(e: int, d: int, n: int) -> list[float]:
    return [1.0, n, e, e * n, d, d * n]


def _opt_row(e: int, d: int) -> list[float]:
    return [1.0, e, d]


def _tensor_bytes(batch: dict) -> int:
    """Bytes of the inputs, which exist before a CPU tracker starts (a GPU peak counts them)."""
    import torch

    ts = [v for v in batch.values() if isinstance(v, torch.Tensor)] + list(batch["masks"]._tensors())
    return sum(t.numel() * t.element_size() for t in ts)


class _Peak:
    """Peak bytes of live tensors inside a ``with`` block, on CPU or CUDA; :meth:`current`
    gives the live bytes at a point inside it."""

    def __init__(self, device: Any, engine: Any):
        self.device, self.engine, self.bytes = device, engine, 0

    def current(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        snap = self.tracker.get_tracker_snapshot("current")
        return int(sum(v.get("Total", 0) for v in snap.values()))

    def __enter__(self) -> _Peak:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            from torch.distributed._tools.mem_tracker import MemTracker

            self.tracker = MemTracker()
            self.tracker.track_external(self.engine.model, self.engine.optimizer)
            self.tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
            return
        self.tracker.__exit__(*exc)
        peak = self.tracker.get_tracker_snapshot("peak")
        self.bytes = int(sum(v.get("Total", 0) for v in peak.values()))


def measure(cfg: Any, variant: Any, device: Any, batch_size: int, blocks: tuple[int, int], n: int) -> dict:
    """Peak bytes of the forward+backward and of the optimizer step, ``blocks`` = (enc, dec)."""
    import gc

    import torch

    from lvmae.models.lvmae import LVMAE

    e, d = blocks
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=e, decoder_depth=d))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    batch = make_batch(cfg, batch_size, n, False, device)
    model = build_model(cfg, variant, LVMAE(cfg.model).state_dict())
    ctx = Context(cfg=cfg, device=device, batch=batch_size, ragged=False, warmup=0, repeats=0, init_state={},
                  peak_flops=None, spec_flops=None)
    with engine_for(model, variant, ctx) as engine:
        inputs = engine_inputs(engine, batch)
        extra = _tensor_bytes(inputs) if device.type == "cpu" else 0
        peaks = []
        for tracked in (False, True):  # the first step creates AdamW's moments
            with _Peak(device, engine) if tracked else _NoPeak() as fb:
                out = engine.forward(inputs["x"], inputs["valid"], inputs["masks"], scale=inputs["scale"])
                fwd = fb.current()
                engine.backward(out["loss"])
                del out
            with _Peak(device, engine) if tracked else _NoPeak() as opt:
                engine.step()
            peaks = [fwd + extra, fb.bytes + extra, opt.bytes + extra]
    del engine, model, inputs, batch, fb, opt
    return {"enc_blocks": e, "dec_blocks": d, "segments": n, "fwd_end_bytes": peaks[0], "fb_bytes": peaks[1],
            "opt_bytes": peaks[2]}


class _NoPeak:
    bytes = 0

    def current(self) -> int:
        return 0

    def __enter__(self) -> _NoPeak:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclasses.dataclass
class MemoryModel:
    """Fitted coefficients (bytes) of the two peak formulas in the module docstring."""

    fb: list[float]  # b0, b1, E0, E1, D0, D1
    opt: list[float]  # o0, O_e, O_d
    fwd: list[float] | None = None  # live bytes at the end of forward, same form as fb

    @classmethod
    def fit(cls, rows: list[dict]) -> MemoryModel:
        import numpy as np

        a = np.array([_fb_row(r["enc_blocks"], r["dec_blocks"], r["segments"]) for r in rows])
        o = np.array([_opt_row(r["enc_blocks"], r["dec_blocks"]) for r in rows])

        def solve(design: Any, key: str) -> list[float]:
            return np.linalg.lstsq(design, np.array([r[key] for r in rows], dtype=float), rcond=None)[0].tolist()

        fwd = solve(a, "fwd_end_bytes") if all("fwd_end_bytes" in r for r in rows) else None
        return cls(fb=solve(a, "fb_bytes"), opt=solve(o, "opt_bytes"), fwd=fwd)

    def predict(self, e: int, d: int, n: int) -> dict:
        fb = sum(c * x for c, x in zip(self.fb, _fb_row(e, d, n)))
        opt = sum(c * x for c, x in zip(self.opt, _opt_row(e, d)))
        fwd = sum(c * x for c, x in zip(self.fwd, _fb_row(e, d, n))) if self.fwd else 0.0
        return {"fwd_end_gib": fwd / GIB, "fb_gib": fb / GIB, "opt_gib": opt / GIB,
                "peak_gib": max(fwd, fb, opt) / GIB}

    def describe(self) -> dict:
        b0, b1, e0, e1, d0, d1 = self.fb
        return {"fixed_mib": b0 / 2**20, "fixed_bytes_per_segment": b1,
                "encoder_block_mib": e0 / 2**20, "encoder_block_bytes_per_segment": e1,
                "decoder_block_mib": d0 / 2**20, "decoder_block_bytes_per_segment": d1,
                **({"forward_end_encoder_block_bytes_per_segment": self.fwd[3],
                    "forward_end_decoder_block_bytes_per_segment": self.fwd[5]} if self.fwd else {}),
                "optimizer_step_fixed_mib": self.opt[0] / 2**20, "optimizer_step_per_encoder_block_mib":
                    self.opt[1] / 2**20, "optimizer_step_per_decoder_block_mib": self.opt[2] / 2**20}


def longest_fit(model: MemoryModel, e: int, d: int, budget_gib: float, start: int = 256) -> int:
    """Largest power-of-two multiple of ``start`` segments whose predicted peak fits."""
    n = start
    while model.predict(e, d, n * 2)["peak_gib"] <= budget_gib and n < 2**24:
        n *= 2
    return n if model.predict(e, d, n)["peak_gib"] <= budget_gib else 0


def parse_check(text: str) -> tuple[int, int, int]:
    try:
        e, d, n = (int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--check wants ENC,DEC,SEGMENTS, got {text!r}") from None
    return e, d, n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--config", action="append", default=[], help="more config YAML (after the preset's)")
    p.add_argument("--variants", nargs="+", default=["fast+bf16", "fast+bf16+ckpt"])
    p.add_argument("--batch", type=int, default=1, help="sequences per step")
    p.add_argument("--fit-lengths", type=int, nargs=2, default=[4096, 8192],
                   help="two lengths for the fit, long enough that a block's activations outweigh its gradients")
    p.add_argument("--check", type=parse_check, nargs="*", default=[(3, 2, 12288)],
                   help="ENC,DEC,SEGMENTS points measured against the prediction")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 4096, 8192, 16384, 32768, 65536, 131072],
                   help="lengths to predict at the configured depth")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="memory of the card the answer is for")
    p.add_argument("--headroom", type=float, default=0.10, help="share of --gpu-gib kept free")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="also write the JSON here (atomically)")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print saved results as Markdown tables, run nothing")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.preset = args.preset or None
    cfg = load_bench_config(argparse.Namespace(preset=args.preset, config=args.config, overrides=args.overrides))
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    depth, dec_depth = cfg.model.depth, cfg.model.decoder_depth
    budget = args.gpu_gib * (1 - args.headroom)
    results = {}
    for name in args.variants:
        v = parse_variant(name, device.type)
        rows = []
        for blocks in FIT_BLOCKS:
            for n in args.fit_lengths:
                log(f"{name}: blocks {blocks}, {n} segments")
                rows.append(measure(cfg, v, device, args.batch, blocks, n))
        model = MemoryModel.fit(rows)
        checks = []
        for e, d, n in args.check:
            log(f"{name}: check {e},{d},{n}")
            # an OOM where the fit says "fits" is a finding, not a crash that loses the fit
            got = guarded(device, lambda e=e, d=d, n=n, v=v: measure(cfg, v, device, args.batch, (e, d), n))
            want = model.predict(e, d, n)
            check = {"enc_blocks": e, "dec_blocks": d, "segments": n, **got, "predicted_gib": want["peak_gib"]}
            if got["status"] == "ok":
                check["measured_gib"] = max(got["fb_bytes"], got["opt_bytes"]) / GIB
                check["rel_error"] = want["peak_gib"] / check["measured_gib"] - 1
            checks.append(check)
        predicted = {n: model.predict(depth, dec_depth, n) for n in args.lengths}
        results[name] = {"fit": rows, "coefficients": model.describe(), "checks": checks, "predicted": predicted,
                         "longest_fit_segments": longest_fit(model, depth, dec_depth, budget)}
    return {"benchmark": "lvmae.memory", "date": now_utc(), "hardware": hardware(), "versions": versions(),
            "preset": args.preset, "batch": args.batch, "depth": [depth, dec_depth],
            "widths": [cfg.model.width, cfg.model.decoder_width], "mask_ratio": cfg.masking.ratio,
            "device": device.type, "gpu_gib": args.gpu_gib, "headroom": args.headroom, "variants": results}


def render_table(doc: dict) -> str:
    """Markdown: predicted peak (GiB) per length and variant, then the checks."""
    names = list(doc["variants"])
    lengths = list(next(iter(doc["variants"].values()))["predicted"])
    budget = doc["gpu_gib"] * (1 - doc["headroom"])
    lines = ["| segments | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for n in lengths:
        cells = []
        for name in names:
            gib = doc["variants"][name]["predicted"][n]["peak_gib"]
            cells.append(f"{gib:,.1f}" + ("" if gib <= budget else " (no)"))
        lines.append(f"| {int(n):,} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| variant | check (enc+dec blocks, segments) | measured GiB | predicted GiB | error |")
    lines.append("|---|---|---:|---:|---:|")
    for name in names:
        for c in doc["variants"][name]["checks"]:
            ok = c.get("status", "ok") == "ok"
            measured, err = (f"{c['measured_gib']:.2f}", f"{c['rel_error']:+.1%}") if ok else (c["status"], "")
            lines.append(f"| {name} | {c['enc_blocks']}+{c['dec_blocks']}, {c['segments']:,} | "
                         f"{measured} | {c['predicted_gib']:.2f} | {err} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        import json
        from pathlib import Path

        print("\n\n".join(render_table(json.loads(Path(f).read_text())) for f in args.render))
        return 0
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
