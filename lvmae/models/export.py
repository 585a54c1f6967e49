"""Export the LV-MAE encoder so it loads without DeepSpeed or the training code.

A directory holds ``encoder.safetensors`` (encoder-side weights: input projection,
[CLS], encoder blocks and final norm; no decoder), ``config.json``
(``{"format": ..., "model": ModelConfig as a dict, "extra": {...}}``) and a model card
``README.md`` (:mod:`lvmae.models.card`). Each file is
written atomically and ``config.json`` last, so a directory with a config always has
its weights. :func:`load_pretrained` also takes a Hugging Face id (``org/name[@revision]``,
see :mod:`lvmae.hub`); :mod:`lvmae.models.hub` puts the same layout behind
huggingface_hub's model mixin (``from_pretrained`` / ``push_to_hub``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from lvmae.errors import DataError, LvmaeError
from lvmae.io import atomic_write, atomic_write_json, atomic_write_text
from lvmae.model_config import model_config_from_dict
from lvmae.models.card import card_text
from lvmae.models.lvmae import LVMAE

FORMAT = "lvmae-encoder/1"
WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"
CARD = "README.md"


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """``tensors`` to ``path`` atomically, as CPU copies (ZeRO/bf16 parameters can be views of one
    flat buffer, which safetensors refuses). Checkpoints and exports are both written by it."""
    from safetensors.torch import save_file

    copies = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(copies, tmp, metadata=metadata))


def save_pretrained(model: LVMAE, directory: str | os.PathLike, extra: dict | None = None,
                    card: bool = True) -> Path:
    """Write ``model``'s encoder and config (plus JSON-serialisable ``extra``) to ``directory``,
    and (``card``) its model card ``README.md`` (:mod:`lvmae.models.card`)."""
    d = Path(directory)
    meta = {"format": FORMAT, "model": dataclasses.asdict(model.cfg), "extra": extra or {}}
    try:
        json.dumps(meta)
    except TypeError as e:
        raise LvmaeError(f"save_pretrained: extra must be JSON-serialisable ({e})") from None
    write_safetensors(d / WEIGHTS, model.encoder_state_dict(), metadata={"format": FORMAT})
    if card:
        atomic_write_text(d / CARD, card_text(model.cfg, meta["extra"]))
    atomic_write_json(d / CONFIG, meta)
    return d


def add_probe_table(directory: str | os.PathLike, table: str) -> Path:
    """Record a probing results table (Markdown) in an export's ``extra`` and rewrite its card."""
    d = Path(directory)
    try:
        meta = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{d} is not a readable LV-MAE export ({e})") from None
    meta.setdefault("extra", {})["probe"] = table
    atomic_write_text(d / CARD, card_text(model_config_from_dict(meta["model"]), meta["extra"]))
    atomic_write_json(d / CONFIG, meta)
    return d


def load_pretrained(ref: str | os.PathLike, device: str | torch.device = "cpu", *, model_cls: type = LVMAE,
                    key: str = "checkpoint", **hub_kwargs: Any) -> tuple[LVMAE, dict]:
    """Load an exported encoder: ``(model in eval mode, without decoder; extra)``.

    ``ref`` is an export directory or a Hub id ``org/name[@revision]`` (``hub_kwargs`` go to
    :func:`lvmae.hub.resolve`); ``model_cls`` is :class:`LVMAE` or a subclass with its
    constructor. Raises :class:`DataError` when the directory is not a complete export or its
    weights do not match its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lvmae.hub import is_local, resolve

    d = Path(ref) if is_local(ref) else resolve(ref, key, **hub_kwargs)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise DataError(f"{d} is not an exported LV-MAE encoder (needs {CONFIG} and {WEIGHTS})")
    try:
        meta = json.loads((d / CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(d / WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise DataError(f"{d}: unreadable export ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{d / CONFIG}: format {meta.get('format')!r}, expected {FORMAT!r}")
    model = model_cls(model_config_from_dict(meta["model"]), with_decoder=False)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise DataError(f"{d / WEIGHTS} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise DataError(f"{d / WEIGHTS} does not match its config: {str(e).splitlines()[-1].strip()}") from None
    return model.to(device).eval(), meta.get("extra", {})
