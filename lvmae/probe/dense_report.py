"""Results of a dense probe run: tables (Markdown, CSV), the JSON record, metric bars and timelines.

Same files as the video probe's report (:mod:`lvmae.probe.report`): ``results.md``,
``results.csv``, ``results.json`` and ``plots/``. A dense task has several metrics, so
the Markdown holds one table per task (methods x metrics) and the CSV one row per
task, method and metric. ``plots/timeline_<task>_<video>.png`` draws a few test
videos: the true labels on top, then each method's prediction (first seed), one
colour per class.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.io import atomic_write_json, atomic_write_text
from lvmae.probe.report import _safe, _save, fmt

METRICS = ("acc", "acc_fg", "edit", "f1@10", "f1@25", "f1@50")
LABELS = {"acc": "seg. acc", "acc_fg": "step acc", "edit": "edit", "f1@10": "F1@10", "f1@25": "F1@25",
          "f1@50": "F1@50"}


def _metrics(info: dict[str, Any]) -> list[str]:
    """Step accuracy (non-background segments) is only shown where a task has background."""
    return [m for m in METRICS if m != "acc_fg" or info["background"]]


def markdown_tables(summary: dict[str, Any]) -> str:
    """One table per task: method rows, metric columns (mean ± std over seeds, best in bold)."""
    lines = [f"# Dense probing results: {summary['benchmark']}", ""]
    for task, info in summary["tasks"].items():
        rows, cols = summary["results"].get(task, {}), _metrics(info)
        n, seg = info["n"], info["segments"]
        lines += [f"## {task}", "",
                  f"{info['num_classes']} classes; videos train/val/test {n['train']}/{n['val']}/{n['test']}, "
                  f"labelled segments {seg['train']}/{seg['val']}/{seg['test']}.", "",
                  "| method | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
        best = {c: max(rows, key=lambda m, c=c: rows[m]["metrics"][c]["mean"]) for c in cols} if rows else {}
        for m, r in rows.items():
            cells = []
            for c in cols:
                cell = fmt("top1", r["metrics"][c]["mean"], r["metrics"][c]["std"])
                cells.append(f"**{cell}**" if best[c] == m and len(rows) > 1 else cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        g = info["grid"]
        lines += ["", f"Segment grid {g['seconds']:g} s (stride {g['stride']:g} s): {100 * g['differs_fraction']:.1f}% "
                  f"of the labelled time carries another label than its segment, "
                  f"{100 * g['beyond_fraction']:.1f}% lies past the last segment.", ""]
    seeds = summary["config"]["probe"]["seeds"]
    lines.append(f"Test metrics (%) with the weights of the best validation segment accuracy (epoch, lr); "
                 f"mean ± sample std over {len(seeds)} seed(s) {seeds}.")
    missing = sum(len(v) for v in summary["matching"]["missing"].values())
    if missing:
        lines.append(f"{missing} labelled (task, video) pairs had no features and were left out "
                     "(listed in missing_features.json).")
    carved = summary["matching"]["carved_val"]
    if carved:
        lines.append("Validation carved from train: " + ", ".join(f"{t} {k}" for t, k in carved.items()) + " videos.")
    for m, why in summary.get("skipped_methods", {}).items():
        lines.append(f"{m}: skipped ({why}).")
    return "\n".join(lines) + "\n"


def csv_rows(summary: dict[str, Any]) -> str:
    """Long CSV: ``task, method, metric, mean, std, seeds``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "method", "metric", "mean", "std", "seeds"])
    for task, rows in summary["results"].items():
        for m, r in rows.items():
            for c, v in r["metrics"].items():
                w.writerow([task, m, c, f"{v['mean']:.6g}", f"{v['std']:.6g}", len(r["seeds"])])
    return buf.getvalue()


def plot_dense_metrics(summary: dict[str, Any], task: str, path: Path) -> Path:
    """Grouped bars: metrics on the x axis, one bar per method (mean ± std over seeds)."""
    from matplotlib.figure import Figure

    rows, cols = summary["results"][task], _metrics(summary["tasks"][task])
    fig = Figure(figsize=(max(6.0, 1.2 * len(cols) * max(1, len(rows)) / 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    bar = 0.8 / max(1, len(rows))
    for j, (m, r) in enumerate(rows.items()):
        x = np.arange(len(cols)) + (j - (len(rows) - 1) / 2) * bar
        ax.bar(x, [r["metrics"][c]["mean"] for c in cols], bar, yerr=[r["metrics"][c]["std"] for c in cols],
               capsize=2, label=m)
    ax.set_xticks(np.arange(len(cols)), [LABELS[c] for c in cols])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(rows)), frameon=False)
    ax.set_title(f"{summary['benchmark']}/{task}: dense probing (test at best val, mean ± std)", fontsize=9)
    return _save(fig, path)


def plot_timeline(summary: dict[str, Any], task: str, video: str, path: Path) -> Path:
    """Ground truth and each method's predicted labels along one test video, one colour per class."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    info, rows = summary["tasks"][task], summary["results"][task]
    first = {m: r["seeds"][0]["timelines"][video] for m, r in rows.items() if video in r["seeds"][0]["timelines"]}
    true = np.asarray(next(iter(first.values()))["true"])
    tracks = [("ground truth", true)] + [(m, np.asarray(t["pred"])) for m, t in first.items()]
    k = info["num_classes"]
    base = colormaps["tab20"] if k <= 20 else colormaps["turbo"]
    colours = [base(i / max(1, k - 1)) if k > 20 else base(i % 20) for i in range(k)]
    cmap = ListedColormap([(0.85, 0.85, 0.85, 1.0)] + colours)  # index 0: unlabelled
    fig = Figure(figsize=(9.0, 0.45 * len(tracks) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.stack([t + 1 for _, t in tracks]), aspect="auto", cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
    ax.set_yticks(np.arange(len(tracks)), [name for name, _ in tracks], fontsize=8)
    ax.set_xlabel(f"segment ({info['grid']['seconds']:g} s each)")
    used = sorted(set(np.concatenate([t for _, t in tracks]).tolist()) - {-1})
    names = info["class_names"]
    if len(used) <= 24:
        fig.legend([Patch(color=colours[c]) for c in used], [str(names[c])[:24] for c in used], loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncols=6, fontsize=6, frameon=False)
    ax.set_title(f"{summary['benchmark']}/{task}: {video}", fontsize=9)
    return _save(fig, path)


def write_dense_report(summary: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md, results.csv, results.json and plots/ under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = {"markdown": atomic_write_text(out / "results.md", markdown_tables(summary)),
             "csv": atomic_write_text(out / "results.csv", csv_rows(summary)),
             "json": atomic_write_json(out / "results.json", summary)}
    for task, rows in summary["results"].items():
        if not rows:
            continue
        paths[f"metrics_{task}"] = plot_dense_metrics(summary, task, out / "plots" / f"dense_{_safe(task)}.png")
        for video in next(iter(rows.values()))["seeds"][0]["timelines"]:
            paths[f"timeline_{task}_{video}"] = plot_timeline(
                summary, task, video, out / "plots" / f"timeline_{_safe(task)}_{_safe(video)}.png")
    return paths
