"""From video files to segment embeddings: decode (PyAV), segment, encode, store.

Public API: :func:`extract`, :class:`Extractor` (``lvmae.extraction.api``),
:func:`collect_videos` (``lvmae.extraction.inputs``), :func:`iter_segments`
(``lvmae.extraction.segments``) and :func:`segment_windows` (``lvmae.extraction.video``).
Submodules import PyAV/torch; importing this package alone does not.
"""

from typing import Any

_LAZY = {
    "extract": "lvmae.extraction.api",
    "Extractor": "lvmae.extraction.api",
    "summary_line": "lvmae.extraction.api",
    "collect_videos": "lvmae.extraction.inputs",
    "VideoItem": "lvmae.extraction.inputs",
    "iter_segments": "lvmae.extraction.segments",
    "segment_windows": "lvmae.extraction.video",
    "DecodeSpec": "lvmae.extraction.video",
    "Segment": "lvmae.extraction.video",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lvmae.extraction' has no attribute {name!r}")


__all__ = list(_LAZY)
