import pytest
import torch
import torch.nn.functional as F

from lvmae.models import attention as attn_mod
from lvmae.models.attention import AttnLayout, attention
from lvmae.models.blocks import Transformer

B, N, H, DH = 3, 11, 2, 8
LENGTHS = torch.tensor([11, 6, 1])


def _qkv(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, N, H, DH, generator=g).requires_grad_(requires_grad) for _ in range(3)]


def _valid():
    return torch.arange(N) < LENGTHS[:, None]


def _grads(backend, layout):
    q, k, v = _qkv(requires_grad=True)
    out = attention(q, k, v, layout, backend)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    keep = _valid()[..., None, None] if layout and layout.key_valid is not None else 1.0
    (out * w * keep).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_math(padded):
    layout = AttnLayout(key_valid=_valid()) if padded else None
    a, b = _grads("sdpa", layout), _grads("math", layout)
    rows = _valid()[..., None, None] if padded else torch.ones(B, N, 1, 1, dtype=torch.bool)
    for x, y in zip(a, b):
        torch.testing.assert_close(x * rows, y * rows, atol=1e-5, rtol=1e-5)


def test_math_is_textbook_and_padding_is_ignored():
    q, k, v = _qkv()
    out = attention(q, k, v, AttnLayout(key_valid=_valid()), "math")
    b, h, i = 1, 1, 2
    n = int(LENGTHS[b])
    s = (k[b, :n, h] @ q[b, i, h]) / DH**0.5
    torch.testing.assert_close(out[b, i, h], torch.softmax(s, 0) @ v[b, :n, h])
    k2, v2 = k.clone(), v.clone()
    k2[~_valid()] = 1e3
    v2[~_valid()] = -1e3
    out2 = attention(q, k2, v2, AttnLayout(key_valid=_valid()), "sdpa")
    torch.testing.assert_close(out2[_valid()], out[_valid()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_packed_layout_matches_padded(backend):
    q, k, v = _qkv()
    valid = _valid()
    padded = attention(q, k, v, AttnLayout(key_valid=valid), backend)
    packed = attention(*(t[valid][None] for t in (q, k, v)), AttnLayout.packed(LENGTHS), backend)
    torch.testing.assert_close(packed[0], padded[valid], atol=1e-5, rtol=1e-5)


def test_sdpa_gets_a_broadcast_bool_mask(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attn_mod.F, "scaled_dot_product_attention", spy)
    q, k, v = _qkv()
    attention(q, k, v, AttnLayout(key_valid=_valid()), "sdpa")
    attention(q, k, v, None, "sdpa")
    assert seen[0].dtype == torch.bool and tuple(seen[0].shape) == (B, 1, 1, N)
    assert seen[1] is None


def test_xformers_falls_back_to_sdpa_off_cuda():
    q, k, v = _qkv()
    layout = AttnLayout(key_valid=_valid())
    attn_mod._warned.discard("xformers")
    with pytest.warns(UserWarning, match="xformers unavailable"):
        out = attention(q, k, v, layout, "xformers")
    torch.testing.assert_close(out, attention(q, k, v, layout, "sdpa"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, layout, "flash2")


@pytest.mark.skipif(not torch.cuda.is_available() or attn_mod._xformers_ops() is None, reason="needs xformers + CUDA")
@pytest.mark.parametrize("packed", [False, True])
def test_xformers_matches_math_on_cuda(packed):
    q, k, v = (t.cuda().half() for t in _qkv())
    valid = _valid().cuda()
    if packed:
        q, k, v = (t[valid][None] for t in (q, k, v))
        layout = AttnLayout.packed(LENGTHS.cuda())
    else:
        layout = AttnLayout(key_valid=valid)
    got, want = attention(q, k, v, layout, "xformers"), attention(q, k, v, layout, "math")
    rows = slice(None) if packed else valid
    torch.testing.assert_close(got[rows].float(), want[rows].float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_stack_packing_and_checkpointing_change_nothing(backend):
    torch.manual_seed(0)
    stack = Transformer(16, 2, 2, backend=backend)
    x = torch.randn(B, N, 16, requires_grad=True)
    valid = _valid()
    results = []
    for pack, ckpt in ((False, False), (True, False), (False, True)):
        stack.pack, stack.checkpoint = pack, ckpt
        x.grad = None
        stack.zero_grad()
        out = stack(x, valid)
        (out[valid] ** 2).sum().backward()
        results.append((out[valid].detach(), x.grad.clone(), stack.blocks[0].attn.qkv.weight.grad.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
