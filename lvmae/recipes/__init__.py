"""Shipped configs, found by name: ``-c tiny``, ``-c paper``, ``-c demo``, ``-c probe/lvu``.

The YAML files are package data, so an editable install and a wheel find them alike; the
repository's ``configs/``, ``pretrain/`` and ``probe/`` files include them by name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Every shipped recipe, e.g. ``['demo', 'paper', 'probe/lvu', ...]``."""
    root = _root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def find(name: str) -> Path | None:
    """The file of recipe ``name`` (``tiny`` or ``tiny.yaml``), None when there is no such recipe."""
    rel = Path(name if name.endswith(".yaml") else f"{name}.yaml")
    if rel.is_absolute() or ".." in rel.parts:
        return None
    path = _root() / rel
    return path if path.is_file() else None
