"""Probing: feature banks, heads, encoder cache, training, reports and the CLI on a synthetic store."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lvmae.benchmarks import CLASSIFICATION, REGRESSION, TaskSpec
from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import ConfigError
from lvmae.probe import run_probe
from lvmae.probe.bank import SequenceBank, load_bank, pooled_bank, subsample_index
from lvmae.probe.encoder import cached_encode, encode_bank, subset
from lvmae.probe.fit import TrainSettings, fit_head
from lvmae.probe.heads import AttentiveProbe, LinearProbe, masked_mean, pick_heads
from lvmae.store import FeatureStore
from lvmae.train.schedule import lr_at

K, D, W = 4, 12, 16  # classes (prototypes), raw dim, fake encoder width
ALL_METHODS = "[raw_mean_sklearn,raw_linear,raw_attentive,lvmae_linear,lvmae_attentive]"


class FakeEncoder(nn.Module):
    """Stands in for LV-MAE: ``encode(x, valid, scale)`` -> tokens/cls/valid, padding-independent."""

    def __init__(self, dim=D, width=W, tokens_per_segment=1):
        super().__init__()
        self.proj = nn.Linear(dim, width * tokens_per_segment)
        self.tps, self.width, self.calls = tokens_per_segment, width, 0

    def encode(self, x, valid, scale=None):
        self.calls += 1
        b, n, _ = x.shape
        tok = torch.tanh(self.proj(x)).reshape(b, n * self.tps, self.width)
        v = valid.repeat_interleave(self.tps, dim=1)
        return {"tokens": tok, "cls": masked_mean(tok, v) * 2.0, "valid": v}


def make_store(root: Path, n_videos: int = 160, seed: int = 0, max_missing: int = 2):
    """Store where the class is which of K prototypes dominates a video, and a target = w . mean(x).

    Writes generic labels (train/val/test = 60/20/20 %) with two labelled videos that have no features.
    """
    rng = np.random.default_rng(seed)
    protos, w = rng.normal(size=(K, D)) * 1.5, rng.normal(size=D)
    store = FeatureStore.create(root / "store", {"config_hash": "synthetic", "modalities": {
        "vision": {"dim": D}, "audio": {"dim": 3}}, "dtype": "float16"})
    writer, rows, targets = store.writer(), [], {}
    for i in range(n_videos):
        n, c = int(rng.integers(5, 30)), int(rng.integers(K))
        pick = np.where(rng.random(n) < 0.5, c, rng.integers(K, size=n))
        x = (protos[pick] + rng.normal(size=(n, D)) * 0.8).astype(np.float16)
        writer.write(f"v{i:03d}", {"vision": x, "audio": rng.normal(size=(n, 3)).astype(np.float16)})
        split = "train" if i < 0.6 * n_videos else "val" if i < 0.8 * n_videos else "test"
        y = float(x.astype(np.float32).mean(0) @ w)
        targets[f"v{i:03d}"] = (split, y)
        rows += [f"v{i:03d},{split},dominant,{c},", f"v{i:03d},{split},score,,{y:.6f}"]
    rows += [f"gone{j},train,dominant,1," for j in range(max_missing)]
    (root / "labels.csv").write_text("video_id,split,task,label,target\n" + "\n".join(rows) + "\n")
    return store, targets


def probe_args(tmp: Path, out: str = "out", *extra: str) -> list[str]:
    return [f"probe.labels={tmp / 'labels.csv'}", f"probe.store={tmp / 'store'}", f"run.out_dir={tmp / out}",
            "probe.benchmark=generic", "probe.epochs=12", "probe.lr=1e-2", "probe.batch_size=16",
            "probe.seeds=[0,1]", "probe.attn_heads=4", "run.progress=false", "run.device=cpu", *extra]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("probe")
    _, targets = make_store(tmp)
    torch.manual_seed(0)
    cfg = load_config(overrides=probe_args(tmp, "out", f"probe.methods={ALL_METHODS}"))
    summary = run_probe(cfg, encoder=FakeEncoder())
    yield tmp, summary, targets
    torch.set_num_threads(threads)


# ---- banks -----------------------------------------------------------------


def _bank(lengths, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, dim, generator=g) for n in lengths]
    lens = torch.tensor(lengths)
    return SequenceBank([f"s{i}" for i in range(len(seqs))], torch.cat(seqs), torch.cumsum(lens, 0) - lens, lens), seqs


def test_bank_batch_is_padded_gather():
    bank, seqs = _bank([3, 1, 5, 2])
    b = bank.batch(bank.rows(["s2", "s1", "s3"]))
    assert b.x.shape == (3, 5, 3) and b.valid.sum(1).tolist() == [5, 1, 2]
    for row, s in enumerate([2, 1, 3]):
        n = len(seqs[s])
        assert torch.equal(b.x[row, :n], seqs[s]) and not b.x[row, n:].any()
    assert torch.allclose(bank.mean(), torch.stack([s.mean(0) for s in seqs]))
    sub = subset(bank, ["s3", "s0"])
    assert torch.equal(sub.batch(torch.tensor([0])).x[0], seqs[3])
    assert torch.allclose(sub.mean(), torch.stack([seqs[3].mean(0), seqs[0].mean(0)]))


def test_subsample_keeps_the_whole_span():
    assert subsample_index(5, 8).tolist() == [0, 1, 2, 3, 4]
    idx = subsample_index(100, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 99 and np.all(np.diff(idx) > 0)


def test_load_bank_concatenates_modalities_in_order(tmp_path):
    store, _ = make_store(tmp_path, n_videos=6)
    ids = store.video_ids[:4]
    bank = load_bank(store, ids, ["audio", "vision"], max_len=8)
    assert bank.dim == 3 + D and bank.flat.dtype == torch.float16
    for i, vid in enumerate(ids):
        keep = subsample_index(store.num_segments(vid), 8)
        want = np.concatenate([store.load(vid, "audio")[keep], store.load(vid, "vision")[keep]], 1)
        got = bank.batch(torch.tensor([i])).x[0, : len(keep)].numpy()
        assert np.array_equal(got, want.astype(np.float32))


# ---- heads, schedule ---------------------------------------------------------


@pytest.mark.parametrize("head", [LinearProbe(3, 4), LinearProbe(3, 4, "cls"), AttentiveProbe(3, 4, heads=8)])
def test_heads_ignore_padding(head):
    bank, _ = _bank([3, 1, 5, 2])
    b = bank.batch(torch.arange(4))
    head.eval()
    cls = torch.randn(4, 3)
    out = head(b.x, b.valid, cls)
    noisy = torch.where(b.valid[..., None], b.x, torch.randn_like(b.x) * 100)
    assert out.shape == (4, 4) and torch.allclose(head(noisy, b.valid, cls), out, atol=1e-5)


def test_pick_heads_and_lr_schedule():
    assert pick_heads(1280, 8) == 8 and pick_heads(12, 8) == 6 and pick_heads(7, 8) == 7 and pick_heads(13, 4) == 1
    lrs = [lr_at(s, 1.0, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(50, 1.0, 100, 10, schedule="constant") == 1.0


# ---- encoder outputs, cache -------------------------------------------------------


@pytest.mark.parametrize("tps", [1, 2])
def test_encode_bank_matches_one_video_at_a_time(tps):
    torch.manual_seed(0)
    enc = FakeEncoder(dim=3, width=5, tokens_per_segment=tps)
    bank, seqs = _bank([3, 1, 5, 2, 4])
    out = encode_bank(enc, bank, batch_size=2)
    for i, s in enumerate(seqs):
        alone = enc.encode(s[None], torch.ones(1, len(s), dtype=torch.bool))
        b = out.batch(torch.tensor([i]))
        assert b.valid.sum() == len(s) * tps
        assert torch.allclose(b.x[0], alone["tokens"][0], atol=1e-6)
        assert torch.allclose(out.cls[i], alone["cls"][0], atol=1e-6)


def test_cache_encodes_each_video_once(tmp_path):
    torch.manual_seed(0)
    enc = FakeEncoder(dim=3, width=5)
    bank, _ = _bank([3, 1, 5, 2, 4])
    part = cached_encode(enc, subset(bank, ["s0", "s1"]), tmp_path, "k", batch_size=8, device="cpu")
    assert enc.calls == 1 and len(part) == 2
    full = cached_encode(enc, bank, tmp_path, "k", batch_size=8, device="cpu")
    assert enc.calls == 2  # one more batch, for the three videos not cached yet
    again = cached_encode(enc, bank, tmp_path, "k", batch_size=8, device="cpu")
    assert enc.calls == 2
    direct = encode_bank(enc, bank, batch_size=8)
    for b in (full, again):
        assert torch.allclose(b.batch(torch.arange(5)).x, direct.batch(torch.arange(5)).x, atol=1e-6)
        assert torch.allclose(b.cls, direct.cls, atol=1e-6)


# ---- training on a synthetic store ------------------------------------------------


def test_every_method_learns_the_dominant_prototype(synth):
    _, summary, _ = synth
    res = summary["results"]["dominant"]
    assert set(res) == {"raw_mean_sklearn", "raw_linear", "raw_attentive", "lvmae_linear", "lvmae_attentive"}
    for method, r in res.items():
        assert r["mean"] >= 75.0, (method, r["mean"])  # chance is 25 %
        assert len(r["seeds"]) == 2 and all(s["best_epoch"] >= 0 for s in r["seeds"])
        assert np.asarray(r["confusion"]).sum() == 2 * summary["tasks"]["dominant"]["n"]["test"]


def test_regression_reports_mse_well_below_the_target_variance(synth):
    _, summary, targets = synth
    test_y = np.asarray([y for s, y in targets.values() if s == "test"])
    assert summary["tasks"]["score"]["metric"] == "mse"
    for method, r in summary["results"]["score"].items():
        assert 0 <= r["mean"] < 0.3 * test_y.var(), (method, r["mean"], test_y.var())
        assert r["confusion"] is None


def test_selection_is_the_first_best_validation_epoch(synth):
    _, summary, _ = synth
    for method in ("raw_attentive", "raw_mean_sklearn"):
        for r in summary["results"]["dominant"][method]["seeds"]:
            best = max(r["history"], key=lambda h: (h["val"], -h["epoch"]))
            assert r["best_epoch"] == best["epoch"] and r["val"] == best["val"] and "test" not in best
    for r in summary["results"]["score"]["lvmae_linear"]["seeds"]:
        best = min(r["history"], key=lambda h: (h["val"], h["epoch"]))
        assert r["best_epoch"] == best["epoch"] and r["val"] == best["val"]


def test_reports_are_written(synth):
    tmp, summary, _ = synth
    out = tmp / "out"
    md = (out / "results.md").read_text()
    assert "| task | metric | raw_mean_sklearn | raw_linear | raw_attentive | lvmae_linear | lvmae_attentive" in md
    assert "| dominant | top-1 %" in md and "| score | MSE" in md and " ± " in md
    assert "2 labelled (task, video) pairs had no features" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["task"] for r in rows] == ["dominant", "score"]
    assert math.isclose(float(rows[0]["raw_attentive_mean"]), summary["results"]["dominant"]["raw_attentive"]["mean"],
                        rel_tol=1e-5)
    full = json.loads((out / "results.json").read_text())
    assert full["config"]["probe"]["seeds"] == [0, 1] and full["results"]["score"]["raw_linear"]["seeds"]
    missing = json.loads((out / "missing_features.json").read_text())
    assert missing["missing"]["dominant"] == ["train:gone0", "train:gone1"]
    for name in ("accuracy.png", "confusion_dominant.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "plots" / "confusion_score.png").exists()
    assert (out / "config.yaml").is_file()


def test_rerun_resumes_finished_fits(synth):
    tmp, summary, _ = synth
    progress = tmp / "out" / "progress.jsonl"
    lines = progress.read_text().splitlines()
    cfg = load_config(overrides=probe_args(tmp, "out", "probe.methods=[raw_mean_sklearn,raw_attentive]",
                                           "probe.seeds=[0,1,2]"))
    again = run_probe(cfg)
    new = progress.read_text().splitlines()[len(lines):]
    assert sorted(json.loads(x)["key"] for x in new) == ["dominant/raw_attentive/2", "dominant/raw_mean_sklearn/2",
                                                         "score/raw_attentive/2", "score/raw_mean_sklearn/2"]
    old = summary["results"]["dominant"]["raw_attentive"]["seeds"][:2]
    assert again["results"]["dominant"]["raw_attentive"]["seeds"][:2] == old


def test_cli_writes_the_table_and_skips_lvmae_without_checkpoint(synth, capsys):
    tmp, _, _ = synth
    assert main(["probe", *probe_args(tmp, "cli", "probe.seeds=[0]", "probe.epochs=3")]) == 0
    out = capsys.readouterr().out
    assert "| dominant | top-1 %" in out and "lvmae_linear: skipped (no probe.checkpoint given)" in out
    assert (tmp / "cli" / "results.md").is_file() and (tmp / "cli" / "results.csv").is_file()


def test_cli_errors_are_one_line(synth, capsys):
    tmp, _, _ = synth
    assert main(["probe", *probe_args(tmp, "bad", "probe.methods=[lvmae_linear]")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probe.checkpoint" in err[0]
    assert main(["probe", *probe_args(tmp, "bad", f"probe.store={tmp / 'nope'}")]) == 2
    assert "not a feature store" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown probe.methods"):
        run_probe(load_config(overrides=probe_args(tmp, "bad", "probe.methods=[mean_pool]")))


# ---- the real exported LV-MAE encoder -----------------------------------------------


def _export_tiny_lvmae(path: Path, in_dim: int = D) -> nn.Module:
    export = pytest.importorskip("lvmae.models.export", reason="LV-MAE model code not available")
    from lvmae.models.config import ModelConfig
    from lvmae.models.lvmae import LVMAE

    torch.manual_seed(0)
    cfg = ModelConfig(in_dim=in_dim, width=16, depth=1, heads=2, decoder_width=8, decoder_depth=1, decoder_heads=2)
    model = LVMAE(cfg)
    export.save_pretrained(model, path)
    return model


def test_encode_bank_with_lvmae_is_padding_independent(tmp_path):
    _export_tiny_lvmae(tmp_path / "export", in_dim=3)
    from lvmae.probe.encoder import load_encoder

    model, _ = load_encoder(tmp_path / "export")
    bank, seqs = _bank([3, 1, 5, 2, 4])
    out = encode_bank(model, bank, batch_size=3, scale=1.5)
    for i, s in enumerate(seqs):
        alone = model.encode(s[None], torch.ones(1, len(s), dtype=torch.bool), torch.tensor([1.5]))
        assert torch.allclose(out.batch(torch.tensor([i])).x[0], alone["tokens"][0], atol=1e-5)
        assert torch.allclose(out.cls[i], alone["cls"][0], atol=1e-5)


def test_cli_probes_an_exported_checkpoint(synth, capsys):
    tmp, _, _ = synth
    _export_tiny_lvmae(tmp / "export")
    args = probe_args(tmp, "ckpt", f"probe.checkpoint={tmp / 'export'}", "probe.seeds=[0]", "probe.epochs=4",
                      "probe.methods=[lvmae_linear,lvmae_attentive]", "probe.pooling=cls")
    assert main(["probe", *args]) == 0
    assert "| dominant | top-1 %" in capsys.readouterr().out
    full = json.loads((tmp / "ckpt" / "results.json").read_text())
    assert set(full["results"]["dominant"]) == {"lvmae_linear", "lvmae_attentive"}
    cache = list((tmp / "ckpt" / "encoded").glob("*/store.json"))
    assert len(cache) == 1 and len(FeatureStore.open(cache[0].parent)) == 160
    bad = probe_args(tmp, "ckpt2", f"probe.checkpoint={tmp / 'export'}", "probe.modalities=[vision,audio]",
                     "probe.methods=[lvmae_linear]")
    assert main(["probe", *bad]) == 2
    assert "takes 12-d inputs" in capsys.readouterr().err


# ---- review fixes: narrow attentive probe, early stopping, test read once, pooled linear -------------


def test_attentive_probe_projects_wide_features_to_its_width():
    narrow, full = AttentiveProbe(40, 3, heads=4, width=8), AttentiveProbe(40, 3, heads=4)
    assert narrow.width == 8 and narrow.query.shape == (1, 1, 8) and full.width == 40
    assert AttentiveProbe(6, 3, heads=4, width=8).width == 6  # never wider than the features
    assert sum(p.numel() for p in narrow.parameters()) * 5 < sum(p.numel() for p in full.parameters())
    test_heads_ignore_padding(AttentiveProbe(3, 4, heads=8, width=2))


def _toy_task(n=60, seed=0):
    """Two classes whose mean differs along one axis; splits 40/10/10."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    lens = torch.randint(2, 6, (n,), generator=g)
    flat = torch.randn(int(lens.sum()), 3, generator=g) + torch.repeat_interleave(y, lens)[:, None] * 2.0
    bank = SequenceBank([f"v{i}" for i in range(n)], flat, torch.cumsum(lens, 0) - lens, lens)
    rows = {"train": torch.arange(40), "val": torch.arange(40, 50), "test": torch.arange(50, 60)}
    spec = TaskSpec("t", CLASSIFICATION, 2, ("a", "b"))
    return bank, rows, {s: y[r].numpy() for s, r in rows.items()}, spec


