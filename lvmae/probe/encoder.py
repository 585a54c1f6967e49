"""Frozen LV-MAE encoder outputs for probing, computed once per video and cached.

Probing is many small fits (tasks x methods x seeds x epochs) on the same frozen
features, so the encoder runs once per video: :func:`encode_bank` turns a raw
:class:`SequenceBank` into one of encoder tokens (+ [CLS]), batched by length to
waste little compute on padding. :func:`cached_encode` keeps those outputs in a
feature store (one file per video, rows ``[cls, tok_1 .. tok_N]``, modality
``lvmae``) keyed by the checkpoint's content, the raw store's config hash and the
encoding settings, so later runs and other tasks reuse them, and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.errors import DataError, LvmaeError
from lvmae.probe.bank import SequenceBank, load_bank
from lvmae.store import FeatureStore, config_hash

CACHE_MODALITY = "lvmae"


def checkpoint_path(checkpoint: str | os.PathLike) -> Path:
    """``probe.checkpoint`` (an export dir or a Hub id ``org/name[@revision]``) as a local dir."""
    from lvmae.hub import resolve

    return resolve(checkpoint, "probe.checkpoint")


def load_encoder(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The exported encoder (``save_pretrained`` dir or Hub id), frozen and in eval mode, plus its ``extra``."""
    path = checkpoint_path(checkpoint)
    if not (path / "config.json").is_file():
        raise DataError(f"probe.checkpoint {path} is not an exported LV-MAE encoder (no config.json)")
    try:
        from lvmae.models.export import load_pretrained
    except ImportError as e:
        raise LvmaeError(f"cannot load LV-MAE checkpoints: lvmae.models.export is unavailable ({e})") from None
    model, extra = load_pretrained(str(path), device=str(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, dict(extra or {})


def checkpoint_digest(checkpoint: str | os.PathLike) -> str:
    """SHA-256 of every file in an exported encoder dir (names and bytes), streamed."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(checkpoint).rglob("*") if p.is_file()):
        h.update(f.relative_to(checkpoint).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def subset(bank: SequenceBank, ids: Sequence[str]) -> SequenceBank:
    """A new bank holding only ``ids`` (one gather)."""
    rows = bank.rows(ids)
    lengths = bank.lengths[rows]
    offsets = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
    flat = bank.flat[torch.repeat_interleave(bank.offsets[rows], lengths) + within]
    cls = bank.cls[rows] if bank.cls is not None else None
    return SequenceBank(list(ids), flat, offsets, lengths, cls)


def split_windows(bank: SequenceBank, window: int) -> tuple[SequenceBank, Tensor]:
    """Each sequence cut into consecutive windows of ``window`` segments (the last may be
    shorter): a bank of windows over the same ``flat`` rows, and each window's source row."""
    counts = (bank.lengths + window - 1) // window
    owner = torch.repeat_interleave(torch.arange(len(bank)), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(int(counts.sum())) - torch.repeat_interleave(first, counts)
    offsets = bank.offsets[owner] + k * window
    lengths = torch.minimum(bank.lengths[owner] - k * window, torch.tensor(window))
    ids = [f"{bank.ids[int(o)]}#{int(i)}" for o, i in zip(owner, k)]
    return SequenceBank(ids, bank.flat, offsets, lengths), owner


def merge_windows(enc: SequenceBank, owner: Tensor, ids: list[str]) -> SequenceBank:
    """Inverse of :func:`split_windows` for encoder outputs: a video's tokens are its windows'
    tokens in order; its cls is the mean of their cls."""
    flat = subset(enc, enc.ids).flat  # windows in order, hence each video's tokens in time order
    lengths = torch.zeros(len(ids), dtype=torch.long).index_add_(0, owner, enc.lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    counts = torch.bincount(owner, minlength=len(ids)).clamp(min=1)[:, None]
    cls = torch.zeros(len(ids), enc.cls.shape[1]).index_add_(0, owner, enc.cls) / counts
    return SequenceBank(list(ids), flat, offsets, lengths, cls)


@torch.no_grad()
def encode_bank(model: nn.Module, bank: SequenceBank, batch_size: int = 16, device: torch.device | str = "cpu",
                scale: float | None = None, progress: bool = False, window: int = 0) -> SequenceBank:
    """Run ``model.encode(x, valid, scale)`` over every sequence -> bank of tokens ``[T', W]`` and cls ``[N, W]``.

    Sequences are encoded longest first so each batch pads little; the encoder's
    own ``valid`` mask says which output tokens are real (it may emit several per segment).
    ``window > 0`` encodes consecutive windows of that many segments independently (the
    context a model trained on short crops sees when a long video is cut up) and joins them.
    """
    from tqdm.auto import tqdm

    if window > 0:
        windows, owner = split_windows(bank, window)
        enc = encode_bank(model, windows, batch_size, device, scale, progress)
        return merge_windows(enc, owner, list(bank.ids))

    order = torch.argsort(bank.lengths, descending=True, stable=True)
    flats, lens, clss = [], [], []
    for rows in tqdm(torch.split(order, batch_size), desc="encoding", unit="batch", disable=not progress,
                     leave=False):
        b = bank.batch(rows, device)
        s = None if scale is None else torch.full((len(rows),), float(scale), device=b.x.device)
        out = model.encode(b.x, b.valid, s)
        valid = out["valid"].bool()
        flats.append(out["tokens"][valid].float().cpu())
        lens.append(valid.sum(1).cpu())
        clss.append(out["cls"].float().cpu())
    lengths_sorted = torch.cat(lens).long()
    lengths, offsets = torch.empty_like(lengths_sorted), torch.empty_like(lengths_sorted)
    lengths[order] = lengths_sorted
    offsets[order] = torch.cumsum(lengths_sorted, 0) - lengths_sorted
    cls = torch.empty(len(bank), clss[0].shape[1])
    cls[order] = torch.cat(clss)
    return SequenceBank(list(bank.ids), torch.cat(flats), offsets, lengths, cls)


def cache_key(digest: str, store: FeatureStore, settings: dict[str, Any]) -> str:
    return config_hash({"checkpoint": digest, "store": store.config_hash, **settings})


def _write_cache(root: Path, key: str, enc: SequenceBank, info: dict[str, Any]) -> FeatureStore:
    meta = {"config_hash": key, "modalities": {CACHE_MODALITY: {"dim": enc.dim}}, "dtype": "float32",
            "encoder": info}
    store = FeatureStore.create(root, meta)
    writer = store.writer()
    for i, vid in enumerate(enc.ids):
        start, n = int(enc.offsets[i]), int(enc.lengths[i])
        rows = torch.cat([enc.cls[i: i + 1], enc.flat[start: start + n]]).numpy()  # type: ignore[index]
        writer.write(vid, {CACHE_MODALITY: rows.astype(np.float32)})
    return store


def _read_cache(store: FeatureStore, ids: Sequence[str]) -> SequenceBank:
    """Bank from cache rows ``[cls, tokens...]``: strip row 0 of each video into ``cls``."""
    raw = load_bank(store, ids, [CACHE_MODALITY])
    is_cls = torch.zeros(raw.flat.shape[0], dtype=torch.bool)
    is_cls[raw.offsets] = True
    offsets = raw.offsets - torch.arange(len(raw))  # rows are laid out in order; each lost its cls row
    return SequenceBank(list(ids), raw.flat[~is_cls], offsets, raw.lengths - 1, raw.flat[raw.offsets])


def cached_encode(model: nn.Module, bank: SequenceBank, root: str | os.PathLike, key: str,
                  batch_size: int, device: torch.device | str, scale: float | None = None,
                  progress: bool = False, info: dict[str, Any] | None = None, window: int = 0) -> SequenceBank:
    """Encoder outputs for every video of ``bank``: read from ``root/key`` where cached, else encoded and stored."""
    root = Path(root) / key
    store = FeatureStore.open(root, expect_hash=key) if (root / "store.json").is_file() else None
    todo = [v for v in bank.ids if store is None or v not in store]
    if todo:
        enc = encode_bank(model, subset(bank, todo), batch_size, device, scale, progress, window)
        store = _write_cache(root, key, enc, info or {})
    assert store is not None
    return _read_cache(store, bank.ids)
