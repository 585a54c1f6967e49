"""LV-MAE model code. Imports neither data, training, omegaconf nor deepspeed.

Heavy names (torch modules) load lazily so that ``lvmae.config`` stays light.
"""

from __future__ import annotations

from typing import Any

from lvmae.model_config import ModelConfig, RopeConfig

_LAZY = {
    "LVMAE": "lvmae.models.lvmae",
    "ReferenceLVMAE": "lvmae.models.reference",
    "save_pretrained": "lvmae.models.export",
    "load_pretrained": "lvmae.models.export",
    "LVMAEModel": "lvmae.models.hub",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lvmae.models' has no attribute {name!r}")


__all__ = ["ModelConfig", "RopeConfig", *_LAZY]
