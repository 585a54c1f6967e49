"""Video-text retrieval of reconstructed segments (``data.text_monitor``), the paper's monitor.

Each masked segment's predicted vision embedding is ranked, by cosine, against the *distinct*
texts of the batch's segments (a caption repeated over many segments is one candidate), all
embedded in the vision encoder's space (``extract.encoder.text=hf_clip_text``). Chance at R@1
is 1 / (distinct texts in the batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def text_retrieval_hits(pred: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor,
                        ks: Sequence[int] = (1, 5), same: float = 0.999) -> torch.Tensor:
    """R@k rates ``[len(ks)]`` on the batch's device, without a host sync.

    pred, text: ``[B, L, D]``; mask, valid: ``[B, L]`` bool. Queries are the masked valid
    segments that have a text (a non-zero row); candidates are the batch's distinct texts
    (texts with cosine >= ``same`` are one). A query hits at k when fewer than k candidates
    other than its own text score strictly higher than its own text. 0 when there is no query.
    """
    d = pred.shape[-1]
    q = F.normalize(pred.reshape(-1, d).float(), dim=-1)  # [N, D]
    t = F.normalize(text.reshape(-1, d).float(), dim=-1)
    has = valid.reshape(-1) & (text.reshape(-1, d).abs().sum(-1) > 0)
    is_query = mask.reshape(-1) & has
    dup = ((t @ t.T) >= same) & has[:, None] & has[None, :]  # [N, N] the same text (self included)
    earlier = torch.ones_like(dup).tril(diagonal=-1)  # j < i
    first = has & ~(dup & earlier).any(1)  # one representative per distinct text
    scores = q @ t.T  # [N, N]
    own = scores.diagonal()[:, None]
    rank = ((scores > own) & first[None, :] & ~dup).sum(1)  # distinct other texts ranked above the own one
    k = torch.tensor(list(ks), device=pred.device)
    return ((rank[:, None] < k) & is_query[:, None]).sum(0) / is_query.sum().clamp(min=1)
