"""Atomic, rotating checkpoints: ``checkpoints/step_XXXXXXXX/`` plus a ``latest`` pointer.

Every rank writes into ``checkpoints/.tmp-step_X/``; only after all ranks are done
does rank 0 add ``trainer.json``, rename the directory into place and then rewrite
``latest`` (itself an atomic file write). A run killed at any moment therefore
leaves ``latest`` naming a complete checkpoint; stale ``.tmp-*`` dirs are removed
at the next start. Assumes a file system shared by all ranks (as DeepSpeed does).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvmae.io import atomic_write_json, atomic_write_text

PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def swap_dir_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished ``tmp`` dir to ``final``, replacing an older ``final`` if any."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Save / find / prune checkpoints of one run; ``engine`` does the model+optimizer part."""

    def __init__(self, root: str | os.PathLike, keep_last: int, rank: int = 0):
        self.root, self.keep_last, self.rank = Path(root), keep_last, rank

    def clean_stale(self) -> None:
        """Remove half-written dirs left by a killed run (rank 0, before any save)."""
        if self.rank == 0 and self.root.is_dir():
            for d in self.root.glob(".tmp-*"):
                shutil.rmtree(d, ignore_errors=True)
            for d in self.root.glob(".old-*"):
                shutil.rmtree(d, ignore_errors=True)

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names, or None if there is none yet."""
        ptr = self.root / "latest"
        if not ptr.is_file():
            return None
        path = self.root / ptr.read_text().strip()
        return path if (path / "trainer.json").is_file() else None

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` (all ranks call this); returns its final path."""
        name = f"{PREFIX}{step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.barrier()
        engine.save(tmp)
        torch.save(rng_state(), tmp / f"rng_rank{self.rank:05d}.pt")
        engine.barrier()
        if self.rank == 0:
            atomic_write_json(tmp / "trainer.json", {**state, "step": step})
            swap_dir_into_place(tmp, final)
            atomic_write_text(self.root / "latest", name + "\n")
            self.prune()
        engine.barrier()
        return final

    def prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
        latest = self.latest()
        ckpts = sorted(d for d in self.root.glob(f"{PREFIX}*") if d.is_dir())
        for d in ckpts[: max(len(ckpts) - self.keep_last, 0)]:
            if latest is None or d.resolve() != latest.resolve():
                shutil.rmtree(d, ignore_errors=True)

    def load(self, engine: Any, path: Path) -> dict[str, Any]:
        """Restore engine, this rank's RNG and return the trainer state (step, data position...)."""
        engine.load(path)
        rng = path / f"rng_rank{self.rank:05d}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        return json.loads((path / "trainer.json").read_text())
