"""LV-MAE training-step speed: the naive reference and each optimisation, in one run.

    python tools/bench_model.py --preset cpu-tiny --threads 1     # seconds on a CPU (CI)
    python tools/bench_model.py --preset paper                    # paper size, 16 x 256, GPU
    python tools/bench_model.py --preset paper --batch 1 --length 4096 8192 16384 32768 65536
    python tools/bench_model.py --preset paper --variants fast+bf16 --zero 0 1 2 3
    tools/bench_gpu.sh OUT_DIR main                               # the GPU parts, one JSON each

Every variant trains the same model (same initial weights, same batch) through the
project's engine (``lvmae.train.engine``: autocast, GradScaler for fp16, clipping, AdamW;
``zeroN`` variants go through DeepSpeed). A variant is a ``+``-joined name: a base,
``reference`` (:class:`~lvmae.models.reference.ReferenceLVMAE`: encoder over all padded
tokens, explicit float32 attention, per-sequence decoder loop: the public LV-MAE code's
structure) or ``fast`` (:class:`~lvmae.models.lvmae.LVMAE`: encoder on visible tokens only,
SDPA), then modifiers: ``bf16``/``fp16``/``fp32`` (autocast; default: fp16 on CUDA like the
public code, fp32 on CPU), ``fused`` (fused AdamW), ``packed`` (varlen packing),
``compile`` (torch.compile), ``cudagraphs`` (torch.compile's reduce-overhead mode: the
step's kernels replayed as CUDA graphs), ``ckpt`` (activation checkpointing), ``xformers``/``math``
(attention backend), ``zero0``..``zero3`` (DeepSpeed ZeRO stage; the engine's torch AdamW, fused on CUDA).

Per variant and length: step time (median of ``--repeats`` after ``--warmup``), segments/s,
sequences/s, model FLOPs per step (:mod:`lvmae.models.flops`) and MFU against the bf16
matmul peak measured in the same run (and against the datasheet peak on known GPUs or
``--peak-tflops``), peak memory, the first step's loss and its relative difference to the
reference's (same weights, same batch: a correctness check), and the speed-up over the
reference measured in the same run. Several ``--length`` values sweep long sequences:
a variant stops at its first out-of-memory and ``longest_fit`` reports the last that fit.
Unless ``--no-data``, a training loop fed by ``lvmae.data.build_stream`` from a generated
feature store measures the data loader's share of step time. ``--profile VARIANT`` adds
the top operators of a few profiled steps. JSON goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _bench import (
    ROOT,
    emit,
    free_memory,
    hardware,
    log,
    make_store,
    matmul_tflops,
    now_utc,
    peak_memory,
    reset_peak_memory,
    sync,
    time_fn,
    versions,
)

PRESETS: dict[str, tuple[list[str], list[str]]] = {
    # name: (config files, overrides); batch = deepspeed.micro_batch, length = data.max_len
    "paper": (["paper"], []),  # + in_dim 1024 (LanguageBind)
    "cpu-small": (["pretrain/tiny_cpu.yaml"], ["deepspeed.micro_batch=8"]),  # docs/performance.md's CPU table
    "cpu-tiny": (["pretrain/tiny_cpu.yaml"], ["model.in_dim=64", "model.width=64", "model.decoder_width=32",
                                              "deepspeed.micro_batch=4", "data.max_len=32"]),
}
DEFAULT_VARIANTS = ["reference", "fast", "fast+bf16", "fast+bf16+fused", "fast+bf16+fused+packed",
                    "fast+bf16+fused+compile", "fast+bf16+fused+ckpt"]
PRECISIONS = ("fp32", "fp16", "bf16")
OOM_MARKERS = ("out of memory", "can't allocate memory")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running a training step (see the module docstring for the name grammar)."""

    name: str
    reference: bool
    precision: str
    fused: bool = False
    packed: bool = False
    compile: bool = False
    compile_mode: str = "default"
    ckpt: bool = False
    attention: str = "sdpa"
    zero: int | None = None


