"""``run_probe``: every task x method x seed of one benchmark, from one config.

Labels -> store ids (missing features reported, the rest go on) -> one raw
feature bank for the union of all tasks' videos -> LV-MAE encoder outputs once
per video (cached) -> fits -> tables and plots. Each finished fit is appended to
``progress.jsonl`` under a fingerprint of everything that changes its result, so
a rerun of the same command skips what is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmae.benchmarks import CLASSIFICATION, MatchedTask, load_labels, match_to_store
from lvmae.config import Config, save_config
from lvmae.devices import resolve_device
from lvmae.errors import ConfigError, DataError
from lvmae.io import append_line, atomic_write_json
from lvmae.lock import locked
from lvmae.probe.bank import SequenceBank, load_bank, pooled_bank
from lvmae.probe.encoder import (
    cache_key,
    cached_encode,
    checkpoint_digest,
    checkpoint_path,
    encode_bank,
    load_encoder,
)
from lvmae.probe.fit import FitResult, TrainSettings, fit_head, fit_sklearn
from lvmae.probe.heads import AttentiveProbe, LinearProbe
from lvmae.probe.methods import Method, select_methods
from lvmae.probe.report import write_report
from lvmae.store import FeatureStore, config_hash

log = logging.getLogger("lvmae.probe")


def state_digest(model: nn.Module) -> str:
    """Content hash of a module's weights (for caching outputs of an encoder passed in directly)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ProgressLog:
    """Finished fits, one JSON line each, appended durably, keyed by (fingerprint, task/method/seed)."""

    def __init__(self, path: Path):
        self.path, self.done = path, {}
        if not path.is_file():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn last line of a killed run (append_line starts the next record afresh)
            self.done[(rec["fingerprint"], rec["key"])] = rec["result"]

    def add(self, fingerprint: str, key: str, result: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, json.dumps({"fingerprint": fingerprint, "key": key, "result": result}))
        self.done[(fingerprint, key)] = result


@dataclasses.dataclass
class _Context:
    """What every fit of a run shares."""

    cfg: Config
    banks: dict[str, SequenceBank]
    device: torch.device
    pooled: dict[str, SequenceBank] = dataclasses.field(default_factory=dict)

    def pooled_bank(self, features: str) -> SequenceBank:
        """The bank with each video reduced to its mean (one row, ``cls`` kept), computed once.

        Linear heads and scikit-learn only see pooled features, so they train on
        ``[N, D]`` rows instead of gathering and pooling padded sequences every step.
        """
        if features not in self.pooled:
            self.pooled[features] = pooled_bank(self.banks[features])
        return self.pooled[features]


def _fit(ctx: _Context, task: MatchedTask, method: Method, seed: int) -> FitResult:
    pc, spec = ctx.cfg.probe, task.spec
    bank = ctx.pooled_bank(method.features) if method.head in ("sklearn", "linear") else ctx.banks[method.features]
    rows = {s: bank.rows(sp.store_ids) for s, sp in task.splits.items()}
    y = {s: sp.y for s, sp in task.splits.items()}
    if method.head == "sklearn":
        pooled = bank.flat.float().cpu()
        return fit_sklearn({s: pooled[r.cpu()].numpy() for s, r in rows.items()}, y, spec, list(pc.sklearn_grid),
                           seed)
    out = spec.num_classes if spec.kind == CLASSIFICATION else 1
    st = TrainSettings(pc.epochs, pc.lr, pc.min_lr, pc.weight_decay, pc.batch_size, pc.warmup_epochs, pc.schedule)
    if method.head == "linear":
        pooling = pc.pooling if bank.cls is not None else "mean"
        return fit_head(lambda: LinearProbe(bank.dim, out, pooling), bank, rows, y, spec, st, seed, ctx.device,
                        pc.linear_lrs)
    st.patience = pc.attn_patience
    return fit_head(lambda: AttentiveProbe(bank.dim, out, pc.attn_heads, pc.attn_queries, width=pc.attn_dim or None),
                    bank, rows, y, spec, st, seed, ctx.device)


