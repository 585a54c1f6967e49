"""Dense probing on synthetic step timelines: do LV-MAE tokens know what a segment alone does not?

One run, CPU, a few minutes: the demo recipe (``-c demo``: its videos, EfficientNet-Lite0
extraction and tiny LV-MAE, pretrained here) with the ``script`` task added to the videos
(filler steps follow a cycle forwards or backwards and the direction turns once or twice
mid-video), a deeper and longer pretraining (``PRETRAIN``: 4 blocks, 1500 steps) and probe
settings of its own (``OVERRIDES``), then dense probes (``probe.dense``) on two tasks:

- ``script``: the direction in force at each segment. It never changes how a segment looks
  (only the order of neighbouring steps shows it), so a per-segment probe on raw features is
  near chance and a contextual token can do better;
- ``step``: the step type of each segment (visible in the segment itself).

Rows: raw per-segment features and frozen LV-MAE tokens, each with the per-token linear head
and the temporal head, plus the same LV-MAE shape untrained (``random_init``: is it the
pretraining or the architecture?; ``--no-control`` skips it). Each cell is mean ± std over the probe seeds.

    python tools/bench_dense.py --out runs/bench_dense            # writes runs/bench_dense/bench_dense.json
    python tools/bench_dense.py --render runs/bench_dense/bench_dense.json   # Markdown tables

Every stage resumes (videos, features, the pretrained export, finished probe fits), but only
under the settings it was made with: ``stages/<stage>.json`` records a fingerprint of the
resolved config sections the stage reads (library defaults included) and of the stages before
it; a stage whose settings changed is redone with every later one, and outputs without a
record are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

from lvmae.demo import STAGE_SECTIONS  # noqa: E402

OVERRIDES = [
    "synth.tasks=[script,count,appearance]",
    "synth.num_videos=200",
    "probe.seeds=[0,1,2]",
    "probe.epochs=60",
    "probe.lr=3e-3",
    "probe.batch_size=16",
    "probe.linear_lrs=[1e-3,1e-2]",
    "probe.dense_plots=3",
]
# The one departure from the demo recipe: its 2-block LV-MAE pretrained for 400 steps keeps the
# step type in its tokens but not the script direction (no block is linearly readable for it);
# with 4 blocks and 1500 steps the last blocks are. `model.depth=2 train.steps=400` runs the recipe's.
PRETRAIN = ["model.depth=4", "train.steps=1500"]
METRICS = ("acc", "edit", "f1@10", "f1@25", "f1@50")
METHODS = ["raw_linear", "raw_temporal", "lvmae_linear", "lvmae_temporal"]


def configs(out: Path, overrides: list[str], tasks: tuple[str, ...] = ("script", "step"),
            methods: tuple[str, ...] = tuple(METHODS)) -> tuple[Any, Any]:
    """The demo pipeline's config (paths under ``out``) and the dense probe config on top of it."""
    from lvmae.demo import demo_config, dense_config

    cfg = demo_config(out, overrides=[*OVERRIDES, *PRETRAIN, *overrides])
    d, r = dense_config(cfg), dataclasses.replace
    dense = r(d, run=r(d.run, out_dir=str(out / "dense")), probe=r(d.probe, tasks=list(tasks),
                                                                    dense_methods=list(methods)))
    return cfg, dense


# Each stage: the config sections its output depends on (the demo's, whose stages these are), and the
# directories (under --out) it writes. A stage's fingerprint chains those of the stages before it, so a
# redone stage redoes every later one.
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "synth": (STAGE_SECTIONS["synth"], ("synth",)),
    "extract": (STAGE_SECTIONS["extract"], ("features",)),
    "pretrain": (STAGE_SECTIONS["pretrain"], ("pretrain", "random_init")),
    "probe": ((), ("dense", "dense_random_init")),  # fits carry their own fingerprints (progress.jsonl)
}
RUN_IGNORED = ("out_dir", "progress", "loggers", "wandb_project")  # change no number


def stage_fingerprints(cfg: Any, out: Path) -> dict[str, str]:
    """One hash per stage of the resolved settings it reads (defaults included) and of every earlier stage's.

    Paths are written relative to ``out``, so a moved run directory keeps its fingerprints.
    """
    from lvmae.store import config_hash

    fps, chain = {}, ""
    for name, (sections, _) in STAGES.items():
        body = {s: dataclasses.asdict(getattr(cfg, s)) for s in sections}
        if "run" in body:
            body["run"] = {k: v for k, v in body["run"].items() if k not in RUN_IGNORED}
        text = json.dumps(body, sort_keys=True, default=str).replace(str(out), "$OUT")
        chain = fps[name] = config_hash([chain, text])
    return fps


