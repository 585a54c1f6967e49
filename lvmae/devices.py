"""Which torch device a ``device`` setting means: one rule for extraction, pretraining and probing."""

from __future__ import annotations

import os

import torch

from lvmae.errors import ConfigError


def resolve_device(name: str = "auto", local_rank: int | None = None, key: str = "run.device") -> torch.device:
    """``auto`` -> this rank's GPU when one is visible, else ``cpu``; ``cuda`` -> this rank's GPU;
    ``cuda:N`` and ``cpu`` as given. This rank is ``local_rank`` (default: ``LOCAL_RANK``, 0).

    Anything else, or a GPU setting without a visible GPU, is a :class:`ConfigError` naming ``key``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is visible")
    if name == "cuda":
        rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)
