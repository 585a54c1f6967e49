"""Rewrite the generated tables of README.md and docs/*.md from the JSON the tools write.

A generated block in a Markdown file is

    <!-- begin generated: KIND PATH -->
    ...replaced by this tool...
    <!-- end generated -->

where KIND names a renderer below and PATH (relative to the repository root) the JSON it reads
(comma-separated paths for the renderers that compare several runs).
Figures in the docs thus always come from a saved tool output, with hardware and versions.

    python tools/render_docs.py                    # rewrite every generated block
    python tools/render_docs.py --demo lvmae_demo  # first copy lvmae_demo/demo.json to docs/results/
    python tools/render_docs.py --check            # exit 1 if a file is not up to date (tests)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

BLOCK = re.compile(r"(<!-- begin generated: (\S+) (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)
DEMO_JSON = "docs/results/demo.json"


def _machine(doc: dict) -> str:
    hw, v = doc.get("hardware", {}), doc.get("versions", {})
    where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores"
    return f"{where}, torch {v.get('torch', '?')}"


def render_demo(doc: dict) -> str:
    threads = doc.get("hardware", {}).get("torch_threads")
    return f"{doc['table']}\n\n`{doc['command']}` on {_machine(doc)}" + (f", {threads} torch threads." if threads else ".")


def render_bench_model(doc: dict) -> str:
    from bench_model import render_table

    return render_table(doc)


def render_bench_memory(doc: dict) -> str:
    from bench_memory import render_table

    return render_table(doc)


def render_synth_bench(doc: dict) -> str:
    c, g, d = doc["config"], doc["generate_s_per_video_minute"], doc["decode_s_per_video_minute"]
    return "\n".join([
        f"`python tools/synth_bench.py` on {_machine(doc)}: {c['videos']} videos, {c['video_minutes']:.1f} "
        f"video-minutes at {c['size']} px / {c['fps']} fps, {c['frames_per_segment']} frames per segment.", "",
        "| measure | value |", "|---|---:|",
        f"| generation, CPU s per video-minute | {g['cpu']:.3f} |",
        f"| generation / decoding time (wall) | {doc['generate_over_decode_wall']:.1f}x |",
        f"| decoding, CPU s per video-minute | {d['cpu']:.3f} |",
        f"| step type of held-out segments, accuracy (chance) | {100 * doc['step_type_accuracy_heldout_videos']:.1f} % "
        f"({100 * doc['step_type_chance']:.1f} %) |",
        f"| scene state of held-out filler segments, accuracy (majority) | "
        f"{100 * doc['filler_scene_state_accuracy_heldout_videos']:.1f} % ({100 * doc['filler_scene_state_majority']:.1f} %) |",
    ])


def render_demo_seeds(doc: dict) -> str:
    acc = doc["accuracy"]
    methods = list(dict.fromkeys(m for rows in acc.values() for m in rows))
    shown = [o for o in doc.get("overrides", []) if not o.startswith("run.progress")]
    cmd = " ".join(["python tools/demo_seeds.py --seeds", *map(str, doc["seeds"]), *shown])
    lines = [f"`{cmd}` on {_machine(doc)} "
             "(test top-1 %, mean ± std over data seeds; `(random_init)`: an untrained LV-MAE):", "",
             "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task, rows in acc.items():
        cells = [f"{rows[m]['mean']:.1f} ± {rows[m]['std']:.1f}" if m in rows else "" for m in methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if doc.get("targets"):
        gaps = ", ".join(f"{t} {v['lvmae_minus_raw_mean']:+.1f} ({v['best_lvmae']})" for t, v in doc["targets"].items())
        lines += ["", f"Best pretrained LV-MAE probe minus raw mean pooling, points: {gaps}."]
    return "\n".join(lines)


def render_demo_seeds_sweep(docs: list[dict]) -> str:
    """One row per demo_seeds run, ordered by visible_loss_weight: best LV-MAE probe vs raw mean pooling per task."""
    def weight(d: dict) -> float:
        return d["config"]["model"]["visible_loss_weight"]

    docs = sorted(docs, key=weight)
    tasks = list(docs[0]["targets"])
    lines = [f"`python tools/demo_seeds.py --seeds {' '.join(map(str, docs[0]['seeds']))} model.visible_loss_weight=W` "
             f"on {_machine(docs[0])} (test top-1 %, mean over data seeds: LV-MAE's best probe, its gain over "
             "raw mean pooling in points):", "",
             "| visible_loss_weight | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for d in docs:
        t = d["targets"]
        cells = [f"{t[k]['best_lvmae_mean']:.1f} ({t[k]['lvmae_minus_raw_mean']:+.1f}, {t[k]['best_lvmae']})" for k in tasks]
        lines.append(f"| {weight(d):g} | " + " | ".join(cells) + " |")
    raw = ", ".join(f"{k} {docs[0]['targets'][k]['raw_mean_sklearn']:.1f}" for k in tasks)
    return "\n".join([*lines, "", f"Raw mean pooling: {raw}."])


def render_bench_length(doc: dict) -> str:
    from bench_length import command_of, render

    return f"`{command_of(doc)}` on {_machine(doc)}.\n\n{render(doc)}"


def render_bench_dense(doc: dict) -> str:
    from bench_dense import render

    return render(doc)


def render_bench_extract_memory(doc: dict) -> str:
    from bench_extract_memory import render

    return render(doc)


RENDERERS: dict[str, Callable[[dict], str]] = {
    "demo": render_demo, "bench_model": render_bench_model, "bench_memory": render_bench_memory,
    "synth_bench": render_synth_bench, "demo_seeds": render_demo_seeds, "bench_length": render_bench_length,
    "bench_dense": render_bench_dense, "bench_extract_memory": render_bench_extract_memory,
}
# Renderers that compare several runs: PATH is a comma-separated list of JSON files.
MULTI_RENDERERS: dict[str, Callable[[list[dict]], str]] = {"demo_seeds_sweep": render_demo_seeds_sweep}


def render_block(kind: str, path: str) -> str:
    multi = kind in MULTI_RENDERERS
    if not multi and kind not in RENDERERS:
        raise SystemExit(f"unknown generated block kind {kind!r}; known: {', '.join([*RENDERERS, *MULTI_RENDERERS])}")
    paths = path.split(",") if multi else [path]
    missing = [p for p in paths if not (ROOT / p).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return f"*Not generated yet: {', '.join(missing)} {verb} missing (see the command above).*\n"
    docs = [json.loads((ROOT / p).read_text(encoding="utf-8")) for p in paths]
    text = MULTI_RENDERERS[kind](docs) if multi else RENDERERS[kind](docs[0])
    return text.rstrip("\n") + "\n"


def render_text(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group(2), m.group(3)) + m.group(5), text)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def save_demo(run_dir: Path) -> None:
    """The parts of a demo run's demo.json the docs show, as docs/results/demo.json."""
    from lvmae.io import atomic_write_json

    doc = json.loads((run_dir / "demo.json").read_text(encoding="utf-8"))
    atomic_write_json(ROOT / DEMO_JSON, {
        "command": doc.get("command", "lvmae demo"), "hardware": doc.get("hardware", {}),
        "versions": doc.get("versions", {}), "table": doc["table"],
        "stage_seconds": {k: v["seconds"] for k, v in doc["stages"].items()},
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, metavar="DIR", help=f"copy DIR/demo.json to {DEMO_JSON} first")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = ap.parse_args(argv)
    if args.demo:
        save_demo(args.demo)
    stale = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        new = render_text(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "not up to date" if args.check else "rewrote"
    for p in stale:
        print(f"{verb}: {p}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