def parse_variant(name: str, device_type: str) -> Variant:
    """``fast+bf16+fused`` -> :class:`Variant`; the default precision is fp16 on CUDA, fp32 on CPU."""
    from lvmae.errors import LvmaeError

    base, *mods = name.split("+")
    if base not in ("reference", "fast"):
        raise LvmaeError(f"variant {name!r}: must start with 'reference' or 'fast'")
    kw: dict[str, Any] = {"precision": "fp16" if device_type == "cuda" else "fp32"}
    flags = {"fused", "packed", "compile", "ckpt"}
    for m in mods:
        if m in PRECISIONS:
            kw["precision"] = m
        elif m in flags:
            kw[m] = True
        elif m == "cudagraphs":
            kw.update(compile=True, compile_mode="reduce-overhead")
        elif m in ("xformers", "math"):
            kw["attention"] = m
        elif m in ("zero0", "zero1", "zero2", "zero3"):
            kw["zero"] = int(m[-1])
        else:
            raise LvmaeError(f"variant {name!r}: unknown modifier {m!r} (known: {sorted(flags)}, cudagraphs, "
                             f"{list(PRECISIONS)}, xformers, math, zero0..zero3)")
    if base == "reference" and set(kw) - {"precision"}:
        raise LvmaeError(f"variant {name!r}: the reference takes only a precision")
    if kw.get("zero") is not None and (kw.get("compile") or kw.get("fused")):
        raise LvmaeError(f"variant {name!r}: zeroN runs DeepSpeed with its own optimizer, without compile")
    if device_type == "cpu" and kw["precision"] == "fp16" and kw.get("zero") is not None:
        raise LvmaeError(f"variant {name!r}: DeepSpeed has no fp16 on CPU")
    return Variant(name=name, reference=base == "reference", **kw)


# ------------------------------------------------------------------ setup


@dataclasses.dataclass
class Context:
    """What every measurement of one invocation shares."""

    cfg: Any  # lvmae.config.Config
    device: Any  # torch.device
    batch: int
    ragged: bool
    warmup: int
    repeats: int
    init_state: dict
    peak_flops: float | None  # the faster of the fp32/bf16 matmuls measured in this run, FLOP/s
    spec_flops: float | None  # datasheet (or --peak-tflops), FLOP/s
    batches: dict = dataclasses.field(default_factory=dict)


def load_bench_config(args: argparse.Namespace) -> Any:
    from lvmae.config import load_config

    files, overrides = PRESETS[args.preset] if args.preset else ([], [])
    files = [str(ROOT / f) if f.endswith(".yaml") else f for f in files] + list(args.config)
    return load_config(files, [*overrides, *args.overrides])


def make_batch(cfg: Any, batch: int, length: int, ragged: bool, device: Any, seed: int = 0) -> dict:
    """Random embeddings ``x [B, L, in_dim]``, ``valid``, masks and HoPE scales, on ``device``.

    ``ragged``: lengths uniform in ``[2, L]`` within the batch (the first is ``L``): the
    padding an unbucketed loader makes, which packing removes. Otherwise all are ``L``."""
    import torch

    from lvmae.data import to_device
    from lvmae.masking import build_masks

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch,), generator=g) if ragged else torch.full((batch,), length)
    lengths[0] = length
    x = torch.randn(batch, length, cfg.model.in_dim, generator=g)
    valid = torch.arange(length) < lengths[:, None]
    masks = build_masks(x, valid, cfg.masking, g)
    scales = torch.tensor(cfg.model.rope.train_scales or [1.0])
    scale = scales[torch.randint(len(scales), (batch,), generator=g)] if cfg.model.rope.kind == "hope" else None
    return to_device({"x": x, "valid": valid, "masks": masks, "scale": scale}, device)