def claim(out: Path, fps: dict[str, str], log: Any = print) -> list[str]:
    """Make ``out`` safe to resume under ``fps``; returns the stages whose earlier outputs were discarded.

    A stage's outputs are kept only when its record (``stages/<name>.json``, written before it
    starts) holds the same fingerprint; a finished or interrupted stage with other settings is
    deleted with every later one. Outputs without a record (an older bench, another tool) are
    of unknown settings: refused, never reused or deleted.
    """
    stale = None
    for name, (_, dirs) in STAGES.items():
        rec = _record(out, name)
        if stale is None and rec.get("fingerprint") == fps[name]:
            continue
        stale = stale or name
        present = [d for d in dirs if (out / d).exists()]
        if present and not rec:
            raise SystemExit(f"{out}: {', '.join(present)} exist without a stage record, so the settings they "
                             "were made with are unknown; use another --out or delete them")
    if stale is None:
        return []
    redo = list(STAGES)[list(STAGES).index(stale):]
    gone = [n for n in redo if _record(out, n) or any((out / d).exists() for d in STAGES[n][1])]
    for name in redo:
        for d in STAGES[name][1]:
            if (out / d).exists():
                trash = out / f".old-{d}-{os.getpid()}"
                (out / d).rename(trash)  # atomic: a crash leaves no half-deleted stage behind
                shutil.rmtree(trash)
        (out / "stages" / f"{name}.json").unlink(missing_ok=True)
    if gone:
        log(f"{out}: settings of {', '.join(gone)} changed since the last run; redoing them")
    return gone


def _record(out: Path, name: str) -> dict[str, Any]:
    path = out / "stages" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(out: Path, name: str, fingerprint: str, done: bool) -> None:
    from lvmae.io import atomic_write_json

    atomic_write_json(out / "stages" / f"{name}.json", {"fingerprint": fingerprint, "done": done})


def _stage(out: Path, name: str, fps: dict[str, str], fn: Any) -> float:
    """Run ``fn`` under ``name``'s record (an interrupted stage resumes its own work); seconds it took."""
    if _record(out, name).get("done"):
        return 0.0
    _write_record(out, name, fps[name], False)
    t = time.perf_counter()
    fn()
    _write_record(out, name, fps[name], True)
    return time.perf_counter() - t


def prepare(cfg: Any) -> dict[str, float]:
    """Videos, features and the pretrained export (each skipped where already done); seconds per stage.

    Run :func:`claim` first: it discards every output made with other settings.
    """
    from lvmae.extraction.api import extract
    from lvmae.synth import generate
    from lvmae.train import pretrain

    out, r = Path(cfg.run.out_dir), dataclasses.replace
    fps = stage_fingerprints(cfg, out)
    times = {
        "synth_s": _stage(out, "synth", fps, lambda: generate(cfg.synth, progress=False)),
        "extract_s": _stage(out, "extract", fps, lambda: extract([str(Path(cfg.synth.out) / "videos")],
                                                                 cfg.extract.out, cfg.extract, progress=False)),
        "pretrain_s": _stage(out, "pretrain", fps, lambda: pretrain(
            r(cfg, run=r(cfg.run, out_dir=str(out / "pretrain"), progress=False)))),
    }
    if not _record(out, "probe"):  # never marked done: each fit is skipped or run on its own
        _write_record(out, "probe", fps["probe"], False)
    return {k: round(v, 1) for k, v in times.items()}


def random_init(cfg: Any, dense: Any) -> Any:
    """The dense config pointed at an untrained LV-MAE of the pretrained one's shape."""
    import torch

    from lvmae.models.export import save_pretrained
    from lvmae.models.lvmae import LVMAE
    from lvmae.store import FeatureStore
    from lvmae.train.loop import with_data_dims

    out = Path(cfg.run.out_dir)
    ckpt = out / "random_init"
    if not (ckpt / "config.json").is_file():
        store = FeatureStore.open(cfg.extract.out)
        torch.manual_seed(cfg.run.seed)
        save_pretrained(LVMAE(with_data_dims(cfg, [store.dim(m) for m in cfg.data.modalities]).model), ckpt)
    r = dataclasses.replace
    return r(dense, run=r(dense.run, out_dir=str(out / "dense_random_init")),
             probe=r(dense.probe, checkpoint=str(ckpt), dense_methods=[m for m in dense.probe.dense_methods
                                                                   if m.startswith("lvmae")]))


