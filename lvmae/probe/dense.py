"""Dense probing: one label per stored segment, predicted from frozen per-segment features.

``run_dense(cfg)`` is ``lvmae probe`` with ``probe.dense: true``. It shares the video
probe's machinery: the same feature bank and cached LV-MAE encoding, the same
fingerprinted ``progress.jsonl`` (a rerun skips finished fits), the same selection
discipline (every epoch and learning rate chosen on val segment accuracy; the test
split scored once, with the selected weights; mean ± std over ``probe.seeds``) and the
same results.md / results.csv / results.json / plots/ layout (:mod:`lvmae.probe.dense_report`).

Labels ride in a :class:`~lvmae.probe.bank.SequenceBank` of their own (one value per
segment), so a batch of labels is the same gather as the batch of features.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.benchmarks.dense import IGNORE, MatchedDenseTask, match_dense
from lvmae.benchmarks.dense_sources import load_dense
from lvmae.config import Config, save_config
from lvmae.devices import resolve_device
from lvmae.errors import DataError
from lvmae.io import atomic_write_json
from lvmae.probe.bank import SequenceBank, load_bank, subsample_index
from lvmae.probe.dense_heads import TemporalConv, TokenLinear
from lvmae.probe.dense_metrics import per_class, segmentation_scores
from lvmae.probe.fit import FitResult, TrainSettings, best_epochs
from lvmae.probe.methods import Method, select_methods
from lvmae.probe.runner import (
    ProgressLog,
    aggregate,
    encoded_bank,
    fit_fingerprints,
    open_probe_store,
)
from lvmae.store import FeatureStore
from lvmae.train.optim import param_groups

log = logging.getLogger("lvmae.probe")

DENSE_METHODS = {m.name: m for m in (
    Method("raw_linear", "raw", "token_linear", "each raw segment embedding alone: BatchNorm (no affine) + Linear"),
    Method("raw_temporal", "raw", "temporal", "raw segment embeddings, one MS-TCN stage of dilated convolutions"),
    Method("lvmae_linear", "lvmae", "token_linear", "each frozen LV-MAE token alone: BatchNorm + Linear"),
    Method("lvmae_temporal", "lvmae", "temporal", "frozen LV-MAE tokens, one MS-TCN stage of dilated convolutions"),
)}


def label_bank(ids: Sequence[str], labels: Sequence[np.ndarray]) -> SequenceBank:
    """Per-segment class ids as a bank of ``[T, 1]`` values (float32 holds ids exactly)."""
    lengths = torch.as_tensor([len(y) for y in labels], dtype=torch.long)
    flat = torch.from_numpy(np.concatenate(labels).astype(np.float32))[:, None] if len(labels) else torch.zeros(0, 1)
    return SequenceBank(list(ids), flat, torch.cumsum(lengths, 0) - lengths, lengths)


def _targets(labels: SequenceBank, rows: Tensor, device: torch.device) -> Tensor:
    b = labels.batch(rows, device)
    y = b.x[..., 0].round().long()
    return torch.where(b.valid, y, torch.full_like(y, IGNORE))


@torch.no_grad()
def predict_dense(head: nn.Module, bank: SequenceBank, rows: Tensor, batch_size: int,
                  device: torch.device) -> list[np.ndarray]:
    """Predicted class per segment, one ``[length]`` array per row."""
    head.eval()
    out: list[np.ndarray] = []
    for chunk in torch.split(rows, batch_size):
        b = bank.batch(chunk, device)
        pred = head(b.x, b.valid).argmax(-1).cpu().numpy()
        out += [p[:n] for p, n in zip(pred, b.valid.sum(1).cpu().tolist())]
    return out


def _epoch(head: nn.Module, bank: SequenceBank, labels: SequenceBank, rows: Tensor, opt: torch.optim.Optimizer,
           lrs: list[float], gen: torch.Generator, batch_size: int, device: torch.device) -> float:
    """One shuffled pass over the videos (cross-entropy over labelled segments); mean loss."""
    head.train()
    losses = []
    for idx, lr in zip(torch.randperm(len(rows), generator=gen).split(batch_size), lrs):
        y = _targets(labels, rows[idx], device)
        if int((y != IGNORE).sum()) < 2:  # BatchNorm needs two tokens; nothing to learn from
            continue
        for g in opt.param_groups:
            g["lr"] = lr
        b = bank.batch(rows[idx], device)
        loss = nn.functional.cross_entropy(head(b.x, b.valid)[b.valid], y[b.valid], ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return float(torch.stack(losses).mean()) if losses else float("nan")


def _val_acc(preds: list[np.ndarray], trues: list[np.ndarray]) -> float:
    return segmentation_scores(preds, trues, overlaps=())["acc"]


def train_dense(head: nn.Module, bank: SequenceBank, labels: SequenceBank, rows: dict[str, Tensor],
                trues: dict[str, list[np.ndarray]], st: TrainSettings, seed: int,
                device: torch.device) -> tuple[dict[str, float], list[dict[str, float]]]:
    """AdamW on ``rows['train']``; the head is left at its best val-accuracy epoch (test untouched)."""
    gen = torch.Generator().manual_seed(seed)
    head = head.to(device)
    opt = torch.optim.AdamW(param_groups(head, st.weight_decay), lr=st.lr)
    return best_epochs(
        head, st, -(-len(rows["train"]) // st.batch_size),
        lambda lrs: _epoch(head, bank, labels, rows["train"], opt, lrs, gen, st.batch_size, device),
        lambda: _val_acc(predict_dense(head, bank, rows["val"], st.batch_size * 4, device), trues["val"]),
        lambda a, b: a > b,
    )


@dataclasses.dataclass
class DenseData:
    """One task's features, labels and rows per split, with what the metrics need to know."""

    bank: SequenceBank
    labels: SequenceBank
    rows: dict[str, Tensor]
    trues: dict[str, list[np.ndarray]]
    num_classes: int
    background: tuple[int, ...]