def test_fit_head_stops_early_and_reads_test_once(monkeypatch):
    from lvmae.probe import fit

    bank, rows, y, spec = _toy_task()
    calls = []
    real = fit.predict
    monkeypatch.setattr(fit, "predict", lambda head, b, r, *a: calls.append(len(r)) or real(head, b, r, *a))
    st = TrainSettings(epochs=60, lr=0.05, batch_size=8, warmup_epochs=0, patience=3)
    res = fit_head(lambda: LinearProbe(3, 2), bank, rows, y, spec, st, 0, torch.device("cpu"))
    assert len(res.history) == max(res.best_epoch + 3, 30) + 1 < 60 and res.extra["epochs_run"] == len(res.history)
    assert "test" not in res.history[0] and calls.count(10) == len(res.history) + 1  # val per epoch + test once
    flipped = {**y, "test": 1 - y["test"]}
    again = fit_head(lambda: LinearProbe(3, 2), bank, rows, flipped, spec, st, 0, torch.device("cpu"))
    assert again.history == res.history and again.test == pytest.approx(100.0 - res.test)


def test_early_stopping_waits_while_the_train_loss_is_that_of_a_constant_guess():
    from lvmae.probe.fit import best_epochs

    def run(losses, vals):
        it = iter(zip(losses, vals))
        cur = {}
        head = LinearProbe(3, 2)
        st = TrainSettings(epochs=len(vals), batch_size=8, warmup_epochs=0, patience=3)

        def train(lrs):
            cur["loss"], cur["val"] = next(it)
            return cur["loss"]

        _, history = best_epochs(head, st, 1, train, lambda: cur["val"], lambda a, b: a > b, chance_loss=0.69)
        return len(history)

    # val at chance from epoch 0, train loss at the constant guess's until epoch 12, then it learns:
    # patience counts from epoch 12, so the stop comes at 15 (the plain rule stopped at 10)
    assert run([0.7] * 12 + [0.5] * 8, [50.0] * 20) == 16
    assert run([0.7] * 20, [50.0] * 20) == 20  # never left the plateau: the whole schedule
    assert run([0.5] * 20, [50.0, 60.0] + [55.0] * 18) == 11  # learnt, no better val: stops 3 after the best
    assert run([0.5] * 20, [50.0] * 20) == 11  # below the guess's loss from the start: the plain rule


