"""Training monitors: reconstruction retrieval, TensorBoard + metrics.jsonl, loss curves."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lvmae.io import atomic_write, atomic_write_text, guard_write


@torch.no_grad()
def retrieval_hits(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor,
    ks: Sequence[int] = (1, 5), chunk: int = 4096, distinct: float = 0.9,
) -> torch.Tensor:
    """Top-k retrieval rates ``[len(ks)]`` on the batch's device, without a host sync.

    Same definition as :func:`retrieval_topk`. Masks select by multiplication, not by
    boolean indexing (which waits for the GPU to learn the result's size): every
    segment is scored as a query against every segment, invalid ones excluded from
    the gallery, in chunks of ``chunk`` queries to bound memory at ``chunk × B·L``.
    Only *distinct* segments compete: a gallery item whose target has cosine >= ``distinct``
    to the query's own target (a near-copy: the same step seen twice, a tiled crop) never
    counts against it, so the rate measures whether a prediction tells its segment apart
    from different-looking ones instead of staying near 0 on repetitive videos.
    """
    d = pred.shape[-1]
    queries = F.normalize(pred.reshape(-1, d).float(), dim=-1)  # [B*L, D]
    gallery = F.normalize(target.reshape(-1, d).float(), dim=-1)  # [B*L, D]
    in_gallery, is_query = valid.reshape(-1), mask.reshape(-1)
    k = torch.tensor(list(ks), device=pred.device)
    hits = torch.zeros(len(ks), device=pred.device)
    for lo in range(0, len(queries), chunk):
        sims = queries[lo : lo + chunk] @ gallery.T  # [c, B*L]
        own = sims.diagonal(offset=lo)[:, None]  # each query's score against its own target
        near = (gallery[lo : lo + chunk] @ gallery.T) >= distinct  # [c, B*L] near-copies of the own target
        rank = ((sims > own) & in_gallery & ~near).sum(1)  # [c]
        hits += ((rank[:, None] < k) & is_query[lo : lo + chunk, None]).sum(0)
    return hits / is_query.sum().clamp(min=1)


def retrieval_topk(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Fraction of masked segments whose prediction retrieves its own target, by cosine.

    pred, target: [B, L, D]; mask, valid: [B, L] bool. The gallery is every valid
    segment of the batch (``N = valid.sum()``); a query counts as a hit at k when
    fewer than k *distinct* gallery items (see :func:`retrieval_hits`) score strictly higher
    than its own target.
    Returns ``{"top1": .., "top5": ..}`` (NaN-free; 0 when nothing is masked).
    """
    return dict(zip((f"top{k}" for k in ks), retrieval_hits(pred, target, mask, valid, ks).tolist()))


class MetricsLogger:
    """Rank-0 scalars to TensorBoard (``RUN/tb``) and one JSON line per log step (``RUN/metrics.jsonl``).

    On resume from step ``s``, records after ``s`` (written by the killed run) are
    dropped from ``metrics.jsonl`` and TensorBoard's ``purge_step`` hides them, so the
    curves show each step once.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None,
                 loggers: Sequence[str] = ("tensorboard",), wandb: dict[str, Any] | None = None):
        """``loggers``: sinks beside ``metrics.jsonl``, ``tensorboard`` and/or ``wandb``
        (:class:`~lvmae.train.wandb_logger.WandbLogger`, whose keyword arguments ``wandb`` holds)."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        self.sinks: list[Any] = []
        if not enabled:
            return
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
        if "wandb" in loggers:
            from lvmae.train.wandb_logger import WandbLogger

            self.sinks.append(WandbLogger(run_dir, resume=resume_step is not None, **(wandb or {})))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in scalars.items() if self.tb is not None else ():
            self.tb.add_scalar(k, v, step)
        for sink in self.sinks:
            sink.log(step, scalars)
        with guard_write(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for sink in self.sinks:
            sink.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn last line of a killed run
    return out


def truncate_metrics(path: Path, step: int) -> None:
    recs = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> Path | None:
    """Loss (training and held-out at each validated length), LR and reconstruction retrieval
    against the step, as one PNG (matplotlib Agg)."""
    recs = read_metrics(metrics_path)
    train = [r for r in recs if "train/loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["train/loss"] for r in train], label="train")
    val_keys = sorted({k for r in recs for k in r if k.startswith("val/loss@")}, key=lambda k: int(k.split("@")[1]))
    for k in val_keys:
        pts = [(r["step"], r[k]) for r in recs if k in r]
        axes[0].plot(*zip(*pts), marker="o", ms=3, label=f"val, {k.split('@')[1]} segments")
    axes[0].set(title="reconstruction loss", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["train/lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    for k in ("top1", "top5"):
        axes[2].plot(steps, [r[f"train/retrieval_{k}"] for r in train], label=k)
    axes[2].set(title="masked-segment retrieval", xlabel="step", ylim=(0, 1.02))
    axes[2].legend()
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(out_png)