def build_model(cfg: Any, v: Variant, init_state: dict) -> Any:
    from lvmae.models.lvmae import LVMAE
    from lvmae.models.reference import ReferenceLVMAE

    # the public code's attention pattern (no distance-decay bias: a packed row has no [B, H, N, N]
    # bias, and the reference has none), so every variant computes the same function
    rope = dataclasses.replace(cfg.model.rope, decay="none")
    mcfg = dataclasses.replace(cfg.model, attention=v.attention, pack_sequences=v.packed,
                               checkpoint_activations=v.ckpt, rope=rope)
    model = (ReferenceLVMAE if v.reference else LVMAE)(mcfg)
    model.load_state_dict(init_state)
    return model.train()


def build_engine_for(model: Any, v: Variant, ctx: Context) -> Any:
    """The project's engine for ``v``: TorchEngine (optimizer swapped for the fused/unfused
    AdamW the variant names) or DeepSpeedEngine with ZeRO stage ``v.zero``."""
    from lvmae.train.engine import DistInfo, build_engine, make_optimizer, setup_distributed

    ds = dataclasses.replace(ctx.cfg.deepspeed, engine="torch" if v.zero is None else "deepspeed",
                             precision=v.precision, zero_stage=v.zero or 0, micro_batch=ctx.batch, grad_accum=1)
    cfg = dataclasses.replace(ctx.cfg, deepspeed=ds, run=dataclasses.replace(ctx.cfg.run, device=ctx.device.type),
                              train=dataclasses.replace(ctx.cfg.train, compile=v.compile,
                                                         compile_mode=v.compile_mode))
    dist = DistInfo(0, 1, 0, ctx.device) if v.zero is None else setup_distributed(cfg)
    engine = build_engine(model, cfg, dist)
    if v.zero is None:
        engine.optimizer = make_optimizer(engine.model, cfg.optim, fused=v.fused)
    return engine


@contextlib.contextmanager
def engine_for(model: Any, v: Variant, ctx: Context) -> Iterator[Any]:
    """:func:`build_engine_for` inside the block, released after it (see :func:`release_engine`)."""
    engine = build_engine_for(model, v, ctx)
    try:
        yield engine
    finally:
        release_engine(engine)


def release_engine(engine: Any) -> None:
    """Let a DeepSpeed engine's memory go with its last reference.

    ZeRO 1/2 keep gradient hooks on autograd nodes whose closures hold the optimizer (a
    cycle through C++ that ``gc`` cannot break); ZeRO-3 also pushes the module onto
    DeepSpeed's global ``FWD_MODULE_STACK`` for good and memoises submodules in a class-level
    ``lru_cache``. Without this, every ZeRO variant's weights, flat buffers and AdamW
    moments stay allocated, in the next variant's peak memory. ZeRO-3 also swaps
    ``torch.nn.functional.linear`` for its own autograd function process-wide ("until
    manually reset"), which would change every later variant's memory and speed: the
    original is put back. A torch engine needs nothing. (The ZeRO-3 globals are DeepSpeed
    internals: where a version lacks them, nothing is done.)"""
    ds = getattr(engine, "ds", None)
    if ds is None:
        return
    try:
        ds.destroy()
    except Exception as e:  # teardown must not cost the variant its figures
        log(f"DeepSpeed engine destroy failed ({type(e).__name__}: {e}); its memory may stay allocated")
    with contextlib.suppress(ImportError, AttributeError, ValueError):
        from deepspeed.runtime.zero import parameter_offload

        while ds.module in parameter_offload.FWD_MODULE_STACK:
            parameter_offload.FWD_MODULE_STACK.remove(ds.module)
    with contextlib.suppress(ImportError, AttributeError):
        from deepspeed.runtime.zero.partitioned_param_coordinator import (
            PartitionedParameterCoordinator as ppc,
        )

        fn = ppc._PartitionedParameterCoordinator__params_to_release  # lru_cache under an NVTX wrapper
        for f in (fn, *(c.cell_contents for c in fn.__closure__ or ())):
            if hasattr(f, "cache_clear"):
                f.cache_clear()  # memoisation only: a live ZeRO-3 engine just recomputes
    with contextlib.suppress(ImportError, AttributeError):
        import torch
        from deepspeed.runtime.zero.linear import zero3_linear_wrap
        from deepspeed.runtime.zero.partition_parameters import (
            InsertPostInitMethodToModuleSubClasses as patcher,
        )

        if torch.nn.functional.linear is zero3_linear_wrap:
            torch.nn.functional.linear = patcher.linear_bk


