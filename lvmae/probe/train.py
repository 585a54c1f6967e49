"""Fitting one probe on one task with one seed; model selection on validation.

Every fit returns a :class:`FitResult`: the validation and test metric at the
epoch (or, for scikit-learn, the regularisation value) with the best validation
metric, the whole history, and the test confusion matrix at that point. Test
numbers are recorded every epoch and *read* at the best-validation epoch, which
equals re-loading the best weights and testing them, without keeping copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.benchmarks.base import CLASSIFICATION, TaskSpec
from lvmae.errors import DataError
from lvmae.probe.bank import SequenceBank


@dataclass
class FitResult:
    """Metric at the best-validation point: ``top1`` in %, ``mse`` in target units."""

    val: float
    test: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"val": self.val, "test": self.test, "best_epoch": self.best_epoch, "history": self.history,
                "confusion": self.confusion, **self.extra}


@dataclass
class TrainSettings:
    """The optimisation knobs of a torch probe (from :class:`lvmae.config.ProbeConfig`)."""

    epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    batch_size: int = 32
    warmup_epochs: float = 1.0
    schedule: str = "cosine"


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float = 0.0, schedule: str = "cosine") -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine or constant."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def score(spec: TaskSpec, pred: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in % (``pred`` class ids) or MSE (``pred`` values)."""
    if spec.kind == CLASSIFICATION:
        return float((pred == y).mean() * 100.0)
    return float(np.mean((pred.astype(np.float64) - y) ** 2))


def better(spec: TaskSpec, a: float, b: float) -> bool:
    """Is metric ``a`` strictly better than ``b``?"""
    return a > b if spec.kind == CLASSIFICATION else a < b


def confusion(num_classes: int, pred: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """``[true][pred]`` counts over a fixed class range."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m.tolist()


def _param_groups(head: nn.Module, wd: float) -> list[dict]:
    """Weight decay on >= 2-D parameters only (matrices, queries), not on biases/norms."""
    decay = [p for p in head.parameters() if p.ndim >= 2]
    rest = [p for p in head.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def predict(head: nn.Module, bank: SequenceBank, rows: Tensor, spec: TaskSpec, batch_size: int,
            device: torch.device) -> np.ndarray:
    """Class ids ``[N]`` or raw regression outputs ``[N]`` (normalised units)."""
    head.eval()
    outs = []
    for chunk in torch.split(rows, batch_size):
        b = bank.batch(chunk, device)
        outs.append(head(b.x, b.valid, b.cls).float().cpu())
    out = torch.cat(outs)
    return (out.argmax(1) if spec.kind == CLASSIFICATION else out[:, 0]).numpy()


def _evaluate(head: nn.Module, bank: SequenceBank, rows: dict[str, Tensor], spec: TaskSpec, batch_size: int,
              device: torch.device, mu: float, sd: float) -> dict[str, np.ndarray]:
    """Val and test predictions in the task's units."""
    out = {s: predict(head, bank, rows[s], spec, batch_size, device) for s in ("val", "test")}
    return out if spec.kind == CLASSIFICATION else {s: p * sd + mu for s, p in out.items()}


def fit_head(
    head: nn.Module,
    bank: SequenceBank,
    rows: dict[str, Tensor],
    y: dict[str, np.ndarray],
    spec: TaskSpec,
    st: TrainSettings,
    seed: int,
    device: torch.device,
) -> FitResult:
    """Train ``head`` on ``rows['train']`` with AdamW; select the epoch on ``val``.

    Regression targets are standardised with train statistics for training and
    mapped back, so MSE is reported in the task's units.
    """
    n = len(rows["train"])
    if n < 2:
        raise DataError(f"task {spec.name}: {n} training video(s); a probe needs at least 2")
    gen = torch.Generator().manual_seed(seed)
    head = head.to(device)
    reg = spec.kind != CLASSIFICATION
    mu, sd = (float(y["train"].mean()), float(y["train"].std()) or 1.0) if reg else (0.0, 1.0)
    y_train = torch.as_tensor((y["train"] - mu) / sd if reg else y["train"])
    opt = torch.optim.AdamW(_param_groups(head, st.weight_decay), lr=st.lr)
    per_epoch = max(1, n // st.batch_size)  # the ragged last batch is dropped (BatchNorm needs >= 2)
    total, warmup = st.epochs * per_epoch, round(st.warmup_epochs * per_epoch)
    history, best, step = [], None, 0
    for epoch in range(st.epochs):
        head.train()
        losses = []
        for idx in torch.randperm(n, generator=gen)[: per_epoch * st.batch_size].view(per_epoch, -1):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, st.lr, st.min_lr, st.schedule)
            b = bank.batch(rows["train"][idx], device)
            out, target = head(b.x, b.valid, b.cls), y_train[idx].to(device)
            loss = nn.functional.mse_loss(out[:, 0], target.float()) if reg else nn.functional.cross_entropy(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            step += 1
        preds = _evaluate(head, bank, rows, spec, st.batch_size * 4, device, mu, sd)
        rec = {"epoch": epoch, "train_loss": float(torch.stack(losses).mean()),
               "val": score(spec, preds["val"], y["val"]), "test": score(spec, preds["test"], y["test"])}
        history.append(rec)
        if best is None or better(spec, rec["val"], best[0]["val"]):
            best = (rec, preds["test"])
    rec, test_pred = best  # type: ignore[misc]
    conf = None if reg else confusion(spec.num_classes, test_pred, y["test"])
    return FitResult(rec["val"], rec["test"], rec["epoch"], history, conf)


def fit_sklearn(feats: dict[str, np.ndarray], y: dict[str, np.ndarray], spec: TaskSpec, grid: list[float],
                seed: int) -> FitResult:
    """Standardise pooled features, fit LogisticRegression(C) / Ridge(alpha=1/(2C)) per grid value on
    train, keep the value with the best validation metric. ``feats[split]`` is ``[N, D]``."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    history, best = [], None
    for i, c in enumerate(grid):
        if spec.kind == CLASSIFICATION:
            est = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        else:
            est = Ridge(alpha=1.0 / (2.0 * c), random_state=seed)
        model = make_pipeline(StandardScaler(), est).fit(feats["train"], y["train"])
        preds = {s: model.predict(feats[s]) for s in ("val", "test")}
        rec = {"epoch": i, "C": c, "val": score(spec, preds["val"], y["val"]),
               "test": score(spec, preds["test"], y["test"])}
        history.append(rec)
        if best is None or better(spec, rec["val"], best[0]["val"]):
            best = (rec, preds["test"])
    assert best is not None
    rec, test_pred = best
    conf = confusion(spec.num_classes, test_pred.astype(np.int64), y["test"]) if spec.kind == CLASSIFICATION else None
    return FitResult(rec["val"], rec["test"], rec["epoch"], history, conf, {"C": rec["C"]})
