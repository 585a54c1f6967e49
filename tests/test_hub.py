"""Checkpoint references (lvmae.hub): local dirs and Hub ids through a pre-filled, offline cache."""

import json

import hub_helpers
import pytest
import torch
from hub_helpers import fill_cache

from lvmae.config import EncoderConfig
from lvmae.encoders import build_encoder
from lvmae.errors import ConfigError
from lvmae.hub import SAFE_PATTERNS, HubError, resolve, split_ref

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
hub_cache = hub_helpers.hub_cache  # fixture: an empty offline HF cache


def _tiny_clip(path):
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(vc).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return path


def test_split_ref():
    assert split_ref("org/name") == ("org/name", None)
    assert split_ref("org/name@v1.0") == ("org/name", "v1.0")


def test_local_paths_are_used_as_they_are(tmp_path):
    assert resolve(tmp_path, "k") == tmp_path
    with pytest.raises(HubError, match="k=/nope/x: no such file"):
        resolve("/nope/x", "k")
    with pytest.raises(HubError, match="neither an existing path nor a Hugging Face id"):
        resolve("org/na me", "k")


def test_cached_id_resolves_offline_by_branch_tag_and_commit(tmp_path, hub_cache):
    from huggingface_hub import scan_cache_dir

    src = _tiny_clip(tmp_path / "clip")
    commit = fill_cache(hub_cache, "acme/tiny-clip", src, refs=("main", "v1"))
    assert [r.repo_id for r in scan_cache_dir(hub_cache).repos] == ["acme/tiny-clip"]  # a real cache layout
    snap = hub_cache / "models--acme--tiny-clip" / "snapshots" / commit
    for ref in ("acme/tiny-clip", "acme/tiny-clip@v1", f"acme/tiny-clip@{commit}"):
        assert resolve(ref, "encoder.checkpoint") == snap
    assert resolve("acme/tiny-clip", "k", revision="v1") == snap


def test_offline_and_not_cached_is_one_line_with_the_fetch_command(hub_cache):
    with pytest.raises(HubError) as e:
        resolve("openai/clip-vit-base-patch32@abc", "encoder.checkpoint")
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg
    assert "`hf download openai/clip-vit-base-patch32 --revision abc`" in msg
    with pytest.raises(ConfigError, match="hf download acme/none"):  # through the encoder factory
        build_encoder("hf_clip", "vision", EncoderConfig(checkpoint="acme/none"))


def test_hub_snapshot_without_safetensors_is_refused(tmp_path, hub_cache):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"\x80")
    fill_cache(hub_cache, "acme/pickled", src)
    with pytest.raises(HubError, match="no \\*.safetensors"):
        resolve("acme/pickled", "encoder.checkpoint")


def test_online_fetch_asks_for_safe_files_only(monkeypatch, tmp_path):
    """What lvmae asks huggingface_hub for (snapshot_download replaced: no network in tests)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake(repo, **kw):
        calls.append((repo, kw))
        (tmp_path / "w.safetensors").write_bytes(b"")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    resolve("acme/x@r2", "k")
    resolve("acme/x", "k", remote_code=True)
    (repo, kw), (_, kw2) = calls
    assert repo == "acme/x" and kw["revision"] == "r2" and kw["local_files_only"] is False
    assert kw["allow_patterns"] == list(SAFE_PATTERNS) and not any("bin" in p or "py" in p for p in SAFE_PATTERNS)
    assert kw2["revision"] is None and "*.py" in kw2["allow_patterns"]


def test_hf_clip_by_id_equals_by_local_dir(tmp_path, hub_cache):
    src = _tiny_clip(tmp_path / "clip")
    fill_cache(hub_cache, "acme/tiny-clip", src)
    x = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    local = build_encoder("hf_clip", "vision", EncoderConfig(checkpoint=str(src)))
    by_id = build_encoder("hf_clip", "vision", EncoderConfig(checkpoint="acme/tiny-clip@main"))
    assert by_id.version == local.version and by_id.dim == 16
    torch.testing.assert_close(by_id.encode(x), local.encode(x), atol=0, rtol=0)


def test_hf_text_by_id(tmp_path, hub_cache):
    from test_encoders import _tiny_text_checkpoint

    src = _tiny_text_checkpoint(tmp_path / "bert")
    fill_cache(hub_cache, "sentence-transformers/tiny-bert", src)
    local = build_encoder("hf_text", "text", EncoderConfig(text_checkpoint=str(src)))
    by_id = build_encoder("hf_text", "text", EncoderConfig(text_checkpoint="sentence-transformers/tiny-bert"))
    texts = ["a cat sits", "a dog runs"]
    torch.testing.assert_close(by_id.encode(texts), local.encode(texts), atol=0, rtol=0)
