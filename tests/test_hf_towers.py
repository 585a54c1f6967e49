"""hf_video / hf_audio towers and hf_text by sentence-transformers id: tiny random models built from
configs, used by local directory and by Hub id through a pre-filled offline cache."""

import json

import hub_helpers
import pytest
import torch
from hub_helpers import fill_cache

from lvmae.config import EncoderConfig
from lvmae.encoders import Waveforms, build_encoder
from lvmae.errors import ConfigError

tf = pytest.importorskip("transformers")
torch.set_num_threads(1)
hub_cache = hub_helpers.hub_cache  # fixture: an empty offline HF cache
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _xclip():
    tc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
              max_position_embeddings=16)
    vc = dict(SMALL, image_size=32, patch_size=16, num_frames=4, mit_hidden_size=16, mit_intermediate_size=32,
              mit_num_hidden_layers=1, mit_num_attention_heads=2)
    return tf.XCLIPModel(tf.XCLIPConfig(text_config=tc, vision_config=vc, projection_dim=16, prompt_layers=1,
                                        prompt_attention_heads=2, prompt_num_attention_heads=2))


VIDEO = {  # name: (model, embedding dim, (mean, std) the encoder must use)
    "videomae": (lambda: tf.VideoMAEModel(tf.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, **SMALL)), 32),
    "vjepa2": (lambda: tf.VJEPA2Model(tf.VJEPA2Config(crop_size=32, patch_size=16, frames_per_clip=4, tubelet_size=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2)), 32),
    "timesformer": (lambda: tf.TimesformerModel(tf.TimesformerConfig(image_size=32, patch_size=16, num_frames=4, **SMALL)), 32),
    "vivit": (lambda: tf.VivitModel(tf.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 16, 16], **SMALL)), 32),
    "xclip": (_xclip, 16),
}


def _w2v(cls):
    return cls(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(16, 16),
               conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


AUDIO = {  # name: (model, feature extractor, embedding dim)
    "clap": (lambda: tf.ClapModel(tf.ClapConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64,
                         max_position_embeddings=32),
        audio_config=dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], spec_size=64, num_mel_bins=16,
                          window_size=4, patch_embeds_hidden_size=16, patch_stride=[4, 4], patch_size=4),
        projection_dim=8)),
        lambda: tf.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                        fft_window_size=400, truncation="rand_trunc"), 8),
    "ast": (lambda: tf.ASTModel(tf.ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                            num_mel_bins=32, max_length=64)),
            lambda: tf.ASTFeatureExtractor(num_mel_bins=32, max_length=64), 16),
    "whisper": (lambda: tf.WhisperModel(tf.WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=50, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
        lambda: tf.WhisperFeatureExtractor(chunk_length=1), 16),
    "wav2vec2": (lambda: tf.Wav2Vec2Model(_w2v(tf.Wav2Vec2Config)),
                 lambda: tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True), 16),
    "hubert": (lambda: tf.HubertModel(_w2v(tf.HubertConfig)), lambda: tf.Wav2Vec2FeatureExtractor(sampling_rate=16000), 16),
}


def _save(model_fn, path, extractor_fn=None):
    torch.manual_seed(0)
    model_fn().save_pretrained(path)
    if extractor_fn is not None:
        extractor_fn().save_pretrained(path)
    return path


@pytest.mark.parametrize("name", list(VIDEO))
def test_hf_video_tower_by_dir_and_by_id(name, tmp_path, hub_cache):
    model_fn, dim = VIDEO[name]
    src = _save(model_fn, tmp_path / name)
    fill_cache(hub_cache, f"acme/tiny-{name}", src)
    enc = build_encoder("hf_video", "vision", EncoderConfig(checkpoint=str(src)))
    assert enc.dim == dim and not enc.frame_level
    assert enc.input_spec()["frames"] == 4 and enc.input_spec()["image_size"] == 32  # the tower's own
    x = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = enc.encode(x)
    assert out.shape == (3, dim) and torch.isfinite(out).all()
    torch.testing.assert_close(enc.encode(x[1:2]), out[1:2], rtol=1e-4, atol=1e-5)  # clips are independent
    assert (out[0] - out[2]).abs().max() > 1e-4
    by_id = build_encoder("hf_video", "vision", EncoderConfig(checkpoint=f"acme/tiny-{name}"))
    assert by_id.version == enc.version
    torch.testing.assert_close(by_id.encode(x), out, atol=0, rtol=0)