def encoded_bank(cfg: Config, store: FeatureStore, raw: SequenceBank, encoder: nn.Module | None,
                  device: torch.device) -> tuple[SequenceBank, str]:
    """LV-MAE outputs for every video, and the encoder's digest (for the run fingerprint)."""
    pc = cfg.probe
    if encoder is None:
        path = checkpoint_path(pc.checkpoint)  # type: ignore[arg-type]
        encoder, _ = load_encoder(path, device)
        digest = checkpoint_digest(path)
    else:
        encoder = encoder.to(device).eval()
        digest = state_digest(encoder)
    in_dim = getattr(getattr(encoder, "cfg", None), "in_dim", None)
    if in_dim is not None and in_dim != raw.dim:
        raise DataError(f"the LV-MAE encoder takes {in_dim}-d inputs but probe.modalities {pc.modalities} "
                        f"in {pc.store} give {raw.dim}-d; use the modalities it was pretrained on")
    if not pc.cache:
        return encode_bank(encoder, raw, pc.encode_batch, device, pc.scale, cfg.run.progress,
                           pc.encode_window), digest
    settings = {"modalities": list(pc.modalities), "max_len": pc.max_len, "scale": pc.scale}
    if pc.encode_window:
        settings["window"] = pc.encode_window  # absent when 0: caches made before the key stay valid
    key = cache_key(digest, store, settings)
    root = pc.cache_dir or str(Path(cfg.run.out_dir) / "encoded")
    bank = cached_encode(encoder, raw, root, key, pc.encode_batch, device, pc.scale, cfg.run.progress,
                         {"checkpoint": str(pc.checkpoint), "digest": digest}, pc.encode_window)
    return bank, digest


