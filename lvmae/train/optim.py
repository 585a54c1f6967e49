"""Which parameters AdamW decays: one rule for pretraining and the probe heads."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on >= 2-D parameters (linear weights, and the [CLS]/mask tokens and modality
    embeddings, as in MAE's recipe); none on 1-D ones (biases, norms). Frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