def train_step(engine: Any, inputs: dict) -> Any:
    """Forward, backward, clip, AdamW: one optimizer step. Returns the loss (detached)."""
    out = engine.forward(inputs["x"], inputs["valid"], inputs["masks"], scale=inputs["scale"])
    engine.backward(out["loss"])
    engine.step()
    return out["loss"].detach()


def engine_inputs(engine: Any, batch: dict) -> dict:
    dtype = getattr(engine, "input_dtype", None)
    return {**batch, "x": batch["x"].to(dtype)} if dtype is not None else batch


# ------------------------------------------------------------ measurement


def batch_for(ctx: Context, length: int) -> dict:
    """The batch of ``length`` (built once, shared by every variant) and its token counts."""
    if length not in ctx.batches:
        b = make_batch(ctx.cfg, ctx.batch, length, ctx.ragged, ctx.device)
        b["counts"] = {"valid": b["valid"].sum(1).tolist(), "keep": b["masks"].keep_valid.sum(1).tolist(),
                       "k_max": b["masks"].ids_keep.shape[1]}
        ctx.batches[length] = b
    return ctx.batches[length]


def flop_figures(cfg_model: Any, v: Variant, counts: dict, length: int, seconds: float, ctx: Context) -> dict:
    """Model FLOPs (real tokens, what MFU counts) and executed FLOPs (what ``v`` computes:
    all padded tokens for the reference, ``K`` padded visible ones for the fast path, real
    tokens in the stacks when packed, plus the stacks' recomputed forward with ``ckpt``)."""
    from lvmae.models.flops import forward_flops, mfu, model_flops

    b = len(counts["valid"])
    useful = model_flops(cfg_model, counts["valid"], counts["keep"])
    if v.reference:
        executed = forward_flops(cfg_model, [length] * b, [length] * b)
    elif v.packed:
        executed = useful
    else:
        executed = forward_flops(cfg_model, [counts["k_max"]] * b, [length] * b)
    executed_step = executed.train_step + (executed.encoder + executed.decoder if v.ckpt else 0.0)
    return {"model_tflop_per_step": useful.train_step / 1e12, "executed_tflop_per_step": executed_step / 1e12,
            "model_tflops": useful.train_step / seconds / 1e12,
            "mfu": mfu(useful.train_step, seconds, ctx.peak_flops),
            "mfu_vs_spec": mfu(useful.train_step, seconds, ctx.spec_flops),
            "hfu": mfu(executed_step, seconds, ctx.peak_flops)}


def measure(v: Variant, ctx: Context, length: int) -> dict:
    """Time ``v``'s training step on the shared batch of ``length`` segments."""
    batch = batch_for(ctx, length)
    model = build_model(ctx.cfg, v, ctx.init_state)
    reset_peak_memory(ctx.device)
    with engine_for(model, v, ctx) as engine:
        inputs = engine_inputs(engine, batch)
        tic = time.perf_counter()
        first_loss = float(train_step(engine, inputs))  # same weights and batch for every variant
        sync(ctx.device)
        first_s = time.perf_counter() - tic
        t = time_fn(lambda: train_step(engine, inputs), ctx.device, max(0, ctx.warmup - 1), ctx.repeats)
        peak = peak_memory(ctx.device)
    sec, counts = t["median_s"], batch["counts"]
    return {"step_ms": sec * 1e3, "step_ms_min": t["min_s"] * 1e3, "steps_timed": len(t["times_s"]),
            "first_step_s": first_s, "segments_per_s": sum(counts["valid"]) / sec,
            "sequences_per_s": len(counts["valid"]) / sec,
            **flop_figures(model.cfg, v, counts, length, sec, ctx), **peak, "first_loss": first_loss}


