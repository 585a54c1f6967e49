import dataclasses
import json

import pytest
import torch

from lvmae.config import MaskingConfig
from lvmae.errors import ConfigError, DataError, LvmaeError
from lvmae.masking import MaskBatch, build_masks
from lvmae.models import LVMAE, ModelConfig, RopeConfig, load_pretrained, save_pretrained
from lvmae.models.reference import ReferenceLVMAE

IN_DIM = 24
LENGTHS = [12, 7, 3]


def _cfg(**kw) -> ModelConfig:
    rope = kw.pop("rope", {})
    base = dict(in_dim=IN_DIM, width=32, depth=2, heads=4, decoder_width=16, decoder_depth=1, decoder_heads=2)
    base.update(kw)
    return ModelConfig(**base, rope=RopeConfig(**rope))


VARIANTS = {
    "hope": _cfg(),
    "rope": _cfg(rope={"kind": "rope"}),
    "sincos": _cfg(rope={"kind": "sincos"}),
    "none": _cfg(rope={"kind": "none"}),
    "tokens": _cfg(modality_dims=[16, 8], modality_fusion="tokens"),
    "concat2_cos_norm": _cfg(modality_dims=[16, 8], loss="cosine", norm_target=True),
    "identity_proj": _cfg(in_dim=32, l2_normalize_input=False),
}


