"""The pretraining loop: ``pretrain(cfg) -> summary``.

One optimizer step = ``grad_accum`` micro-batches per rank. The LR is a pure function
of the step, the data order a pure function of ``(seed, epoch, position)`` and the RNG
state is checkpointed per rank, so a run resumed from its latest checkpoint ends
with the same step count and (up to float non-determinism) the same weights as an
unbroken run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmae.config import Config, save_config, section_dict
from lvmae.data import DataStream, build_stream, to_device
from lvmae.errors import ConfigError, LvmaeError
from lvmae.io import atomic_write_json
from lvmae.train.checkpoint import Checkpointer
from lvmae.train.engine import DistInfo, Engine, build_engine, setup_distributed
from lvmae.train.export import write_export
from lvmae.train.metrics import MetricsLogger, plot_curves, read_metrics, retrieval_topk
from lvmae.train.schedule import lr_at, peak_lr


class NonFiniteLossError(LvmaeError):
    """The loss became NaN/inf: the run stops and keeps its last good checkpoint."""


def build_model(cfg: Config) -> nn.Module:
    """The LV-MAE model for ``cfg.model`` (a seam the tests can replace)."""
    from lvmae.models.lvmae import LVMAE

    return LVMAE(cfg.model)


def with_data_dims(cfg: Config, dims: list[int]) -> Config:
    """``model.in_dim`` / ``model.modality_dims`` from the store: the data decides the input size."""
    model = dataclasses.replace(cfg.model, in_dim=int(sum(dims)), modality_dims=list(dims) if len(dims) > 1 else [])
    return dataclasses.replace(cfg, model=model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclasses.dataclass
class _Run:
    """Everything one rank holds while training."""

    cfg: Config
    dist: DistInfo
    dir: Path
    stream: DataStream
    engine: Engine
    ckpt: Checkpointer
    peak: float
    step: int = 0
    resumed_from: str | None = None


def _setup(cfg: Config) -> _Run:
    dist = setup_distributed(cfg)
    run_dir = Path(cfg.run.out_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_last, dist.rank)
    latest = ckpt.latest()
    if latest is not None and not cfg.train.resume:
        raise ConfigError(f"{run_dir} already has checkpoints ({latest.name}); "
                          "pass --resume (train.resume=true) to continue it, or pick another run.out_dir")
    scales = cfg.model.rope.train_scales if cfg.model.rope.kind == "hope" else []
    stream = build_stream(cfg.data, cfg.masking, scales, cfg.deepspeed.micro_batch,
                          seed=cfg.run.seed, rank=dist.rank, world=dist.world,
                          pin_memory=dist.device.type == "cuda")
    cfg = with_data_dims(cfg, stream.sampler.dataset.dims)
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    model = build_model(cfg)
    seed_everything(cfg.run.seed + dist.rank)
    engine = build_engine(model, cfg, dist)
    run = _Run(cfg, dist, run_dir, stream, engine, ckpt, peak_lr(cfg.optim.base_lr, engine.global_batch))
    ckpt.clean_stale()
    if latest is not None:
        _resume(run, latest)
    if dist.is_main:
        save_config(cfg, run_dir)
    return run


def _trainer_state(run: _Run) -> dict[str, Any]:
    ds = run.cfg.deepspeed
    return {"data": run.stream.state_dict(), "world": run.dist.world, "micro_batch": ds.micro_batch,
            "grad_accum": ds.grad_accum, "model": section_dict(run.cfg.model), "engine": run.engine.name}


def _resume(run: _Run, path: Path) -> None:
    """Continue from ``path``: same batch layout and model required, else the data order would differ."""
    saved = json.loads((path / "trainer.json").read_text())
    now = _trainer_state(run)
    for key in ("world", "micro_batch", "grad_accum", "engine", "model"):
        was, new = saved.get(key), now[key]
        if was != new:
            if isinstance(new, dict) and isinstance(was, dict):
                key, was, new = _first_difference(key, was, new)
            raise ConfigError(f"cannot resume from {path}: {key} was {was!r}, now {new!r}")
    state = run.ckpt.load(run.engine, path)
    run.stream.load_state_dict(state["data"])
    run.step, run.resumed_from = int(state["step"]), str(path)


def _first_difference(prefix: str, a: dict, b: dict) -> tuple[str, Any, Any]:
    """The first differing (nested) key of two config dicts, e.g. ``("model.depth", 2, 4)``."""
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x != y:
            if isinstance(x, dict) and isinstance(y, dict):
                return _first_difference(f"{prefix}.{k}", x, y)
            return f"{prefix}.{k}", x, y
    return prefix, a, b


def _micro_batch(run: _Run, batch: dict[str, Any], stats: dict[str, float], last: bool) -> None:
    """Forward + finite-loss guard + backward for one micro-batch; adds to ``stats``."""
    b = to_device(batch, run.engine.device, run.engine.input_dtype)
    out = run.engine.forward(b["x"], b["valid"], b["masks"], scale=b["scale"])
    loss = out["loss"]
    finite = torch.tensor(float(math.isfinite(float(loss.detach()))), device=run.engine.device)
    if run.dist.world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if not finite.item():
        latest = run.ckpt.latest()
        raise NonFiniteLossError(
            f"loss is {float(loss.detach())} at step {run.step + 1} (videos {batch['video_ids'][:4]}...); "
            f"stopped without saving. Last good checkpoint: {latest or 'none'}. "
            "Check the features for outliers, lower optim.base_lr or use precision bf16/fp32."
        )
    run.engine.backward(loss)
    stats["loss"] += float(loss.detach()) / run.engine.grad_accum
    stats["segments"] += float(b["valid"].sum())
    stats["samples"] += len(batch["video_ids"])
    if last:
        stats.update(retrieval_topk(out["pred"], out["target"], out["mask"], b["valid"]))


def _train_step(run: _Run) -> dict[str, float]:
    """One optimizer step; returns its scalars (loss, lr, grad norm, retrieval, counts)."""
    lr = lr_at(run.step, run.peak, run.cfg.train.steps, run.cfg.optim.warmup_steps, run.cfg.optim.min_lr)
    run.engine.set_lr(lr)
    stats = {"loss": 0.0, "segments": 0.0, "samples": 0.0}
    for i in range(run.engine.grad_accum):
        _micro_batch(run, next(run.stream), stats, last=i == run.engine.grad_accum - 1)
    norm = run.engine.step()
    run.step += 1
    stats.update(lr=lr, grad_norm=float("nan") if norm is None else norm)
    return stats


def _log_scalars(run: _Run, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
    """Mean over the steps since the last log; throughput counts every rank."""
    last = window[-1]
    scalars = {
        "train/loss": float(np.mean([s["loss"] for s in window])),
        "train/lr": last["lr"],
        "train/grad_norm": float(np.mean([s["grad_norm"] for s in window])),
        "train/retrieval_top1": float(np.mean([s["top1"] for s in window])),
        "train/retrieval_top5": float(np.mean([s["top5"] for s in window])),
        "perf/segments_per_s": sum(s["segments"] for s in window) * run.dist.world / seconds,
        "perf/samples_per_s": sum(s["samples"] for s in window) * run.dist.world / seconds,
        "perf/steps_per_s": len(window) / seconds,
        "train/epoch": float(run.stream.epoch),
    }
    if run.engine.device.type == "cuda":
        scalars["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(run.engine.device) / 2**30
    return scalars


def _save(run: _Run) -> Path:
    return run.ckpt.save(run.engine, run.step, _trainer_state(run))


def _train(run: _Run, logger: MetricsLogger) -> dict[str, float]:
    """Steps until ``train.steps``: log every ``log_every``, checkpoint every ``save_every`` and at the end."""
    from tqdm import tqdm

    t = run.cfg.train
    bar = tqdm(total=t.steps, initial=run.step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not (run.cfg.run.progress and run.dist.is_main))
    window: list[dict[str, float]] = []
    scalars: dict[str, float] = {}
    tic = time.perf_counter()
    try:
        while run.step < t.steps:
            window.append(_train_step(run))
            bar.update(1)
            if run.step % t.log_every == 0 or run.step == t.steps:
                scalars = _log_scalars(run, window, time.perf_counter() - tic)
                logger.log(run.step, scalars)
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", lr=f"{scalars['train/lr']:.2e}",
                                top1=f"{scalars['train/retrieval_top1']:.2f}")
                window, tic = [], time.perf_counter()
            if run.step % t.save_every == 0 or run.step == t.steps:
                saving = time.perf_counter()
                _save(run)
                tic += time.perf_counter() - saving  # throughput counts training time only
    finally:
        bar.close()
    return scalars


def export_encoder(run: _Run) -> Path:
    """Encoder weights + config to ``RUN/export``, loadable without DeepSpeed (all ranks call it)."""
    out = run.dir / "export"
    with run.engine.gathered() as module:
        if run.dist.is_main:
            write_export(module, out, {"step": run.step, "stores": list(run.cfg.data.stores),
                                       "modalities": list(run.cfg.data.modalities)})
    run.engine.barrier()
    return out


def pretrain(cfg: Config) -> dict[str, Any]:
    """Pre-train LV-MAE on ``cfg.data.stores``; write checkpoints, logs, export into ``cfg.run.out_dir``.

    Returns a summary: steps, first/last logged loss, retrieval, throughput, paths.
    """
    run = _setup(cfg)
    start = run.step
    logger = MetricsLogger(run.dir, enabled=run.dist.is_main, resume_step=start if run.resumed_from else None)
    ok = False
    try:
        last = _train(run, logger) if run.step < run.cfg.train.steps else {}
        export = export_encoder(run) if run.cfg.train.export else None
        ok = True
    finally:
        logger.close()
        run.engine.close(barrier=ok)
    summary = _summary(run, start, last, export)
    if run.dist.is_main:
        if run.cfg.train.plot:
            summary["plot"] = str(plot_curves(run.dir / "metrics.jsonl", run.dir / "curves.png"))
        atomic_write_json(run.dir / "summary.json", summary)
    return summary


def _summary(run: _Run, start: int, last: dict[str, float], export: Path | None) -> dict[str, Any]:
    recs = read_metrics(run.dir / "metrics.jsonl") if run.dist.is_main else []
    return {
        "steps": run.step, "start_step": start, "resumed_from": run.resumed_from,
        "engine": run.engine.name, "world": run.dist.world, "global_batch": run.engine.global_batch,
        "first_loss": recs[0]["train/loss"] if recs else None,
        "final_loss": last.get("train/loss"), "final_metrics": last,
        "checkpoint": str(run.ckpt.latest()) if run.ckpt.latest() else None,
        "export": str(export) if export else None, "run_dir": str(run.dir),
    }
