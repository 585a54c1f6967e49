"""An offline Hugging Face cache for tests: snapshots written in huggingface_hub's cache layout.

``hub_cache`` points huggingface_hub at an empty cache in ``tmp_path`` and switches it
offline (nothing in a test may reach the network); :func:`fill_cache` then puts a locally
saved checkpoint into it as ``models--org--name/{refs,snapshots}``, as ``hf download`` would.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache (``HF_HOME`` and huggingface_hub's constants)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def fill_cache(cache: Path, repo_id: str, src: Path, refs: tuple[str, ...] = ("main",)) -> str:
    """Copy the checkpoint directory ``src`` into ``cache`` as ``repo_id``; returns its commit hash."""
    from huggingface_hub.file_download import repo_folder_name

    h = hashlib.sha1(repo_id.encode())
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        h.update(f.relative_to(src).as_posix().encode() + f.read_bytes())
    commit = h.hexdigest()
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return commit
