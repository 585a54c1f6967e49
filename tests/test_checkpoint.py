"""Checkpoint verification and resume: damaged files, pointers and flags never lose a run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from pretrain_helpers import make_store
from test_train import TINY, assert_same_weights
from test_train import launch_env as launch_env  # fixture

from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import ConfigError, DataError
from lvmae.train import pretrain
from lvmae.train.checkpoint import MANIFEST, CheckpointError, verify, write_manifest
from lvmae.train.metrics import read_metrics

FAST = [*TINY, "train.export=false", "train.plot=false", "train.save_every=4", "train.keep_last=3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s", [5, 9, 14, 20, 26, 33, 3, 40, 12, 18, 24, 7])


def cfg(store, out, *overrides):
    return load_config(overrides=[*FAST, f"data.stores=[{store.root}]", f"run.out_dir={out}", *overrides])


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """An unbroken 12-step run (checkpoints 4, 8, 12)."""
    base = tmp_path_factory.mktemp("runs")
    pretrain(cfg(store, base / "unbroken", "train.steps=12"))
    return base


@pytest.fixture
def run8(runs, tmp_path):
    """A copy of it as if killed before step 12 was saved: checkpoints 4 and 8, metrics up to 12."""
    out = tmp_path / "run"
    shutil.copytree(runs / "unbroken", out)
    shutil.rmtree(ck(out, 12))
    (out / "summary.json").unlink()
    (out / "checkpoints" / "latest").write_text("step_00000008\n")
    return out


def ck(run, step):
    return run / "checkpoints" / f"step_{step:08d}"


def test_every_checkpoint_has_a_manifest_and_json_rng_state(run8):
    for step in (4, 8):
        assert verify(ck(run8, step)) is None
        files = json.loads((ck(run8, step) / MANIFEST).read_text())["files"]
        assert {"model.safetensors", "optimizer.pt", "trainer.json", "rng_rank00000.json"} <= set(files)
        json.loads((ck(run8, step) / "rng_rank00000.json").read_text())
        assert not list(ck(run8, step).glob("*.pkl")) and not (ck(run8, step) / "rng_rank00000.pt").exists()


def test_resume_never_unpickles(store, run8, runs, monkeypatch):
    real = torch.load

    def safe_only(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "a checkpoint file was unpickled"
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", safe_only)
    pretrain(cfg(store, run8, "train.steps=12", "train.resume=true"))
    assert_same_weights(ck(runs / "unbroken", 12), ck(run8, 12), atol=0)


@pytest.mark.parametrize("pointer", ["garbage\n", None, "step_00000004\n"])
def test_latest_is_only_a_hint(store, run8, runs, pointer, caplog):
    """A missing, garbage or stale ``latest`` resumed from step 0 and deleted metrics.jsonl."""
    latest = run8 / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer)
    with pytest.raises(ConfigError, match="already has checkpoints.*--restart"):
        pretrain(cfg(store, run8, "train.steps=12"))  # without --resume: refused, whatever the pointer says
    assert [r["step"] for r in read_metrics(run8 / "metrics.jsonl")] == [2, 4, 6, 8, 10, 12]  # kept
    s = pretrain(cfg(store, run8, "train.steps=12", "train.resume=true"))
    assert s["start_step"] == 8 and s["steps"] == 12
    assert [r["step"] for r in read_metrics(run8 / "metrics.jsonl")] == [2, 4, 6, 8, 10, 12]
    assert_same_weights(ck(runs / "unbroken", 12), ck(run8, 12), atol=0)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated model": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors has"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt has"),
    "garbage optimizer": (lambda c: (c / "optimizer.pt").write_bytes(
        b"x" * (c / "optimizer.pt").stat().st_size), "optimizer.pt does not match"),
    "missing trainer.json": (lambda c: (c / "trainer.json").unlink(), "trainer.json is missing"),
    "missing rng": (lambda c: (c / "rng_rank00000.json").unlink(), "rng_rank00000.json is missing"),
    "no manifest": (lambda c: (c / MANIFEST).unlink(), "no manifest.json"),
    "garbage manifest": (lambda c: (c / MANIFEST).write_text("{"), "unreadable manifest.json"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(store, run8, runs, kind, caplog):
    damage, why = DAMAGE[kind]
    damage(ck(run8, 8))
    assert why in verify(ck(run8, 8))
    caplog.set_level("WARNING", logger="lvmae.train")
    s = pretrain(cfg(store, run8, "train.steps=12", "train.resume=true"))
    assert s["start_step"] == 4 and s["steps"] == 12
    assert f"step_00000008 is damaged ({why}" in caplog.text
    assert_same_weights(ck(runs / "unbroken", 12), ck(run8, 12), atol=0)
    assert verify(ck(run8, 8)) is None  # rewritten by the resumed run


def test_no_checkpoint_verifies_one_line_error_and_nothing_changes(store, run8):
    for step in (4, 8):
        _truncate(ck(run8, step) / "model.safetensors")
    before = sorted(p.relative_to(run8) for p in run8.rglob("*"))
    metrics = (run8 / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies .*step_00000008: model.safetensors has"):
        pretrain(cfg(store, run8, "train.steps=12", "train.resume=true"))
    assert sorted(p.relative_to(run8) for p in run8.rglob("*")) == before
    assert (run8 / "metrics.jsonl").read_text() == metrics


def test_restart_flag_deletes_and_starts_over(store, run8, runs, capsys):
    args = ["pretrain", *FAST, f"data.stores=[{store.root}]", f"run.out_dir={run8}", "train.steps=12"]
    assert main(args) == 2 and "--restart" in capsys.readouterr().err
    assert main([*args, "--restart", "--resume"]) == 2  # contradictory
    old_events = set((run8 / "tb").iterdir())
    assert main([*args, "--restart"]) == 0
    assert old_events and not old_events & set((run8 / "tb").iterdir())  # the old curves went too
    s = json.loads((run8 / "summary.json").read_text())
    assert s["start_step"] == 0 and s["resumed_from"] is None
    assert_same_weights(ck(runs / "unbroken", 12), ck(run8, 12), atol=0)


def test_resume_of_a_finished_run_touches_nothing(store, runs, tmp_path):
    out = tmp_path / "done"
    shutil.copytree(runs / "unbroken", out)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    s = pretrain(cfg(store, out, "train.steps=12", "train.resume=true"))
    assert s["already_finished"] and s["steps"] == 12 and s["final_loss"] is not None
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before  # summary.json, metrics, TensorBoard events, config.yaml


def test_export_refuses_a_damaged_checkpoint(run8, tmp_path):
    _truncate(ck(run8, 8) / "model.safetensors")
    with pytest.raises(DataError, match="damaged: model.safetensors has"):
        from lvmae.train.export import export_checkpoint

        export_checkpoint(ck(run8, 8), tmp_path / "e")
    assert main(["export", str(run8), "--out", str(tmp_path / "e")]) == 0  # the run dir: newest verified (4)
    from lvmae.models.export import load_pretrained

    assert load_pretrained(tmp_path / "e")[1]["step"] == 4


def test_deepspeed_verifies_its_safetensors_copy(store, tmp_path, launch_env):
    """The DeepSpeed engine resumed from ds/ alone: a wrong model.safetensors survived until export."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "ds"
    ds = ["deepspeed.engine=deepspeed", "train.steps=4", "train.save_every=2"]
    pretrain(cfg(store, out, *ds))
    c4 = ck(out, 4)
    w = load_file(str(c4 / "model.safetensors"))
    save_file({k: v + 1 for k, v in w.items()}, str(c4 / "model.safetensors"))
    write_manifest(c4, 1)  # consistent manifest: only the engine's comparison can tell
    with pytest.raises(DataError, match="model.safetensors differs from DeepSpeed's weights"):
        pretrain(cfg(store, out, *ds, "train.steps=6", "train.resume=true"))
    shutil.rmtree(c4 / "ds")  # DeepSpeed's own files missing: falls back to step 2
    s = pretrain(cfg(store, out, *ds, "train.steps=6", "train.resume=true"))
    assert s["start_step"] == 2
