"""The paper's video-text monitor: text embedded in the vision encoder's space, read beside the
input (data.text_monitor), and R@1/R@5 of the reconstructed masked segments against the batch's texts."""

import inspect

import numpy as np
import pytest
import torch

from lvmae.config import EncoderConfig, load_config
from lvmae.data import build_stream
from lvmae.errors import ConfigError, DataError
from lvmae.store import FeatureStore
from lvmae.train import pretrain
from lvmae.train.metrics import read_metrics
from lvmae.train.text_monitor import text_retrieval_hits

torch.set_num_threads(1)
TYPES, DIM = 8, 16
TINY = ["model.width=32", "model.depth=1", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "data.min_len=6", "data.max_len=12", "deepspeed.engine=torch",
        "deepspeed.micro_batch=8", "optim.base_lr=0.128", "optim.warmup_steps=5", "train.export=false",
        "train.plot=false", "train.save_every=1000", "run.progress=false", "data.text_monitor=true"]


def aligned_store(path, videos=24, seed=0, text=True, text_dim=DIM):
    """Videos of steps (2-4 segments of one of TYPES kinds): vision = the kind's prototype + noise,
    text = the kind's caption embedding = its prototype (an aligned encoder pair); 1 step in 5 has no text."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((TYPES, DIM)).astype(np.float32)
    mods = {"vision": {"dim": DIM}, **({"text": {"dim": text_dim}} if text else {})}
    store = FeatureStore.create(path, {"config_hash": f"aligned-{text}-{text_dim}", "modalities": mods})
    w = store.writer()
    for v in range(videos):
        kinds = [k for k in rng.integers(0, TYPES, 8) for _ in range(rng.integers(2, 5))]
        captioned = np.repeat(rng.random(len(kinds)) > 0.2, 1)
        vision = protos[kinds] + 0.3 * rng.standard_normal((len(kinds), DIM)).astype(np.float32)
        arrays = {"vision": vision.astype(np.float32)}
        if text:
            t = protos[kinds] * captioned[:, None]
            arrays["text"] = t if text_dim == DIM else np.zeros((len(kinds), text_dim), np.float32)
        w.write(f"v{v}", arrays)
    return FeatureStore.open(path)


def test_monitor_retrieves_the_captions_well_above_chance(tmp_path):
    store = aligned_store(tmp_path / "s")
    cfg = load_config(overrides=[*TINY, f"data.stores=[{store.root}]", f"run.out_dir={tmp_path / 'run'}",
                                 "train.steps=200", "train.log_every=20"])
    pretrain(cfg)
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(0 <= r["train/text_retrieval_top1"] <= r["train/text_retrieval_top5"] <= 1 for r in recs)
    # Chance on the same batches: random predictions ranked against the same texts.
    stream = build_stream(cfg.data, cfg.masking, [], cfg.deepspeed.micro_batch, seed=0)
    g, chance = torch.Generator().manual_seed(0), []
    for _ in range(20):
        b = next(stream)
        noise = torch.randn(b["monitor"].shape, generator=g)
        chance.append(text_retrieval_hits(noise, b["monitor"], b["masks"].mask, b["valid"])[0].item())
    chance = float(np.mean(chance))
    late = float(np.mean([r["train/text_retrieval_top1"] for r in recs[-3:]]))  # one micro-batch per log step
    first = recs[0]["train/text_retrieval_top1"]
    assert chance < 0.2 and late > 0.35 and late > 2.5 * chance and late > first, (first, late, chance)


def test_monitor_needs_aligned_text_in_every_store(tmp_path):
    base = [*TINY, f"run.out_dir={tmp_path / 'run'}", "train.steps=1"]
    with pytest.raises(DataError, match="has no text features"):
        pretrain(load_config(overrides=[*base, f"data.stores=[{aligned_store(tmp_path / 'a', text=False).root}]"]))
    with pytest.raises(DataError, match="text is 8-d, vision 16-d"):
        pretrain(load_config(overrides=[*base, f"data.stores=[{aligned_store(tmp_path / 'b', text_dim=8).root}]"]))
    with pytest.raises(ConfigError, match="data.text_monitor needs vision"):
        load_config(overrides=["data.text_monitor=true", "data.modalities=[vision,text]"])


def test_hf_clip_text_embeds_text_in_the_image_space(tmp_path):
    tf = pytest.importorskip("transformers")
    from lvmae.encoders import build_encoder

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    params = inspect.signature(tf.BertTokenizer.__init__).parameters
    tok = (tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)}) if "vocab" in params
           else tf.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")))
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    conf = tf.CLIPConfig(text_config=dict(small, vocab_size=len(words), max_position_embeddings=16, eos_token_id=3,
                                          bos_token_id=2, pad_token_id=0, projection_dim=12),
                         vision_config=dict(small, image_size=32, patch_size=16, projection_dim=12), projection_dim=12)
    torch.manual_seed(0)
    model = tf.CLIPModel(conf).eval()
    model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    cfg = EncoderConfig(checkpoint=str(tmp_path / "clip"))
    text, image = build_encoder("hf_clip_text", "text", cfg), build_encoder("hf_clip", "vision", cfg)
    assert text.dim == image.dim == 12
    texts = ["a red circle", "a blue square"]
    with torch.no_grad():
        ref = model.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(text.encode(texts), ref, rtol=1e-5, atol=1e-6)
    vision_only = tmp_path / "vision"
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**small, image_size=32, patch_size=16)).save_pretrained(vision_only)
    with pytest.raises(ConfigError, match="has no text tower"):
        build_encoder("hf_clip_text", "text", EncoderConfig(checkpoint=str(vision_only)))


def test_synth_writes_caption_sidecars_that_extraction_reads_per_segment(tmp_path):
    from test_synth import tiny
    from torch import nn

    from lvmae.config import ExtractConfig, SegmentConfig
    from lvmae.encoders import register_torch_module
    from lvmae.extraction.api import Extractor
    from lvmae.synth import generate
    from lvmae.synth.dataset import video_path
    from lvmae.synth.plan import plan_dataset, type_names

    cfg = tiny(tmp_path / "synth", num_videos=2, tasks=["order", "appearance"])
    generate(cfg, progress=False)
    seen: list[str] = []

    def spy(texts):
        seen.extend(texts)
        return torch.zeros(len(texts), 4)

    register_torch_module("caption_spy", nn.Identity(), modality="text", preprocess=spy, dim=4)
    ex = Extractor(ExtractConfig(segment=SegmentConfig(seconds=cfg.segment_seconds, frames=1),
                                 encoder=EncoderConfig(vision=None, audio=None, text="caption_spy")))
    names = type_names(cfg)
    for plan in plan_dataset(cfg):
        path = video_path(cfg.out, plan.video_id)
        assert path.with_suffix(".srt").is_file()
        seen.clear()
        arrays, _ = ex.embed(path)
        assert seen == [f"step {names[t]}" for t in plan.segment_types()]  # one caption per segment, its step's
        assert arrays["text"].shape == (plan.num_segments, 4)


def test_text_retrieval_counts_each_distinct_caption_once():
    from lvmae.train.text_monitor import text_retrieval_hits

    e = torch.eye(4)
    # captions A A B C | B B C -, where "-" has no text (not a query, not a candidate)
    text = torch.stack([torch.stack([e[0], e[0], e[1], e[2]]), torch.stack([e[1], e[1], e[2], torch.zeros(4)])])
    valid = mask = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(text_retrieval_hits(text, text, mask, valid), torch.tensor([1.0, 1.0]))
    # predicting the next caption (A->B, B->C, C->an absent D): one other caption above A and B,
    # however many segments repeat it; C ties with everything and ties do not count against it.
    wrong = torch.roll(text, 1, dims=-1)
    torch.testing.assert_close(text_retrieval_hits(wrong, text, mask, valid, ks=(1, 2)), torch.tensor([2 / 7, 1.0]))
    assert text_retrieval_hits(text, text, torch.zeros_like(mask), valid).tolist() == [0.0, 0.0]