def fit_dense(make_head: Callable[[], nn.Module], data: DenseData, st: TrainSettings, seed: int,
              device: torch.device, lrs: Sequence[float] = (), timelines: int = 0) -> FitResult:
    """One fresh head per learning rate, the best on val kept, its test predictions scored once.

    ``FitResult.test`` is the test segment accuracy; ``extra["scores"]`` holds every metric
    (:func:`~lvmae.probe.dense_metrics.segmentation_scores`), ``extra["per_class"]`` the
    per-class recall/precision, ``extra["timelines"]`` the first ``timelines`` test videos'
    true and predicted labels (for the plots).
    """
    trials, best = [], None
    for lr in list(lrs) or [st.lr]:
        torch.manual_seed(seed)
        head = make_head()
        rec, history = train_dense(head, data.bank, data.labels, data.rows, data.trues, replace(st, lr=lr),
                                   seed, device)
        trials.append([lr, rec["val"]])
        if best is None or rec["val"] > best[0]["val"]:
            best = (rec, history, head, lr)
    assert best is not None
    rec, history, head, lr = best
    preds = predict_dense(head, data.bank, data.rows["test"], st.batch_size * 4, device)
    scores = segmentation_scores(preds, data.trues["test"], data.background)
    ids = [data.bank.ids[int(r)] for r in data.rows["test"][:timelines]]
    shown = {v: {"true": t.tolist(), "pred": p.tolist()} for v, t, p in zip(ids, data.trues["test"], preds)}
    return FitResult(rec["val"], scores["acc"], int(rec["epoch"]), history, None,
                     {"epochs_run": len(history), "lr": lr, "lr_val": trials, "scores": scores,
                      "per_class": per_class(preds, data.trues["test"], data.num_classes), "timelines": shown})


def _make_head(cfg: Config, method: Method, dim: int, out: int) -> Callable[[], nn.Module]:
    pc = cfg.probe
    if method.head == "token_linear":
        return lambda: TokenLinear(dim, out)
    return lambda: TemporalConv(dim, out, pc.dense_width, pc.dense_layers)


def _data(task: MatchedDenseTask, bank: SequenceBank) -> DenseData:
    """The task's labels in a bank row-aligned with ``bank`` (videos outside the task: all IGNORE)."""
    given = {sid: y for sp in task.splits.values() for sid, y in zip(sp.store_ids, sp.labels)}
    for sid, y in given.items():
        n = int(bank.lengths[bank.rows([sid])[0]])
        if n != len(y):
            raise DataError(f"video {sid!r}: {n} feature tokens but {len(y)} segment labels; "
                            "dense probes need one token per segment")
    ys = [given.get(v, np.full(int(n), IGNORE)) for v, n in zip(bank.ids, bank.lengths.tolist())]
    rows = {s: bank.rows(sp.store_ids) for s, sp in task.splits.items()}
    trues = {s: list(sp.labels) for s, sp in task.splits.items()}
    return DenseData(bank, label_bank(bank.ids, ys), rows, trues, task.task.num_classes, task.task.background)


def _aggregate_dense(per_seed: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The video probe's aggregate (test = segment accuracy) plus mean ± std of every metric and per-class recall."""
    out = aggregate(per_seed)
    names = list(per_seed[0][1]["scores"])
    vals = {k: np.asarray([r["scores"][k] for _, r in per_seed], dtype=np.float64) for k in names}
    out["metrics"] = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
                      for k, v in vals.items()}
    recalls = np.asarray([[np.nan if x is None else x for x in r["per_class"]["recall"]] for _, r in per_seed])
    seen = ~np.isnan(recalls).all(0)
    mean = np.full(recalls.shape[1], np.nan)
    mean[seen] = np.nanmean(recalls[:, seen], axis=0)
    out["per_class"] = {"support": per_seed[0][1]["per_class"]["support"],
                        "recall_mean": [None if np.isnan(x) else float(x) for x in mean]}
    return out


