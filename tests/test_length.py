"""Length-generalisation mechanisms (HoPE allocation, distance decay, logit scaling), fp32
position buffers under low-precision casts, held-out validation and window encoding."""

import math

import numpy as np
import pytest
import torch

from lvmae.config import MaskingConfig
from lvmae.errors import ConfigError, DataError, LvmaeError
from lvmae.masking import build_masks
from lvmae.models.config import ModelConfig, RopeConfig
from lvmae.models.lvmae import LVMAE
from lvmae.models.rope import alibi_slopes, distance_bias, rope_frequencies
from lvmae.train.validate import Validator


def _model(**rope) -> LVMAE:
    torch.manual_seed(0)
    cfg = ModelConfig(in_dim=16, width=32, depth=1, heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2,
                      rope=RopeConfig(**rope))
    return LVMAE(cfg)


def test_wavelength_rule_zeroes_pairs_longer_than_training():
    theta = rope_frequencies(32, 10000.0, max_position=47.0)
    wavelength = 2 * math.pi / theta[theta > 0]
    assert (wavelength <= 47.0).all()
    assert 0 < int((theta > 0).sum()) < 16
    # the zero pairs are exactly those with a wavelength over 47 positions
    full = rope_frequencies(32, 10000.0)
    assert torch.equal(theta == 0, 2 * math.pi / full > 47.0)


def test_model_allocates_from_training_length():
    m = _model(zero_freq_rule="wavelength", train_length=32, train_scales=[0.5, 1.5])
    theta = m.enc_freqs[0]
    max_pos = 1.5 * 31
    assert torch.equal(theta == 0, 2 * math.pi / rope_frequencies(16) > max_pos)
    with pytest.raises(LvmaeError, match="train_length"):
        _model(zero_freq_rule="wavelength")


