import math

import pytest
import torch

from lvmae.models.rope import (
    apply_rotary,
    axis_frequencies,
    interleave_axes,
    rope_frequencies,
    rotary_cos_sin,
    sincos_embedding,
    sincos_table,
    time_positions,
)


def _textbook_rotate(x: torch.Tensor, pos: float, base: float = 10000.0) -> torch.Tensor:
    """RoFormer eq. (15): block-diagonal rotation matrix R_{Theta,m} times x (float64)."""
    d = x.shape[-1]
    r = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        a = pos * base ** (-2 * i / d)
        r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
            [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
        )
    return (r @ x.double().T).T


def _rotate(x, positions, freqs):
    """x [N, D] at positions [N, n_axes]."""
    cos, sin = rotary_cos_sin(positions, freqs)
    return apply_rotary(x, cos, sin)


def test_equals_textbook_rope_without_zero_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g)
    pos = torch.tensor([0.0, 1.0, 7.0, 100.0, 1234.0])
    freqs = axis_frequencies(16, 10000.0, zero_fraction=0.0)
    got = _rotate(x, pos[:, None], freqs)
    want = torch.stack([_textbook_rotate(x[i : i + 1], float(pos[i]))[0] for i in range(5)])
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
    torch.testing.assert_close(rope_frequencies(16), torch.tensor([10000.0 ** (-2 * i / 16) for i in range(8)]))


@pytest.mark.parametrize("zero", [0.0, 0.25, 0.5])
def test_dot_product_depends_only_on_offset(zero):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 32, generator=g), torch.randn(1, 32, generator=g)
    freqs = axis_frequencies(32, 10000.0, zero, axis_fractions=(0.75, 0.25))

    def score(pq, pk):
        return float((_rotate(q, torch.tensor([pq]), freqs) * _rotate(k, torch.tensor([pk]), freqs)).sum())

    base = score([3.5, 1.0], [1.25, 0.0])
    for shift in ([10.0, 0.0], [-2.75, 3.0], [400.0, 1.0]):
        shifted = score([3.5 + shift[0], 1.0 + shift[1]], [1.25 + shift[0], shift[1]])
        assert shifted == pytest.approx(base, abs=2e-4)
    assert score([3.5, 1.0], [2.25, 0.0]) != pytest.approx(base, abs=1e-3)  # offset matters


def test_zero_frequency_pairs_pass_through():
    freqs = axis_frequencies(64, 10000.0, zero_fraction=0.25)
    assert int((freqs[0] == 0).sum()) == 8 and bool((freqs[0, -8:] == 0).all()) and bool((freqs[0, :24] > 0).all())
    x = torch.randn(4, 64)
    out = _rotate(x, torch.tensor([[0.0], [3.0], [77.5], [5000.0]]), freqs)
    torch.testing.assert_close(out[:, 48:], x[:, 48:], atol=0, rtol=0)
    assert not torch.allclose(out[1:, :48], x[1:, :48])


def test_hope_hybrid_allocation_matches_paper_ratio():
    # HoPE: 16 of 64 pairs (head dim 128) carry no position
    theta = rope_frequencies(128, 10000.0, zero_fraction=0.25)
    assert int((theta == 0).sum()) == 16 and bool((theta[:48] > 0).all())
    assert bool((theta[:48].diff() < 0).all()), "rotary pairs keep the highest frequencies"


def test_multi_axis_allocation_is_interleaved():
    assert interleave_axes(12, (0.75, 0.25)).tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert interleave_axes(5, (0.6, 0.4)).tolist() == [0, 1, 0, 1, 0]
    freqs = axis_frequencies(32, 100.0, zero_fraction=0.25, axis_fractions=(0.75, 0.25))
    assert freqs.shape == (2, 16)
    assert bool(((freqs > 0).sum(0) <= 1).all()), "a pair rotates on one axis at most"
    assert int((freqs[1] > 0).sum()) == 3 and int((freqs[0] > 0).sum()) == 9
    torch.testing.assert_close(freqs.sum(0), rope_frequencies(32, 100.0, 0.25))


def test_temporal_scaling_equals_rotating_at_scaled_positions():
    g = torch.Generator().manual_seed(2)
    b, n, d = 3, 6, 16
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64).float()
    scale = torch.tensor([0.5, 1.0, 1.5])
    ids = torch.stack([torch.randperm(20, generator=g)[:n] for _ in range(b)])
    freqs = axis_frequencies(d, 10000.0, 0.0)
    out = _rotate(x, time_positions(ids, scale)[..., None], freqs)
    for i in range(b):
        for j in range(n):
            want = _textbook_rotate(x[i, j : j + 1], float(scale[i] * ids[i, j]))[0]
            torch.testing.assert_close(out[i, j].double(), want, atol=2e-5, rtol=0)


def test_apply_rotary_keeps_dtype_and_broadcasts_over_heads():
    x = torch.randn(2, 5, 3, 8, dtype=torch.bfloat16)  # [B, N, H, Dh]
    cos, sin = rotary_cos_sin(torch.arange(5.0).expand(2, 5)[..., None], axis_frequencies(8))
    out = apply_rotary(x, cos[:, :, None], sin[:, :, None])
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    ref = torch.stack([_rotate(x[:, :, h].float(), torch.arange(5.0).expand(2, 5)[..., None], axis_frequencies(8))
                       for h in range(3)], dim=2)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_sincos_matches_mae_formula():
    table = sincos_table(6, 8)
    for p in range(6):
        for i in range(4):
            w = 1.0 / 10000 ** (2 * i / 8)
            assert float(table[p, i]) == pytest.approx(math.sin(p * w), abs=1e-6)
            assert float(table[p, 4 + i]) == pytest.approx(math.cos(p * w), abs=1e-6)
    torch.testing.assert_close(sincos_embedding(torch.tensor([[2.0, 5.0]]), 8)[0], table[[2, 5]])