def layer_tokens(model: Any, bank: Any) -> dict[str, list[Any]]:
    """Each encoder block's output per segment (``block1`` ..), then the encoder's ``tokens``: ``[T, width]`` per video."""
    import torch

    outs: dict[str, list[Any]] = {}
    captured: list[Any] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: captured.append(o)) for b in model.encoder.blocks]
    try:
        with torch.no_grad():
            for r in range(len(bank)):
                b = bank.batch(torch.tensor([r]), "cpu")
                captured.clear()
                enc = model.encode(b.x, b.valid)
                for i, h in enumerate(captured, 1):  # [1, 1 + T * n_tok, W]; one token per segment here
                    outs.setdefault(f"block{i}", []).append(h[0, 1:].float().numpy())
                outs.setdefault("tokens", []).append(enc["tokens"][0].float().numpy())
    finally:
        for h in hooks:
            h.remove()
    return outs


def readout(dense: Any, checkpoints: dict[str, str], grid: tuple[float, ...] = (0.01, 0.1, 1.0)) -> dict[str, Any]:
    """Where in the encoder a task is linearly readable: test segment accuracy (%) of a per-segment
    logistic regression (standardised inputs, C chosen on val) on the raw segments and on every
    block's output of each checkpoint, per task. ``{task: {features: acc}}``.
    """
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lvmae.probe.bank import load_bank
    from lvmae.probe.dense import prepare_dense
    from lvmae.probe.encoder import load_encoder

    pc = dense.probe
    store, tasks, _, _ = prepare_dense(dense)
    ids = sorted({sid for t in tasks.values() for sp in t.splits.values() for sid in sp.store_ids})
    bank = load_bank(store, ids, list(pc.modalities), pc.max_len, False)
    feats = {"raw": [bank.batch(torch.tensor([r]), "cpu").x[0].numpy() for r in range(len(bank))]}
    for name, ckpt in checkpoints.items():
        feats.update({f"{name}/{k}": v for k, v in layer_tokens(load_encoder(ckpt)[0], bank).items()})
    row = {v: i for i, v in enumerate(bank.ids)}
    out: dict[str, Any] = {}
    for task, t in tasks.items():
        y = {s: np.concatenate(sp.labels) for s, sp in t.splits.items()}
        for name, per_video in feats.items():
            x = {s: np.concatenate([per_video[row[v]][: len(lab)] for v, lab in zip(sp.store_ids, sp.labels)])
                 for s, sp in t.splits.items()}
            sc = StandardScaler().fit(x["train"])
            fits = [LogisticRegression(C=c, max_iter=500).fit(sc.transform(x["train"]), y["train"]) for c in grid]
            best = max(fits, key=lambda f: f.score(sc.transform(x["val"]), y["val"]))
            out.setdefault(task, {})[name] = round(100 * best.score(sc.transform(x["test"]), y["test"]), 1)
    return out


def _cells(summary: dict[str, Any], suffix: str = "") -> dict[str, dict[str, Any]]:
    return {task: {f"{m}{suffix}": {k: r["metrics"][k] for k in METRICS} for m, r in rows.items()}
            for task, rows in summary["results"].items()}