def _data(lengths=LENGTHS, in_dim=IN_DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    x = torch.randn(len(lengths), n, in_dim, generator=g)
    valid = torch.arange(n) < torch.tensor(lengths)[:, None]
    return x, valid


def _model(cfg, cls=LVMAE, seed=0):
    torch.manual_seed(seed)
    return cls(cfg).eval()


def _masks(x, valid, ratio=0.5, strategy="random", seed=0):
    return build_masks(x, valid, MaskingConfig(strategy=strategy, ratio=ratio), torch.Generator().manual_seed(seed))


def _row(m: MaskBatch, b: int, n: int) -> MaskBatch:
    """Sequence ``b`` of a batch alone (padding is at the end, so its shuffle is a prefix)."""
    k = int(m.keep_valid[b].sum())
    return MaskBatch(m.ids_keep[b : b + 1, :k], m.keep_valid[b : b + 1, :k], m.ids_restore[b : b + 1, :n], m.mask[b : b + 1, :n])


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_does_not_change_valid_outputs(name):
    cfg = VARIANTS[name]
    model = _model(cfg)
    x, valid = _data(in_dim=cfg.in_dim)
    x_pad = x.masked_fill(~valid[..., None], 5.0)  # junk in the padding must not leak
    scale = torch.tensor([1.0, 0.5, 1.5])
    masks = _masks(x, valid)
    batch_enc = model.encode(x_pad, valid, scale)
    batch_out = model(x_pad, valid, masks, scale)
    for b in (1, 2):
        n = LENGTHS[b]
        alone = model.encode(x[b : b + 1, :n], valid[b : b + 1, :n], scale[b : b + 1])
        torch.testing.assert_close(batch_enc["tokens"][b, :n], alone["tokens"][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch_enc["cls"][b], alone["cls"][0], atol=1e-5, rtol=1e-4)
        out = model(x[b : b + 1, :n], valid[b : b + 1, :n], _row(masks, b, n), scale[b : b + 1])
        torch.testing.assert_close(batch_out["pred"][b, :n], out["pred"][0], atol=1e-5, rtol=1e-4)
    assert bool((batch_enc["tokens"][~valid] == 0).all())


def test_positions_matter():
    """The invariance test above could pass for a position-blind model; this one cannot."""
    model = _model(VARIANTS["hope"])
    x, valid = _data(lengths=[12])
    a = model.encode(x, valid)["tokens"]
    b = model.encode(x.flip(1), valid)["tokens"].flip(1)
    assert not torch.allclose(a, b, atol=1e-3)
    blind = _model(VARIANTS["none"])
    torch.testing.assert_close(blind.encode(x, valid)["tokens"], blind.encode(x.flip(1), valid)["tokens"].flip(1),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["hope", "concat2_cos_norm"])
def test_loss_counts_only_masked_valid_segments(name):
    cfg = VARIANTS[name]
    model = _model(cfg)
    x, valid = _data()
    masks = _masks(x, valid, ratio=0.4)
    out = model(x, valid, masks, 1.0)
    per_seg = model.segment_loss(out["pred"], out["target"])
    manual = per_seg[masks.mask].mean()
    torch.testing.assert_close(out["loss"], manual)
    assert not torch.allclose(out["loss"], per_seg[valid].mean())
    # the prediction at a visible or padded position has no gradient path to the loss
    pred = out["pred"].detach().requires_grad_(True)
    model.loss(pred, out["target"], masks.mask).backward()
    assert bool((pred.grad[~masks.mask] == 0).all()) and bool((pred.grad[masks.mask].abs().sum(-1) > 0).all())
    x2 = x.clone()
    x2[~valid] = 100.0
    torch.testing.assert_close(model(x2, valid, masks, 1.0)["loss"], out["loss"])


def test_targets_are_normalised_inputs():
    model = _model(VARIANTS["concat2_cos_norm"])
    x, valid = _data()
    out = model(x, valid, _masks(x, valid), 1.0)
    t = out["target"]
    torch.testing.assert_close(t[..., :16].mean(-1), torch.zeros(t.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(t[..., 16:].std(-1, unbiased=True), torch.ones(t.shape[:2]), atol=1e-3, rtol=0)
    plain = _model(VARIANTS["hope"])
    torch.testing.assert_close(plain(x, valid, _masks(x, valid), 1.0)["target"].norm(dim=-1), torch.ones(3, 12))


def test_tiny_model_overfits_a_small_batch():
    torch.manual_seed(0)
    cfg = _cfg(in_dim=16, width=32, depth=1, decoder_depth=1)
    model = LVMAE(cfg).train()
    x, valid = _data(lengths=[10, 8, 6, 10], in_dim=16, seed=1)
    masks = _masks(x, valid, ratio=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(x, valid, masks)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_encode_outputs_for_probing():
    cfg = VARIANTS["tokens"]
    model = _model(cfg)
    x, valid = _data()
    out = model.encode(x, valid)
    assert out["tokens"].shape == (3, 12, cfg.width) and out["cls"].shape == (3, cfg.width)
    assert torch.equal(out["valid"], valid)
    assert torch.isfinite(out["tokens"]).all() and bool((out["tokens"][valid].abs().sum(-1) > 0).all())


def test_scale_resolution():
    model = _model(VARIANTS["hope"])
    dev = torch.device("cpu")
    train = model.resolve_scale(None, 500, dev, train=True)
    assert set(train.tolist()) == set(model.cfg.rope.train_scales)
    assert bool((model.resolve_scale(None, 4, dev, train=False) == model.cfg.rope.eval_scale).all())
    assert bool((_model(VARIANTS["rope"]).resolve_scale(None, 4, dev, train=True) == 1.0).all())
    torch.testing.assert_close(model.resolve_scale(0.5, 3, dev, train=True), torch.full((3,), 0.5))
    x, valid = _data()
    a, b = model.encode(x, valid, 1.0)["tokens"], model.encode(x, valid, 1.5)["tokens"]
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", ["hope", "sincos", "tokens", "concat2_cos_norm"])
def test_matches_naive_reference_in_loss_and_gradients(name):
    cfg = VARIANTS[name]
    fast, ref = _model(cfg), _model(cfg, ReferenceLVMAE, seed=1)
    ref.load_state_dict(fast.state_dict())
    x, valid = _data(lengths=[12, 9, 4, 1])
    masks = _masks(x, valid, ratio=0.5, seed=2)
    scale = torch.tensor([1.0, 0.75, 1.5, 0.5])
    results = []
    for model in (fast, ref):
        model.zero_grad()
        out = model(x, valid, masks, scale)
        out["loss"].backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (fo, fg), (ro, rg) = results
    torch.testing.assert_close(fo["loss"], ro["loss"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fo["pred"][valid], ro["pred"][valid], atol=1e-5, rtol=1e-4)
    assert fg.keys() == rg.keys() and len(fg) == len(list(fast.parameters()))
    for k in fg:
        torch.testing.assert_close(fg[k], rg[k], atol=1e-6, rtol=1e-4, msg=k)


def test_packing_and_checkpointing_match_plain():
    x, valid = _data()
    masks = _masks(x, valid)
    runs = []
    for kw in ({}, {"pack_sequences": True}, {"checkpoint_activations": True}, {"attention": "math"}):
        model = _model(_cfg(**kw, rope={"decay": "none"})).train()  # a packed row takes no decay bias
        out = model(x, valid, masks, 1.0)
        out["loss"].backward()
        runs.append((out["loss"].detach(), model.encoder.blocks[0].attn.qkv.weight.grad))
    for loss, grad in runs[1:]:
        torch.testing.assert_close(loss, runs[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad, runs[0][1], atol=1e-6, rtol=1e-4)



def test_full_batch_attends_without_a_mask(monkeypatch):
    """No padding -> no key mask reaches SDPA (GPU flash kernels refuse masks), same result."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    # a distance-decay bias is itself a mask; without one, nothing may reach SDPA
    model = _model(_cfg(modality_dims=[16, 8], modality_fusion="tokens", rope={"decay": "none"}))
    x, valid = _data(lengths=[9, 9, 9])
    masks = _masks(x, valid)
    assert masks.full and masks.to("cpu").full
    fast = model(x, valid, masks, 1.0)["loss"]
    assert len(seen) == 3 and all(m is None for m in seen)  # 2 encoder + 1 decoder blocks
    seen.clear()
    masked = model(x, valid, dataclasses.replace(masks, full=False), 1.0)["loss"]
    assert len(seen) == 3 and all(m is not None for m in seen)
    torch.testing.assert_close(fast, masked, atol=1e-6, rtol=1e-5)
    assert not _masks(*_data()).full  # a ragged batch keeps its mask
    seen.clear()
    model.eval()
    full = model.encode(x, valid)["tokens"]
    assert len(seen) == 2 and all(m is None for m in seen)  # probing: encoder only, no mask
    seen.clear()
    padded = model.encode(torch.cat([x, x[:, :1]], 1), torch.cat([valid, valid[:, :1] & False], 1))
    assert len(seen) == 2 and all(m is not None for m in seen)
    torch.testing.assert_close(full, padded["tokens"][:, :-1], atol=1e-5, rtol=1e-4)


def test_bf16_forward_is_finite():
    model = _model(VARIANTS["hope"]).to(torch.bfloat16)
    x, valid = _data()
    out = model(x.to(torch.bfloat16), valid, _masks(x, valid), 1.0)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_state_dict_round_trip():
    cfg = VARIANTS["tokens"]
    a, b = _model(cfg, seed=0), _model(cfg, seed=1)
    x, valid = _data()
    assert not torch.allclose(a.encode(x, valid)["cls"], b.encode(x, valid)["cls"])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.encode(x, valid)["tokens"], b.encode(x, valid)["tokens"], atol=0, rtol=0)
    assert not any("freqs" in k for k in a.state_dict()), "derived buffers stay out of checkpoints"


@pytest.mark.parametrize("name", ["hope", "tokens"])
def test_export_round_trip(tmp_path, name):
    model = _model(VARIANTS[name])
    save_pretrained(model, tmp_path / "export", extra={"step": 7, "modalities": ["vision", "audio"]})
    loaded, extra = load_pretrained(tmp_path / "export")
    assert extra == {"step": 7, "modalities": ["vision", "audio"]}
    assert loaded.cfg == model.cfg and not loaded.training and not loaded.has_decoder
    x, valid = _data()
    for key in ("tokens", "cls"):
        torch.testing.assert_close(loaded.encode(x, valid)[key], model.encode(x, valid)[key], atol=0, rtol=0)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "export" / "encoder.safetensors")))
    assert keys == set(model.encoder_state_dict()) and not any(k.startswith(("decoder", "head", "mask")) for k in keys)
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["model"] == dataclasses.asdict(model.cfg)
    with pytest.raises(LvmaeError, match="without its decoder"):
        loaded(x, valid, _masks(x, valid))


def test_export_errors(tmp_path):
    with pytest.raises(DataError, match="not an exported"):
        load_pretrained(tmp_path)
    model = _model(VARIANTS["hope"])
    save_pretrained(model, tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "config.json").read_text())
    meta["model"]["depth"] = 3
    (tmp_path / "e" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="does not match"):
        load_pretrained(tmp_path / "e")
    (tmp_path / "e" / "encoder.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        load_pretrained(tmp_path / "e")
    with pytest.raises(LvmaeError, match="JSON"):
        save_pretrained(model, tmp_path / "f", extra={"t": torch.zeros(1)})


def test_input_and_config_errors():
    model = _model(VARIANTS["hope"])
    x, valid = _data()
    with pytest.raises(DataError, match=r"\[B, L, 24\]"):
        model.encode(x[..., :20], valid)
    with pytest.raises(DataError, match="valid"):
        model.encode(x, valid.long())
    masks = _masks(x, valid)
    with pytest.raises(DataError, match="ids_restore"):
        model(x, valid, MaskBatch(masks.ids_keep, masks.keep_valid, masks.ids_restore[:, :5], masks.mask))
    with pytest.raises(ConfigError, match="modality_dims"):
        LVMAE(_cfg(modality_dims=[16, 4]))
    with pytest.raises(ConfigError, match="rope.kind"):
        LVMAE(_cfg(rope={"kind": "alibi"}))
    with pytest.raises(ConfigError, match="even"):
        LVMAE(_cfg(width=36, heads=12))
    with pytest.raises(DataError, match="end of each sequence"):
        _model(VARIANTS["hope"], ReferenceLVMAE)(x, valid.flip(1), _masks(x, valid.flip(1)))
