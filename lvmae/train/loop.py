"""The pretraining loop: ``pretrain(cfg) -> summary``.

One optimizer step = ``grad_accum`` micro-batches per rank. The LR is a pure function
of the step, the data order a pure function of ``(seed, epoch, position)`` and the RNG
state is checkpointed per rank, so a run resumed from its latest checkpoint ends
with the same step count and (up to float non-determinism) the same weights as an
unbroken run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmae.config import Config, save_config, section_dict
from lvmae.data import DataStream, build_stream, to_device
from lvmae.data.checks import check_before_training
from lvmae.errors import ConfigError, LvmaeError
from lvmae.io import atomic_write_json
from lvmae.lock import dir_lock
from lvmae.train.checkpoint import Checkpointer, CheckpointError
from lvmae.train.engine import DistInfo, Engine, build_engine, setup_distributed
from lvmae.train.export import write_export
from lvmae.train.metrics import MetricsLogger, plot_curves, read_metrics, retrieval_hits
from lvmae.train.schedule import lr_at, resolve_peak_lr
from lvmae.train.text_monitor import text_retrieval_hits
from lvmae.train.validate import Validator, build_validator

log = logging.getLogger("lvmae.train")


class NonFiniteLossError(LvmaeError):
    """The loss became NaN/inf: the run stops and keeps its last good checkpoint."""


def build_model(cfg: Config) -> nn.Module:
    """The LV-MAE model for ``cfg.model`` (a seam the tests can replace)."""
    from lvmae.models.lvmae import LVMAE

    return LVMAE(cfg.model)


def _trained_length(cfg: Config, latest: Path | None) -> Config:
    """On resume, the ``model.rope.train_length`` the run started with (positions depend on it):
    a changed ``data.max_len`` then changes the crops, not the model."""
    if latest is None or cfg.model.rope.train_length:
        return cfg
    try:
        saved = json.loads((latest / "trainer.json").read_text())["model"]["rope"]["train_length"]
    except (OSError, KeyError, TypeError, ValueError):
        return cfg  # _resume reports an unreadable trainer state
    rope = dataclasses.replace(cfg.model.rope, train_length=int(saved))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rope=rope))


def with_data_dims(cfg: Config, dims: list[int]) -> Config:
    """``model.in_dim`` / ``model.modality_dims`` from the store (the data decides the input size),
    and ``model.rope.train_length`` from ``data.max_len`` where the positions depend on it and it is unset."""
    rope = cfg.model.rope
    uses_length = (rope.length_scaling or rope.decay == "local"
                   or (rope.kind == "hope" and rope.zero_freq_rule == "wavelength"))
    if rope.train_length == 0 and uses_length:
        rope = dataclasses.replace(rope, train_length=cfg.data.max_len)
    model = dataclasses.replace(cfg.model, in_dim=int(sum(dims)), modality_dims=list(dims) if len(dims) > 1 else [],
                                rope=rope)
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

    @property
    def validating(self) -> bool:
        return bool(self.cfg.data.val_stores) or self.cfg.data.val_fraction > 0.0


def _setup(cfg: Config) -> _Run:
    dist = setup_distributed(cfg)
    run_dir = Path(cfg.run.out_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_last, dist.rank)
    latest = _resume_point(cfg, ckpt, dist)
    check_before_training(cfg.data.stores, cfg.data.allow_mixed_stores, cfg.masking.ratio, cfg.data.short_policy,
                          scan=cfg.data.check_stores)
    scales = cfg.model.rope.train_scales if cfg.model.rope.kind == "hope" else []
    stream = build_stream(cfg.data, cfg.masking, scales, cfg.deepspeed.micro_batch,
                          seed=cfg.run.seed, rank=dist.rank, world=dist.world,
                          pin_memory=dist.device.type == "cuda")
    cfg = with_data_dims(_trained_length(cfg, latest), stream.sampler.dataset.dims)
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    model = build_model(cfg)
    seed_everything(cfg.run.seed + dist.rank)
    engine = build_engine(model, cfg, dist)
    peak, rule = resolve_peak_lr(cfg.optim.base_lr, cfg.optim.lr, engine.global_batch)
    run = _Run(cfg, dist, run_dir, stream, engine, ckpt, peak)
    if dist.is_main:
        _log_schedule(run, rule)
    ckpt.clean_stale()
    if latest is not None:
        _resume(run, latest)
    if dist.is_main:
        save_config(cfg, run_dir)
    return run


def _resume_point(cfg: Config, ckpt: Checkpointer, dist: DistInfo) -> Path | None:
    """The checkpoint to continue from; a run dir with checkpoints is only started over on ``--restart``."""
    t, run_dir = cfg.train, Path(cfg.run.out_dir)
    if t.restart:
        if dist.is_main and ckpt.has_any():
            log.warning("pretrain: --restart: deleting %d checkpoint(s) of %s and starting at step 0",
                        len(ckpt.checkpoints()), run_dir)
            ckpt.discard_all()
            shutil.rmtree(run_dir / "tb", ignore_errors=True)  # the old curves; metrics.jsonl goes at the start
        return None
    if not ckpt.has_any():
        return None
    if not t.resume:
        names = [d.name for d in ckpt.checkpoints()[:1]] or ["checkpoints/latest"]
        raise ConfigError(f"{run_dir} already has checkpoints ({names[0]}); pass --resume (train.resume=true) "
                          "to continue it, --restart (train.restart=true) to delete them and start over, "
                          "or pick another run.out_dir")
    latest = ckpt.find_resumable()
    if latest is None:
        why = "; ".join(ckpt.damaged) or "no step_* dir"
        raise CheckpointError(f"no checkpoint in {ckpt.root} verifies ({why}); nothing was changed. "
                              "Pass --restart to delete them and start over")
    if dist.is_main:
        log.info("pretrain: resuming from %s (verified)", latest)
    return latest


def finished_summary(cfg: Config) -> dict[str, Any] | None:
    """``--resume`` of a run that already reached ``train.steps``: its summary, with nothing written."""
    run_dir = Path(cfg.run.out_dir)
    summary = run_dir / "summary.json"
    if not cfg.train.resume or cfg.train.restart or not summary.is_file():
        return None
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_last).latest()
    if ckpt is None:
        return None
    step = json.loads((ckpt / "trainer.json").read_text())["step"]
    try:
        done = json.loads(summary.read_text())
    except ValueError:
        return None
    if step < cfg.train.steps or done.get("steps") != step:
        return None
    log.info("pretrain: %s already finished (step %d of %d, %s); nothing to do", run_dir, step, cfg.train.steps,
             ckpt.name)
    return {**done, "already_finished": True}


def _log_schedule(run: _Run, rule: str) -> None:
    """Batch and LR as the run resolved them (linear scaling makes small batches tiny LRs: show it)."""
    e, o, steps = run.engine, run.cfg.optim, run.cfg.train.steps
    log.info("pretrain: global batch %d (micro %d x accum %d x %d rank%s), peak LR %.2e = %s; "
             "warmup %d of %d steps, cosine to %g", e.global_batch, e.micro_batch, e.grad_accum, run.dist.world,
             "s" if run.dist.world > 1 else "", run.peak, rule, o.warmup_steps, steps, o.min_lr)
    if o.warmup_steps >= steps:
        log.warning("optim.warmup_steps (%d) >= train.steps (%d): the LR never decays (nor reaches its peak "
                    "before the last step)", o.warmup_steps, steps)
    if e.name == "torch" and run.cfg.deepspeed.zero_stage > 0:  # multi-rank torch runs refuse it instead
        log.warning("deepspeed.zero_stage=%d is ignored by deepspeed.engine=torch (one rank: plain AdamW)",
                    run.cfg.deepspeed.zero_stage)


PLAN_KEYS = ("stores", "weights", "modalities", "min_len", "max_len", "short_policy", "bucket_by_length",
             "bucket_window")


def _trainer_state(run: _Run) -> dict[str, Any]:
    c = run.cfg
    ds, data = c.deepspeed, section_dict(c.data)
    # What decides the data order and the LR schedule: a resume may change it, but is told so.
    plan = {"run.seed": c.run.seed, **{f"data.{k}": data[k] for k in PLAN_KEYS},
            **{f"masking.{k}": v for k, v in section_dict(c.masking).items()}, "train.steps": c.train.steps,
            "optim.warmup_steps": c.optim.warmup_steps, "optim.min_lr": c.optim.min_lr, "peak_lr": run.peak}
    return {"data": run.stream.state_dict(), "world": run.dist.world, "micro_batch": ds.micro_batch,
            "grad_accum": ds.grad_accum, "model": section_dict(c.model), "engine": run.engine.name, "plan": plan}


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
    was, new = saved.get("plan", {}), now["plan"]
    changed = [f"{k} was {was[k]!r}, now {new[k]!r}" for k in new if k in was and was[k] != new[k]]
    if changed and run.dist.is_main:
        log.warning("resuming %s with %s: the data order or LR schedule from here differs from the "
                    "original run", path.name, "; ".join(changed))
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


@dataclasses.dataclass
class _Step:
    """One optimizer step. ``values`` stays on the device until a log or checkpoint step fetches it."""

    step: int
    lr: float
    samples: int
    video_ids: list[str]
    values: torch.Tensor  # [7] float32, in VALUES order
    check_norm: bool  # False where an inf norm is expected (fp16 loss scaling skips that step) or unknown
    data_s: float  # wall time spent waiting for the stream's batches


VALUES = ("loss", "grad_norm", "segments", "top1", "top5", "text_top1", "text_top5")


def _scalar(v: torch.Tensor | float | None, device: torch.device) -> torch.Tensor:
    """A 0-d float32 tensor on ``device`` (NaN for None) without waiting for the device."""
    if v is None:
        return torch.full((), float("nan"), device=device)
    return torch.as_tensor(v, dtype=torch.float32).reshape(()).to(device)


def _micro_weights(num_masked: list[int]) -> list[float]:
    """Loss weight per micro-batch so the step's loss is the mean over all its masked segments.

    Each micro-batch's loss is a mean over its own masked segments and the engine divides by
    ``grad_accum``; weighting by ``n_i * grad_accum / sum(n)`` makes every masked segment count
    once, as in one unsplit batch (with length bucketing, micro-batches of 2-segment crops
    would otherwise outweigh long ones per segment).
    """
    total = sum(num_masked)
    if total == 0:
        return [1.0] * len(num_masked)
    return [n * len(num_masked) / total for n in num_masked]


def _rank_weight(run: _Run, num_masked: list[int]) -> torch.Tensor | float:
    """Extra loss factor for this rank: its share of the global batch's masked segments x world.

    Engines average gradients over ranks equally; with this factor every masked segment of
    the global batch counts once. The count is all-reduced on the device and never read
    back, so it costs no host sync. 1.0 on one rank.
    """
    if run.dist.world == 1:
        return 1.0
    local = float(sum(num_masked))
    total = torch.tensor(local, device=run.engine.device)
    torch.distributed.all_reduce(total)
    return local * run.dist.world / total.clamp(min=1.0)


def _train_step(run: _Run, retrieval: bool = True) -> _Step:
    """One optimizer step (``grad_accum`` micro-batches), queued without a host sync.

    Nothing here reads a device value back (no ``float(t)``, ``.item()`` or boolean-mask
    indexing), so on a GPU the CPU prepares the next step while this one runs; the
    finite check happens in :func:`_fetch`, at the next log or checkpoint step.
    """
    lr = lr_at(run.step, run.peak, run.cfg.train.steps, run.cfg.optim.warmup_steps, run.cfg.optim.min_lr)
    run.engine.set_lr(lr)
    tic = time.perf_counter()
    batches = [next(run.stream) for _ in range(run.engine.grad_accum)]
    data_s = time.perf_counter() - tic
    counts = [b["num_masked"] for b in batches]
    weights, rank_w = _micro_weights(counts), _rank_weight(run, counts)
    device, loss, segments, ids = run.engine.device, 0.0, 0.0, []
    for batch, w in zip(batches, weights):
        b = to_device(batch, device, run.engine.input_dtype)
        out = run.engine.forward(b["x"], b["valid"], b["masks"], scale=b["scale"])
        scale = w * rank_w  # a device tensor on several ranks: never compared on the host
        run.engine.backward(out["loss"] if isinstance(scale, float) and scale == 1.0 else out["loss"] * scale)
        loss = loss + out["loss"].detach().float() * w  # logged: this rank's mean over its masked segments
        segments = segments + b["valid"].sum()
        ids += batch["video_ids"]
    if retrieval:  # the last micro-batch; B*L x B*L scores, so only on log steps
        hits = retrieval_hits(out["pred"], out["target"], out["mask"], b["valid"])
        text = _text_hits(run, out, b) if "monitor" in b else torch.full((2,), float("nan"), device=device)
        hits = torch.cat([hits, text])
    else:
        hits = torch.full((4,), float("nan"), device=device)
    norm = run.engine.step()
    run.step += 1
    values = torch.cat([torch.stack([loss / run.engine.grad_accum, _scalar(norm, device), segments.float()]), hits])
    check_norm = norm is not None and run.engine.precision != "fp16"
    return _Step(run.step, lr, len(ids), ids, values, check_norm, data_s)


def _text_hits(run: _Run, out: dict[str, Any], b: dict[str, Any]) -> torch.Tensor:
    """Video-text R@1/R@5 (``data.text_monitor``, :mod:`lvmae.train.text_monitor`): each masked
    segment's reconstructed vision part ranked against the batch's distinct segment texts. Texts
    get the target's per-segment standardisation when ``model.norm_target`` is on, so they sit in
    the space the decoder predicts."""
    dims = list(run.cfg.model.modality_dims) or [run.cfg.model.in_dim]
    i = run.cfg.data.modalities.index("vision")
    lo = sum(dims[:i])
    pred, text = out["pred"][..., lo: lo + dims[i]], b["monitor"].float()
    if run.cfg.model.norm_target:
        text = (text - text.mean(-1, keepdim=True)) / (text.var(-1, keepdim=True) + 1e-6).sqrt()
    return text_retrieval_hits(pred, text, out["mask"], b["valid"])


def _fetch(run: _Run, window: list[_Step]) -> list[list[float]]:
    """The window's numbers on the host (``[steps][VALUES]``): the loop's one sync per log/checkpoint step.

    Raises :class:`NonFiniteLossError` on every rank together at the first step whose
    loss (or gradient norm, outside fp16 loss scaling) is NaN/inf. The weights may be
    NaN by then, so it is checked before every checkpoint and nothing after it is saved.
    """
    table = torch.stack([s.values for s in window])  # [n, len(VALUES)]
    n, device = len(window), table.device
    checked = torch.tensor([[True, s.check_norm] for s in window], device=device)
    bad = (~torch.isfinite(table[:, :2]) & checked).any(1)
    first = torch.where(bad, torch.arange(n, device=device), n).min()
    if run.dist.world > 1:
        torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
    flat = torch.cat([table.flatten(), first.float()[None]]).tolist()
    rows = [flat[i * len(VALUES) : (i + 1) * len(VALUES)] for i in range(n)]
    if int(flat[-1]) < n:
        raise _non_finite(run, window[int(flat[-1])], rows[int(flat[-1])])
    return rows


def _non_finite(run: _Run, s: _Step, row: list[float]) -> NonFiniteLossError:
    loss, norm = row[0], row[1]
    if not math.isfinite(loss):
        what = f"loss is {loss}"
    elif s.check_norm and not math.isfinite(norm):
        what = f"grad norm is {norm} (loss {loss:.4g})"
    else:
        what = f"another rank's loss or grad norm is not finite (this rank {run.dist.rank}: loss {loss:.4g})"
    return NonFiniteLossError(
        f"{what} at step {s.step} (videos {s.video_ids[:4]}...); stopped without saving. "
        f"Last good checkpoint: {run.ckpt.last or 'none'}. "
        "Check the features for outliers, lower optim.base_lr or use precision bf16/fp32."
    )


def _log_scalars(run: _Run, window: list[_Step], rows: list[list[float]], seconds: float) -> dict[str, float]:
    """Mean over the steps since the last log; throughput counts every rank."""
    v = dict(zip(VALUES, np.asarray(rows, dtype=np.float64).T))
    scalars = {
        "train/loss": float(v["loss"].mean()),
        "train/lr": window[-1].lr,
        "train/grad_norm": float(v["grad_norm"].mean()),
        "train/retrieval_top1": float(np.nanmean(v["top1"])),  # measured on the log step only
        "train/retrieval_top5": float(np.nanmean(v["top5"])),
        "perf/segments_per_s": float(v["segments"].sum()) * run.dist.world / seconds,
        "perf/samples_per_s": sum(s.samples for s in window) * run.dist.world / seconds,
        "perf/steps_per_s": len(window) / seconds,
        "perf/data_wait_frac": sum(s.data_s for s in window) / seconds,
        "train/epoch": float(run.stream.epoch),
    }
    if run.cfg.data.text_monitor:
        scalars["train/text_retrieval_top1"] = float(np.nanmean(v["text_top1"]))
        scalars["train/text_retrieval_top5"] = float(np.nanmean(v["text_top5"]))
    if run.engine.device.type == "cuda":
        scalars["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(run.engine.device) / 2**30
    return scalars


def _save(run: _Run) -> Path:
    return run.ckpt.save(run.engine, run.step, _trainer_state(run))


def _due(step: int, every: int, last: int) -> bool:
    """Whether an every-``every``-steps action (log, checkpoint) happens after ``step`` (always after the last)."""
    return step % every == 0 or step == last


def _validate(run: _Run, validator: Validator | None) -> dict[str, float]:
    """Held-out losses, computed on the main rank (every rank takes part in gathering the weights)."""
    with run.engine.gathered() as module:
        out = validator(module, run.engine.device) if validator is not None else {}
    run.engine.barrier()
    return out


def _train(run: _Run, logger: MetricsLogger, validator: Validator | None = None) -> dict[str, float]:
    """Steps until ``train.steps``: log every ``log_every``, checkpoint every ``save_every`` and at the end,
    validate every ``eval_every`` (default: at each checkpoint) when there is validation data."""
    from tqdm import tqdm

    t = run.cfg.train
    bar = tqdm(total=t.steps, initial=run.step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not (run.cfg.run.progress and run.dist.is_main))
    window: list[_Step] = []
    scalars: dict[str, float] = {}
    tic = time.perf_counter()
    try:
        while run.step < t.steps:
            window.append(_train_step(run, retrieval=_due(run.step + 1, t.log_every, t.steps)))
            bar.update(1)
            logs, save = _due(run.step, t.log_every, t.steps), _due(run.step, t.save_every, t.steps)
            evals = run.validating and _due(run.step, t.eval_every or t.save_every, t.steps)
            if logs or save or evals:
                rows = _fetch(run, window)  # raises before a non-finite step is logged or saved
            val = _validate(run, validator) if evals else {}
            if val and not logs:
                logger.log(run.step, val)
            if logs:
                scalars = {**_log_scalars(run, window, rows, time.perf_counter() - tic), **val}
                logger.log(run.step, scalars)
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", lr=f"{scalars['train/lr']:.2e}",
                                top1=f"{scalars['train/retrieval_top1']:.2f}")
                window, tic = [], time.perf_counter()
            if save:
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


def _exclusive(fn: Callable[[Config], dict[str, Any]]) -> Callable[[Config], dict[str, Any]]:
    """A finished run's summary untouched (``--resume``), else ``fn`` under this rank's run-dir lock."""

    @functools.wraps(fn)
    def inner(cfg: Config) -> dict[str, Any]:
        done = finished_summary(cfg)
        if done is not None:
            return done
        rank = int(os.environ.get("RANK", "0"))
        with dir_lock(cfg.run.out_dir, f"pretrain-rank{rank:05d}", "pretraining run"):
            return fn(cfg)

    return inner


@_exclusive
def pretrain(cfg: Config) -> dict[str, Any]:
    """Pre-train LV-MAE on ``cfg.data.stores``; write checkpoints, logs, export into ``cfg.run.out_dir``.

    Returns a summary: steps, first/last logged loss, retrieval, throughput, paths.
    """
    run = _setup(cfg)
    start = run.step
    logger = MetricsLogger(run.dir, enabled=run.dist.is_main, resume_step=start if run.resumed_from else None,
                           loggers=cfg.run.loggers,
                           wandb={"project": cfg.run.wandb_project, "config": dataclasses.asdict(cfg)})
    ok = False
    try:
        validator = None
        if run.validating and run.dist.is_main:
            c = run.cfg
            validator = build_validator(c.data, c.masking, c.train.eval_lengths, c.train.eval_windows, c.run.seed)
        last = _train(run, logger, validator) if run.step < run.cfg.train.steps else {}
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
    train_recs = [r for r in recs if "train/loss" in r]
    return {
        "steps": run.step, "start_step": start, "resumed_from": run.resumed_from,
        "engine": run.engine.name, "world": run.dist.world, "global_batch": run.engine.global_batch,
        "peak_lr": run.peak,
        "first_loss": train_recs[0]["train/loss"] if train_recs else None,
        "final_loss": last.get("train/loss"), "final_metrics": last,
        "checkpoint": str(run.ckpt.last) if run.ckpt.last else None,
        "export": str(export) if export else None, "run_dir": str(run.dir),
    }
