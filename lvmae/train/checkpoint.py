"""Verified, atomic, rotating checkpoints: ``checkpoints/step_XXXXXXXX/`` plus a ``latest`` hint.

Every rank writes into ``checkpoints/.tmp-step_X/``; only after all ranks are done
does rank 0 add ``trainer.json`` and, last, ``manifest.json`` (every file's size and
SHA-256), rename the directory into place and rewrite ``latest``. A checkpoint is
complete only when its manifest is there and every file matches it, so resume trusts
the files, not the pointer: it takes the newest checkpoint that verifies and falls
back past damaged ones (truncated, missing or garbage files) with a warning naming
what was wrong. ``latest`` is only a hint for people and tools. Stale ``.tmp-*`` dirs
are removed at the next start. Assumes a file system shared by all ranks (as
DeepSpeed does).

RNG and trainer state are JSON: nothing written here is unpickled on resume.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvmae.errors import DataError
from lvmae.io import atomic_write_json, atomic_write_text

PREFIX = "step_"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(rf"^{PREFIX}(\d+)$")
log = logging.getLogger("lvmae.train")


class CheckpointError(DataError):
    """A checkpoint is damaged, incomplete or cannot be loaded."""


def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states as JSON-able values."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(words), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": _tensor_b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_b64_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in state["cuda"]])


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.json"


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


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, world: int) -> None:
    """Sizes and checksums of every file in ``directory``: written last, it marks the checkpoint complete."""
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in _files(directory)}
    atomic_write_json(directory / MANIFEST, {"format": 1, "world": world, "files": files})


def verify(directory: Path) -> str | None:
    """None if ``directory`` is a complete checkpoint, else what is wrong with it (one phrase)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files, world = manifest["files"], int(manifest["world"])
    except FileNotFoundError:
        return f"no {MANIFEST} (written last: the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    for name in ["trainer.json", *(rng_file(r) for r in range(world))]:
        if name not in files:
            return f"{name} is not in its manifest"
    for name, want in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}"
        if file_digest(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def step_of(directory: Path) -> int:
    return int(_STEP_DIR.match(directory.name)[1])


class Checkpointer:
    """Save / find / prune checkpoints of one run; ``engine`` does the model+optimizer part."""

    def __init__(self, root: str | os.PathLike, keep_last: int, rank: int = 0):
        self.root, self.keep_last, self.rank = Path(root), keep_last, rank
        self.last: Path | None = None  # the checkpoint this run saved or resumed from last
        self.damaged: list[str] = []  # "step_X: why" for each checkpoint the last search skipped

    def clean_stale(self) -> None:
        """Remove half-written dirs left by a killed run (rank 0, before any save)."""
        if self.rank == 0 and self.root.is_dir():
            for d in self.root.glob(".tmp-*"):
                shutil.rmtree(d, ignore_errors=True)
            for d in self.root.glob(".old-*"):
                shutil.rmtree(d, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """Every ``step_*`` dir, newest first, verified or not."""
        if not self.root.is_dir():
            return []
        return sorted((d for d in self.root.iterdir() if _STEP_DIR.match(d.name) and d.is_dir()),
                      key=step_of, reverse=True)

    def has_any(self) -> bool:
        """Whether this run dir holds checkpoints (or their pointer): then it is never started over silently."""
        return bool(self.checkpoints()) or (self.root / "latest").exists()

    def latest(self, warn: bool = False) -> Path | None:
        """The newest checkpoint that verifies (``warn``: log each damaged one skipped), or None."""
        self.damaged = []
        for d in self.checkpoints():
            why = verify(d)
            if why is None:
                return d
            self.damaged.append(f"{d.name}: {why}")
            if warn:
                log.warning("checkpoint %s is damaged (%s); trying an older one", d, why)
        return None

    def find_resumable(self) -> Path | None:
        """:meth:`latest` as rank 0 sees it, the same on every rank (one search, broadcast)."""
        name = [None]
        if self.rank == 0:
            found = self.latest(warn=True)
            name = [found.name if found else None]
            hint = self.root / "latest"
            pointed = hint.read_text(errors="replace").strip() if hint.is_file() else None
            if found is not None and pointed != found.name:
                log.warning("checkpoints/latest names %r; resuming from %s, the newest that verifies",
                            pointed, found.name)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(name, src=0)
        return self.root / name[0] if name[0] else None

    def discard_all(self) -> int:
        """Delete every checkpoint and the pointer (``--restart``, rank 0); returns how many went."""
        ckpts = self.checkpoints()
        if self.rank == 0:
            for d in ckpts:
                shutil.rmtree(d)
            (self.root / "latest").unlink(missing_ok=True)
        return len(ckpts)

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` (all ranks call this); returns its final path."""
        name = f"{PREFIX}{step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.barrier()
        engine.save(tmp)
        atomic_write_json(tmp / rng_file(self.rank), rng_state())
        engine.barrier()
        if self.rank == 0:
            atomic_write_json(tmp / "trainer.json", {**state, "step": step})
            write_manifest(tmp, state.get("world", 1))
            swap_dir_into_place(tmp, final)
            atomic_write_text(self.root / "latest", name + "\n")
            self.prune(step)
        engine.barrier()
        self.last = final
        return final

    def prune(self, step: int) -> None:
        """Keep the newest ``keep_last`` checkpoints up to ``step`` (newer ones are a damaged run's: left)."""
        older = [d for d in self.checkpoints() if step_of(d) <= step]
        for d in older[self.keep_last :]:
            shutil.rmtree(d, ignore_errors=True)

    def load(self, engine: Any, path: Path) -> dict[str, Any]:
        """Restore engine, this rank's RNG and return the trainer state (step, data position...)."""
        rng = path / rng_file(self.rank)
        if not rng.is_file():
            raise CheckpointError(f"{path} has no RNG state for rank {self.rank} ({rng.name}): "
                                  "it was written by fewer ranks")
        try:
            engine.load(path)
            set_rng_state(json.loads(rng.read_text()))
            state = json.loads((path / "trainer.json").read_text())
        except CheckpointError:
            raise
        except Exception as e:  # verified files that still do not load: name the checkpoint, one line
            raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:300]}") from e
        self.last = path
        return state
