"""The training step queues GPU work without waiting for it; the non-finite guard still holds.

A host sync (``float(t)``, ``.item()``, ``.tolist()``, boolean-mask indexing) makes the
CPU wait for the GPU, so it cannot queue the next step meanwhile. The loop may sync only
at log and checkpoint steps. On CPU there is no GPU to wait for, so the test counts the
calls instead, made from ``lvmae/train`` code.
"""

import sys

import pytest
import torch
from pretrain_helpers import make_store
from test_train import TINY
from torch.overrides import TorchFunctionMode

import lvmae.train.loop as loop
from lvmae.config import load_config
from lvmae.train import NonFiniteLossError, pretrain
from lvmae.train.metrics import retrieval_topk

SYNCS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__"}


class CountSyncs(TorchFunctionMode):
    """Counts device->host conversions (and boolean-mask indexing) called from lvmae/train."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        bool_index = name == "__getitem__" and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in args[1:2])
        if name in SYNCS or bool_index:
            code = sys._getframe(1).f_code
            if "lvmae/train/" in code.co_filename.replace("\\", "/"):
                self.calls.append(f"{name} in {code.co_name}")
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s", [5, 9, 14, 20, 26, 33, 3, 40])


def tiny(store, out, *overrides):
    return load_config(overrides=[*TINY, f"data.stores=[{store.root}]", f"run.out_dir={out}",
                                  "train.plot=false", "train.export=false", *overrides])


def test_train_step_has_no_host_syncs(store, tmp_path, monkeypatch):
    counter = CountSyncs()
    per_step: list[list[str]] = []
    real = loop._train_step

    def step(run, **kwargs):
        before = len(counter.calls)
        out = real(run, **kwargs)
        per_step.append(counter.calls[before:])
        return out

    monkeypatch.setattr(loop, "_train_step", step)
    scored = []
    real_hits = loop.retrieval_hits
    monkeypatch.setattr(loop, "retrieval_hits", lambda *a, **k: scored.append(1) or real_hits(*a, **k))
    with counter:
        pretrain(tiny(store, tmp_path / "run", "train.steps=6", "deepspeed.grad_accum=2",
                      "train.log_every=3", "train.save_every=6"))
    assert len(per_step) == 6
    assert per_step == [[]] * 6, per_step  # nothing inside a step waits for the device
    assert len(counter.calls) <= 4, counter.calls  # one fetch per log step (3, 6), not per step
    assert len(scored) == 2  # retrieval (B*L x B*L scores) only on the log steps


def _nan_from_call(monkeypatch, first_call: int, grad: bool = False):
    """Make LVMAE's loss (or only its gradient, with ``grad``) non-finite from forward call ``first_call``."""
    from lvmae.models.lvmae import LVMAE

    real = LVMAE.forward
    calls = {"n": 0}

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 0

        @staticmethod
        def backward(ctx, g):
            return g * float("inf")

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= first_call:
            if grad:
                out["loss"] = out["loss"] + InfGrad.apply(out["pred"].sum())
            else:
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(LVMAE, "forward", forward)


def test_nan_between_log_steps_names_its_step_and_is_never_saved(store, tmp_path, monkeypatch):
    _nan_from_call(monkeypatch, 5)  # step 5; logs at 3, 6; checkpoints at 4, 8
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 \(videos .*step_00000004"):
        pretrain(tiny(store, out, "train.steps=8", "train.log_every=3", "train.save_every=4"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004"]


def test_nan_right_before_a_checkpoint_is_caught_before_saving(store, tmp_path, monkeypatch):
    _nan_from_call(monkeypatch, 4)  # step 4 is a checkpoint step but not a log step
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 4.*Last good checkpoint: none"):
        pretrain(tiny(store, out, "train.steps=8", "train.log_every=5", "train.save_every=4"))
    assert not list((out / "checkpoints").glob("step_*"))


def test_infinite_gradient_with_finite_loss_is_never_saved(store, tmp_path, monkeypatch):
    """Clipping an inf gradient turns the weights into NaN while the loss still looks fine."""
    _nan_from_call(monkeypatch, 4, grad=True)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"grad norm is (inf|nan) \(loss [0-9.]+\) at step 4"):
        pretrain(tiny(store, out, "train.steps=8", "train.log_every=2", "train.save_every=4"))
    assert not list((out / "checkpoints").glob("step_*"))


def _retrieval_reference(pred, target, mask, valid, ks=(1, 5)):
    """Per query: gallery = valid segments; hit at k if fewer than k gallery items beat its own target."""
    hits = {k: [] for k in ks}
    gallery = [(b, i) for b in range(valid.shape[0]) for i in range(valid.shape[1]) if valid[b, i]]
    for b in range(mask.shape[0]):
        for i in range(mask.shape[1]):
            if not mask[b, i]:
                continue
            q = torch.nn.functional.normalize(pred[b, i], dim=0)
            sims = [float(q @ torch.nn.functional.normalize(target[c, j], dim=0)) for c, j in gallery]
            own = sims[gallery.index((b, i))]
            for k in ks:
                hits[k].append(sum(s > own for s in sims) < k)
    return {f"top{k}": sum(h) / len(h) if h else 0.0 for k, h in hits.items()}


def test_retrieval_matches_a_per_query_reference():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(3, 7, 5, generator=g)
    pred = target + 1.2 * torch.randn(3, 7, 5, generator=g)
    valid = torch.arange(7)[None] < torch.tensor([[7], [4], [6]])
    mask = valid & (torch.rand(3, 7, generator=g) < 0.5)
    got, want = retrieval_topk(pred, target, mask, valid), _retrieval_reference(pred, target, mask, valid)
    assert 0.0 < want["top1"] < want["top5"] < 1.0  # a case with misses at both k
    assert got == pytest.approx(want)


def test_data_wait_share_is_logged(store, tmp_path, monkeypatch):
    """``perf/data_wait_frac``: the share of training wall time spent waiting for the next batch."""
    import time

    from lvmae.data import DataStream
    from lvmae.train.metrics import read_metrics

    real = DataStream.__next__

    def slow(self):
        time.sleep(0.05)
        return real(self)

    monkeypatch.setattr(DataStream, "__next__", slow)
    out = tmp_path / "run"
    pretrain(tiny(store, out, "train.steps=4", "train.log_every=2"))
    recs = read_metrics(out / "metrics.jsonl")
    assert len(recs) == 2
    for r in recs:
        waited = r["perf/data_wait_frac"] * 2 / r["perf/steps_per_s"]  # seconds over the 2 steps logged
        assert waited >= 0.1 and r["perf/data_wait_frac"] <= 1.0  # at least the 2 x 50 ms slept
