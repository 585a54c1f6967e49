"""lvmae: self-supervised long-video representation learning.

Long videos are cut into short segments, frozen encoders embed each segment once,
and a masked-embedding autoencoder (LV-MAE) with HoPE rotary positions learns
long-span structure over the stored sequences. Heavy submodules are imported lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "extract": "lvmae.extraction.api",
    "Extractor": "lvmae.extraction.api",
    "FeatureStore": "lvmae.store",
    "LVMAE": "lvmae.models.lvmae",
    "load_config": "lvmae.config",
    "Config": "lvmae.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lvmae' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
