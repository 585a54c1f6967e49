import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pretrain_helpers import corrupt, make_store
from safetensors.torch import load_file

from lvmae.cli import main
from lvmae.config import load_config
from lvmae.errors import ConfigError, DataError
from lvmae.train import NonFiniteLossError, lr_at, peak_lr, pretrain
from lvmae.train.engine import LAUNCH_VARS, deepspeed_config, param_groups
from lvmae.train.metrics import read_metrics, retrieval_topk

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.width=32", "model.depth=1", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
    "model.decoder_heads=2", "data.min_len=4", "data.max_len=16", "deepspeed.engine=torch",
    "deepspeed.micro_batch=4", "optim.base_lr=0.128", "optim.warmup_steps=2", "train.log_every=2",
    "train.save_every=4", "train.keep_last=2", "run.progress=false",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s", [5, 9, 14, 20, 26, 33, 3, 40, 12, 18, 24, 7])


@pytest.fixture
def launch_env():
    """Undo the launcher variables a DeepSpeed run sets in this process."""
    saved = {k: os.environ.get(k) for k in LAUNCH_VARS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tiny(store, out, *overrides):
    return load_config(overrides=[*TINY, f"data.stores=[{store.root}]", f"run.out_dir={out}", *overrides])


def weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


def _drop_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """A fused qkv bias without its key third: softmax ignores a per-query constant, so the key
    bias's true gradient is 0 and Adam turns summation-order noise into steps of ~lr."""
    if not name.endswith("attn.qkv.bias"):
        return t
    n = t.shape[0] // 3
    return torch.cat([t[:n], t[2 * n :]])


def assert_same_weights(a, b, atol=1e-6, key_bias=True):
    """Within ``atol`` (rtol 1e-5); ``atol=0``: bit-identical. ``key_bias=False`` leaves the
    key biases out (see :func:`_drop_key_bias`)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    if not key_bias:
        wa, wb = ({k: _drop_key_bias(k, v) for k, v in w.items()} for w in (wa, wb))
    for k in wa:
        if atol == 0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k].float(), wb[k].float(), atol=atol, rtol=1e-5,
                                       msg=lambda m, k=k: f"{k}: {m}")


def test_schedule_warmup_cosine_and_scaling():
    assert peak_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    lrs = [lr_at(s, 1.0, 100, warmup_steps=10, min_lr=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.55) and lr_at(100, 1.0, 100, 10, 0.1) == pytest.approx(0.1)


def test_deepspeed_config_and_param_groups():
    cfg = load_config(overrides=["deepspeed.micro_batch=6", "deepspeed.grad_accum=3", "deepspeed.precision=bf16",
                                 "deepspeed.zero_stage=2", "optim.grad_clip=0.5"])
    ds = deepspeed_config(cfg.deepspeed, cfg.optim, world=4, device=torch.device("cuda"))
    assert ds["train_batch_size"] == 6 * 3 * 4 and ds["train_micro_batch_size_per_gpu"] == 6
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_clipping"] == 0.5
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1]


def test_retrieval_topk():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, 8, generator=g)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    mask = valid & (torch.arange(6) % 2 == 0)
    assert retrieval_topk(target, target, mask, valid) == {"top1": 1.0, "top5": 1.0}
    wrong = retrieval_topk(-target, target, mask, valid)
    assert wrong["top1"] == 0.0 and wrong["top5"] < 1.0
    assert retrieval_topk(target, target, mask & False, valid)["top1"] == 0.0


def test_pretrain_end_to_end_loss_decreases(store, tmp_path):
    out = tmp_path / "run"
    s = pretrain(tiny(store, out, "train.steps=30", "train.log_every=5", "train.save_every=10"))
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [5, 10, 15, 20, 25, 30]
    assert recs[-1]["train/loss"] < 0.8 * recs[0]["train/loss"]
    assert all(math.isfinite(r["train/grad_norm"]) and r["perf/segments_per_s"] > 0 for r in recs)
    assert 0.0 <= recs[-1]["train/retrieval_top1"] <= recs[-1]["train/retrieval_top5"] <= 1.0
    assert s["steps"] == 30 and s["engine"] == "torch" and s["global_batch"] == 4
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_00000020", "step_00000030"]  # keep_last=2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert list((out / "tb").glob("events.out.tfevents.*")) and (out / "curves.png").stat().st_size > 0
    saved = load_config([out / "config.yaml"])
    assert saved.model.in_dim == 16 and saved.data.stores == [str(store.root)]  # input size from the store
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(tiny(store, out, "train.steps=30"))  # never overwrite a run silently


def test_export_reloads_with_identical_features(store, tmp_path):
    from lvmae.models.export import load_pretrained
    from lvmae.models.lvmae import LVMAE
    from lvmae.train.engine import load_weights

    out = tmp_path / "run"
    cfg = tiny(store, out, "train.steps=4")
    pretrain(cfg)
    trained = LVMAE(load_config([out / "config.yaml"]).model)
    load_weights(trained, out / "checkpoints" / "step_00000004" / "model.safetensors")
    exported, extra = load_pretrained(out / "export")
    assert extra["step"] == 4
    assert main(["export", str(out), "--out", str(tmp_path / "again")]) == 0
    again, _ = load_pretrained(tmp_path / "again")
    x = torch.randn(3, 11, 16)
    valid = torch.arange(11)[None] < torch.tensor([[11], [7], [2]])
    trained.eval()
    with torch.no_grad():
        want = trained.encode(x, valid)
        for model in (exported, again):
            got = model.encode(x, valid)
            assert torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["cls"], want["cls"])


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import lvmae.train.checkpoint as ck
    real = ck.swap_dir_into_place
    def swap(tmp, final):
        if final.name == "step_00000008":  # die with the checkpoint written but not yet in place
            os.kill(os.getpid(), signal.SIGKILL)
        real(tmp, final)
    ck.swap_dir_into_place = swap
    from lvmae.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_then_resume_matches_unbroken_run(store, tmp_path):
    # Dropout draws from the global RNG: the resumed run must continue its stream exactly.
    overrides = [*TINY, f"data.stores=[{store.root}]", "train.steps=10", "data.bucket_window=2", "model.dropout=0.1"]
    unbroken = tmp_path / "unbroken"
    pretrain(load_config(overrides=[*overrides, f"run.out_dir={unbroken}"]))
    broken = tmp_path / "broken"
    args = ["pretrain", *overrides, f"run.out_dir={broken}"]
    # Same thread count as this process: key biases (zero true gradient) are pure rounding noise under Adam.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (broken / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert (broken / "checkpoints" / ".tmp-step_00000008").is_dir()  # the half-finished one, never used
    assert main([*args, "--resume"]) == 0
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["start_step"] == 4
    assert not list((broken / "checkpoints").glob(".tmp-*"))
    final = json.loads((broken / "checkpoints" / "step_00000010" / "trainer.json").read_text())
    assert final["step"] == 10
    assert final["data"] == json.loads((unbroken / "checkpoints" / "step_00000010" / "trainer.json").read_text())["data"]
    assert_same_weights(unbroken / "checkpoints" / "step_00000010", broken / "checkpoints" / "step_00000010", atol=0)
    steps = [r["step"] for r in read_metrics(broken / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8, 10]  # records of the killed run after step 4 were dropped


def test_nan_in_data_stops_and_keeps_last_good_checkpoint(tmp_path):
    s = make_store(tmp_path / "s", [10, 12, 14, 16, 18, 20, 22, 24])
    out = tmp_path / "run"
    pretrain(tiny(s, out, "train.steps=4"))
    corrupt(s, "v5")
    with pytest.raises(DataError, match="'v5'.*NaN"):
        pretrain(tiny(s, out, "train.steps=12", "train.resume=true"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "pretrain", *TINY, f"data.stores=[{s.root}]",
                        f"run.out_dir={out}", "train.steps=12", "--resume"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'v5'" in r.stderr


def test_non_finite_loss_stops_with_clear_message(store, tmp_path, monkeypatch):
    from lvmae.models.lvmae import LVMAE

    real = LVMAE.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(LVMAE, "forward", forward)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 6.*step_00000004"):
        pretrain(tiny(store, out, "train.steps=8"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not (out / "checkpoints" / "step_00000008").exists()


def test_deepspeed_engine_on_cpu_matches_torch_engine(store, tmp_path, launch_env):
    """DeepSpeed (gloo, ZeRO-1, grad accumulation) computes what plain PyTorch computes, and resumes."""
    common = ["train.steps=4", "deepspeed.grad_accum=2", "train.save_every=2", "train.plot=false"]
    ds_args = [*common, "deepspeed.engine=deepspeed", "deepspeed.zero_stage=1"]
    ref = pretrain(tiny(store, tmp_path / "torch", *common))
    ds = pretrain(tiny(store, tmp_path / "ds", *ds_args))
    assert ds["engine"] == "deepspeed" and ds["global_batch"] == 8 and ds["steps"] == 4
    ckpts = tmp_path / "ds" / "checkpoints"
    assert (ckpts / "step_00000004" / "ds").is_dir()
    assert ds["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-4)
    # the key biases' true gradient is 0, so Adam amplifies summation-order noise: compared apart, loosely
    assert_same_weights(tmp_path / "torch" / "checkpoints" / "step_00000004", ckpts / "step_00000004", atol=1e-4,
                        key_bias=False)
    assert_same_weights(tmp_path / "torch" / "checkpoints" / "step_00000004", ckpts / "step_00000004", atol=1e-3)
    (ckpts / "step_00000004").rename(tmp_path / "unbroken_step4")  # as if killed after step 2's checkpoint
    (ckpts / "latest").write_text("step_00000002\n")
    ds = pretrain(tiny(store, tmp_path / "ds", *ds_args, "train.resume=true"))
    assert ds["steps"] == 4 and ds["start_step"] == 2
    assert_same_weights(tmp_path / "unbroken_step4", ckpts / "step_00000004", atol=0)


def test_shipped_pretrain_configs_load():
    tiny_cfg = load_config([ROOT / "pretrain" / "tiny_cpu.yaml"])
    paper = load_config([ROOT / "pretrain" / "paper.yaml"])
    assert (paper.model.depth, paper.model.width, paper.model.decoder_width, paper.model.decoder_depth) == (
        32, 1024, 512, 8)
    assert paper.deepspeed.precision == "bf16" and paper.deepspeed.zero_stage == 2
    assert tiny_cfg.run.device == "cpu"


@pytest.mark.slow
def test_two_cpu_ranks_torchrun_both_engines_agree(store, tmp_path):
    """pretrain/torchrun.sh with 2 CPU processes: DeepSpeed (ZeRO-2) and the torch engine's all-reduce agree
    (with accumulation, so the per-micro-batch and per-rank segment-count weights are exercised)."""
    env = {**os.environ, "CONFIG": str(ROOT / "pretrain" / "tiny_cpu.yaml"), "MASTER_PORT": "29617",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for engine in ("torch", "deepspeed"):
        r = subprocess.run([str(ROOT / "pretrain" / "torchrun.sh"), "2", str(store.root), str(tmp_path / engine),
                            "train.steps=6", "train.save_every=3", "run.progress=false", "train.plot=false",
                            "deepspeed.micro_batch=8", "deepspeed.grad_accum=2",
                            f"deepspeed.engine={engine}", "deepspeed.zero_stage=2" if engine == "deepspeed" else
                            "deepspeed.zero_stage=0"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads((tmp_path / engine / "summary.json").read_text())
        assert summary["world"] == 2 and summary["steps"] == 6 and summary["global_batch"] == 8 * 2 * 2
    assert_same_weights(tmp_path / "torch" / "checkpoints" / "step_00000006",
                        tmp_path / "deepspeed" / "checkpoints" / "step_00000006", atol=1e-4)


def test_resume_refuses_another_model(store, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(store, out, "train.steps=2", "train.export=false", "train.plot=false"))
    with pytest.raises(ConfigError, match="model.depth was 1, now 2"):
        pretrain(tiny(store, out, "train.steps=4", "model.depth=2", "train.resume=true"))


def test_effective_lr_is_logged_and_an_absolute_lr_overrides_scaling(store, tmp_path, caplog):
    caplog.set_level("INFO", logger="lvmae.train")
    s = pretrain(tiny(store, tmp_path / "scaled", "train.steps=2", "train.export=false", "train.plot=false"))
    assert s["peak_lr"] == pytest.approx(0.128 * 4 / 256)
    assert "peak LR 2.00e-03 = optim.base_lr 0.128 x global batch 4 / 256" in caplog.text
    assert "optim.warmup_steps (2) >= train.steps (2)" in caplog.text  # a schedule that never decays
    assert "zero_stage" not in caplog.text
    s = pretrain(tiny(store, tmp_path / "abs", "train.steps=2", "train.export=false", "train.plot=false",
                      "optim.lr=0.01", "deepspeed.zero_stage=2"))
    assert "deepspeed.zero_stage=2 is ignored by deepspeed.engine=torch" in caplog.text
    assert s["peak_lr"] == 0.01 and "peak LR 1.00e-02 = optim.lr" in caplog.text
    assert read_metrics(tmp_path / "abs" / "metrics.jsonl")[-1]["train/lr"] == pytest.approx(0.01)  # warmup end
    with pytest.raises(ConfigError, match="optim.lr"):
        tiny(store, tmp_path / "bad", "optim.lr=0")


def test_shipped_schedules_decay():
    """A warmup as long as the run never decays."""
    for name in ("paper", "tiny", "demo"):
        cfg = load_config([name])
        assert cfg.optim.warmup_steps < cfg.train.steps, name


def test_resume_warns_when_data_order_or_schedule_changes(store, tmp_path, caplog):
    out = tmp_path / "run"
    pretrain(tiny(store, out, "train.steps=2", "train.export=false", "train.plot=false"))
    caplog.set_level("WARNING", logger="lvmae.train")
    pretrain(tiny(store, out, "train.steps=4", "train.export=false", "train.plot=false", "train.resume=true",
                  "run.seed=3", "data.max_len=12", "data.num_workers=0"))
    assert "run.seed was 0, now 3" in caplog.text and "data.max_len was 16, now 12" in caplog.text
    assert "train.steps was 2, now 4" in caplog.text
    caplog.clear()
    pretrain(tiny(store, out, "train.steps=4", "train.export=false", "train.plot=false", "train.resume=true",
                  "run.seed=3", "data.max_len=12"))
    assert "was" not in caplog.text  # nothing changed since the last checkpoint


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_deepspeed_steps_a_fused_adamw_like_the_plain_one(store, tmp_path, monkeypatch, launch_env, zero):
    """On CUDA the DeepSpeed engine hands DeepSpeed a fused torch AdamW, as the torch engine uses; DeepSpeed
    steps it on its own flat fp32 (bf16 master) partitions. The fused kernel exists on CPU too: same weights."""
    import lvmae.train.engine as engine

    real, used = engine.make_optimizer, []

    def make(model, optim, fused=False, force=False):
        opt = real(model, optim, fused=force)
        used.append(opt.defaults["fused"])
        return opt

    for force in (False, True):
        monkeypatch.setattr(engine, "make_optimizer", lambda m, o, fused=False, f=force: make(m, o, force=f))
        pretrain(tiny(store, tmp_path / str(force), "deepspeed.engine=deepspeed", f"deepspeed.zero_stage={zero}",
                      "deepspeed.precision=bf16", "train.steps=4", "train.save_every=2", "train.export=false",
                      "train.plot=false"))
    assert used == [None, True]
    moved = weights(tmp_path / "True" / "checkpoints" / "step_00000002")
    assert any(not torch.equal(v, moved[k]) for k, v in weights(tmp_path / "True" / "checkpoints" / "step_00000004").items())
    assert_same_weights(tmp_path / "False" / "checkpoints" / "step_00000004",
                        tmp_path / "True" / "checkpoints" / "step_00000004", atol=1e-5)
    # the fused optimizer's state (its step counters live on the parameters' device) resumes
    s = pretrain(tiny(store, tmp_path / "True", "deepspeed.engine=deepspeed", f"deepspeed.zero_stage={zero}",
                      "deepspeed.precision=bf16", "train.steps=6", "train.save_every=2", "train.export=false",
                      "train.plot=false", "train.resume=true"))
    assert s["steps"] == 6 and used[-1] is True