def test_fit_head_picks_the_learning_rate_on_val(monkeypatch):
    from lvmae.probe import fit

    bank, rows, y, _ = _toy_task()
    spec, y = TaskSpec("r", REGRESSION), {s: v * 3.0 + 1.0 for s, v in y.items()}
    st = TrainSettings(epochs=4, batch_size=8, warmup_epochs=0)
    lrs = [1e-6, 0.1]  # the first cannot move from its init in 4 epochs
    calls = []
    real = fit.predict
    monkeypatch.setattr(fit, "predict", lambda head, b, r, *a: calls.append(len(r)) or real(head, b, r, *a))
    res = fit_head(lambda: LinearProbe(3, 2), bank, rows, y, spec, st, 0, torch.device("cpu"), lrs)
    assert [lr for lr, _ in res.extra["lr_val"]] == lrs and res.extra["lr"] == 0.1
    assert res.val == min(v for _, v in res.extra["lr_val"]) < res.extra["lr_val"][0][1] / 2
    assert calls.count(10) == 2 * 4 + 1  # both candidates validated every epoch, one test
    alone = fit_head(lambda: LinearProbe(3, 2), bank, rows, y, spec, st, 0, torch.device("cpu"), [0.1])
    assert alone.history == res.history and alone.test == res.test  # same seed for every candidate


