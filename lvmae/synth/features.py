"""Long-range synthetic *feature* sequences: segment embeddings drawn directly, no video.

The video benchmark (:mod:`lvmae.synth.plan`) renders and decodes pixels, which caps it
at minutes of video. This generator writes the embeddings a frozen encoder would give,
from tens to tens of thousands of segments per video, deterministically from a seed, as
a normal feature store (modality ``vision``), so pretraining, validation and probing run
on it unchanged. Every segment embedding is the sum of

- **step content**: a video is a sequence of steps of ``step_types`` kinds lasting
  ``step_len`` segments; a step moves linearly from its kind's start prototype to its
  end prototype, so a masked segment is pinned down by its neighbours *and their
  order* (short-range, positional);
- **scene state**: one of ``states`` vectors, constant over periods of ``state_len``
  segments (a *cut* segment marks each change), weighted by ``state_weight``: a masked
  segment's state is told by any segment of its period, however far (long-range,
  position-free);
- **cue -> echo**: a cue segment of one of ``cue_types`` kinds now and then, and echo
  segments whose signature is that of the *most recent* cue, however far back
  (a long-range dependency the reconstruction objective rewards);
- isotropic noise of std ``noise`` per dimension (scaled by 1/sqrt(dim)).

Probe videos (``probe_videos``, each ``probe_length`` segments) carry per-video labels
whose evidence is far apart; the ground truth is saved in ``manifest.json``:

- ``link`` (2 classes): one cue in the first tenth of the video, one echo in the last
  tenth (no other cue or echo); class 1 iff the echo carries that cue's signature.
  The label is an XOR of two far-apart segments' kinds, so a linear probe on a mean
  pool is at chance, and so is anything that sees one window shorter than the gap.
- ``order`` (2 classes): one A and one B segment, in different halves; class 1 iff A
  comes first. The multiset of segments is the same in both classes, so any
  order-free pool (mean, attention without positions) is at chance; a window shorter
  than the gap sees at most one of them.

Pretraining videos follow the echo rule (echoes match the most recent cue); only the
``link`` probe videos break it in half of them (class 0).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lvmae.errors import ConfigError
from lvmae.io import atomic_write_json, atomic_write_text
from lvmae.store import FeatureStore, config_hash

PROBE_TASKS = ("link", "order")
SPLITS = ("train", "val", "test")


@dataclass
class FeatureSynthConfig:
    """Sizes of the long-range feature benchmark (see the module docstring)."""

    num_videos: int = 200  # pretraining videos (split "pretrain"; none of them carry labels)
    length: list[int] = field(default_factory=lambda: [64, 512])  # [min, max] segments per pretraining video
    dim: int = 64  # embedding size
    step_types: int = 16  # kinds of steps
    step_len: list[int] = field(default_factory=lambda: [2, 8])  # [min, max] segments per step
    states: int = 8  # scene states
    state_len: list[int] = field(default_factory=lambda: [24, 160])  # [min, max] segments per state period
    state_weight: float = 0.6  # scale of the state vector in each segment
    cue_types: int = 4  # kinds of cue (and echo signatures)
    cue_every: int = 24  # mean segments between cues (pretraining videos)
    echo_every: int = 6  # mean segments between echoes after the first cue (pretraining videos)
    noise: float = 0.3  # noise std (whole vector norm ~ noise)
    val_videos: int = 8  # held-out pretraining-like videos (store out/val) for validation losses
    val_length: int = 2048  # segments per validation video (the longest length validated)
    probe_videos: int = 240  # labelled videos per probe task, split by `splits`
    probe_length: int = 512  # segments per probe video
    splits: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train, val, test shares of probe videos
    seed: int = 0


def check_config(cfg: FeatureSynthConfig) -> FeatureSynthConfig:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for name in ("length", "step_len", "state_len"):
        lo, hi = getattr(cfg, name)
        need(1 <= lo <= hi, f"feature synth: {name} must be [min, max] with 1 <= min <= max")
    need(cfg.dim >= 8 and cfg.step_types >= 2 and cfg.states >= 2 and cfg.cue_types >= 2,
         "feature synth: dim >= 8, step_types, states and cue_types >= 2")
    need(cfg.probe_length >= 20, "feature synth: probe_length must be >= 20 segments")
    need(len(cfg.splits) == 3 and min(cfg.splits) > 0, "feature synth: splits must be three shares > 0")
    need(cfg.val_length >= 1 and cfg.val_videos >= 0, "feature synth: val_length >= 1, val_videos >= 0")
    need(cfg.cue_every >= 1 and cfg.echo_every >= 1, "feature synth: cue_every and echo_every must be >= 1")
    return cfg


class _World:
    """The prototypes every video shares (drawn from the seed alone)."""

    def __init__(self, cfg: FeatureSynthConfig):
        rng = np.random.default_rng([cfg.seed, 0])
        d = cfg.dim

        def unit(n: int) -> np.ndarray:
            v = rng.standard_normal((n, d))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        self.step_start, self.step_end = unit(cfg.step_types), unit(cfg.step_types)
        self.states = unit(cfg.states)
        self.cut, self.echo, self.a, self.b = unit(4)
        self.cues, self.signatures = unit(cfg.cue_types), unit(cfg.cue_types)


def _steps(rng: np.random.Generator, cfg: FeatureSynthConfig, w: _World, n: int) -> np.ndarray:
    """Step content ``[n, dim]``: consecutive steps interpolating start -> end prototypes."""
    out = np.empty((n, cfg.dim))
    t, prev = 0, -1
    while t < n:
        k = int(rng.integers(cfg.step_types - 1))
        k += k >= prev  # never the same kind twice in a row: step boundaries are visible
        m = int(rng.integers(cfg.step_len[0], cfg.step_len[1] + 1))
        u = (np.arange(m) + 0.5)[:, None] / m
        out[t : t + m] = ((1 - u) * w.step_start[k] + u * w.step_end[k])[: n - t]
        t, prev = t + m, k
    return out


def _state_track(rng: np.random.Generator, cfg: FeatureSynthConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene state id per segment and the segments where it changes (cuts)."""
    state = np.empty(n, dtype=np.int64)
    cuts = []
    t, s = 0, int(rng.integers(cfg.states))
    while t < n:
        m = int(rng.integers(cfg.state_len[0], cfg.state_len[1] + 1))
        state[t : t + m] = s
        t += m
        if t < n:
            cuts.append(t)
            s = (s + 1 + int(rng.integers(cfg.states - 1))) % cfg.states
    return state, np.asarray(cuts, dtype=np.int64)


