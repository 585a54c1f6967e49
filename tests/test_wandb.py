"""run.loggers=[tensorboard,wandb]: Weights & Biases offline (no account) gets the metrics.jsonl scalars."""

import pytest
from pretrain_helpers import make_store

from lvmae.config import load_config
from lvmae.errors import ConfigError
from lvmae.train import pretrain
from lvmae.train.metrics import read_metrics

pytest.importorskip("wandb")
TINY = [
    "model.width=16", "model.depth=1", "model.heads=2", "model.decoder_width=16", "model.decoder_depth=1",
    "model.decoder_heads=2", "data.min_len=4", "data.max_len=8", "deepspeed.engine=torch",
    "deepspeed.micro_batch=4", "optim.warmup_steps=1", "train.log_every=2", "train.save_every=2",
    "train.plot=false", "train.export=false", "run.progress=false", "run.loggers=[tensorboard,wandb]",
    "run.wandb_project=lvmae-test",
]


def _run_file(out):
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, "no offline W&B run written"
    return files


def test_wandb_offline_writes_a_run_with_the_same_scalars_and_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = make_store(tmp_path / "s", [6, 9, 12, 15])
    out = tmp_path / "run"
    args = [*TINY, f"data.stores=[{store.root}]", f"run.out_dir={out}"]
    pretrain(load_config(overrides=[*args, "train.steps=2"]))
    run_id = (out / "wandb_id").read_text().strip()
    (first,) = _run_file(out)
    assert first.name == f"run-{run_id}.wandb" and list((out / "tb").glob("events.out.tfevents.*"))
    recs = read_metrics(out / "metrics.jsonl")
    data = first.read_bytes()
    keys = {k for r in recs for k in r if k != "step"}
    assert {"train/loss", "train/lr", "train/retrieval_top1"} <= keys
    assert all(k.encode() in data for k in keys), sorted(k for k in keys if k.encode() not in data)
    pretrain(load_config(overrides=[*args, "train.steps=4", "train.resume=true"]))
    assert (out / "wandb_id").read_text().strip() == run_id  # the resumed run continues the same W&B run
    assert [f.name for f in _run_file(out)] == [f"run-{run_id}.wandb"] * 2


def test_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match="run.loggers must name tensorboard and/or wandb"):
        load_config(overrides=["run.loggers=[mlflow]"])