def guarded(device: Any, fn: Callable[[], dict]) -> dict:
    """``{"status": "ok", **fn()}``, or ``oom``/``error`` with the message's first line; memory
    is released either way, so one failing variant never breaks the next."""
    import torch

    try:
        out = {"status": "ok", **fn()}
    except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError from torch 2.5
        out = {"status": "oom", "error": str(e).strip().splitlines()[0][:300]}
    except Exception as e:  # a benchmark reports a broken variant and goes on
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        status = "oom" if any(m in msg.lower() for m in OOM_MARKERS) else "error"
        out = {"status": status, "error": f"{type(e).__name__}: {msg}"}
    free_memory(device)
    return out


def sweep(run_one: Callable[[int], dict], lengths: Sequence[int]) -> tuple[dict[str, dict], int | None]:
    """``run_one`` at each length, ascending; after the first failure the longer ones are
    skipped. Returns ``{str(length): result}`` and the longest length that ran."""
    runs: dict[str, dict] = {}
    longest, failed = None, None
    for length in sorted(set(lengths)):
        if failed is not None:
            runs[str(length)] = {"status": "skipped", "error": f"failed at length {failed}"}
            continue
        runs[str(length)] = r = run_one(length)
        if r["status"] == "ok":
            longest = length
        else:
            failed = length
    return runs, longest


def add_ratios(results: dict[str, dict[str, dict]], baseline: str) -> None:
    """Speed-up and first-loss difference of every run against ``baseline`` at the same length."""
    for runs in results.values():
        for length, r in runs.items():
            base = results.get(baseline, {}).get(length, {})
            ok = r["status"] == "ok" and base.get("status") == "ok"
            r["speedup_vs_baseline"] = base["step_ms"] / r["step_ms"] if ok else None
            r["loss_rel_diff_vs_baseline"] = (
                abs(r["first_loss"] - base["first_loss"]) / max(abs(base["first_loss"]), 1e-12) if ok else None)


def summarise(results: dict[str, dict[str, dict]], baseline: str) -> dict[str, dict]:
    """Per length: the fastest variant other than the baseline, with its figures."""
    out: dict[str, dict] = {}
    for name, runs in results.items():
        for length, r in runs.items():
            best = out.get(length)
            if name != baseline and r["status"] == "ok" and (best is None or r["step_ms"] < best["step_ms"]):
                out[length] = {"variant": name, **{k: r[k] for k in (
                    "step_ms", "segments_per_s", "sequences_per_s", "mfu", "mfu_vs_spec", "peak_mem_gib",
                    "speedup_vs_baseline")}}
    return out


# ------------------------------------------------------ data, profile, targets