def _compose(rng: np.random.Generator, cfg: FeatureSynthConfig, w: _World, n: int,
             events: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Steps + state + events (segment index -> content replacing the step) + noise."""
    x = _steps(rng, cfg, w, n)
    state, cuts = _state_track(rng, cfg, n)
    for c in cuts:
        x[c] = w.cut
    for t, v in events.items():
        x[t] = v
    x += cfg.state_weight * w.states[state]
    x += rng.standard_normal(x.shape) * (cfg.noise / np.sqrt(cfg.dim))
    return x.astype(np.float32), state


def pretrain_video(cfg: FeatureSynthConfig, w: _World, index: int, length: int | None = None,
                   stream: int = 1) -> tuple[np.ndarray, dict]:
    """One pretraining video (``length`` None: drawn from ``cfg.length``): cues at random,
    echoes carrying the most recent cue's signature. ``stream`` 3 draws validation videos."""
    rng = np.random.default_rng([cfg.seed, stream, index])
    n = length or int(rng.integers(cfg.length[0], cfg.length[1] + 1))
    events: dict[int, np.ndarray] = {}
    cue = None
    for t in range(n):
        if rng.random() < 1.0 / cfg.cue_every:
            cue = int(rng.integers(cfg.cue_types))
            events[t] = w.cues[cue]
        elif cue is not None and rng.random() < 1.0 / cfg.echo_every:
            events[t] = w.echo + w.signatures[cue]
    x, state = _compose(rng, cfg, w, n, events)
    return x, {"num_segments": n, "events": len(events)}


def probe_video(cfg: FeatureSynthConfig, w: _World, task: str, index: int) -> tuple[np.ndarray, int, dict]:
    """One labelled video of ``task``: features, label and where the evidence sits."""
    rng = np.random.default_rng([cfg.seed, 2, PROBE_TASKS.index(task), index])
    n = cfg.probe_length
    label = int(rng.integers(2))
    tenth = max(1, n // 10)
    first, second = int(rng.integers(tenth)), int(n - 1 - rng.integers(tenth))
    if task == "link":
        cue = int(rng.integers(cfg.cue_types))
        other = (cue + 1 + int(rng.integers(cfg.cue_types - 1))) % cfg.cue_types
        events = {first: w.cues[cue], second: w.echo + w.signatures[cue if label else other]}
        truth = {"cue_at": first, "echo_at": second, "cue": cue, "echo": cue if label else other}
    else:
        half = n // 2
        p, q = int(rng.integers(half)), int(half + rng.integers(n - half))
        a_at, b_at = (p, q) if label else (q, p)
        events = {a_at: w.a, b_at: w.b}
        truth = {"a_at": a_at, "b_at": b_at}
    x, _ = _compose(rng, cfg, w, n, events)
    return x, label, truth


def _split(cfg: FeatureSynthConfig, index: int) -> str:
    edges = np.cumsum(cfg.splits) / sum(cfg.splits)
    u = (index + 0.5) / cfg.probe_videos
    return SPLITS[int(np.searchsorted(edges, u))]


def store_meta(cfg: FeatureSynthConfig) -> dict:
    """``store.json`` content: the generator's settings are the store's identity."""
    settings = asdict(cfg)
    return {"config_hash": config_hash({"feature_synth": settings}), "modalities": {"vision": {"dim": cfg.dim}},
            "dtype": "float32", "encoders": {"vision": "feature_synth"}, "segment": {"seconds": 1.0},
            "feature_synth": settings}


def generate(cfg: FeatureSynthConfig, out: str | Path, tasks: tuple[str, ...] = PROBE_TASKS,
             pretrain: bool = True) -> dict:
    """Write ``out/pretrain`` and ``out/val`` (unlabelled stores), ``out/probe`` (store + labels.csv) and
    ``out/manifest.json`` (settings and per-video ground truth). Resumes: videos already in
    a store are skipped; the output does not depend on what was written before."""
    check_config(cfg)
    unknown = set(tasks) - set(PROBE_TASKS)
    if unknown:
        raise ConfigError(f"feature synth: unknown probe tasks {sorted(unknown)} (have {list(PROBE_TASKS)})")
    out = Path(out)
    w = _World(cfg)
    meta = store_meta(cfg)
    if pretrain:
        for name, count, length, stream in (("pretrain", cfg.num_videos, None, 1),
                                            ("val", cfg.val_videos, cfg.val_length, 3)):
            store = FeatureStore.create(out / name, meta)
            writer, done = store.writer(), set(store.video_ids)
            for i in range(count):
                vid = f"{name[:3]}{i:05d}"
                if vid not in done:
                    x, info = pretrain_video(cfg, w, i, length, stream)
                    writer.write(vid, {"vision": x}, info)
    probe = FeatureStore.create(out / "probe", meta)
    writer, done = probe.writer(), set(probe.video_ids)
    rows, truth = [], {}
    for task in tasks:
        for i in range(cfg.probe_videos):
            vid = f"{task}{i:05d}"
            x, label, where = probe_video(cfg, w, task, i)
            if vid not in done:
                writer.write(vid, {"vision": x}, {"num_segments": len(x)})
            rows.append((vid, _split(cfg, i), task, label))
            truth[vid] = {"task": task, "label": label, **where}
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["video_id", "split", "task", "label", "target"])
    wr.writerows([(*r, "") for r in rows])
    atomic_write_text(out / "probe" / "labels.csv", buf.getvalue())
    manifest = {"config": asdict(cfg), "tasks": list(tasks), "videos": truth}
    atomic_write_json(out / "manifest.json", manifest)
    return {"pretrain": str(out / "pretrain") if pretrain else None,
            "val": str(out / "val") if pretrain else None, "probe": str(out / "probe"),
            "labels": str(out / "probe" / "labels.csv")}


def load_manifest(out: str | Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())
