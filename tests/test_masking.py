import pytest
import torch

from lvmae.config import MASK_STRATEGIES, MaskingConfig, load_config
from lvmae.errors import ConfigError, DataError, LvmaeError
from lvmae.masking import MaskBatch, build_masks, similarity_to_previous

LENGTHS = [37, 20, 5, 1, 2, 64]


def _batch(lengths=LENGTHS, n=64, d=8, seed=0, prefix=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), n, d, generator=g)
    if prefix:
        valid = torch.arange(n) < torch.tensor(lengths)[:, None]
    else:  # holes anywhere, still `lengths` valid per row
        valid = torch.zeros(len(lengths), n, dtype=torch.bool)
        for i, k in enumerate(lengths):
            valid[i, torch.randperm(n, generator=g)[:k]] = True
    return x, valid


def _masks(strategy, x, valid, seed=0, **kw):
    cfg = MaskingConfig(strategy=strategy, **kw)
    return build_masks(x, valid, cfg, torch.Generator().manual_seed(seed))


def _visible(m: MaskBatch, n: int) -> torch.Tensor:
    vis = torch.zeros(m.ids_keep.shape[0], n, dtype=torch.bool)
    for b in range(vis.shape[0]):
        vis[b, m.ids_keep[b][m.keep_valid[b]]] = True
    return vis


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
@pytest.mark.parametrize("ratio", [0.5, 0.4, 0.75])
@pytest.mark.parametrize("prefix", [True, False])
def test_exact_counts_padding_and_inverse(strategy, ratio, prefix):
    x, valid = _batch(prefix=prefix)
    m = _masks(strategy, x, valid, ratio=ratio)
    n_valid = valid.sum(1)
    expect_keep = torch.tensor([max(1, round((1 - ratio) * int(k))) for k in n_valid])
    assert torch.equal(m.keep_valid.sum(1), expect_keep)
    assert m.ids_keep.shape[1] == int(expect_keep.max())
    assert torch.equal(m.mask.sum(1), n_valid - expect_keep)
    vis = _visible(m, valid.shape[1])
    assert not (vis & ~valid).any(), "padding became visible"
    assert not (m.mask & ~valid).any(), "padding became a loss position"
    assert torch.equal(vis | m.mask, valid) and not (vis & m.mask).any()
    # valid visible ones come first in ids_keep
    assert torch.equal(m.keep_valid, torch.arange(m.keep_valid.shape[1]) < expect_keep[:, None])
    # ids_restore is the inverse of the shuffle whose head is ids_keep
    shuffle = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(torch.sort(m.ids_restore, 1).values, torch.arange(valid.shape[1]).expand_as(valid))
    assert torch.equal(shuffle[:, : m.ids_keep.shape[1]], m.ids_keep)
    assert torch.equal(shuffle.gather(1, m.ids_restore), torch.arange(valid.shape[1]).expand_as(valid))
    assert torch.equal(m.mask, (m.ids_restore >= expect_keep[:, None]) & valid)


@pytest.mark.parametrize("strategy", ["random", "block"])
def test_seeded_determinism(strategy):
    x, valid = _batch()
    a, b = _masks(strategy, x, valid, seed=3), _masks(strategy, x, valid, seed=3)
    c = _masks(strategy, x, valid, seed=4)
    for f in ("ids_keep", "keep_valid", "ids_restore", "mask"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.mask, c.mask)


def _scenes(n_seg=30, change=(0, 10, 20), d=16, seed=0):
    """Piecewise-constant embeddings with small noise: change points are the distinct segments."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, n_seg, d)
    bounds = list(change) + [n_seg]
    for a, b in zip(bounds[:-1], bounds[1:]):
        x[0, a:b] = torch.randn(d, generator=g)
    return x + 0.01 * torch.randn(x.shape, generator=g)


def test_semantic_keep_distinct_keeps_scene_changes():
    x = _scenes()
    valid = torch.ones(1, 30, dtype=torch.bool)
    m = _masks("semantic_keep_distinct", x, valid, ratio=0.9)  # keep 3
    assert set(m.ids_keep[0].tolist()) == {0, 10, 20}


def test_semantic_mask_distinct_masks_scene_changes():
    x = _scenes()
    valid = torch.ones(1, 30, dtype=torch.bool)
    m = _masks("semantic_mask_distinct", x, valid, ratio=0.1)  # mask 3
    assert set(m.mask[0].nonzero().flatten().tolist()) == {0, 10, 20}


@pytest.mark.parametrize("strategy", ["semantic_keep_distinct", "semantic_mask_distinct"])
def test_semantic_matches_brute_force(strategy):
    x, valid = _batch(lengths=[30, 17, 9], n=30)
    m = _masks(strategy, x, valid, ratio=0.5)
    for b in range(x.shape[0]):
        n = int(valid[b].sum())
        sims = [0.0] + [float(torch.cosine_similarity(x[b, t], x[b, t - 1], dim=0)) for t in range(1, n)]
        order = sorted(range(n), key=lambda t: sims[t], reverse=strategy == "semantic_mask_distinct")
        k = int(m.keep_valid[b].sum())
        assert set(m.ids_keep[b, :k].tolist()) == set(order[:k])
    assert torch.allclose(similarity_to_previous(x)[0, 1:4], torch.cosine_similarity(x[0, 1:4], x[0, :3], dim=-1))


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of maximal True runs."""
    runs, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_block_masks_whole_aligned_chunks():
    x, valid = _batch(lengths=[64, 32, 16, 48], n=64)
    for seed in range(5):
        m = _masks("block", x, valid, seed=seed, ratio=0.5, block_min=4, block_max=4)
        for b in range(4):
            runs = _runs(m.mask[b])
            assert runs and all(s % 4 == 0 and n % 4 == 0 for s, n in runs), runs
    r = _masks("random", x, valid, ratio=0.5)
    assert any(s % 4 or n % 4 for b in range(4) for s, n in _runs(r.mask[b])), "the check cannot fail"


def test_block_spans_are_long():
    x, valid = _batch(lengths=[64, 50, 40, 64], n=64)
    m = _masks("block", x, valid, seed=1, ratio=0.5, block_min=3, block_max=8)
    r = _masks("random", x, valid, seed=1, ratio=0.5)
    block_runs = [n for b in range(4) for _, n in _runs(m.mask[b])]
    short = [sum(n < 3 for _, n in _runs(m.mask[b])) for b in range(4)]
    assert max(short) <= 2  # the split chunk and the chunk cut by the end of the sequence
    random_runs = [n for b in range(4) for _, n in _runs(r.mask[b])]
    assert sum(block_runs) / len(block_runs) > 2 * sum(random_runs) / len(random_runs)


def test_errors():
    x, valid = _batch()
    with pytest.raises(LvmaeError, match="needs embeddings"):
        build_masks(None, valid, MaskingConfig(strategy="semantic_keep_distinct"))
    with pytest.raises(ConfigError, match="strategy"):
        build_masks(x, valid, MaskingConfig(strategy="nope"))
    empty = valid.clone()
    empty[1] = False
    with pytest.raises(DataError, match="at least one valid"):
        build_masks(x, empty, MaskingConfig())
    with pytest.raises(ConfigError, match="masking.strategy"):
        load_config(overrides=["masking.strategy=semantic"])


def test_random_without_x_and_to_device():
    _, valid = _batch()
    m = build_masks(None, valid, MaskingConfig(ratio=0.4))
    moved = m.to("cpu")
    assert torch.equal(moved.mask, m.mask) and moved.ids_keep.dtype == torch.long