def gains(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """LV-MAE minus raw (percentage points), per-token linear heads, on each task and metric."""
    return {f"{task}/{k}": round(rows["lvmae_linear"][k]["mean"] - rows["raw_linear"][k]["mean"], 2)
            for task, rows in results.items() for k in ("acc", "f1@25")}


def targets(g: dict[str, float]) -> dict[str, bool]:
    """The questions the run answers, for the tasks it probed."""
    out = {}
    if "script/acc" in g:
        out["script: LV-MAE >= raw + 10 on F1@25 and accuracy"] = g["script/f1@25"] >= 10 and g["script/acc"] >= 10
    if "step/acc" in g:
        out["step: LV-MAE not worse than raw (within 1 point)"] = g["step/f1@25"] >= -1 and g["step/acc"] >= -1
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    from lvmae.probe import run_probe

    out = Path(a.out)
    cfg, dense = configs(out, a.overrides, tuple(a.tasks), tuple(a.methods))
    t0 = time.perf_counter()
    claim(out, stage_fingerprints(cfg, out))
    times = prepare(cfg)
    t = time.perf_counter()
    main = run_probe(dense)
    times["dense_probe_s"] = round(time.perf_counter() - t, 1)
    results = _cells(main)
    if a.control:
        t = time.perf_counter()
        control = run_probe(random_init(cfg, dense))
        times["random_init_probe_s"] = round(time.perf_counter() - t, 1)
        for task, rows in _cells(control, "(random_init)").items():
            results[task].update(rows)
    t = time.perf_counter()
    ckpts = {"lvmae": dense.probe.checkpoint, **({"random_init": str(out / "random_init")} if a.control else {})}
    probes = readout(dense, ckpts)
    times["readout_s"] = round(time.perf_counter() - t, 1)
    g = gains(results)
    return {
        "hardware": _bench.hardware(), "versions": _bench.versions(), "time_utc": _bench.now_utc(),
        "command": "python tools/bench_dense.py " + " ".join([
            f"--out {a.out}", *([] if a.control else ["--no-control"]),
            *([] if a.methods == METHODS else ["--methods", *a.methods]), *a.overrides]),
        "config": {"synth": dataclasses.asdict(cfg.synth), "model": dataclasses.asdict(cfg.model),
                   "train_steps": cfg.train.steps, "probe": dataclasses.asdict(dense.probe)},
        "stage_fingerprints": stage_fingerprints(cfg, out),
        "pretrain": _pretrain_summary(out),
        "tasks": {t: {k: v for k, v in info.items() if k in ("num_classes", "n", "segments", "grid")}
                  for t, info in main["tasks"].items()},
        "seconds": {**times, "total_s": round(time.perf_counter() - t0, 1)},
        "results": results, "gains_lvmae_minus_raw_linear": g, "readout": probes,
        "targets": targets(g),
        "plots": sorted(str(p) for p in (out / "dense" / "plots").glob("*.png")),
    }


def _pretrain_summary(out: Path) -> dict[str, Any]:
    path = out / "pretrain" / "summary.json"
    s = json.loads(path.read_text()) if path.is_file() else {}
    return {k: s[k] for k in ("steps", "first_loss", "final_loss") if k in s}


def render(result: dict[str, Any]) -> str:
    """Markdown: one table per task (methods x metrics), the gains and where the numbers come from."""
    hw = result["hardware"]
    lines = []
    for task, rows in result["results"].items():
        info = result["tasks"][task]
        lines += [f"**{task}** ({info['num_classes']} classes; test: {info['n']['test']} videos, "
                  f"{info['segments']['test']} segments)", "",
                  "| features + head | seg. acc | edit | F1@10 | F1@25 | F1@50 |", "|---|---|---|---|---|---|"]
        for m, cells in rows.items():
            lines.append(f"| {m} | " + " | ".join(f"{cells[k]['mean']:.1f} ± {cells[k]['std']:.1f}" for k in METRICS)
                         + " |")
        lines.append("")
    if result.get("readout"):
        probes = result["readout"]
        tasks = list(probes)
        lines += ["Where each task is linearly readable: test segment accuracy of a per-segment logistic "
                  "regression on the raw segments and on each encoder block's output (`tokens`: after the "
                  "final LayerNorm, what the probes read):", "",
                  "| features | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {f} | " + " | ".join(f"{probes[t][f]:.1f}" for t in tasks) + " |" for f in probes[tasks[0]]]
        lines.append("")
    g = result["gains_lvmae_minus_raw_linear"]
    lines += ["LV-MAE tokens minus raw segment features (per-token linear heads, points): "
              + ", ".join(f"{k} {v:+.1f}" for k, v in g.items()) + ".", "",
              *(f"- {q}: {'met' if ok else 'not met'}" for q, ok in result["targets"].items()), "",
              f"Mean ± std over probe seeds {result['config']['probe']['seeds']}; one pretraining run "
              f"({result['config']['train_steps']} steps{_loss(result)}), {result['config']['synth']['num_videos']} "
              "videos. "
              f"{hw['cpu']}, {hw['cores']} cores, torch {result['versions'].get('torch')}; "
              f"{result['seconds']['total_s']:.0f} s this run (stages done before under the same settings are skipped). Regenerate: `{result['command']}`, then "
              "`python tools/bench_dense.py --render JSON`."]
    return "\n".join(lines) + "\n"


def _loss(result: dict[str, Any]) -> str:
    p = result.get("pretrain") or {}
    return f", pretraining loss {p['first_loss']:.2f} -> {p['final_loss']:.2f}" if "final_loss" in p else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_dense")
    ap.add_argument("--render", metavar="JSON", help="print the Markdown tables of a finished run's JSON")
    ap.add_argument("--tasks", nargs="+", default=["script", "step"], choices=["script", "step"],
                    help="dense tasks to probe (runs with different tasks share finished fits)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="dense probe rows")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the untrained-LV-MAE rows (half the probing time)")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value) on top of the demo recipe")
    a = ap.parse_args()
    if a.render:
        print(render(json.loads(Path(a.render).read_text())), end="")
        return
    result = run(a)
    _bench.emit(result, str(Path(a.out) / "bench_dense.json"))


if __name__ == "__main__":
    main()
