"""Gradient accumulation weights every masked segment equally, however the batch is split.

With length bucketing, one micro-batch may hold 2-segment crops (1 masked segment each)
and the next 16-segment ones (8 each). Averaging the micro-batches' mean losses would
give each short-crop segment several times the weight of a long-crop one; the global
batch's loss must be the mean over all its masked segments, as without accumulation.
"""

import pytest
import torch
from pretrain_helpers import make_store
from test_train import TINY

import lvmae.train.loop as loop
from lvmae.config import load_config
from lvmae.data import to_device
from lvmae.train.engine import TorchEngine


def test_accumulated_gradient_is_the_mean_over_all_masked_segments(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s", [2, 2, 2, 2, 40, 40, 40, 40])
    cfg = load_config(overrides=[*TINY, f"data.stores=[{store.root}]", f"run.out_dir={tmp_path / 'run'}",
                                 "deepspeed.micro_batch=4", "deepspeed.grad_accum=2", "data.min_len=2",
                                 "data.max_len=16", "optim.grad_clip=0", "train.steps=1"])
    run = loop._setup(cfg)
    seen, grads = [], {}
    real_next = type(run.stream).__next__
    monkeypatch.setattr(type(run.stream), "__next__", lambda self: seen.append(real_next(self)) or seen[-1])
    real_step = TorchEngine.step

    def step(self):
        grads.update({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return real_step(self)

    monkeypatch.setattr(TorchEngine, "step", step)
    reference = {n: p.detach().clone() for n, p in run.engine.model.named_parameters()}
    out = loop._train_step(run)
    counts = [int(b["masks"].mask.sum()) for b in seen]
    assert len(seen) == 2 and counts[0] != counts[1]  # micro-batches of different sizes

    model = loop.build_model(run.cfg)
    model.load_state_dict({**model.state_dict(), **reference})
    total, losses = 0.0, []
    for b in seen:
        b = to_device(b, torch.device("cpu"))
        o = model(b["x"], b["valid"], b["masks"], scale=b["scale"])
        losses.append(o["loss"])
        total = total + o["loss"] * int(b["masks"].mask.sum())
    (total / sum(counts)).backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)
    want = sum(float(loss.detach()) * c for loss, c in zip(losses, counts)) / sum(counts)
    assert float(out.values[0]) == pytest.approx(want, rel=1e-5)  # the logged loss too


@pytest.mark.slow
def test_two_ranks_equal_one_rank_accumulating_the_same_micro_batches(tmp_path):
    """2 ranks x 1 micro-batch and 1 rank x 2 accumulated see the same crops (16 videos: the same plan)
    and, with segment-count weighting across ranks too, reach the same weights."""
    import json
    import os
    import subprocess
    import sys

    from test_train import ROOT, assert_same_weights

    store = make_store(tmp_path / "s", [2, 3, 2, 40, 2, 35, 3, 38, 2, 30, 4, 33, 2, 36, 3, 39])
    common = [*TINY, f"data.stores=[{store.root}]", "train.steps=4", "train.plot=false", "train.export=false",
              "data.min_len=2", "data.max_len=16", "data.bucket_window=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29631", "-m", "lvmae.cli", "pretrain", *common, f"run.out_dir={two}"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "pretrain", *common, "deepspeed.grad_accum=2",
                        f"run.out_dir={one}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["global_batch"] == 8
    # atol covers the key biases (zero true gradient: Adam amplifies summation-order noise).
    assert_same_weights(one / "checkpoints" / "step_00000004", two / "checkpoints" / "step_00000004", atol=1e-4)