def _run_fits(cfg: Config, tasks: dict[str, MatchedDenseTask], methods: list[Method], banks: dict[str, SequenceBank],
              fps: dict[str, str], progress: ProgressLog, device: torch.device) -> dict[str, dict[str, list]]:
    from tqdm.auto import tqdm

    pc = cfg.probe
    st = TrainSettings(pc.epochs, pc.lr, pc.min_lr, pc.weight_decay, pc.batch_size, pc.warmup_epochs, pc.schedule,
                       pc.attn_patience)
    data = {(t, f): _data(tasks[t], banks[f]) for t in tasks for f in {m.features for m in methods}}
    results: dict[str, dict[str, list]] = {}
    units = [(t, m, s) for t in tasks for m in methods for s in pc.seeds]
    for task, method, seed in tqdm(units, desc="dense probing", unit="fit", disable=not cfg.run.progress):
        fp, key = fps[method.features], f"dense/{task}/{method.name}/{seed}"
        if (fp, key) not in progress.done:
            d = data[(task, method.features)]
            make = _make_head(cfg, method, d.bank.dim, d.num_classes)
            lrs = pc.linear_lrs if method.head == "token_linear" else ()
            progress.add(fp, key, fit_dense(make, d, st, seed, device, lrs, pc.dense_plots).to_dict())
        results.setdefault(task, {}).setdefault(method.name, []).append((seed, progress.done[(fp, key)]))
    return results


def prepare_dense(cfg: Config) -> tuple[FeatureStore, dict[str, MatchedDenseTask], Any, str]:
    """The store, its matched dense tasks (labels on the segment grid), the matching report and the benchmark name."""
    pc = cfg.probe
    store, usable = open_probe_store(pc)
    labels = load_dense(pc.benchmark, pc.labels, list(pc.tasks))
    tasks, report = match_dense(labels, store, usable, pc.val_fraction, keep=lambda n: subsample_index(n, pc.max_len))
    for line in report.summary():
        log.info("%s/%s", labels.name, line)
    for name, t in tasks.items():
        log.info("%s/%s: segment grid %.3g s (stride %.3g s); %.1f%% of labelled time relabelled by the grid rule, "
                 "%.1f%% past the last segment", labels.name, name, t.grid["seconds"], t.grid["stride"],
                 100 * t.grid["differs_fraction"], 100 * t.grid["beyond_fraction"])
    atomic_write_json(Path(cfg.run.out_dir) / "missing_features.json", report.to_dict())
    return store, tasks, report, labels.name


def run_dense(cfg: Config, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Dense-probe every task of ``cfg.probe.benchmark`` with ``probe.dense_methods`` x seeds; write the report.

    ``encoder`` overrides ``probe.checkpoint`` as in :func:`lvmae.probe.runner.run_probe`.
    Returns the summary also written to ``results.json``.
    """
    from lvmae.probe.dense_report import write_dense_report

    t0, pc, out_dir = time.time(), cfg.probe, Path(cfg.run.out_dir)
    device = resolve_device(cfg.run.device)
    methods, skipped = select_methods(list(pc.dense_methods), encoder is not None or bool(pc.checkpoint),
                                      DENSE_METHODS, "probe.dense_methods")
    store, tasks, report, bench = prepare_dense(cfg)
    ids = sorted({sid for t in tasks.values() for sp in t.splits.values() for sid in sp.store_ids})
    banks = {"raw": load_bank(store, ids, list(pc.modalities), pc.max_len, cfg.run.progress)}
    digest = ""
    if any(m.features == "lvmae" for m in methods):
        banks["lvmae"], digest = encoded_bank(cfg, store, banks["raw"], encoder, device)
    if device.type == "cuda":
        banks = {k: b.to(device) for k, b in banks.items()}
    fps = fit_fingerprints(replace(cfg, probe=replace(pc, dense_methods=[], dense_plots=0)), store, report, digest)
    results = _run_fits(cfg, tasks, methods, banks, fps, ProgressLog(out_dir / "progress.jsonl"), device)
    summary = {
        "benchmark": bench, "dense": True, "labels": pc.labels, "store": pc.store, "checkpoint": pc.checkpoint,
        "device": str(device), "methods": [m.name for m in methods], "skipped_methods": skipped,
        "tasks": {name: {"kind": "dense", "metric": "acc", "num_classes": t.task.num_classes,
                         "class_names": list(t.task.class_names), "background": list(t.task.background),
                         "val_carved": t.val_carved, "grid": t.grid,
                         "n": {s: len(sp) for s, sp in t.splits.items()},
                         "segments": {s: int(sum((y != IGNORE).sum() for y in sp.labels)) for s, sp in t.splits.items()}}
                  for name, t in tasks.items()},
        "results": {t: {m: _aggregate_dense(v) for m, v in r.items()} for t, r in results.items()},
        "matching": report.to_dict(), "config": dataclasses.asdict(cfg), "fingerprints": fps,
        "elapsed_s": round(time.time() - t0, 3),
    }
    save_config(cfg, out_dir)
    summary["files"] = {k: str(p) for k, p in write_dense_report(summary, out_dir).items()}
    return summary
