"""The demo over several seeds, with an untrained-LV-MAE control: is it the pretraining or the architecture?

For each seed s the whole demo runs with ``run.seed=s synth.seed=s`` (new videos, new
pretraining, probes seeded s..), then the same probes run on a randomly initialised
LV-MAE of the same shape (``random_init`` rows). Prints one JSON object: per task and
method, the mean and sample std over seeds of each seed's test accuracy (itself a mean
over the probe seeds), plus the wall time of every demo.

    python tools/demo_seeds.py --out runs/demo_seeds --seeds 0 1 2 --json demo_seeds.json [key=value ...]

Each seed's demo resumes in ``--out/seed_<s>`` (finished stages and probe fits are kept), so an
interrupted sweep continues where it stopped. ``targets`` says, per task, whether LV-MAE's best
probe reaches raw mean pooling (``raw_mean_sklearn``) in the mean over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, hardware, now_utc, versions  # noqa: E402


def random_init_probe(cfg, seed: int) -> dict:
    """Probe results of an untrained LV-MAE (same config, data dims from the store)."""
    import torch

    from lvmae.models.export import save_pretrained
    from lvmae.models.lvmae import LVMAE
    from lvmae.probe import run_probe
    from lvmae.store import FeatureStore
    from lvmae.train.loop import with_data_dims

    out = Path(cfg.run.out_dir)
    store = FeatureStore.open(cfg.extract.out)
    model_cfg = with_data_dims(cfg, [store.dim(m) for m in cfg.data.modalities]).model
    torch.manual_seed(seed)
    ckpt = save_pretrained(LVMAE(model_cfg), out / "random_init")
    r = dataclasses.replace
    pcfg = r(cfg, run=r(cfg.run, out_dir=str(out / "probe_random_init")),
             probe=r(cfg.probe, checkpoint=str(ckpt), methods=[m for m in cfg.probe.methods if m.startswith("lvmae")]))
    return run_probe(pcfg)["results"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo_seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="also write the JSON here (atomically)")
    ap.add_argument("overrides", nargs="*", help="demo config overrides")
    a = ap.parse_args()

    from lvmae.demo import demo_config, run_demo

    per_seed: dict[str, dict[str, list[float]]] = {}
    times = []
    for s in a.seeds:
        cfg = demo_config(Path(a.out) / f"seed_{s}", overrides=[f"run.seed={s}", f"synth.seed={s}", *a.overrides])
        t = time.perf_counter()
        report = run_demo(cfg, log=lambda line: None)
        times.append({"seed": s, "wall_s": round(time.perf_counter() - t, 1),
                      "stages_s": {k: v["seconds"] for k, v in report["stages"].items()}})
        results = report["stages"]["probe"]["summary"]["results"]
        control = random_init_probe(cfg, s)
        for task in results:
            rows = {**results[task], **{f"{m}(random_init)": v for m, v in control[task].items()}}
            for method, res in rows.items():
                per_seed.setdefault(task, {}).setdefault(method, []).append(res["mean"])
    summary = {
        task: {m: {"mean": round(float(np.mean(v)), 1), "std": round(float(np.std(v, ddof=1)), 1) if len(v) > 1 else 0.0,
                   "per_seed": [round(x, 1) for x in v]} for m, v in rows.items()}
        for task, rows in per_seed.items()
    }
    emit({"hardware": hardware(), "versions": versions(), "time_utc": now_utc(), "seeds": a.seeds,
          "overrides": a.overrides, "config": demo_settings(cfg), "times": times, "accuracy": summary,
          "targets": targets(summary)}, a.json)


def demo_settings(cfg) -> dict:
    """The settings that shape the demo's figures (sizes of the videos, model, training, probes)."""
    return {"synth": dataclasses.asdict(cfg.synth), "segment": dataclasses.asdict(cfg.extract.segment),
            "model": dataclasses.asdict(cfg.model), "train_steps": cfg.train.steps,
            "probe": {k: getattr(cfg.probe, k) for k in ("methods", "seeds", "epochs", "lr")}}


def targets(summary: dict) -> dict[str, dict]:
    """Per task: LV-MAE's best probe (pretrained rows only) against raw mean pooling, means over seeds."""
    out = {}
    for task, rows in summary.items():
        lv = {m: r["mean"] for m, r in rows.items() if m.startswith("lvmae") and "(" not in m}
        best = max(lv, key=lv.get)
        raw = rows["raw_mean_sklearn"]["mean"]
        out[task] = {"best_lvmae": best, "best_lvmae_mean": lv[best], "raw_mean_sklearn": raw,
                     "lvmae_minus_raw_mean": round(lv[best] - raw, 1), "lvmae_at_least_raw_mean": lv[best] >= raw}
    return out


if __name__ == "__main__":
    main()