def test_linear_probe_on_the_pooled_bank_equals_it_on_sequences():
    bank, _ = _bank([3, 1, 5, 2])
    bank.cls = torch.randn(4, 3)
    pooled = pooled_bank(bank)
    assert pooled.lengths.tolist() == [1, 1, 1, 1] and torch.equal(pooled.cls, bank.cls)
    for pooling in ("mean", "cls"):
        head = LinearProbe(3, 2, pooling).eval()
        full, one = bank.batch(torch.arange(4)), pooled.batch(torch.arange(4))
        assert torch.allclose(head(full.x, full.valid, full.cls), head(one.x, one.valid, one.cls), atol=1e-6)


def test_progress_survives_a_torn_last_line(tmp_path):
    from lvmae.probe.runner import ProgressLog

    path = tmp_path / "progress.jsonl"
    ProgressLog(path).add("fp", "t/m/0", {"test": 1.0})
    with open(path, "a") as f:
        f.write('{"fingerprint": "fp", "key": "t/m/1", "res')  # killed mid-write
    p = ProgressLog(path)
    assert set(p.done) == {("fp", "t/m/0")}
    p.add("fp", "t/m/1", {"test": 2.0})
    assert ProgressLog(path).done == {("fp", "t/m/0"): {"test": 1.0}, ("fp", "t/m/1"): {"test": 2.0}}


def test_report_counts_ambiguous_ids_and_untrained_classes(synth):
    import copy

    from lvmae.probe.report import markdown_table

    _, summary, _ = synth
    s = copy.deepcopy(summary)
    s["matching"]["ambiguous"] = {"dominant": ["train:a", "test:b"], "score": []}
    s["matching"]["unseen"] = {"dominant": {"test": 3}}
    md = markdown_table(s)
    assert "2 labelled (task, video) pairs matched several store entries and were left out" in md
    assert "Classes absent from train (kept, scored as errors): dominant test 3 videos." in md
