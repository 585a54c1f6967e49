"""Encoder export from a live run or from a checkpoint on disk (no DeepSpeed needed).

Every checkpoint holds the full module as ``model.safetensors`` next to the
engine's own files, and its ``trainer.json`` holds the model config, so a
checkpoint is re-exportable with nothing else.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvmae.errors import DataError
from lvmae.train.checkpoint import Checkpointer, swap_dir_into_place, verify


def write_export(model: nn.Module, out: str | os.PathLike, extra: dict[str, Any]) -> Path:
    """``save_pretrained`` into a temp dir swapped in whole (fp32 copy if trained in bf16/fp16)."""
    from lvmae.models.export import save_pretrained

    out = Path(out)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()
    tmp = out.with_name(f".tmp-{out.name}")
    save_pretrained(model, tmp, extra=extra)
    swap_dir_into_place(tmp, out)
    return out


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir itself, or a run dir's latest checkpoint."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        why = verify(path)
        if why is not None:
            raise DataError(f"checkpoint {path} is damaged: {why}")
        return path
    ckpt = Checkpointer(path / "checkpoints", keep_last=1)
    latest = ckpt.latest(warn=True)
    if latest is None:
        why = f" ({'; '.join(ckpt.damaged)})" if ckpt.damaged else ""
        raise DataError(f"{path} is neither a checkpoint dir (trainer.json) nor a run dir with a checkpoint "
                        f"that verifies{why}")
    return latest


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rebuild LV-MAE from a checkpoint's ``trainer.json`` + ``model.safetensors`` and export its encoder."""
    from lvmae.model_config import model_config_from_dict
    from lvmae.models.lvmae import LVMAE
    from lvmae.train.engine import load_weights

    ckpt = resolve_checkpoint(path)
    state = json.loads((ckpt / "trainer.json").read_text())
    if not (ckpt / "model.safetensors").is_file() or "model" not in state:
        raise DataError(f"{ckpt} has no model.safetensors / model config: not an lvmae checkpoint")
    model = LVMAE(model_config_from_dict(state["model"]))
    load_weights(model, ckpt / "model.safetensors")
    return write_export(model, out, {"step": state["step"], "checkpoint": str(ckpt)})
