"""Length generalisation: train at crops of up to L segments, validate at L, 2L, 4L, 16L, 64L.

For every position variant (kind and length mechanisms, see VARIANTS) and seed it
pre-trains the tiny LV-MAE (``-c tiny``) on the long-range synthetic feature benchmark
(:mod:`lvmae.synth.features`) with the real ``lvmae pretrain`` code, reads the held-out
masked-reconstruction losses at each length from the run's metrics (``val/loss@n``), and
optionally probes the exported encoder on the benchmark's long-range tasks at 16L, beside
raw mean pooling and the same encoder applied to training-length windows.

    python tools/bench_length.py --out bench/length.json                  # the full sweep
    python tools/bench_length.py --out /tmp/l.json --quick                 # a 2-minute smoke run
    python tools/bench_length.py --render bench/length.json > docs/length_table.md
    python tools/bench_length.py --eval-store STORE --checkpoint RUN/checkpoints/step_N --lengths 256 1024 \
        [--scales 0.5 1.0 1.5]

The last form evaluates any full checkpoint (model.safetensors with its config.yaml in the
run directory) on any feature store, optionally at several HoPE evaluation scales. JSON: hardware, versions, settings, and per variant,
training length and seed the losses (and probe accuracies); ``--render`` prints Markdown
tables (mean ± std over seeds, ratio to the loss at L) and writes a PNG beside the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the CLI does (shared CPUs)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, hardware, versions  # noqa: E402

# Every variant spells out all position keys, so a change of the library's defaults does not
# change what a named variant means; "default" is whatever the library's defaults are now.
EXPLICIT = {
    "model.rope.kind": "hope", "model.rope.base": "10000.0", "model.rope.zero_freq_rule": "fraction",
    "model.rope.zero_freq_fraction": "0.25", "model.rope.decay": "none", "model.rope.decay_heads": "1.0",
    "model.rope.length_scaling": "false", "model.rope.eval_scale": "1.0",
}
VARIANTS: dict[str, dict[str, str] | None] = {
    "default": None,
    "hope": {},
    "rope": {"model.rope.kind": "rope"},
    "sincos": {"model.rope.kind": "sincos"},
    "none": {"model.rope.kind": "none"},
    "hope-wave": {"model.rope.zero_freq_rule": "wavelength"},
    "hope-wave-1e6": {"model.rope.zero_freq_rule": "wavelength", "model.rope.base": "1000000.0"},
    "hope-alibi": {"model.rope.decay": "alibi"},
    "hope-wave-alibi": {"model.rope.zero_freq_rule": "wavelength", "model.rope.decay": "alibi"},
    "hope-wave-alibi-half": {"model.rope.zero_freq_rule": "wavelength", "model.rope.decay": "alibi",
                             "model.rope.decay_heads": "0.5"},
    "hope-local": {"model.rope.decay": "local"},
    "hope-wave-local": {"model.rope.zero_freq_rule": "wavelength", "model.rope.decay": "local"},
    "rope-local": {"model.rope.kind": "rope", "model.rope.decay": "local"},
    "none-local": {"model.rope.kind": "none", "model.rope.decay": "local"},
    "none-alibi": {"model.rope.kind": "none", "model.rope.decay": "alibi"},
    "hope-wave-alibi-ls": {"model.rope.zero_freq_rule": "wavelength", "model.rope.decay": "alibi",
                           "model.rope.length_scaling": "true"},
}
MULTIPLES = (1, 2, 4, 16, 64)


def variant_overrides(name: str) -> list[str]:
    v = VARIANTS[name]
    if v is None:
        return []
    return [f"{k}={val}" for k, val in {**EXPLICIT, **v}.items()]


def synth_config(train_lengths: list[int], args: argparse.Namespace, **changes: Any) -> Any:
    """The benchmark's feature-synth settings (one world: seed 0), with ``changes`` applied."""
    from lvmae.synth.features import FeatureSynthConfig

    longest = max(train_lengths)
    cfg = FeatureSynthConfig(num_videos=args.videos, length=[min(64, 2 * longest), 8 * longest],
                             val_videos=args.val_videos, val_length=64 * longest, probe_videos=args.probe_videos,
                             probe_length=16 * min(train_lengths), seed=0)
    return dataclasses.replace(cfg, **changes)


