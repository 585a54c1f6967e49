"""Write a synthetic benchmark: videos, generic labels file, ground-truth manifest.

Layout of ``cfg.out``::

    synth_config.json      the config and its hash (claims the directory)
    videos/<id>.mp4        H.264 + AAC, written atomically
    labels.csv             video_id,split,task,label,target (the generic probe format)
    manifest.json          tasks, step types and every video's step timeline

Re-running with the same config only renders missing videos; a different config
in the same directory is refused rather than silently mixed.
"""

from __future__ import annotations

import csv
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lvmae.config import SynthConfig, section_dict
from lvmae.errors import DataError
from lvmae.io import atomic_write_json, atomic_write_text
from lvmae.store import config_hash
from lvmae.synth.plan import SPECIAL_TYPES, VideoPlan, plan_dataset, task_specs, type_names
from lvmae.synth.render import PATTERNS, look, write_video

_NOT_CONTENT = ("out", "workers")  # fields that do not change what is generated
GENERATOR_VERSION = 2  # bump when a change to plan/render changes the output


def synth_hash(cfg: SynthConfig) -> str:
    """Hash of everything that decides the generated files (config + generator version)."""
    content = {k: v for k, v in section_dict(cfg).items() if k not in _NOT_CONTENT}
    return config_hash({"generator": GENERATOR_VERSION, **content})


def video_path(out: str | Path, video_id: str) -> Path:
    return Path(out) / "videos" / f"{video_id}.mp4"


def generate(cfg: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Plan, render what is missing, write labels + manifest; returns a summary dict.

    ``seconds_per_video_minute`` is the render+encode time per minute of generated
    video (None when nothing needed rendering).
    """
    plans = plan_dataset(cfg)
    out = Path(cfg.out)
    digest = _claim(out, cfg)
    todo = [p for p in plans if not video_path(out, p.video_id).exists()]
    t0 = time.perf_counter()
    _render_all(todo, cfg, out, progress)
    seconds = time.perf_counter() - t0
    names = type_names(cfg)
    for p in plans:  # cheap, so written for every video (also ones rendered by an older version)
        atomic_write_text(video_path(out, p.video_id).with_suffix(".srt"), captions_srt(p, names, cfg.segment_seconds))
    minutes = sum(p.num_segments for p in todo) * cfg.segment_seconds / 60
    atomic_write_text(out / "labels.csv", labels_csv(plans, list(cfg.tasks)))
    atomic_write_json(out / "manifest.json", manifest(cfg, plans, digest))
    return {
        "out": str(out), "videos": len(plans), "generated": len(todo), "skipped": len(plans) - len(todo),
        "seconds": round(seconds, 3), "video_minutes_generated": round(minutes, 3),
        "seconds_per_video_minute": round(seconds / minutes, 4) if minutes else None,
        "labels": str(out / "labels.csv"), "manifest": str(out / "manifest.json"),
    }


def _claim(out: Path, cfg: SynthConfig) -> str:
    """Record the config in ``out`` or check that the one there matches."""
    digest = synth_hash(cfg)
    marker = out / "synth_config.json"
    if marker.exists():
        found = json.loads(marker.read_text()).get("config_hash")
        if found != digest:
            raise DataError(
                f"{out} holds a synthetic set made with another config (hash {found}, now {digest}); "
                "use another synth.out or delete it"
            )
    else:
        atomic_write_json(marker, {"config_hash": digest, "config": section_dict(cfg)})
    return digest


def _render_all(todo: list[VideoPlan], cfg: SynthConfig, out: Path, progress: bool) -> None:
    """Render in ``cfg.workers`` processes (spawned: safe after torch is imported)."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="synth videos", unit="video", disable=not progress or not todo)
    if cfg.workers == 1 or len(todo) <= 1:
        for p in todo:
            write_video(p, cfg, video_path(out, p.video_id))
            bar.update()
    else:
        pool = ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"))
        try:
            futures = [pool.submit(write_video, p, cfg, video_path(out, p.video_id)) for p in todo]
            for f in as_completed(futures):
                f.result()
                bar.update()
        finally:  # on Ctrl-C or a failed video, drop the queued videos instead of rendering them all first
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()


def captions_srt(plan: VideoPlan, names: list[str], segment_seconds: float) -> str:
    """A caption sidecar (SubRip) with one cue per step, ``step <type name>``, over its segments.

    Extraction reads it as the video's subtitles (``extract.encoder.text``), so generated data
    carries segment text, e.g. for the video-text retrieval monitor (``data.text_monitor``)."""

    def stamp(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    cues = [f"{i}\n{stamp(s.start * segment_seconds)} --> {stamp((s.start + s.segments) * segment_seconds)}\n"
            f"step {names[s.type]}\n" for i, s in enumerate(plan.steps, 1)]
    return "\n".join(cues)


def labels_csv(plans: list[VideoPlan], tasks: list[str]) -> str:
    """Rows ``video_id,split,task,label,target`` (classification: target left empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "split", "task", "label", "target"])
    for p in plans:
        for t in tasks:
            w.writerow([p.video_id, p.split, t, p.labels[t], ""])
    return buf.getvalue()


def manifest(cfg: SynthConfig, plans: list[VideoPlan], digest: str) -> dict[str, Any]:
    """Ground truth: tasks (and whether a mean pool can solve them), step types, timelines."""
    names = type_names(cfg)
    roles = {ch: task for task, chars in SPECIAL_TYPES.items() for ch in chars}
    seg = cfg.segment_seconds
    return {
        "config_hash": digest,
        "config": section_dict(cfg),
        "tasks": {
            t: {"classes": list(s.classes), "mean_pool_solvable": s.mean_pool, "why": s.why}
            for t, s in task_specs(cfg).items()
        },
        "step_types": [
            {"id": i, "name": n, "role": roles.get(n, "filler"),
             "pattern": PATTERNS[look(i).pattern], "tone_hz": round(look(i).tone, 2)}
            for i, n in enumerate(names)
        ],
        "videos": [
            {
                "video_id": p.video_id, "file": f"videos/{p.video_id}.mp4", "split": p.split,
                "labels": p.labels, "num_segments": p.num_segments, "duration": p.num_segments * seg,
                "steps": [
                    {"type": names[s.type], "type_id": s.type, "state": s.state, "phase": s.phase,
                     "start_segment": s.start,
                     "segments": s.segments, "start": s.start * seg, "end": (s.start + s.segments) * seg}
                    for s in p.steps
                ],
            }
            for p in plans
        ],
    }
