"""The dense benchmark's resume bookkeeping (tools/bench_dense.py): a stage's outputs are reused
only under the settings they were made with.

The benchmark itself takes minutes; these tests touch only its stage records and directories.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_dense  # noqa: E402


def _fps(out: Path, *overrides: str) -> dict[str, str]:
    cfg, _ = bench_dense.configs(out, list(overrides))
    return bench_dense.stage_fingerprints(cfg, out)


def _finished(out: Path, fps: dict[str, str]) -> None:
    """A run directory where every stage finished under ``fps`` (one file per stage directory)."""
    for name, (_, dirs) in bench_dense.STAGES.items():
        for d in dirs:
            (out / d).mkdir(parents=True)
            (out / d / "x").write_text(d)
        bench_dense._write_record(out, name, fps[name], name != "probe")


def test_fingerprints_follow_the_settings_each_stage_reads(tmp_path):
    base = _fps(tmp_path)
    decay = _fps(tmp_path, "model.rope.decay=none")
    assert [base[s] == decay[s] for s in bench_dense.STAGES] == [True, True, False, False]
    synth = _fps(tmp_path, "synth.num_videos=20")
    assert all(base[s] != synth[s] for s in bench_dense.STAGES)  # every later stage depends on the videos
    assert _fps(tmp_path, "run.progress=false") == base
    assert _fps(tmp_path / "moved") == base  # paths are relative to the run directory


def test_claim_keeps_matching_stages_and_redoes_changed_ones(tmp_path):
    fps = _fps(tmp_path)
    _finished(tmp_path, fps)
    assert bench_dense.claim(tmp_path, fps, log=lambda _: None) == []
    assert all((tmp_path / d / "x").is_file() for _, dirs in bench_dense.STAGES.values() for d in dirs)

    new = _fps(tmp_path, "train.steps=800")
    said = []
    assert bench_dense.claim(tmp_path, new, log=said.append) == ["pretrain", "probe"]
    assert "pretrain, probe" in said[0]
    assert (tmp_path / "synth" / "x").is_file() and (tmp_path / "features" / "x").is_file()
    assert not any((tmp_path / d).exists() for d in ("pretrain", "random_init", "dense", "dense_random_init"))
    assert not (tmp_path / "stages" / "pretrain.json").exists()
    assert not list(tmp_path.glob(".old-*"))


def test_interrupted_stage_resumes_only_under_its_own_settings(tmp_path):
    fps = _fps(tmp_path)
    (tmp_path / "pretrain").mkdir()
    for name in ("synth", "extract"):
        bench_dense._write_record(tmp_path, name, fps[name], True)
    bench_dense._write_record(tmp_path, "pretrain", fps["pretrain"], False)  # killed mid-pretraining
    assert bench_dense.claim(tmp_path, fps, log=lambda _: None) == []
    assert (tmp_path / "pretrain").is_dir()
    assert bench_dense.claim(tmp_path, _fps(tmp_path, "model.depth=3"), log=lambda _: None) == ["pretrain"]
    assert not (tmp_path / "pretrain").exists()


def test_outputs_without_a_record_are_refused(tmp_path):
    """An export from an older run (no record: its settings are unknown) is neither reused nor deleted."""
    fps = _fps(tmp_path)
    for name in ("synth", "extract"):
        bench_dense._write_record(tmp_path, name, fps[name], True)
    (tmp_path / "pretrain" / "export").mkdir(parents=True)
    with pytest.raises(SystemExit, match="pretrain exist without a stage record"):
        bench_dense.claim(tmp_path, fps)
    assert (tmp_path / "pretrain" / "export").is_dir()


def test_a_finished_stage_is_skipped_and_an_unfinished_one_run(tmp_path):
    fps = _fps(tmp_path)
    calls = []
    bench_dense._write_record(tmp_path, "synth", fps["synth"], True)
    assert bench_dense._stage(tmp_path, "synth", fps, lambda: calls.append("synth")) == 0.0
    bench_dense._stage(tmp_path, "extract", fps, lambda: calls.append("extract"))
    assert calls == ["extract"]
    assert json.loads((tmp_path / "stages" / "extract.json").read_text()) == {"fingerprint": fps["extract"],
                                                                              "done": True}


def test_layer_tokens_gives_every_block_and_the_probed_tokens():
    import torch

    from lvmae.models import LVMAE, ModelConfig
    from lvmae.probe.bank import SequenceBank

    torch.manual_seed(0)
    model = LVMAE(ModelConfig(in_dim=8, width=16, depth=2, heads=2, decoder_width=8, decoder_depth=1,
                              decoder_heads=2), with_decoder=False).eval()
    lengths = torch.tensor([3, 5])
    bank = SequenceBank(["a", "b"], torch.randn(8, 8), torch.cumsum(lengths, 0) - lengths, lengths)
    out = bench_dense.layer_tokens(model, bank)
    assert list(out) == ["block1", "block2", "tokens"]
    assert [v.shape for v in out["block2"]] == [(3, 16), (5, 16)]
    b = bank.batch(torch.tensor([1]), "cpu")
    with torch.no_grad():
        tokens = model.encode(b.x, b.valid)["tokens"][0]
        normed = model.encoder.norm(torch.from_numpy(out["block2"][1]))
    assert torch.allclose(torch.from_numpy(out["tokens"][1]), tokens, atol=1e-6)
    assert torch.allclose(normed, tokens, atol=1e-5)  # tokens = the last block's output after the final LayerNorm
    assert not model.encoder.blocks[0]._forward_hooks  # hooks removed
