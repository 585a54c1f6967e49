"""The model benchmark (tools/bench_model.py): its CPU mode end to end, its bookkeeping,
and the precision knob it measures (bf16 fast path against the fp32 reference).

No timing is asserted: speed belongs in the benchmark's output, not in tests.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvmae.config import MaskingConfig
from lvmae.errors import LvmaeError
from lvmae.masking import build_masks
from lvmae.models import LVMAE, ModelConfig
from lvmae.models.reference import ReferenceLVMAE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import _bench  # noqa: E402
import bench_model  # noqa: E402

RUN_KEYS = {"status", "step_ms", "segments_per_s", "sequences_per_s", "model_tflop_per_step", "mfu", "hfu",
            "peak_mem_gib", "first_loss", "speedup_vs_baseline", "loss_rel_diff_vs_baseline"}


def test_cpu_mode_prints_json_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "tools" / "bench_model.py"), "--preset", "cpu-tiny", "--threads", "1",
           "--variants", "reference", "fast", "fast+packed", "--warmup", "1", "--repeats", "2",
           "--data-steps", "2", "--out", str(out), "model.depth=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    assert {"hardware", "versions", "peak", "config", "results", "longest_fit", "best", "data"} <= set(doc)
    assert doc["hardware"]["cpu"] and doc["hardware"]["torch_threads"] == 1 and doc["versions"]["torch"]
    assert doc["config"]["model"]["depth"] == 1 and doc["config"]["baseline"] == "reference"
    assert doc["peak"]["measured_peak_tflops"] > 0
    runs = {name: r["32"] for name, r in doc["results"].items()}
    assert set(runs) == {"reference", "fast", "fast+packed"}
    for r in runs.values():
        assert r["status"] == "ok" and set(r) >= RUN_KEYS
        assert r["step_ms"] > 0 and 0 < r["mfu"] < 1
        assert r["speedup_vs_baseline"] == pytest.approx(runs["reference"]["step_ms"] / r["step_ms"])
        assert r["model_tflop_per_step"] == runs["reference"]["model_tflop_per_step"]
        assert r["loss_rel_diff_vs_baseline"] < 1e-5  # fp32, same weights, same batch
    assert runs["reference"]["speedup_vs_baseline"] == 1.0
    assert runs["reference"]["executed_tflop_per_step"] > runs["fast"]["executed_tflop_per_step"]
    assert runs["fast"]["segments_per_s"] == pytest.approx(4 * 32 / runs["fast"]["step_ms"] * 1e3)
    assert doc["longest_fit"] == {"reference": 32, "fast": 32, "fast+packed": 32}
    data = doc["data"]
    assert data["status"] == "ok" and 0 <= data["data_share"] < 1 and data["steps"] == 2
    table = bench_model.render_table(doc).splitlines()
    assert [ln.split("|")[1].strip() for ln in table if ln.startswith("| ")][1:] == list(runs)
    assert "waiting for data" in table[-1]


def test_variant_names():
    v = bench_model.parse_variant("fast+bf16+fused+ckpt", "cuda")
    assert (v.reference, v.precision, v.fused, v.ckpt, v.packed, v.zero) == (False, "bf16", True, True, False, None)
    assert bench_model.parse_variant("reference", "cuda").precision == "fp16"  # the public code's autocast
    assert bench_model.parse_variant("fast", "cpu").precision == "fp32"
    assert bench_model.parse_variant("fast+bf16+zero2", "cpu").zero == 2
    g = bench_model.parse_variant("fast+bf16+fused+cudagraphs", "cuda")
    assert (g.compile, g.compile_mode) == (True, "reduce-overhead")
    assert bench_model.parse_variant("fast+compile", "cpu").compile_mode == "default"
    for bad, msg in [("slow", "must start"), ("fast+turbo", "unknown modifier"), ("reference+packed", "only a precision"),
                     ("fast+zero1+compile", "own optimizer"),
                     ("fast+zero1+cudagraphs", "own optimizer"), ("fast+fp16+zero2", "no fp16 on CPU")]:
        with pytest.raises(LvmaeError, match=msg):
            bench_model.parse_variant(bad, "cpu")


def test_sweep_stops_at_the_first_out_of_memory():
    calls = []

    def run_one(length):
        calls.append(length)

        def fn():
            if length >= 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")
            return {"step_ms": 1.0}

        return bench_model.guarded("cpu", fn)

    runs, longest = bench_model.sweep(run_one, [16, 2, 4, 8, 32])
    assert calls == [2, 4, 8] and longest == 4
    assert runs["8"]["status"] == "oom" and "out of memory" in runs["8"]["error"]
    assert runs["16"]["status"] == runs["32"]["status"] == "skipped"
    cpu_oom = bench_model.guarded("cpu", lambda: (_ for _ in ()).throw(RuntimeError("can't allocate memory: 9 GB")))
    assert cpu_oom["status"] == "oom"
    broken = bench_model.guarded("cpu", lambda: 1 / 0)
    assert broken["status"] == "error" and "ZeroDivisionError" in broken["error"]


def _run(step_ms, **kw):
    return {"status": "ok", "step_ms": step_ms, "first_loss": 1.0, "segments_per_s": 1e3 / step_ms,
            "sequences_per_s": 1.0, "mfu": 0.1, "mfu_vs_spec": None, "peak_mem_gib": 1.0, **kw}


def test_ratios_best_and_paper_targets():
    results = {"reference": {"256": _run(150.0)},
               "fast": {"256": _run(40.0, first_loss=1.01)},
               "fast+bf16": {"256": _run(25.0, mfu=0.45)},
               "fast+compile": {"256": {"status": "error", "error": "x"}}}
    bench_model.add_ratios(results, "reference")
    assert results["fast"]["256"]["speedup_vs_baseline"] == pytest.approx(3.75)
    assert results["fast"]["256"]["loss_rel_diff_vs_baseline"] == pytest.approx(0.01)
    assert results["fast+compile"]["256"]["speedup_vs_baseline"] is None
    best = bench_model.summarise(results, "reference")
    assert best["256"]["variant"] == "fast+bf16"
    t = bench_model.paper_targets(results, best, "reference", batch=16)
    assert t["step_ms_16x256"] == {"target": 30.0, "measured": 25.0, "met": True}
    assert t["mfu_16x256"]["met"] is True and t["speedup_16x256"]["met"] is True
    assert t["longest_batch1"]["met"] is None and t["speedup_4096_batch1"]["met"] is None
    long = {"reference": {"4096": _run(500.0), "8192": {"status": "oom"}},
            "fast": {"4096": _run(40.0), "32768": _run(900.0), "65536": {"status": "oom"}}}
    bench_model.add_ratios(long, "reference")
    t = bench_model.paper_targets(long, bench_model.summarise(long, "reference"), "reference", batch=1)
    assert t["longest_batch1"] == {"target": 32768, "measured": 32768, "met": True}
    assert t["speedup_4096_batch1"]["measured"] == pytest.approx(12.5) and t["speedup_4096_batch1"]["met"]
    short = {"reference": {"4096": _run(500.0)}, "fast": {"4096": _run(40.0), "8192": _run(90.0)}}
    t = bench_model.paper_targets(short, {}, "reference", batch=1)
    assert t["longest_batch1"] == {"target": 32768, "measured": 8192, "met": None}  # 32768 never tried
    short["fast"]["32768"] = {"status": "oom"}
    assert bench_model.paper_targets(short, {}, "reference", batch=1)["longest_batch1"]["met"] is False


def test_time_fn_warms_up_then_times():
    calls = []
    t = _bench.time_fn(lambda: calls.append(1), "cpu", warmup=3, repeats=4)
    assert len(calls) == 7 and len(t["times_s"]) == 4 and t["min_s"] <= t["median_s"]


def test_profile_counts_each_kernel_once_on_cuda():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(key, device_ms, device=DeviceType.CPU, annotation=False, count=2):
        return SimpleNamespace(key=key, count=count, self_device_time_total=device_ms * 1e3, self_cpu_time_total=1.0,
                               device_type=device, is_user_annotation=annotation)

    # kineto lists a kernel twice: in its operator's self device time and as a CUDA event of its own
    events = [ev("aten::mm", 6.0), ev("sm90_gemm_kernel", 6.0, DeviceType.CUDA),
              ev("aten::add", 2.0), ev("elementwise_kernel", 2.0, DeviceType.CUDA),
              ev("Optimizer.step#AdamW.step", 8.0, DeviceType.CUDA, annotation=True), ev("aten::view", 0.0)]
    got = bench_model.top_operators(events, cuda=True, steps=2)
    assert got["total_ms_per_step"] == pytest.approx(4.0)
    assert [t["op"] for t in got["top"]] == ["aten::mm", "aten::add"]
    assert [t["share"] for t in got["top"]] == pytest.approx([0.75, 0.25])
    assert got["top"][0]["self_ms_per_step"] == pytest.approx(3.0) and got["top"][0]["calls_per_step"] == 1
    # the attributes exist on real profiler averages (a CPU profile has no device time)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert bench_model.top_operators(prof.key_averages(), cuda=True, steps=1)["top"] == []
    host = bench_model.top_operators(prof.key_averages(), cuda=False, steps=1)
    assert host["top"] and sum(t["share"] for t in host["top"]) <= 1 + 1e-9


def test_a_deepspeed_variant_frees_its_memory_for_the_next(monkeypatch):
    """ZeRO 1/2 hooks and ZeRO-3's globals would keep every engine (weights, flat buffers, AdamW
    moments) alive: on a GPU, in every later variant's peak memory; ZeRO-3's F.linear patch would
    change every later variant."""
    import gc
    import weakref

    from lvmae.train.engine import LAUNCH_VARS

    for k in LAUNCH_VARS:  # restored after the test (setup_distributed fills them in)
        monkeypatch.delenv(k, raising=False)
    args = bench_model.parse_args(["--preset", "cpu-tiny", "--threads", "1", "--warmup", "1", "--repeats", "1",
                                   "model.depth=1", "model.decoder_depth=1"])
    ctx, _ = bench_model.make_context(args)
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", linear)  # restored even if the test fails
    models = []
    build = bench_model.build_model
    monkeypatch.setattr(bench_model, "build_model", lambda *a: models.append(weakref.ref(m := build(*a))) or m)
    for name in ("fast+bf16+zero1", "fast+bf16+zero2", "fast+bf16+zero3"):
        r = bench_model.guarded(ctx.device, lambda name=name: bench_model.measure(
            bench_model.parse_variant(name, "cpu"), ctx, 16))
        assert r["status"] == "ok", r
        gc.collect()
        assert [ref() for ref in models] == [None] * len(models), name
        assert torch.nn.functional.linear is linear, name  # ZeRO-3's process-wide patch is undone


def test_make_batch_is_a_valid_reference_input():
    cfg = bench_model.load_bench_config(bench_model.parse_args(["--preset", "cpu-tiny"]))
    b = bench_model.make_batch(cfg, 5, 20, ragged=True, device=torch.device("cpu"))
    lengths = b["valid"].sum(1)
    assert int(lengths[0]) == 20 and int(lengths.min()) >= 2 and len(set(lengths.tolist())) > 1
    assert torch.equal(b["valid"], torch.arange(20) < lengths[:, None])  # padding at the end
    assert torch.equal(b["masks"].mask.sum(1) + b["masks"].keep_valid.sum(1), lengths)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no bf16 CPU kernels")
def test_bf16_fast_path_matches_fp32_reference_within_bf16_tolerance():
    cfg = ModelConfig(in_dim=48, width=64, depth=2, heads=4, decoder_width=32, decoder_depth=1, decoder_heads=4)
    torch.manual_seed(0)
    fast = LVMAE(cfg).train()
    ref = ReferenceLVMAE(cfg).train()
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 24, cfg.in_dim, generator=g)
    valid = torch.arange(24) < torch.tensor([24, 17, 9])[:, None]
    masks = build_masks(x, valid, MaskingConfig(ratio=0.5), g)
    scale = torch.tensor([1.0, 0.5, 1.5])
    ref_loss = ref(x, valid, masks, scale)["loss"]
    ref_loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_loss = fast(x, valid, masks, scale)["loss"]
    fast_loss.backward()
    assert fast_loss.dtype == torch.float32
    assert abs(fast_loss.item() - ref_loss.item()) < 1e-2 * ref_loss.item()  # another mask: 5 %
    g_fast = torch.cat([p.grad.flatten() for p in fast.parameters()])
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    assert torch.nn.functional.cosine_similarity(g_fast, g_ref, dim=0) > 0.999  # another mask: 0.69
    assert (g_fast - g_ref).norm() < 0.05 * g_ref.norm()


def test_memory_model_recovers_known_coefficients():
    import bench_memory

    truth = bench_memory.MemoryModel(fb=[5e6, 300.0, 2e6, 900.0, 1e6, 400.0], opt=[4e6, 3e6, 1e6])
    rows = [{"enc_blocks": e, "dec_blocks": d, "segments": n,
             "fb_bytes": truth.predict(e, d, n)["fb_gib"] * 2**30, "opt_bytes": truth.predict(e, d, n)["opt_gib"] * 2**30}
            for e, d in bench_memory.FIT_BLOCKS for n in (100, 300)]
    fitted = bench_memory.MemoryModel.fit(rows)
    assert fitted.fb == pytest.approx(truth.fb) and fitted.opt == pytest.approx(truth.opt)
    n = bench_memory.longest_fit(truth, 32, 8, budget_gib=1.0)
    assert truth.predict(32, 8, n)["peak_gib"] <= 1.0 < truth.predict(32, 8, 2 * n)["peak_gib"]


def test_memory_fit_predicts_a_deeper_longer_model():
    """Fitted on 1-2 blocks at 64/128 segments, the peak of 3+2 blocks at 512 segments must be
    predicted within 5 %: the linear-in-blocks, linear-in-length assumptions, measured."""
    import bench_memory

    torch.set_num_threads(1)
    args = bench_memory.parse_args(["--preset", "cpu-tiny", "--variants", "fast+bf16", "--fit-lengths", "64", "128",
                                    "--check", "3,2,512", "--lengths", "256", "4096", "--gpu-gib", "0.05"])
    doc = bench_memory.run(args)
    res = doc["variants"]["fast+bf16"]
    (check,) = res["checks"]
    assert abs(check["rel_error"]) < 0.05, check
    cfg = bench_model.load_bench_config(argparse.Namespace(preset="cpu-tiny", config=[], overrides=[]))
    params = sum(p.numel() for p in LVMAE(dataclasses.replace(cfg.model, depth=3, decoder_depth=2)).parameters())
    assert check["opt_bytes"] >= 16 * params  # fp32 weights, gradients and AdamW's two moments
    pred = res["predicted"]
    assert 0 < pred[256]["peak_gib"] < pred[4096]["peak_gib"]
    assert res["coefficients"]["encoder_block_bytes_per_segment"] > 0
    assert res["longest_fit_segments"] > 0


def test_memory_check_that_runs_out_of_memory_is_reported_not_fatal(monkeypatch):
    """An OOM at a ``--check`` point (the fit said it fits) is recorded and rendered; the fit survives."""
    import bench_memory

    truth = bench_memory.MemoryModel(fb=[5e6, 300.0, 2e6, 900.0, 1e6, 400.0], opt=[4e6, 3e6, 1e6])

    def fake_measure(cfg, v, device, batch, blocks, n):
        if blocks == (32, 8):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        p = truth.predict(*blocks, n)
        return {"enc_blocks": blocks[0], "dec_blocks": blocks[1], "segments": n,
                "fb_bytes": p["fb_gib"] * 2**30, "opt_bytes": p["opt_gib"] * 2**30}

    monkeypatch.setattr(bench_memory, "measure", fake_measure)
    args = bench_memory.parse_args(["--preset", "cpu-tiny", "--variants", "fast", "--fit-lengths", "64", "128",
                                    "--check", "3,2,512", "32,8,4096", "--lengths", "256"])
    doc = bench_memory.run(args)
    ok, oom = doc["variants"]["fast"]["checks"]
    assert ok["status"] == "ok" and abs(ok["rel_error"]) < 1e-6
    assert oom["status"] == "oom" and "measured_gib" not in oom and oom["predicted_gib"] > 0
    table = bench_memory.render_table(doc)
    assert "| fast | 32+8, 4,096 | oom |" in table and "| fast | 3+2, 512 | " in table