def test_alibi_slopes_and_bias():
    s = alibi_slopes(4)
    torch.testing.assert_close(s, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    half = alibi_slopes(4, 0.5)
    torch.testing.assert_close(half, torch.tensor([2**-4, 2**-8, 0.0, 0.0]))
    pos = torch.tensor([[0.0, 1.0, 3.0]])
    bias = distance_bias(pos, s)
    assert bias.shape == (1, 4, 4, 4)
    assert (bias[:, :, 0] == 0).all() and (bias[:, :, :, 0] == 0).all()  # [CLS] never penalised
    assert bias[0, 0, 1, 3] == pytest.approx(-3.0 * 0.25)
    assert bias[0, 0, 3, 1] == bias[0, 0, 1, 3]


def test_decay_changes_attention_and_equals_math_backend():
    x = torch.randn(2, 12, 16)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False
    plain, decayed = _model(decay="none"), _model(decay="alibi")
    decayed.load_state_dict(plain.state_dict())
    a = plain.encode(x, valid)["tokens"]
    b = decayed.encode(x, valid)["tokens"]
    assert not torch.allclose(a, b, atol=1e-4)
    math_model = _model(decay="alibi")
    math_model.load_state_dict(plain.state_dict())
    for blk in math_model.encoder.blocks:
        blk.attn.backend = "math"
    torch.testing.assert_close(math_model.encode(x, valid)["tokens"], b, atol=1e-5, rtol=1e-5)


def test_decay_far_tokens_have_less_influence():
    """With a steep decay, perturbing a far segment moves a token less than without it."""
    torch.manual_seed(1)
    x = torch.randn(1, 64, 16)
    valid = torch.ones(1, 64, dtype=torch.bool)
    y = x.clone()
    y[0, 63] += 5.0
    effect = {}
    for decay in ("none", "alibi"):
        m = _model(decay=decay)
        with torch.no_grad():
            effect[decay] = float((m.encode(x, valid)["tokens"][0, 0] - m.encode(y, valid)["tokens"][0, 0]).norm())
    assert effect["alibi"] < 0.5 * effect["none"]


def test_length_scaling_only_beyond_training_length():
    m = _model(length_scaling=True, train_length=8)
    pos = torch.zeros(1, 4)
    assert m.attn_extras(pos, m.enc_slopes, 8)[1] is None
    assert m.attn_extras(pos, m.enc_slopes, 64)[1] == pytest.approx(2.0)
    x = torch.randn(1, 64, 16)
    valid = torch.ones(1, 64, dtype=torch.bool)
    plain = _model(decay="none")
    m = _model(length_scaling=True, train_length=8, decay="none")
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(m.encode(x, valid)["tokens"], plain.encode(x, valid)["tokens"], atol=1e-4)
    short = torch.randn(1, 8, 16)
    torch.testing.assert_close(m.encode(short, valid[:, :8])["tokens"], plain.encode(short, valid[:, :8])["tokens"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_position_buffers_stay_fp32_under_a_low_precision_cast(dtype):
    m = _model(decay="alibi", zero_freq_rule="wavelength", train_length=4096, base=1e4)
    ref = {k: getattr(m, k).clone() for k in m.FP32_BUFFERS if getattr(m, k, None) is not None}
    m = m.to(dtype)
    assert m.cls_token.dtype == dtype
    for k, v in ref.items():
        got = getattr(m, k)
        assert got.dtype == torch.float32, k
        assert torch.equal(got, v), k
    # the angle at position 6000 is what the fp32 table gives (a bf16 table is off by radians)
    angle = 6000.0 * m.enc_freqs[0]
    bf16_angle = 6000.0 * ref["enc_freqs"][0].to(torch.bfloat16).float()
    assert (angle - 6000.0 * ref["enc_freqs"][0]).abs().max() == 0
    assert (bf16_angle - angle).abs().max() > 0.1


def test_decay_refused_with_packing():
    with pytest.raises(ConfigError, match="pack_sequences=true takes no"):
        LVMAE(ModelConfig(in_dim=16, width=32, heads=2, pack_sequences=True, rope=RopeConfig(decay="alibi")))


def test_validator_fixed_masks_and_lengths():
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((100, 16)).astype(np.float32) for _ in range(3)]
    val = Validator(seqs, [16, 48, 200], MaskingConfig(ratio=0.5), windows_per_video=2, seed=0)
    assert val.lengths == [16, 48]  # nothing reaches 200 segments
    assert val.sets[16].x.shape == (6, 16, 16) and val.sets[48].x.shape == (6, 48, 16)
    m = _model()
    a, b = val(m), val(m)
    assert a == b and a["val/loss"] == a["val/loss@16"]
    assert set(a) == {"val/loss", "val/loss@16", "val/loss@48", "val/cos_gain@16", "val/cos_gain@48"}
    assert m.training  # restored
    # the loss is the model's own masked loss on those windows
    w = val.sets[48]
    m.eval()
    with torch.no_grad():
        want = float(m(w.x, w.valid, w.masks)["loss"])
    assert a["val/loss@48"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(DataError):
        Validator([], [16], MaskingConfig())


def test_validator_cos_gain_is_high_for_a_perfect_predictor():
    class Echo(torch.nn.Module):
        def forward(self, x, valid, masks):
            return {"pred": x, "target": x, "mask": masks.mask}

        def segment_loss(self, pred, target):
            return (pred - target).pow(2).mean(-1)

    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((32, 16)).astype(np.float32)]
    out = Validator(seqs, [32], MaskingConfig(ratio=0.5))(Echo())
    assert out["val/loss"] == 0.0
    assert out["val/cos_gain@32"] > 0.8
    masks = build_masks(None, torch.ones(1, 4, dtype=torch.bool), MaskingConfig(ratio=0.5))
    assert masks.mask.sum() == 2


def test_window_encoding_equals_encoding_each_window_alone():
    from lvmae.probe.bank import SequenceBank
    from lvmae.probe.encoder import encode_bank

    torch.manual_seed(0)
    lengths = torch.tensor([10, 4, 7])
    flat = torch.randn(int(lengths.sum()), 16)
    offsets = torch.cumsum(lengths, 0) - lengths
    bank = SequenceBank(["a", "b", "c"], flat, offsets, lengths)
    m = _model().eval()
    enc = encode_bank(m, bank, batch_size=2, window=4)
    assert enc.lengths.tolist() == [10, 4, 7]
    a = flat[:10]
    want = torch.cat([m.encode(a[i : i + 4][None], torch.ones(1, len(a[i : i + 4]), dtype=torch.bool))["tokens"][0]
                      for i in range(0, 10, 4)])
    torch.testing.assert_close(enc.flat[int(enc.offsets[0]) :][:10], want.detach(), atol=1e-5, rtol=1e-5)
    whole = encode_bank(m, bank, batch_size=2)

    def tokens(e, i):
        return e.flat[int(e.offsets[i]) : int(e.offsets[i] + e.lengths[i])]

    torch.testing.assert_close(tokens(enc, 1), tokens(whole, 1), atol=1e-5, rtol=1e-5)  # b fits in one window
    assert not torch.allclose(tokens(enc, 0), tokens(whole, 0), atol=1e-4)


def test_local_decay_reaches_the_training_length():
    s = alibi_slopes(4, span=32)
    torch.testing.assert_close(s, torch.tensor([32 ** -0.25, 32 ** -0.5, 32 ** -0.75, 1 / 32]))
    m = _model(decay="local", train_length=32)
    torch.testing.assert_close(m.enc_slopes, torch.tensor([32 ** -0.5, 1 / 32]))
    torch.testing.assert_close(_model(decay="local").enc_slopes, alibi_slopes(2))  # length unknown: ALiBi


@pytest.mark.parametrize("rope", [dict(decay="local", train_length=8), dict(decay="alibi", length_scaling=True,
                                                                              train_length=4)])
def test_reference_path_agrees_with_decay(rope):
    from lvmae.models.reference import ReferenceLVMAE

    fast = _model(**rope)
    ref = ReferenceLVMAE(fast.cfg)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, 10, 16)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 7:] = False
    masks = build_masks(x, valid, MaskingConfig(ratio=0.5), torch.Generator().manual_seed(0))
    a = fast(x, valid, masks, scale=1.0)["loss"]
    b = ref(x, valid, masks, scale=1.0)["loss"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_checkpointed_blocks_keep_the_decay():
    x = torch.randn(2, 12, 16)
    valid = torch.ones(2, 12, dtype=torch.bool)
    masks = build_masks(x, valid, MaskingConfig(ratio=0.5), torch.Generator().manual_seed(0))
    plain = _model(decay="local", train_length=8).train()
    ckpt = LVMAE(plain.cfg.__class__(**{**plain.cfg.__dict__, "checkpoint_activations": True}))
    ckpt.load_state_dict(plain.state_dict())
    a, b = plain(x, valid, masks, 1.0), ckpt.train()(x, valid, masks, 1.0)
    a["loss"].backward()
    b["loss"].backward()
    torch.testing.assert_close(a["loss"], b["loss"])
    torch.testing.assert_close(plain.encoder.blocks[0].attn.qkv.weight.grad, ckpt.encoder.blocks[0].attn.qkv.weight.grad)


def test_visible_loss_weight_adds_the_visible_segments_mean():
    x = torch.randn(2, 10, 16)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 8:] = False
    masks = build_masks(x, valid, MaskingConfig(ratio=0.5), torch.Generator().manual_seed(0))
    m = _model()
    w = LVMAE(m.cfg.__class__(**{**m.cfg.__dict__, "visible_loss_weight": 0.5}))
    w.load_state_dict(m.state_dict())
    out = m(x, valid, masks, 1.0)
    seg = m.segment_loss(out["pred"], out["target"])
    vis = valid & ~masks.mask
    want = (seg * masks.mask).sum() / masks.mask.sum() + 0.5 * (seg * vis).sum() / vis.sum()
    torch.testing.assert_close(w(x, valid, masks, 1.0)["loss"], want)
    from lvmae.models.reference import ReferenceLVMAE

    ref = ReferenceLVMAE(w.cfg)
    ref.load_state_dict(w.state_dict())
    torch.testing.assert_close(ref(x, valid, masks, 1.0)["loss"], want, atol=1e-5, rtol=1e-5)
