"""LV-MAE on the Hub (lvmae.models.hub): the export layout behind huggingface_hub's model mixin.

push_to_hub is checked offline only: HfApi is replaced by a recorder, so the test sees the
folder the mixin would upload (and loads it back), not a real upload.
"""

import json
import shutil

import hub_helpers
import pytest
import torch
from hub_helpers import fill_cache

from lvmae.models import LVMAE, ModelConfig, load_pretrained, save_pretrained
from lvmae.models.export import add_probe_table

pytest.importorskip("huggingface_hub")
from lvmae.models.hub import LVMAEModel  # noqa: E402

torch.set_num_threads(1)
hub_cache = hub_helpers.hub_cache  # fixture: an empty offline HF cache
CFG = ModelConfig(in_dim=8, width=16, depth=2, heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2)


def _trained(seed=0):
    torch.manual_seed(seed)
    return LVMAE(CFG).eval()


def _same_encoding(a, b):
    g = torch.Generator().manual_seed(1)
    x, valid = torch.randn(2, 6, 8, generator=g), torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    for key in ("tokens", "cls"):
        torch.testing.assert_close(a.encode(x, valid)[key], b.encode(x, valid)[key], atol=0, rtol=0)


def test_export_round_trips_through_from_pretrained_by_dir_and_by_cached_id(tmp_path, hub_cache):
    model = _trained()
    save_pretrained(model, tmp_path / "export", extra={"step": 7, "stores": ["feats"]})
    (tmp_path / "export" / "README.md").unlink()  # an export written before model cards: still loads
    local = LVMAEModel.from_pretrained(tmp_path / "export")
    assert isinstance(local, LVMAEModel) and not local.training and local.extra["step"] == 7
    _same_encoding(local, model)
    commit = fill_cache(hub_cache, "acme/lvmae-tiny", tmp_path / "export", refs=("main", "v1"))
    for ref in ("acme/lvmae-tiny", "acme/lvmae-tiny@v1"):
        _same_encoding(LVMAEModel.from_pretrained(ref), model)
    _same_encoding(LVMAEModel.from_pretrained("acme/lvmae-tiny", revision=commit), model)
    by_id, extra = load_pretrained("acme/lvmae-tiny@v1")  # the plain loader takes ids too
    _same_encoding(by_id, model)
    from lvmae.probe.encoder import load_encoder

    frozen, _ = load_encoder("acme/lvmae-tiny")  # probe.checkpoint by id
    _same_encoding(frozen, model)
    with pytest.raises(Exception, match="hf download acme/absent"):
        LVMAEModel.from_pretrained("acme/absent")


def test_mixin_save_writes_the_export_layout_and_a_card(tmp_path):
    model = _trained()
    hub = LVMAEModel.from_lvmae(model, {"step": 42, "stores": ["a", "b"], "modalities": ["vision"]})
    hub.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "encoder.safetensors"]
    plain, extra = load_pretrained(tmp_path / "m")
    _same_encoding(plain, model)
    assert extra == {"step": 42, "stores": ["a", "b"], "modalities": ["vision"]}
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: lvmae" in card and "pytorch_model_hub_mixin" in card
    assert "| depth | 2 |" in card and "optimiser steps: 42" in card and "feature stores: ['a', 'b']" in card
    assert "## Probing" not in card
    add_probe_table(tmp_path / "m", "| task | lvmae_linear |\n|---|---|\n| order | 91.0 |")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "## Probing" in card and "| order | 91.0 |" in card
    assert LVMAEModel.from_pretrained(tmp_path / "m").extra["probe"].endswith("| order | 91.0 |")


def test_push_to_hub_uploads_the_export_folder(tmp_path, monkeypatch, hub_cache):
    import huggingface_hub.hub_mixin as mixin

    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kw):
            shutil.copytree(folder_path, uploaded)
            return f"commit of {repo_id}"

    monkeypatch.setattr(mixin, "HfApi", FakeApi)
    model = _trained(3)
    assert LVMAEModel.from_lvmae(model, {"step": 5}).push_to_hub("me/lvmae-demo") == "commit of me/lvmae-demo"
    card = (uploaded / "README.md").read_text()
    assert 'LVMAEModel.from_pretrained("me/lvmae-demo")' in card
    assert json.loads((uploaded / "config.json").read_text())["extra"] == {"step": 5}
    fill_cache(hub_cache, "me/lvmae-demo", uploaded)
    _same_encoding(LVMAEModel.from_pretrained("me/lvmae-demo"), model)


def test_export_command_puts_a_probe_table_in_the_card(tmp_path):
    from lvmae.commands.export import add_probe_results
    from lvmae.errors import DataError

    save_pretrained(_trained(), tmp_path / "e")
    summary = {"benchmark": "synth", "methods": ["raw_attentive", "lvmae_linear"],
               "tasks": {"order": {"metric": "top1", "n": {"train": 6, "val": 2, "test": 2}}},
               "results": {"order": {"raw_attentive": {"mean": 50.0, "std": 1.0},
                                     "lvmae_linear": {"mean": 90.0, "std": 2.0}}},
               "config": {"probe": {"seeds": [0]}}, "matching": {"missing": {}, "carved_val": {}}}
    (tmp_path / "results.json").write_text(json.dumps(summary))
    add_probe_results(tmp_path / "e", str(tmp_path / "results.json"))
    card = (tmp_path / "e" / "README.md").read_text()
    assert "## Probing" in card and "Benchmark: synth" in card and "**90.0 ± 2.0**" in card
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a readable results.json"):
        add_probe_results(tmp_path / "e", str(tmp_path / "bad.json"))
