"""Dense probes on a synthetic store: heads, selection, context, reports, resume and the CLI."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import ConfigError
from lvmae.probe import dense as dense_mod
from lvmae.probe import run_probe
from lvmae.probe.dense_heads import TemporalConv, TokenLinear
from lvmae.store import FeatureStore

D, TYPES = 8, 4


class ShiftEncoder(nn.Module):
    """Stands in for LV-MAE: each token is the outer product of its segment and the one before
    (context, in a form a linear head can read the pair's order from)."""

    def encode(self, x, valid, scale=None):
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        tok = (x[..., :, None] * prev[..., None, :]).flatten(2) * valid[..., None]
        return {"tokens": tok, "cls": tok.mean(1), "valid": valid}


def make_dense_store(root: Path, n_videos: int = 60, seed: int = 0) -> None:
    """Segments show one of TYPES step types (prototype + noise), 5 s each; two dense tasks:

    ``type``: the step type (visible in each segment); ``direction``: whether the types run
    forwards or backwards through the cycle, which turns once mid-video (invisible per segment).
    """
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(TYPES, D)) * 2.0
    store = FeatureStore.create(root / "store", {"config_hash": "dense", "modalities": {"vision": {"dim": D}},
                                                 "dtype": "float32", "segment": {"seconds": 5.0, "stride": 5.0}})
    w, rows = store.writer(), []
    for i in range(n_videos):
        n, turn, d0 = int(rng.integers(10, 20)), int(rng.integers(4, 7)), int(rng.integers(2))
        direction = np.where(np.arange(n) < turn, d0, 1 - d0)
        types = [int(rng.integers(TYPES))]
        for k in range(1, n):
            types.append((types[-1] + (1 if direction[k] == 0 else -1)) % TYPES)
        w.write(f"v{i:02d}", {"vision": (protos[types] + rng.normal(size=(n, D)) * 0.3).astype(np.float32)})
        split = "train" if i < 36 else "val" if i < 48 else "test"
        for k in range(n):
            rows.append(f"v{i:02d},{split},type,{5 * k},{5 * k + 5},{types[k]}")
            rows.append(f"v{i:02d},{split},direction,{5 * k},{5 * k + 5},{direction[k]}")
    (root / "dense.csv").write_text("video_id,split,task,start,end,label\n" + "\n".join(rows) + "\n")


def dense_args(tmp: Path, out: str = "out", *extra: str) -> list[str]:
    return [f"probe.labels={tmp / 'dense.csv'}", f"probe.store={tmp / 'store'}", f"run.out_dir={tmp / out}",
            "probe.benchmark=generic", "probe.dense=true", "probe.epochs=40", "probe.lr=1e-2", "probe.batch_size=8",
            "probe.linear_lrs=[1e-2]", "probe.seeds=[0,1]", "probe.dense_plots=2", "run.progress=false",
            "run.device=cpu", *extra]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("dense")
    make_dense_store(tmp)
    cfg = load_config(overrides=dense_args(tmp, "out", "probe.dense_methods=[raw_linear,raw_temporal,lvmae_linear]"))
    summary = run_probe(cfg, encoder=ShiftEncoder())
    yield tmp, summary
    torch.set_num_threads(threads)


def test_heads_ignore_padding():
    torch.manual_seed(0)
    x, valid = torch.randn(2, 7, D), torch.ones(2, 7, dtype=torch.bool)
    valid[1, 4:] = False
    for head in (TokenLinear(D, 3).eval(), TemporalConv(D, 3, 16, 3).eval()):
        out = head(x, valid)
        alone = head(x[1:, :4], valid[1:, :4])
        assert torch.allclose(out[1, :4], alone[0], atol=1e-5) and (out[1, 4:] == 0).all()


def test_visible_labels_are_learned_and_context_needs_context(dense_run):
    _, s = dense_run
    r = s["results"]
    # the step type is in every segment: a per-segment linear head reads it
    assert r["type"]["raw_linear"]["metrics"]["acc"]["mean"] > 95
    # the direction is not: per segment it is near chance, while heads that see neighbours read it
    assert r["direction"]["raw_linear"]["metrics"]["acc"]["mean"] < 70
    assert r["direction"]["raw_temporal"]["metrics"]["acc"]["mean"] > 85
    assert r["direction"]["lvmae_linear"]["metrics"]["acc"]["mean"] > 85
    assert r["direction"]["lvmae_linear"]["metrics"]["f1@25"]["mean"] > r["direction"]["raw_linear"]["metrics"][
        "f1@25"]["mean"] + 20


def test_selection_on_val_and_test_scored_once(dense_run):
    _, s = dense_run
    for seed in s["results"]["type"]["raw_temporal"]["seeds"]:
        vals = [h["val"] for h in seed["history"]]
        assert seed["best_epoch"] == int(np.argmax(vals)) and seed["val"] == max(vals)
        assert seed["test"] == seed["scores"]["acc"]


