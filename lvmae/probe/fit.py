"""Fitting one probe on one task with one seed; model selection on validation.

Every fit returns a :class:`FitResult`: the validation and test metric at the
epoch (or, for scikit-learn, the regularisation value) with the best validation
metric, the validation history, and the test confusion matrix at that point. The
test split is scored once, with the selected weights: test labels play no part in
any choice (epoch, early stop, regularisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.benchmarks.base import CLASSIFICATION, TaskSpec
from lvmae.errors import DataError
from lvmae.probe.bank import SequenceBank
from lvmae.train.optim import param_groups
from lvmae.train.schedule import lr_at


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
    patience: int = 0  # stop (in the second half) after this many epochs without a better val metric; 0 = never


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


def _predict_units(head: nn.Module, bank: SequenceBank, rows: Tensor, spec: TaskSpec, batch_size: int,
                   device: torch.device, mu: float, sd: float) -> np.ndarray:
    """Predictions ``[N]`` in the task's units (regression outputs un-standardised)."""
    pred = predict(head, bank, rows, spec, batch_size, device)
    return pred if spec.kind == CLASSIFICATION else pred * sd + mu


def _train_epoch(head: nn.Module, bank: SequenceBank, rows: Tensor, y: Tensor, reg: bool, opt: torch.optim.Optimizer,
                 lrs: list[float], gen: torch.Generator, batch_size: int, device: torch.device) -> float:
    """One shuffled pass (the ragged last batch dropped: BatchNorm needs >= 2); ``lrs`` per step. Mean loss."""
    head.train()
    losses = []
    for idx, lr in zip(torch.randperm(len(rows), generator=gen)[: len(lrs) * batch_size].view(len(lrs), -1), lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        b = bank.batch(rows[idx], device)
        out, target = head(b.x, b.valid, b.cls), y[idx].to(device)
        loss = nn.functional.mse_loss(out[:, 0], target.float()) if reg else nn.functional.cross_entropy(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return float(torch.stack(losses).mean())


def _target_scale(spec: TaskSpec, y_train: np.ndarray) -> tuple[float, float]:
    """``(mu, sd)`` standardising regression targets with train statistics; ``(0, 1)`` for classes."""
    if spec.kind == CLASSIFICATION:
        return 0.0, 1.0
    return float(y_train.mean()), float(y_train.std()) or 1.0


PLATEAU = 0.9  # a head has left its initial plateau once its train loss is below this share of a constant guess's


def train_head(
    head: nn.Module,
    bank: SequenceBank,
    rows: dict[str, Tensor],
    y: dict[str, np.ndarray],
    spec: TaskSpec,
    st: TrainSettings,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Train ``head`` on ``rows['train']`` with AdamW at ``st.lr``; leave it at its best-``val`` weights.

    Returns the best epoch's record and the per-epoch history (train loss, val metric).
    Early stopping as in :func:`best_epochs`, with the constant guess's loss as the plateau:
    an attentive head can sit at chance for half its epochs before it finds the segments that
    matter (the demo's order task: from epoch ~40 of 100; stopped at 50, two of three probe
    seeds had stayed at chance).
    The test split is not touched.
    """
    n = len(rows["train"])
    if n < 2:
        raise DataError(f"task {spec.name}: {n} training video(s); a probe needs at least 2")
    gen = torch.Generator().manual_seed(seed)
    head = head.to(device)
    reg = spec.kind != CLASSIFICATION
    mu, sd = _target_scale(spec, y["train"])
    y_train = torch.as_tensor((y["train"] - mu) / sd if reg else y["train"])
    opt = torch.optim.AdamW(param_groups(head, st.weight_decay), lr=st.lr)
    return best_epochs(
        head, st, max(1, n // st.batch_size),
        lambda lrs: _train_epoch(head, bank, rows["train"], y_train, reg, opt, lrs, gen, st.batch_size, device),
        lambda: score(spec, _predict_units(head, bank, rows["val"], spec, st.batch_size * 4, device, mu, sd), y["val"]),
        lambda a, b: better(spec, a, b),
        # clearly below a constant guess's loss (uniform over the classes, or the standardised train
        # mean): a plateau's loss wanders around that value (0.65-0.77 against log 2 = 0.69)
        PLATEAU * (math.log(spec.num_classes) if not reg else 1.0),
    )


def best_epochs(
    head: nn.Module, st: TrainSettings, per_epoch: int, train_epoch: Callable[[list[float]], float],
    validate: Callable[[], float], is_better: Callable[[float, float], bool], chance_loss: float = math.inf,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The epoch loop of every probe head: ``train_epoch(lrs) -> loss`` with the per-step LRs of
    the schedule, ``validate() -> val`` after each epoch; early stopping after ``st.patience``
    epochs without a better val (never in the first half). Patience counts from the best epoch,
    or from the first epoch whose train loss fell below ``chance_loss`` if that came later: a
    head still on its initial plateau (the loss of a constant guess) has learnt nothing yet and
    is not overfitting. ``head`` is left at its best epoch. Returns that epoch's record and the
    history."""
    total, warmup = st.epochs * per_epoch, round(st.warmup_epochs * per_epoch)
    history: list[dict[str, float]] = []
    best: tuple[dict[str, float], dict[str, Tensor]] | None = None
    learning_from: int | None = None
    for epoch in range(st.epochs):
        lrs = [lr_at(epoch * per_epoch + i, st.lr, total, warmup, st.min_lr, st.schedule) for i in range(per_epoch)]
        loss = train_epoch(lrs)
        if learning_from is None and loss < chance_loss:
            learning_from = epoch
        val = validate()
        history.append({"epoch": epoch, "train_loss": loss, "val": val})
        if best is None or is_better(val, best[0]["val"]):
            best = (history[-1], {k: v.detach().clone() for k, v in head.state_dict().items()})
        elif (st.patience and epoch >= st.epochs // 2 and learning_from is not None
              and epoch - max(best[0]["epoch"], learning_from) >= st.patience):
            break
    assert best is not None
    head.load_state_dict(best[1])
    return best[0], history


def fit_head(
    make_head: Callable[[], nn.Module],
    bank: SequenceBank,
    rows: dict[str, Tensor],
    y: dict[str, np.ndarray],
    spec: TaskSpec,
    st: TrainSettings,
    seed: int,
    device: torch.device,
    lrs: Sequence[float] = (),
) -> FitResult:
    """Train a fresh ``make_head()`` per learning rate in ``lrs`` (default ``[st.lr]``), keep the
    one with the best validation metric (ties: the earlier), and test it once.

    Every candidate starts from the same seed. The test split is scored once, with the
    selected weights, so test labels never influence the epoch, the early stop or the lr.
    Regression targets are standardised with train statistics for training and
    mapped back, so MSE is reported in the task's units.
    """
    trials: list[list[float]] = []
    best: tuple[dict[str, float], list[dict[str, float]], nn.Module, float] | None = None
    for lr in list(lrs) or [st.lr]:
        torch.manual_seed(seed)
        head = make_head()
        rec, history = train_head(head, bank, rows, y, spec, replace(st, lr=lr), seed, device)
        trials.append([lr, rec["val"]])
        if best is None or better(spec, rec["val"], best[0]["val"]):
            best = (rec, history, head, lr)
    assert best is not None
    rec, history, head, lr = best
    mu, sd = _target_scale(spec, y["train"])
    test_pred = _predict_units(head, bank, rows["test"], spec, st.batch_size * 4, device, mu, sd)
    conf = None if spec.kind != CLASSIFICATION else confusion(spec.num_classes, test_pred, y["test"])
    return FitResult(rec["val"], score(spec, test_pred, y["test"]), int(rec["epoch"]), history, conf,
                     {"epochs_run": len(history), "lr": lr, "lr_val": trials})


def fit_sklearn(feats: dict[str, np.ndarray], y: dict[str, np.ndarray], spec: TaskSpec, grid: list[float],
                seed: int) -> FitResult:
    """Standardise pooled features, fit LogisticRegression(C) / Ridge(alpha=1/(2C)) per grid value on
    train, keep the value with the best validation metric and test that model once.
    ``feats[split]`` is ``[N, D]``.

    BLAS is held to one thread: these problems are small (N x D ~ 3000 x 1280), and on a
    busy machine a multi-threaded BLAS made each LogisticRegression fit ~20x slower.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    history: list[dict[str, float]] = []
    best: tuple[dict[str, float], Any] | None = None
    with threadpool_limits(limits=1, user_api="blas"):
        for i, c in enumerate(grid):
            if spec.kind == CLASSIFICATION:
                est = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            else:
                est = Ridge(alpha=1.0 / (2.0 * c), random_state=seed)
            model = make_pipeline(StandardScaler(), est).fit(feats["train"], y["train"])
            history.append({"epoch": i, "C": c, "val": score(spec, model.predict(feats["val"]), y["val"])})
            if best is None or better(spec, history[-1]["val"], best[0]["val"]):
                best = (history[-1], model)
        assert best is not None
        rec, model = best
        test_pred = model.predict(feats["test"])
    conf = confusion(spec.num_classes, test_pred.astype(np.int64), y["test"]) if spec.kind == CLASSIFICATION else None
    return FitResult(rec["val"], score(spec, test_pred, y["test"]), int(rec["epoch"]), history, conf, {"C": rec["C"]})