def aggregate(per_seed: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    tests = np.asarray([r["test"] for _, r in per_seed], dtype=np.float64)
    vals = np.asarray([r["val"] for _, r in per_seed], dtype=np.float64)
    confs = [r["confusion"] for _, r in per_seed if r.get("confusion") is not None]
    return {
        "mean": float(tests.mean()), "std": float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
        "val_mean": float(vals.mean()), "seeds": [{"seed": s, **r} for s, r in per_seed],
        "confusion": np.sum(confs, axis=0).tolist() if confs else None,
    }


def open_probe_store(pc: Any) -> tuple[FeatureStore, list[str]]:
    """``probe.store`` and its videos with at least one segment (video and dense probes alike)."""
    if not pc.store:
        raise ConfigError("probe.store is not set (the feature store of the benchmark's videos)")
    store = FeatureStore.open(pc.store)
    return store, [v for v in store.video_ids if store.num_segments(v) > 0]


def _prepare(cfg: Config) -> tuple[FeatureStore, dict[str, MatchedTask], Any, str]:
    pc = cfg.probe
    store, usable = open_probe_store(pc)
    labels = load_labels(pc.benchmark, pc.labels, list(pc.tasks))
    tasks, report = match_to_store(labels, usable, pc.val_fraction)
    for line in report.summary():
        log.info("%s/%s", labels.name, line)
    for task, per in report.unseen.items():
        log.warning("%s/%s: %s video(s) of classes absent from train; kept and scored (they count as errors)",
                    labels.name, task, ", ".join(f"{s} {n}" for s, n in per.items()))
    n_missing = sum(len(v) for v in report.missing.values())
    if n_missing:
        log.warning("%d labelled (task, video) pairs have no features in %s; going on without them "
                    "(list: %s)", n_missing, pc.store, Path(cfg.run.out_dir) / "missing_features.json")
    atomic_write_json(Path(cfg.run.out_dir) / "missing_features.json", report.to_dict())
    return store, tasks, report, labels.name


LVMAE_ONLY = ("checkpoint", "scale", "encode_batch", "cache", "cache_dir", "pooling")


def fit_fingerprints(cfg: Config, store: FeatureStore, report: Any, digest: str) -> dict[str, str]:
    """What a fit's result depends on, per feature kind: raw fits survive a change of checkpoint."""
    skip = ("tasks", "methods", "seeds", *LVMAE_ONLY)
    probe = {k: v for k, v in dataclasses.asdict(cfg.probe).items() if k not in skip}
    raw = config_hash({"probe": probe, "store": store.config_hash, "matched": report.matched})
    lvmae = config_hash([raw, digest, cfg.probe.pooling, cfg.probe.scale])
    return {"raw": raw, "lvmae": lvmae}


def _run_fits(ctx: _Context, tasks: dict[str, MatchedTask], methods: list[Method], fps: dict[str, str],
              progress: ProgressLog) -> dict[str, dict[str, list]]:
    """Every task x method x seed not yet in ``progress``; returns ``{task: {method: [(seed, result)]}}``."""
    from tqdm.auto import tqdm

    seeds = list(ctx.cfg.probe.seeds)
    results: dict[str, dict[str, list]] = {}
    units = [(t, m, s) for t in tasks for m in methods for s in seeds]
    for task, method, seed in tqdm(units, desc="probing", unit="fit", disable=not ctx.cfg.run.progress):
        fp, key = fps[method.features], f"{task}/{method.name}/{seed}"
        first = (fp, f"{task}/{method.name}/{seeds[0]}")
        if (fp, key) not in progress.done and method.head == "sklearn" and first in progress.done:
            # deterministic solvers (lbfgs, closed-form ridge): another seed gives the same fit
            progress.add(fp, key, {**progress.done[first], "same_as_seed": seeds[0]})
        elif (fp, key) not in progress.done:
            progress.add(fp, key, _fit(ctx, tasks[task], method, seed).to_dict())
        results.setdefault(task, {}).setdefault(method.name, []).append((seed, progress.done[(fp, key)]))
    return results


@locked(lambda cfg, encoder=None: cfg.run.out_dir, lambda cfg, encoder=None: "probe", "probe run")
def run_probe(cfg: Config, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Probe every task of ``cfg.probe.benchmark`` with every method and seed; write the report.

    ``encoder`` (anything with ``encode(x, valid, scale) -> {"tokens", "cls", "valid"}``)
    overrides ``probe.checkpoint`` for the ``lvmae_*`` methods. Returns the summary
    that is also written to ``results.json``.
    """
    t0, pc, out_dir = time.time(), cfg.probe, Path(cfg.run.out_dir)
    device = resolve_device(cfg.run.device)
    methods, skipped = select_methods(list(pc.methods), encoder is not None or bool(pc.checkpoint))
    store, tasks, report, bench = _prepare(cfg)
    ids = sorted({sid for t in tasks.values() for sp in t.splits.values() for sid in sp.store_ids})
    banks = {"raw": load_bank(store, ids, list(pc.modalities), pc.max_len, cfg.run.progress)}
    digest = ""
    if any(m.features == "lvmae" for m in methods):
        banks["lvmae"], digest = encoded_bank(cfg, store, banks["raw"], encoder, device)
    if device.type == "cuda":  # gather batches on the GPU: no host-to-device copy per step
        banks = {k: b.to(device) for k, b in banks.items()}
    fps = fit_fingerprints(cfg, store, report, digest)
    results = _run_fits(_Context(cfg, banks, device), tasks, methods, fps, ProgressLog(out_dir / "progress.jsonl"))
    summary = {
        "benchmark": bench, "labels": pc.labels, "store": pc.store, "checkpoint": pc.checkpoint,
        "device": str(device), "methods": [m.name for m in methods], "skipped_methods": skipped,
        "tasks": {name: {"kind": t.spec.kind, "metric": t.spec.metric, "num_classes": t.spec.num_classes,
                         "class_names": list(t.spec.class_names), "val_carved": t.val_carved,
                         "n": {s: len(sp) for s, sp in t.splits.items()}} for name, t in tasks.items()},
        "results": {t: {m: aggregate(v) for m, v in r.items()} for t, r in results.items()},
        "matching": report.to_dict(), "config": dataclasses.asdict(cfg), "fingerprints": fps,
        "elapsed_s": round(time.time() - t0, 3),
    }
    save_config(cfg, out_dir)
    summary["files"] = {k: str(p) for k, p in write_report(summary, out_dir).items()}
    return summary
