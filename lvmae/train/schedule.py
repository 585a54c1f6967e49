"""Learning rate as a pure function of the optimizer step (MAE ``util/lr_sched.py`` style).

Being a function of the step alone (not of an optimizer's internal state) is what
makes a resumed run follow the same schedule as an unbroken one.
"""

from __future__ import annotations

import math


def peak_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: ``base_lr × global_batch / 256`` (MAE, LV-MAE)."""
    return base_lr * global_batch / 256


def resolve_peak_lr(base_lr: float, lr: float | None, global_batch: int) -> tuple[float, str]:
    """The peak LR and how it was obtained: ``lr`` if set, else :func:`peak_lr` (for the start-up log)."""
    if lr is not None:
        return lr, "optim.lr (absolute, not scaled by the batch)"
    return peak_lr(base_lr, global_batch), f"optim.base_lr {base_lr:g} x global batch {global_batch} / 256"


def lr_at(step: int, peak: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
          schedule: str = "cosine") -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup to ``peak``, then cosine to ``min_lr``
    (``schedule="constant"``: ``peak``). Pretraining and the probe heads both use it.

    Warmup reaches ``peak`` at its last step (``(step + 1) / warmup``), so no step
    is wasted at LR 0; the cosine then runs over the remaining steps.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    decay = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay, 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
