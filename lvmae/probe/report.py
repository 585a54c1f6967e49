"""Results tables (Markdown, CSV), the full JSON record, and plots of a probe run.

Input is the summary :func:`lvmae.probe.run_probe` returns: ``summary["results"][task][method]``
holds ``mean``/``std`` of the test metric over seeds (at each seed's best-validation
epoch), the per-seed records and the test confusion matrix summed over seeds.
Plots use matplotlib's object API with the Agg canvas (no display, no global backend switch).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.io import atomic_write, atomic_write_json, atomic_write_text

METRIC_LABEL = {"top1": "top-1 % ↑", "mse": "MSE ↓"}


def fmt(metric: str, mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if metric == "top1" else f"{mean:.4f} ± {std:.4f}"


def _best_method(summary: dict, task: str) -> str | None:
    rows = summary["results"].get(task, {})
    if not rows:
        return None
    sign = 1.0 if summary["tasks"][task]["metric"] == "top1" else -1.0
    return max(rows, key=lambda m: sign * rows[m]["mean"])


def markdown_table(summary: dict[str, Any]) -> str:
    """Task x method table, best method per task in bold, with the settings that produced it."""
    methods = summary["methods"]
    lines = [f"# Probing results: {summary['benchmark']}", "",
             "| task | metric | " + " | ".join(methods) + " | videos (train/val/test) |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    for task, info in summary["tasks"].items():
        best = _best_method(summary, task)
        cells = []
        for m in methods:
            r = summary["results"][task].get(m)
            cell = fmt(info["metric"], r["mean"], r["std"]) if r else "–"
            cells.append(f"**{cell}**" if m == best and len(methods) > 1 else cell)
        n = info["n"]
        lines.append(f"| {task} | {METRIC_LABEL[info['metric']]} | " + " | ".join(cells)
                     + f" | {n['train']}/{n['val']}/{n['test']} |")
    seeds = summary["config"]["probe"]["seeds"]
    lines += ["", f"Test metric at the best-validation epoch (and lr / C); mean ± sample std over {len(seeds)} "
              f"seed(s) {seeds}."]
    missing = sum(len(v) for v in summary["matching"]["missing"].values())
    if missing:
        lines.append(f"{missing} labelled (task, video) pairs had no features and were left out "
                     "(listed in missing_features.json).")
    ambiguous = sum(len(v) for v in summary["matching"].get("ambiguous", {}).values())
    if ambiguous:
        lines.append(f"{ambiguous} labelled (task, video) pairs matched several store entries and were left out "
                     "(listed in missing_features.json).")
    unseen = summary["matching"].get("unseen", {})
    if unseen:
        lines.append("Classes absent from train (kept, scored as errors): " + "; ".join(
            f"{t} " + ", ".join(f"{s} {n}" for s, n in per.items()) for t, per in unseen.items()) + " videos.")
    carved = summary["matching"]["carved_val"]
    if carved:
        lines.append("Validation carved from train: " + ", ".join(f"{t} {n}" for t, n in carved.items()) + ".")
    for m, why in summary.get("skipped_methods", {}).items():
        lines.append(f"{m}: skipped ({why}).")
    return "\n".join(lines) + "\n"


def csv_table(summary: dict[str, Any]) -> str:
    """Wide CSV: one row per task, ``<method>_mean`` / ``<method>_std`` columns (numbers, not strings)."""
    methods = summary["methods"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "metric", "n_train", "n_val", "n_test"]
               + [f"{m}_{k}" for m in methods for k in ("mean", "std")])
    for task, info in summary["tasks"].items():
        row: list[Any] = [task, info["metric"], info["n"]["train"], info["n"]["val"], info["n"]["test"]]
        for m in methods:
            r = summary["results"][task].get(m)
            row += [f"{r['mean']:.6g}", f"{r['std']:.6g}"] if r else ["", ""]
        w.writerow(row)
    return buf.getvalue()


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_metrics(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars (mean ± std) per task per method; a panel for accuracy and one for MSE."""
    from matplotlib.figure import Figure

    groups = [(metric, [t for t, i in summary["tasks"].items() if i["metric"] == metric]) for metric in ("top1", "mse")]
    groups = [(m, ts) for m, ts in groups if ts]
    methods = summary["methods"]
    width = max(6.0, 1.0 + 0.5 * len(methods) * max(len(ts) for _, ts in groups))
    fig = Figure(figsize=(width, 3.6 * len(groups)))
    for k, (metric, tasks) in enumerate(groups):
        ax = fig.add_subplot(len(groups), 1, k + 1)
        bar = 0.8 / len(methods)
        for j, m in enumerate(methods):
            rows = [summary["results"][t].get(m) for t in tasks]
            means = [r["mean"] if r else np.nan for r in rows]
            stds = [r["std"] if r else 0.0 for r in rows]
            ax.bar(np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * bar, means, bar, yerr=stds,
                   capsize=2, label=m)
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=20, ha="right")
        ax.set_ylabel(METRIC_LABEL[metric])
        ax.grid(axis="y", alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, -0.04), fontsize=8,
               ncols=min(5, len(methods)), frameon=False)
    fig.suptitle(f"{summary['benchmark']}: probing (test at best val, mean ± std over seeds)", fontsize=10)
    return _save(fig, path)


def plot_confusion(summary: dict[str, Any], task: str, path: Path) -> Path:
    """One row-normalised test confusion matrix (summed over seeds) per method."""
    from matplotlib.figure import Figure

    info, methods = summary["tasks"][task], [m for m in summary["methods"] if m in summary["results"][task]]
    fig = Figure(figsize=(3.6 * len(methods) + 0.6, 3.8))
    names = info["class_names"]
    for j, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), j + 1)
        c = np.asarray(summary["results"][task][m]["confusion"], dtype=np.float64)
        c = c / np.maximum(c.sum(1, keepdims=True), 1.0)
        im = ax.imshow(c, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("predicted")
        if j == 0:
            ax.set_ylabel("true")
        if len(names) <= 20:
            ticks = np.arange(len(names))
            ax.set_xticks(ticks, [n[:12] for n in names], rotation=90, fontsize=6)
            ax.set_yticks(ticks, [n[:12] for n in names] if j == 0 else [], fontsize=6)
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    fig.suptitle(f"{summary['benchmark']}/{task}: test confusion (rows normalised)", fontsize=10)
    return _save(fig, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_report(summary: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md, results.csv, results.json and plots/ under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = {
        "markdown": atomic_write_text(out / "results.md", markdown_table(summary)),
        "csv": atomic_write_text(out / "results.csv", csv_table(summary)),
        "json": atomic_write_json(out / "results.json", summary),
        "plot_accuracy": plot_metrics(summary, out / "plots" / "accuracy.png"),
    }
    for task, info in summary["tasks"].items():
        if info["metric"] == "top1" and summary["results"][task]:
            paths[f"confusion_{task}"] = plot_confusion(summary, task, out / "plots" / f"confusion_{_safe(task)}.png")
    return paths
