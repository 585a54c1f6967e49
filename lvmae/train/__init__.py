"""Pretraining: engine (DeepSpeed or plain PyTorch), LR schedule, checkpoints, the loop."""

from lvmae.train.loop import NonFiniteLossError, pretrain
from lvmae.train.schedule import lr_at, peak_lr

__all__ = ["NonFiniteLossError", "lr_at", "peak_lr", "pretrain"]