def test_hf_video_uses_the_processor_normalisation_and_frame_count(tmp_path):
    from lvmae.config import ExtractConfig, SegmentConfig
    from lvmae.extraction.api import Extractor

    src = _save(VIDEO["vivit"][0], tmp_path / "vivit")
    enc = build_encoder("hf_video", "vision", EncoderConfig(checkpoint=str(src)))
    white = torch.full((1, 4, 32, 32, 3), 255, dtype=torch.uint8)
    assert torch.allclose(enc.preprocess(white), torch.ones(1)), "ViViT: x / 127.5 - 1, then (x - 0.5) / 0.5"
    (src / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3,
                                                              "rescale_factor": 1 / 255}))
    enc = build_encoder("hf_video", "vision", EncoderConfig(checkpoint=str(src)))
    assert torch.allclose(enc.preprocess(white), torch.full((1,), 2.0))
    enc_cfg = EncoderConfig(vision="hf_video", checkpoint=str(src), audio=None)
    with pytest.raises(ConfigError, match="clips of 4 frames: set extract.segment.frames=4"):
        Extractor(ExtractConfig(segment=SegmentConfig(frames=8), encoder=enc_cfg))
    clip = tmp_path / "clip"
    tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, patch_size=16, **SMALL)).save_pretrained(clip)
    with pytest.raises(ConfigError, match="not a video tower"):
        build_encoder("hf_video", "vision", EncoderConfig(checkpoint=str(clip)))


@pytest.mark.parametrize("name", list(AUDIO))
def test_hf_audio_encoder_by_dir_and_by_id(name, tmp_path, hub_cache):
    model_fn, fe_fn, dim = AUDIO[name]
    src = _save(model_fn, tmp_path / name, fe_fn)
    fill_cache(hub_cache, f"acme/tiny-{name}", src)
    enc = build_encoder("hf_audio", "audio", EncoderConfig(audio_checkpoint=str(src)), sample_rate=8000)
    assert enc.dim == dim and enc.input_spec()["sample_rate"] == 16000  # the model's rate, not the default
    g = torch.Generator().manual_seed(0)
    wave, lengths = torch.randn(3, 16000, generator=g), torch.tensor([16000, 8000, 16000])
    out = enc.encode(Waveforms(wave, lengths))
    assert out.shape == (3, dim) and torch.isfinite(out).all()
    solo = enc.encode(Waveforms(wave[1:2, :8000], lengths[1:2]))  # a short segment: not changed by the batch
    torch.testing.assert_close(solo, out[1:2], rtol=1e-4, atol=1e-5)
    assert (out[0] - out[2]).abs().max() > 1e-5
    by_id = build_encoder("hf_audio", "audio", EncoderConfig(audio_checkpoint=f"acme/tiny-{name}"))
    torch.testing.assert_close(by_id.encode(Waveforms(wave, lengths)), out, atol=0, rtol=0)


def test_hf_audio_needs_a_known_audio_model_and_its_feature_extractor(tmp_path):
    with pytest.raises(ConfigError, match="encoder.audio_checkpoint"):
        build_encoder("hf_audio", "audio", EncoderConfig())
    src = _save(AUDIO["hubert"][0], tmp_path / "hubert")  # no preprocessor_config.json
    with pytest.raises(ConfigError, match="feature extractor"):
        build_encoder("hf_audio", "audio", EncoderConfig(audio_checkpoint=str(src)))
    bert = tmp_path / "bert"
    tf.BertModel(tf.BertConfig(vocab_size=10, **SMALL)).save_pretrained(bert)
    with pytest.raises(ConfigError, match="not an audio encoder"):
        build_encoder("hf_audio", "audio", EncoderConfig(audio_checkpoint=str(bert)))


def test_hf_text_by_sentence_transformers_id_follows_its_pooling(tmp_path, hub_cache):
    from test_encoders import _tiny_text_checkpoint

    src = _tiny_text_checkpoint(tmp_path / "st")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                               "pooling_mode_mean_tokens": False}))
    fill_cache(hub_cache, "sentence-transformers/tiny-cls", src)
    enc = build_encoder("hf_text", "text", EncoderConfig(text_checkpoint="sentence-transformers/tiny-cls"))
    texts = ["a cat sits", "a dog runs"]
    model = tf.BertModel.from_pretrained(src)
    tok = tf.AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        cls = model(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.encode(texts), torch.nn.functional.normalize(cls, dim=-1), rtol=1e-5, atol=1e-6)


def test_extraction_with_a_video_tower_and_an_audio_model_at_its_own_rate(tmp_path):
    from videos import make_video

    from lvmae.config import ExtractConfig, SegmentConfig
    from lvmae.extraction.api import Extractor

    video = _save(VIDEO["videomae"][0], tmp_path / "videomae")
    audio = _save(AUDIO["hubert"][0], tmp_path / "hubert", lambda: tf.Wav2Vec2FeatureExtractor(sampling_rate=8000))
    clip = make_video(tmp_path / "v.mp4", seconds=9.0, fps=4, size=48)
    cfg = ExtractConfig(segment=SegmentConfig(seconds=4.0, frames=4), encoder=EncoderConfig(
        vision="hf_video", checkpoint=str(video), audio="hf_audio", audio_checkpoint=str(audio)))
    ex = Extractor(cfg)
    assert ex.spec.sample_rate == 8000  # decoded at the audio model's rate
    arrays, _ = ex.embed(clip)
    assert arrays["vision"].shape == (2, 32) and arrays["audio"].shape == (2, 16)
    assert abs(arrays["vision"][0] - arrays["vision"][1]).max() > 1e-4