def make_data(root: Path, train_lengths: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Pretraining and validation stores, and one labelled probe store per probe length
    (``probes[n]``: videos of ``n`` segments, the same world and tasks)."""
    from lvmae.synth.features import generate

    cfg = synth_config(train_lengths, args)
    data: dict[str, Any] = generate(cfg, root) | {"synth": json.dumps(cfg.__dict__)}
    data["probes"] = {cfg.probe_length: {"labels": data["labels"], "probe": data["probe"]}}
    for m in args.probe_multiples:
        n = m * min(train_lengths)
        if n not in data["probes"]:
            data["probes"][n] = generate(dataclasses.replace(cfg, probe_length=n), root / f"probe{n}", pretrain=False)
    return data


def make_oracle_data(root: Path, train_lengths: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Pretraining videos of 16L..32L segments (same world) for the oracle trained on 16L crops."""
    from lvmae.synth.features import generate

    n = 16 * min(train_lengths)
    cfg = synth_config(train_lengths, args, num_videos=max(8, args.videos // 2), length=[n, 2 * n],
                       val_videos=max(1, args.val_videos // 2), val_length=n, probe_videos=2, probe_length=20)
    return generate(cfg, root, tasks=("link",))


def run_overrides(data: dict[str, Any], variant: str, length: int, seed: int, out: Path,
                  args: argparse.Namespace, eval_lengths: list[int] | None = None) -> list[str]:
    """The ``-c tiny`` overrides of one run (validated at ``eval_lengths``, default 2L .. 64L)."""
    lengths = [m * length for m in MULTIPLES[1:]] if eval_lengths is None else eval_lengths
    return [
        f"data.stores=[{data['pretrain']}]", f"data.val_stores=[{data['val']}]",
        f"data.min_len={max(2, length // 4)}", f"data.max_len={length}",
        "deepspeed.engine=torch", f"deepspeed.micro_batch={args.micro_batch}", "run.device=cpu", "run.progress=false", f"run.seed={seed}",
        f"run.out_dir={out}", f"train.steps={args.steps}", f"train.save_every={args.steps}",
        f"train.eval_every={args.steps}", f"train.eval_lengths=[{','.join(map(str, lengths))}]",
        f"train.eval_windows={args.eval_windows}", "train.plot=false", "train.restart=true",
        *variant_overrides(variant),
    ]


def train_one(data: dict[str, Any], variant: str, length: int, seed: int, out: Path,
              args: argparse.Namespace, eval_lengths: list[int] | None = None) -> dict[str, Any]:
    """One pretraining run; returns its held-out losses by length and its wall time."""
    from lvmae.config import load_config
    from lvmae.io import atomic_write_json
    from lvmae.recipes import find
    from lvmae.train.loop import pretrain
    from lvmae.train.metrics import read_metrics

    overrides = run_overrides(data, variant, length, seed, out, args, eval_lengths)
    cfg = load_config([find("tiny")], overrides)
    done = out / "bench_run.json"  # a finished run of the same settings is reused (the sweep resumes)
    if done.is_file() and json.loads(done.read_text())["overrides"] == overrides:
        wall = json.loads(done.read_text())["wall_s"]
    else:
        tic = time.perf_counter()
        pretrain(cfg)
        wall = time.perf_counter() - tic
        atomic_write_json(done, {"overrides": overrides, "wall_s": wall})
    last = [r for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r][-1]
    losses = {int(k.split("@")[1]): v for k, v in last.items() if k.startswith("val/loss@")}
    gains = {int(k.split("@")[1]): v for k, v in last.items() if k.startswith("val/cos_gain@")}
    return {"variant": variant, "train_length": length, "seed": seed, "wall_s": round(wall, 1),
            "loss": {str(k): losses[k] for k in sorted(losses)}, "cos_gain": {str(k): gains[k] for k in sorted(gains)},
            "final_train_loss": last.get("train/loss"), "export": str(out / "export")}


def probe_one(probe: dict[str, str], run: dict[str, Any], out: Path, args: argparse.Namespace,
              window: int) -> dict[str, Any]:
    """Long-range probe tasks on one probe store: raw mean pool and a raw attentive probe, LV-MAE on
    the whole video and (``window`` > 0) on independent windows of ``window`` segments."""
    from lvmae.config import load_config
    from lvmae.io import atomic_write_json
    from lvmae.probe import run_probe

    done = out / "bench_probe.json"
    if done.is_file():
        return json.loads(done.read_text())
    res: dict[str, Any] = {}
    for w in (0, window) if window else (0,):
        raw = "raw_mean_sklearn,raw_attentive," if not w else ""
        cfg = load_config([], [
            "probe.benchmark=generic", f"probe.labels={probe['labels']}", f"probe.store={probe['probe']}",
            f"probe.checkpoint={run['export']}", f"run.out_dir={out / f'w{w}'}", "run.device=cpu",
            "run.progress=false", f"probe.seeds=[{run['seed']}]", f"probe.epochs={args.probe_epochs}",
            "probe.cache=false", f"probe.encode_window={w}", f"probe.methods=[{raw}lvmae_linear,lvmae_attentive]",
        ])
        summary = run_probe(cfg)
        for task, rows in summary["results"].items():
            for method, r in rows.items():
                name = method if not w or method.startswith("raw") else f"{method}_windowed"
                res.setdefault(task, {})[name] = r["mean"]
    atomic_write_json(done, res)
    return res


def probe_lengths(run: dict[str, Any], data: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``{probe length: probe_one(..)}`` at every ``--probe-multiples`` of the training length."""
    res = {}
    for m in args.probe_multiples:
        n = m * run["train_length"]
        res[str(n)] = probe_one(data["probes"][n], run, out / ("probe" if m == 16 else f"probe{n}"), args,
                                window=run["train_length"] if n > run["train_length"] else 0)
    return res


def oracle(root: Path, data: dict[str, Any], length: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """``default`` pre-trained on crops as long as the 16L probe videos, probed on them whole: is
    the probe task reachable at all when no length generalisation is asked for?"""
    n = 16 * length
    out = root / "runs" / f"oracle-L{n}-s{seed}"
    run = train_one(make_oracle_data(root / "data_oracle", [length], args), "default", n, seed, out, args,
                    eval_lengths=[])
    run |= {"variant": "default-oracle", "train_length": n, "probe_length": n}
    run["probe_by_length"] = {str(n): probe_one(data["probes"][n], run, out / "probe", args, window=0)}
    return run


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.work)
    data = make_data(root / "data", args.train_lengths, args)
    runs = []
    total = len(args.variants) * len(args.train_lengths) * len(args.seeds)
    for length in args.train_lengths:
        for variant in args.variants:
            for seed in args.seeds:
                out = root / "runs" / f"{variant}-L{length}-s{seed}"
                r = train_one(data, variant, length, seed, out, args)
                if args.probe and length == min(args.train_lengths) and variant in args.probe:
                    r["probe_by_length"] = probe_lengths(r, data, out, args)
                runs.append(r)
                print(f"[{len(runs)}/{total}] {variant} L={length} seed={seed}: "
                      + " ".join(f"{k}:{v:.3f}" for k, v in r["loss"].items()) + f" ({r['wall_s']} s)",
                      file=sys.stderr, flush=True)
    oracles = [oracle(root, data, min(args.train_lengths), seed, args) for seed in args.seeds] if args.oracle else []
    return {"benchmark": "length", "hardware": hardware(), "versions": versions(), "oracle_runs": oracles,
            "settings": {k: v for k, v in vars(args).items() if k not in ("render", "out")},
            "data": json.loads(data["synth"]), "variants": {v: variant_overrides(v) for v in args.variants},
            "runs": runs}


def command_of(result: dict[str, Any]) -> str:
    """The command line that reproduces a sweep or a checkpoint evaluation (from what the JSON records)."""
    if result.get("benchmark") == "length-eval":
        m = result["metrics"]
        ns = sorted({int(k.split("@")[1]) for v in m.values() for k in v if k.startswith("val/loss@")})
        return (f"python tools/bench_length.py --eval-store VAL_STORE --checkpoint RUN/checkpoints/step_N "
                f"--lengths {' '.join(map(str, ns[1:]))} --scales {' '.join(m)} --out OUT.json")
    st = result["settings"]
    parts = ["python tools/bench_length.py --out OUT.json"]
    for key in ("train_lengths", "variants", "seeds", "probe", "probe_multiples"):
        if st.get(key):
            parts.append(f"--{key.replace('_', '-')} " + " ".join(map(str, st[key])))
    for key in ("steps", "micro_batch", "videos", "val_videos", "eval_windows", "probe_videos", "probe_epochs"):
        if key in st:
            parts.append(f"--{key.replace('_', '-')} {st[key]}")
    if st.get("oracle"):
        parts.append("--oracle")
    return " ".join(parts)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, train length) -> {n: (mean, std)} of losses and of loss(n) / loss(L) per seed."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in result["runs"]:
        groups.setdefault((r["variant"], r["train_length"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        lengths = sorted({int(n) for r in rs for n in r["loss"]})
        base = str(key[1])
        out[key] = {
            "loss": {n: _mean_std([r["loss"][str(n)] for r in rs if str(n) in r["loss"]]) for n in lengths},
            "ratio": {n: _mean_std([r["loss"][str(n)] / r["loss"][base] for r in rs if str(n) in r["loss"]])
                      for n in lengths},
            "seeds": len(rs),
            "probe": _probe_means(rs),
        }
    return out


def _probe_means(rs: list[dict]) -> dict[int, dict[str, dict[str, tuple[float, float]]]]:
    """``{probe length: {task: {method: (mean, std over runs)}}}`` (older JSON: ``probe`` at 16L)."""
    table: dict[int, dict[str, dict[str, list[float]]]] = {}
    for r in rs:
        by_length = r.get("probe_by_length") or ({str(16 * r["train_length"]): r["probe"]} if r.get("probe") else {})
        for n, tasks in by_length.items():
            for task, methods in tasks.items():
                for m, v in methods.items():
                    table.setdefault(int(n), {}).setdefault(task, {}).setdefault(m, []).append(v)
    return {n: {t: {m: _mean_std(v) for m, v in ms.items()} for t, ms in tasks.items()}
            for n, tasks in sorted(table.items())}


def _probe_table(title: str, tasks: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    methods = sorted({m for ms in tasks.values() for m in ms})
    lines = [title, "", "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task, ms in tasks.items():
        lines.append(f"| {task} | " + " | ".join(f"{ms[m][0]:.1f} ± {ms[m][1]:.1f}" if m in ms else "–"
                                                 for m in methods) + " |")
    return [*lines, ""]


def render_eval(result: dict[str, Any]) -> str:
    """A checkpoint's held-out losses by evaluation scale (rows) and length (columns)."""
    rows = result["metrics"]
    ns = sorted({int(k.split("@")[1]) for m in rows.values() for k in m if k.startswith("val/loss@")})
    lines = [f"Held-out masked loss of `{Path(result['checkpoint']).parents[1].name}` by HoPE evaluation scale "
             "(`model.rope.eval_scale`) and length:", "",
             "| eval scale | " + " | ".join(str(n) for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for scale, m in rows.items():
        lines.append(f"| {scale} | " + " | ".join(f"{m[f'val/loss@{n}']:.3f}" for n in ns) + " |")
    return "\n".join(lines)


def render(result: dict[str, Any], png: Path | None = None) -> str:
    if result.get("benchmark") == "length-eval":
        return render_eval(result)
    agg = aggregate(result)
    lines = []
    for length in sorted({k[1] for k in agg}):
        keys = [k for k in agg if k[1] == length]
        ns = sorted({n for k in keys for n in agg[k]["loss"]})
        lines += [f"Trained on crops of up to {length} segments; held-out masked-reconstruction loss "
                  f"(standardised targets; the mean predictor scores about 1.0), mean ± std over seeds, "
                  f"and the ratio to the loss at {length}:", "",
                  "| variant | seeds | " + " | ".join(f"{n} ({n // length}x)" for n in ns) + " |",
                  "|---|---|" + "---|" * len(ns)]
        for k in sorted(keys, key=lambda k: agg[k]["loss"][ns[-1]][0] if ns[-1] in agg[k]["loss"] else 9):
            cells = []
            for n in ns:
                if n not in agg[k]["loss"]:
                    cells.append("–")
                    continue
                (m, s), (rm, _) = agg[k]["loss"][n], agg[k]["ratio"][n]
                cells.append(f"{m:.3f} ± {s:.3f}" + ("" if n == length else f" ({rm:.2f}x)"))
            lines.append(f"| {k[0]} | {agg[k]['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
        for k in keys:
            for n, tasks in agg[k]["probe"].items():
                lines += _probe_table(
                    f"Probe test accuracy (%, chance 50) at {n} segments ({n // length}x), {k[0]} trained at {length}, "
                    "mean ± std over model seeds" + (f" (`_windowed`: the encoder applied to independent {length}-segment "
                                                     "windows)" if n > length else "") + ":", tasks)
    oracles = result.get("oracle_runs") or []
    if oracles:
        n = oracles[0]["train_length"]
        lines += _probe_table(
            f"Oracle: `default` pre-trained on crops of up to {n} segments (the probe videos' length, so no "
            f"length generalisation is asked), probe test accuracy (%) at {n} segments, mean ± std over "
            f"{len(oracles)} model seeds (held-out loss at {n}: "
            f"{_mean_std([o['loss'][str(n)] for o in oracles])[0]:.3f}):", _probe_means(oracles)[n])
    if png is not None:
        plot(agg, png)
    return "\n".join(lines)


def plot(agg: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[1] for k in agg})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for k in sorted(k for k in agg if k[1] == length):
            ns = sorted(agg[k]["loss"])
            ax.errorbar([n / length for n in ns], [agg[k]["loss"][n][0] for n in ns],
                        yerr=[agg[k]["loss"][n][1] for n in ns], marker="o", ms=3, capsize=2, label=k[0])
        ax.set(xscale="log", xlabel="eval length / training length", ylabel="held-out masked loss",
               title=f"trained on crops <= {length}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def eval_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out losses of one full checkpoint on one store (any real data)."""
    import torch

    from lvmae.config import DataConfig, load_config
    from lvmae.models.lvmae import LVMAE
    from lvmae.train.engine import load_weights
    from lvmae.train.validate import Validator, load_sequences

    ckpt = Path(args.checkpoint)
    cfg = load_config([ckpt.parents[1] / "config.yaml"], [])
    model = LVMAE(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    seqs = load_sequences(DataConfig(val_stores=[args.eval_store], modalities=cfg.data.modalities), False)
    val = Validator(seqs, [cfg.data.max_len, *args.lengths], cfg.masking, args.eval_windows, seed=0)
    torch.set_grad_enabled(False)
    by_scale = {}
    for scale in args.scales or [cfg.model.rope.eval_scale]:
        model.cfg.rope.eval_scale = scale  # HoPE's temporal scale at evaluation
        by_scale[str(scale)] = val(model)
    return {"benchmark": "length-eval", "hardware": hardware(), "versions": versions(), "checkpoint": str(ckpt),
            "store": args.eval_store, "metrics": by_scale}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--render", help="print Markdown tables of this JSON (and write a PNG beside it)")
    p.add_argument("--work", default="/tmp/lvmae-bench-length", help="data and run directories")
    p.add_argument("--variants", nargs="+", default=["default", "hope", "rope", "sincos", "none"])
    p.add_argument("--train-lengths", nargs="+", type=int, default=[32])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--videos", type=int, default=400)
    p.add_argument("--val-videos", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--probe", nargs="*", default=[], help="variants to probe at 16L (default: none)")
    p.add_argument("--probe-multiples", nargs="+", type=int, default=[16],
                   help="probe at these multiples of the training length (1: at the training length itself)")
    p.add_argument("--oracle", action="store_true",
                   help="also pre-train default on crops of 16L and probe it at 16L (no length generalisation asked)")
    p.add_argument("--probe-videos", type=int, default=300)
    p.add_argument("--probe-epochs", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="tiny smoke settings")
    p.add_argument("--eval-store", help="with --checkpoint: evaluate a checkpoint on this store")
    p.add_argument("--checkpoint")
    p.add_argument("--lengths", nargs="*", type=int, default=[])
    p.add_argument("--scales", nargs="*", type=float, default=[], help="with --checkpoint: eval temporal scales")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        print(render(json.loads(path.read_text()), path.with_suffix(".png")))
        return 0
    if args.probe and min(args.probe_multiples) * min(args.train_lengths) < 20:
        p.error("probe videos need at least 20 segments: raise --probe-multiples or --train-lengths")
    if args.quick:
        args.steps, args.videos, args.seeds, args.probe_videos, args.probe_epochs = 10, 12, [0], 24, 3
        args.val_videos, args.eval_windows = 2, 1
    result = eval_checkpoint(args) if args.eval_store else sweep(args)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