def test_reports_timelines_and_per_class(dense_run):
    tmp, s = dense_run
    out = tmp / "out"
    md = (out / "results.md").read_text()
    assert "## direction" in md and "| raw_temporal |" in md and "F1@25" in md and "relabelled" not in md
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert {r["metric"] for r in rows} == {"acc", "edit", "f1@10", "f1@25", "f1@50", "acc_fg"}
    js = json.loads((out / "results.json").read_text())
    assert js["tasks"]["type"]["grid"]["differs_fraction"] == 0.0  # labels on segment boundaries lose nothing
    assert len(js["results"]["type"]["raw_linear"]["per_class"]["recall_mean"]) == TYPES + 1  # + background
    timelines = sorted(p.name for p in (out / "plots").glob("timeline_direction_*.png"))
    assert timelines == ["timeline_direction_v48.png", "timeline_direction_v49.png"]
    assert (out / "plots" / "dense_type.png").stat().st_size > 1000


def test_rerun_resumes_finished_fits(dense_run, monkeypatch):
    tmp, s = dense_run
    calls = []
    real = dense_mod.fit_dense
    monkeypatch.setattr(dense_mod, "fit_dense", lambda *a, **k: calls.append(1) or real(*a, **k))
    more = "probe.dense_methods=[raw_linear,raw_temporal,lvmae_linear]"
    again = run_probe(load_config(overrides=dense_args(tmp, "out", more, "probe.seeds=[0,1,2]")),
                      encoder=ShiftEncoder())
    assert len(calls) == 2 * 3  # only seed 2 of each task x method is new
    assert again["results"]["type"]["raw_linear"]["seeds"][0] == s["results"]["type"]["raw_linear"]["seeds"][0]


def test_cli_dense_raw_only_and_errors(dense_run, capsys):
    tmp, _ = dense_run
    assert main(["probe", *dense_args(tmp, "cli", "probe.tasks=[type]", "probe.seeds=[0]", "probe.epochs=5")]) == 0
    out = capsys.readouterr().out
    assert "# Dense probing results: generic" in out and "lvmae_linear: skipped" in out
    with pytest.raises(ConfigError, match="unknown probe.dense_methods"):
        run_probe(load_config(overrides=dense_args(tmp, "x", "probe.dense_methods=[raw_mean_sklearn]")))


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.mark.skipif(not (SHARED / "breakfast" / "segmentation_sample").is_dir(), reason="no shared datasets")
@pytest.mark.parametrize("recipe,labels,videos", [
    ("probe/breakfast_seg", SHARED / "breakfast" / "segmentation_sample",
     {"P03/cam01/P03_cereals.avi": 56, "P03/cam01/P03_coffee.avi": 62, "P47/webcam01/P47_cereals.avi": 43}),
    ("probe/coin_steps", SHARED / "coin" / "COIN.sample.json",
     {"LtRSn-ntcLY": 131, "sample-test-01": 240, "sample-val-02": 95}),
])
def test_experiment_files_run_on_the_sample_layouts(tmp_path, recipe, labels, videos, capsys):
    """The shipped experiments on the real label layouts, with 1-s segments of random features."""
    if recipe == "probe/coin_steps":  # the sample has one training video: copy it to carve val from
        db = json.loads(labels.read_text())
        db["database"]["copy-train"] = db["database"]["LtRSn-ntcLY"]
        labels = tmp_path / "COIN.json"
        labels.write_text(json.dumps(db))
        videos = {**videos, "copy-train": 131}
    rng = np.random.default_rng(0)
    store = FeatureStore.create(tmp_path / "store", {"config_hash": "s", "modalities": {"vision": {"dim": 4}},
                                                     "dtype": "float32", "segment": {"seconds": 1.0, "stride": 1.0}})
    w = store.writer()
    for vid, n in videos.items():
        w.write(vid, {"vision": rng.normal(size=(n, 4)).astype(np.float32)})
    args = ["probe", "-c", recipe, f"probe.labels={labels}", f"probe.store={tmp_path / 'store'}",
            f"run.out_dir={tmp_path / 'out'}", "probe.epochs=2", "probe.seeds=[0]", "run.progress=false",
            "run.device=cpu"]
    assert main(args) == 0
    js = json.loads((tmp_path / "out" / "results.json").read_text())
    task = next(iter(js["tasks"].values()))
    assert task["n"]["test"] >= 1 and set(js["methods"]) == {"raw_linear", "raw_temporal"}
    assert list((tmp_path / "out" / "plots").glob("timeline_*.png"))
    assert "F1@25" in capsys.readouterr().out