def data_share(v: Variant, ctx: Context, length: int, steps: int, workers: int) -> dict:
    """Train ``v`` from ``build_stream`` over a generated feature store and time, per step,
    the host's wait for the next batch against the whole step. On CUDA the pinned copy to
    the device is only queued there (non-blocking), so it counts in the step, as in training.

    The loop syncs at every step end (the real loop's finite-loss check does too), so the
    device idles exactly while the host waits: ``data_share`` is the device's idle share."""
    import statistics

    from lvmae.data import build_stream, to_device

    cfg = ctx.cfg
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make_store(store, max(4 * ctx.batch, 16), cfg.model.in_dim, 2 * length, min_segments=max(2, length // 2))
        data = dataclasses.replace(cfg.data, stores=[str(store)], modalities=["vision"], max_len=length,
                                   min_len=2 if ctx.ragged else length, num_workers=workers)
        scales = cfg.model.rope.train_scales if cfg.model.rope.kind == "hope" else []
        stream = build_stream(data, cfg.masking, scales, ctx.batch, pin_memory=ctx.device.type == "cuda")
        waits, totals = [], []
        with engine_for(build_model(cfg, v, ctx.init_state), v, ctx) as engine:
            for i in range(ctx.warmup + steps):
                sync(ctx.device)
                t0 = time.perf_counter()
                b = to_device(next(stream), ctx.device, engine.input_dtype)
                t1 = time.perf_counter()
                train_step(engine, b)
                sync(ctx.device)
                if i >= ctx.warmup:
                    waits.append(t1 - t0)
                    totals.append(time.perf_counter() - t0)
        del stream  # stops persistent workers
    return {"variant": v.name, "length": length, "workers": workers, "steps": steps,
            "step_ms": statistics.median(totals) * 1e3, "wait_ms": statistics.median(waits) * 1e3,
            "max_wait_ms": max(waits) * 1e3, "data_share": sum(waits) / sum(totals)}


def profile_steps(v: Variant, ctx: Context, length: int, steps: int = 3, trace: str | None = None) -> dict:
    """The top operators of ``steps`` profiled training steps (after two warm-up steps), by
    self time on the device (CUDA) or the host (CPU), per step, with their share."""
    from torch.profiler import ProfilerActivity, profile

    cuda = ctx.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with engine_for(build_model(ctx.cfg, v, ctx.init_state), v, ctx) as engine:
        inputs = engine_inputs(engine, batch_for(ctx, length))
        for _ in range(2):
            train_step(engine, inputs)
        with profile(activities=acts) as prof:
            for _ in range(steps):
                train_step(engine, inputs)
            sync(ctx.device)
    if trace:
        prof.export_chrome_trace(trace)
    return {"variant": v.name, "length": length, "steps": steps, "time": "device" if cuda else "host",
            **top_operators(prof.key_averages(), cuda, steps)}


def top_operators(events: Any, cuda: bool, steps: int, n: int = 25) -> dict:
    """``total_ms_per_step`` and the ``n`` operators with the most self time per step.

    CUDA: an operator's self device time is the time of the kernels it launched itself.
    The profiler also lists every kernel (and every ``record_function`` range mirrored on
    the GPU timeline) as an event of its own, with the same time again, so only host-side
    operator events count (else the total doubles and the kernels crowd the top list)."""
    if cuda:
        from torch.autograd import DeviceType

        key = "self_device_time_total"
        events = [e for e in events if e.device_type == DeviceType.CPU and not e.is_user_annotation]
    else:
        key = "self_cpu_time_total"
    events = [e for e in events if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:n]
    return {"total_ms_per_step": total / 1e3 / steps,
            "top": [{"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": getattr(e, key) / 1e3 / steps,
                     "share": getattr(e, key) / total} for e in top]}


# Paper size on one H100-class GPU: a 16 x 256 step in <= 30 ms, >= 40 % MFU and >= 5x the reference;
# a 32,768-segment sequence trains; >= 10x the reference at 4,096 segments (batch 1).
PAPER_TARGETS = {"step_ms": 30.0, "mfu": 0.40, "speedup": 5.0, "long_length": 32768, "long_speedup": 10.0}


def paper_targets(results: dict, best: dict, baseline: str, batch: int) -> dict:
    """:data:`PAPER_TARGETS` against this run: 16 x 256 step time, MFU and speed-up;
    the longest batch-1 sequence and the speed-up at 4,096 segments. ``met`` is None where
    this run did not measure the figure."""
    t = PAPER_TARGETS
    main = best.get("256") if batch == 16 else None
    at4k = best.get("4096") if batch == 1 else None

    def row(target: float, measured: float | None, higher: bool) -> dict:
        met = None if measured is None else (measured >= target if higher else measured <= target)
        return {"target": target, "measured": measured, "met": met}

    long = row(t["long_length"], None, higher=True)
    if batch == 1:
        ours = [runs for name, runs in results.items() if name != baseline]
        long["measured"] = max((int(k) for runs in ours for k, r in runs.items() if r["status"] == "ok"), default=None)
        tried = max((int(k) for runs in ours for k in runs), default=0)
        if (long["measured"] or 0) >= t["long_length"] or tried >= t["long_length"]:
            long["met"] = (long["measured"] or 0) >= t["long_length"]
    return {"step_ms_16x256": row(t["step_ms"], main and main["step_ms"], higher=False),
            "mfu_16x256": row(t["mfu"], main and main["mfu"], higher=True),
            "speedup_16x256": row(t["speedup"], main and main["speedup_vs_baseline"], higher=True),
            "longest_batch1": long,
            "speedup_4096_batch1": row(t["long_speedup"], at4k and at4k["speedup_vs_baseline"], higher=True)}


# ------------------------------------------------------------------ table


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def render_table(doc: dict) -> str:
    """A result document as a Markdown table (one row per variant and length), for the docs."""
    c, hw = doc["config"], doc["hardware"]
    where = hw["gpu"] or f"{hw['cpu']}, {hw['torch_threads']} thread(s)"
    lines = [f"{where}, torch {doc['versions']['torch']}, batch {c['batch']}"
             f"{' (ragged)' if c['ragged'] else ''}: `{doc['command']}`", "",
             "| variant | segments | ms/step | × baseline | segments/s | MFU | peak GiB | Δ first loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in doc["results"].items():
        for length, r in runs.items():
            if r["status"] != "ok":
                lines.append(f"| {name} | {length} | {r['status']} | | | | | |")
                continue
            lines.append(f"| {name} | {length} | {r['step_ms']:.1f} | {_fmt(r['speedup_vs_baseline'], '.2f')} | "
                         f"{r['segments_per_s']:,.0f} | {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')} % | "
                         f"{_fmt(r['peak_mem_gib'], '.1f')} | {_fmt(r['loss_rel_diff_vs_baseline'], '.1e')} |")
    d = doc.get("data")
    if d and d.get("status") == "ok":
        lines += ["", f"Data loader ({d['variant']}, {d['workers']} workers, {d['steps']} steps): "
                      f"{100 * d['data_share']:.1f} % of step time waiting for data "
                      f"(median wait {d['wait_ms']:.2f} ms of {d['step_ms']:.1f} ms)."]
    return "\n".join(lines)


# ------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="config files + overrides (see PRESETS)")
    p.add_argument("--config", action="append", default=[], help="more config YAML (after the preset's)")
    p.add_argument("--batch", type=int, help="sequences per step (default: deepspeed.micro_batch)")
    p.add_argument("--length", type=int, nargs="+", help="segments per sequence; several = a sweep (default: data.max_len)")
    p.add_argument("--ragged", action="store_true", help="lengths uniform in [2, L] within the batch")
    p.add_argument("--variants", nargs="+", help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    p.add_argument("--zero", type=int, nargs="*", default=[], choices=[0, 1, 2, 3],
                   help="also measure fast+bf16+zeroN through the DeepSpeed engine")
    p.add_argument("--baseline", help="variant the ratios are against (default: the first reference one)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, help="datasheet peak for MFU (default: table by GPU name)")
    p.add_argument("--peak-n", type=int, help="matmul size for the measured peak (default 8192 GPU, 1024 CPU)")
    p.add_argument("--no-data", action="store_true", help="skip the data-loader share")
    p.add_argument("--data-variant", help="variant fed from the store (default: fastest torch-engine one, no compile)")
    p.add_argument("--data-steps", type=int, default=20)
    p.add_argument("--workers", type=int, help="loader workers (default: data.num_workers)")
    p.add_argument("--profile", help="variant to profile at the first length")
    p.add_argument("--trace", help="chrome trace file for --profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here (atomically)")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print saved results as Markdown tables, run nothing")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def measured_peaks(device: Any, n: int | None, spec_tflops: float | None) -> dict:
    """Measured fp32 and bf16 matmul throughput in this run; MFU uses the faster one."""
    import torch

    n = n or (8192 if device.type == "cuda" else 1024)
    got = {f"measured_{name}_tflops": matmul_tflops(device, dtype, n)
           for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {"matmul_n": n, **got, "measured_peak_tflops": max(got.values()), "spec_bf16_tflops": spec_tflops}


def make_context(args: argparse.Namespace) -> tuple[Context, dict]:
    import torch

    from lvmae.models.flops import peak_tflops
    from lvmae.models.lvmae import LVMAE

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_bench_config(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        from lvmae.errors import LvmaeError

        raise LvmaeError("--device cuda but no CUDA device is visible")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    torch.manual_seed(args.seed)
    init_state = LVMAE(cfg.model).state_dict()
    spec = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(0)) if use_cuda else None)
    peaks = measured_peaks(device, args.peak_n, spec)
    ctx = Context(cfg=cfg, device=device, batch=args.batch or cfg.deepspeed.micro_batch, ragged=args.ragged,
                  warmup=args.warmup, repeats=args.repeats, init_state=init_state,
                  peak_flops=peaks["measured_peak_tflops"] * 1e12, spec_flops=spec * 1e12 if spec else None)
    return ctx, peaks


def pick_data_variant(name: str | None, variants: list[Variant], step_ms: dict[str, float], device_type: str) -> Variant:
    """``name``, else the fastest variant measured that runs on the torch engine uncompiled."""
    if name:
        return parse_variant(name, device_type)
    plain = [v for v in variants if not (v.compile or v.zero is not None or v.reference) and v.name in step_ms]
    return min(plain, key=lambda v: step_ms[v.name]) if plain else variants[-1]


def run(args: argparse.Namespace) -> dict:
    ctx, peaks = make_context(args)
    dev = ctx.device.type
    names = list(args.variants or DEFAULT_VARIANTS) + [f"fast+bf16+zero{s}" for s in args.zero]
    variants = [parse_variant(n, dev) for n in dict.fromkeys(names)]
    baseline = args.baseline or next((v.name for v in variants if v.reference), variants[0].name)
    lengths = args.length or [ctx.cfg.data.max_len]
    results, longest = {}, {}
    for v in variants:
        def one(length: int, v: Variant = v) -> dict:
            r = guarded(ctx.device, lambda: measure(v, ctx, length))
            log(f"{v.name} L={length}: " + (f"{r['step_ms']:.2f} ms/step" if r["status"] == "ok" else r["status"]))
            return r

        results[v.name], longest[v.name] = sweep(one, lengths)
    add_ratios(results, baseline)
    best = summarise(results, baseline)
    out = {"benchmark": "bench_model", "date": now_utc(), "command": " ".join(["python", *sys.argv]),
           "hardware": hardware(), "versions": versions(), "peak": peaks,
           "config": {"preset": args.preset, "files": args.config, "overrides": args.overrides,
                      "device": dev, "batch": ctx.batch, "lengths": sorted(set(lengths)), "ragged": ctx.ragged,
                      "warmup": ctx.warmup, "repeats": ctx.repeats, "baseline": baseline,
                      "model": dataclasses.asdict(ctx.cfg.model), "masking": dataclasses.asdict(ctx.cfg.masking)},
           "results": results, "longest_fit": longest, "best": best}
    if args.preset == "paper" and not ctx.ragged and baseline.startswith("reference"):
        out["paper_targets"] = paper_targets(results, best, baseline, ctx.batch)
    first = str(min(lengths))
    if not args.no_data:
        times = {n: r[first]["step_ms"] for n, r in results.items() if r[first]["status"] == "ok"}
        v = pick_data_variant(args.data_variant, variants, times, dev)
        workers = ctx.cfg.data.num_workers if args.workers is None else args.workers
        out["data"] = guarded(ctx.device, lambda: data_share(v, ctx, min(lengths), args.data_steps, workers))
        out["data"]["fixed_batch_step_ms"] = times.get(v.name)
    if args.profile:
        pv = parse_variant(args.profile, dev)
        out["profile"] = guarded(ctx.device, lambda: profile_steps(pv, ctx, min(lengths), trace=args.trace))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from lvmae.errors import LvmaeError

    args = parse_args(argv)
    if args.render:
        import json

        print("\n\n".join(render_table(json.loads(Path(f).read_text())) for f in args.render))
        return 0
    try:
        emit(run(args), args.out)
    except LvmaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
