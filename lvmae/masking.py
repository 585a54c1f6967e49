"""Which segments LV-MAE must reconstruct: batched masks built in the collate step.

MAE convention: every position gets a score, ``ids_shuffle = argsort(score)`` (ascending:
small is kept), the first ``n_keep`` positions of the shuffle are visible, the rest are
masked, and ``ids_restore = argsort(ids_shuffle)`` undoes the shuffle. Padding always
scores above every real segment, so it sorts last: never visible, never masked. Per
sequence ``n_keep = max(1, round((1 - ratio) * n_valid))`` (round half to even, as Python).

Strategies (``MaskingConfig.strategy``):

- ``random``: uniform noise scores (MAE).
- ``semantic_mask_distinct``: score = similarity to the previous segment, descending, so
  the segments least similar to their predecessor (scene changes) are *masked*. This is
  what the LV-MAE paper's text describes.
- ``semantic_keep_distinct``: score = similarity ascending, so those segments stay
  *visible* and the redundant ones are masked. This is what the public LV-MAE code does.
  Both use cosine similarity of consecutive segments; the first segment has similarity 0
  (as in the public code). They are deterministic given ``x``; ties go to the earlier segment.
- ``block``: the sequence is cut into consecutive chunks of random length in
  ``[block_min, block_max]``, each chunk gets one random score, and positions inside a
  chunk stay in order; so whole chunks are masked (adjacent masked chunks merge into
  longer spans) and at most one chunk per sequence is split to meet ``n_keep`` exactly.
  Not in the paper: contiguous gaps force inference from far-away context.

Everything is batched tensor ops (no loop over the batch) and reproducible from a
:class:`torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lvmae.config import MASK_STRATEGIES, MaskingConfig
from lvmae.errors import ConfigError, DataError, LvmaeError

_PAD_SCORE = 3.0  # above every valid score (valid scores lie in [-1, 2])


@dataclass
class MaskBatch:
    """Masks for a batch of ``B`` sequences padded to ``L`` segments.

    ids_keep:    ``[B, K]`` long, positions of the visible segments, valid ones first
                 (in shuffle order), ``K`` = the largest visible count in the batch.
    keep_valid:  ``[B, K]`` bool, False where ``ids_keep`` is padding.
    ids_restore: ``[B, L]`` long, inverse permutation of the shuffle: position ``l`` is
                 visible iff ``ids_restore[b, l] < keep_valid[b].sum()``, and then it is
                 ``ids_keep[b, ids_restore[b, l]]``.
    mask:        ``[B, L]`` bool, True = masked and valid (the loss positions).
    full:        host bool, True only if every segment of the batch is valid (so every
                 ``keep_valid`` is True too). The model then attends without a key mask,
                 which lets GPU attention use its flash kernels; known on the host when
                 the masks are built, so reading it costs no device sync. False is always
                 safe.
    """

    ids_keep: Tensor
    keep_valid: Tensor
    ids_restore: Tensor
    mask: Tensor
    full: bool = False

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        return MaskBatch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()), full=self.full)

    def pin_memory(self) -> MaskBatch:
        """Lets a DataLoader with ``pin_memory=True`` pin the masks too."""
        return MaskBatch(*(t.pin_memory() for t in self._tensors()), full=self.full)

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.ids_keep, self.keep_valid, self.ids_restore, self.mask


def keep_counts(valid: Tensor, ratio: float) -> Tensor:
    """Visible segments per sequence: ``[B]`` long ``max(1, round((1 - ratio) * n_valid))``."""
    n_valid = valid.sum(1)
    return torch.round((1.0 - ratio) * n_valid.double()).long().clamp(min=1)


def similarity_to_previous(x: Tensor) -> Tensor:
    """Cosine similarity of each segment to the one before: ``x [B, L, D]`` -> ``[B, L]``
    float32, 0 for the first segment."""
    x = x.float()
    sim = F.cosine_similarity(x[:, 1:], x[:, :-1], dim=-1, eps=1e-8)
    return F.pad(sim, (1, 0))


def block_scores(valid: Tensor, block_min: int, block_max: int, generator: torch.Generator | None) -> Tensor:
    """Scores in ``[0, 1)`` that are constant per chunk plus an in-chunk ramp: ``[B, L]``.

    Chunk lengths ``~ U{block_min..block_max}``; chunk ``c`` covers positions
    ``[ends[c] - len[c], ends[c])``. The ramp (< 1 / chunk count gap) keeps a chunk's
    positions adjacent and in order once sorted.
    """
    b, n = valid.shape
    n_chunks = -(-n // block_min)
    lengths = torch.randint(block_min, block_max + 1, (b, n_chunks), generator=generator)
    ends = lengths.cumsum(1)
    pos = torch.arange(n).expand(b, n).contiguous()
    chunk = torch.searchsorted(ends, pos, right=True)
    rank = torch.argsort(torch.rand(b, n_chunks, generator=generator), dim=1).argsort(dim=1)
    start = (ends - lengths).gather(1, chunk)
    return (rank.gather(1, chunk).double() + (pos - start).double() / (block_max + 1)) / n_chunks


def build_masks(
    x: Tensor | None, valid: Tensor, cfg: MaskingConfig, generator: torch.Generator | None = None
) -> MaskBatch:
    """Masks for ``x [B, L, D]`` (needed by the semantic strategies only) and ``valid [B, L]``.

    Runs on the CPU in the collate step; pass a seeded ``generator`` for reproducible masks.
    Raises :class:`DataError` for a sequence with no valid segment.
    """
    if cfg.strategy not in MASK_STRATEGIES:
        raise ConfigError(f"masking.strategy must be one of {MASK_STRATEGIES}, got {cfg.strategy!r}")
    if valid.dim() != 2 or valid.dtype != torch.bool:
        raise DataError(f"valid must be a [B, L] bool tensor, got {tuple(valid.shape)} {valid.dtype}")
    if not bool(valid.any(1).all()):
        raise DataError("every sequence needs at least one valid segment")
    b, n = valid.shape
    if cfg.strategy == "random":
        score = torch.rand(b, n, generator=generator).double()
    elif cfg.strategy == "block":
        score = block_scores(valid, cfg.block_min, cfg.block_max, generator)
    else:
        if x is None or x.shape[:2] != valid.shape:
            raise LvmaeError(f"masking strategy {cfg.strategy!r} needs embeddings x of shape [B, L, D]")
        sim = similarity_to_previous(x).double()
        score = sim if cfg.strategy == "semantic_keep_distinct" else 1.0 - sim
    return masks_from_scores(score, valid, keep_counts(valid, cfg.ratio))


def masks_from_scores(score: Tensor, valid: Tensor, n_keep: Tensor) -> MaskBatch:
    """MAE argsort: the ``n_keep[b]`` lowest-scoring valid positions of row ``b`` are visible."""
    score = score.to(valid.device).masked_fill(~valid, _PAD_SCORE)
    ids_shuffle = torch.argsort(score, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    k = int(n_keep.max())
    keep_valid = torch.arange(k, device=valid.device) < n_keep[:, None]
    mask = (ids_restore >= n_keep[:, None]) & valid
    full = bool(valid.all())  # build_masks already syncs on valid; this adds nothing on a GPU
    return MaskBatch(ids_keep=ids_shuffle[:, :k].contiguous(), keep_valid=keep_valid, ids_restore=ids_restore,
                     mask=mask, full=full)
