import csv
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lvmae.cli import main
from lvmae.config import SynthConfig
from lvmae.errors import ConfigError, DataError
from lvmae.synth import (
    VideoRenderer,
    generate,
    labels_csv,
    look,
    plan_dataset,
    plan_steps,
    video_path,
)
from lvmae.synth.plan import NUM_SPECIAL, A, B, C, D, E, F, e_total_segments, precedes_far

av = pytest.importorskip("av")

TINY = dict(num_videos=4, segment_seconds=1.0, segments_per_step=[1, 2], filler_steps=[2, 3], min_gap=1,
            precedes_max=1, count_max=2, fps=4, size=32)


def tiny(out, **kw) -> SynthConfig:
    return SynthConfig(out=str(out), **{**TINY, **kw})


def decode(path):
    """(uint8 [N, H, W, 3] frames, key-frame flags, float32 audio samples, sample rate)."""
    with av.open(str(path)) as box:
        frames, keys = [], []
        for f in box.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            keys.append(f.key_frame)
    with av.open(str(path)) as box:
        chunks = [f.to_ndarray()[0] for f in box.decode(audio=0)]
        rate = box.streams.audio[0].sample_rate
    return np.stack(frames), np.array(keys), np.concatenate(chunks), rate


def blocks(frames, k=4):
    """Mean over k x k pixel blocks: compares content, not codec noise. [N, H/k, W/k, 3]."""
    n, h, w, c = frames.shape
    return frames.reshape(n, h // k, k, w // k, k, c).mean((2, 4))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    cfg = tiny(tmp_path_factory.mktemp("synth") / "a")
    return cfg, generate(cfg, progress=False)


def test_same_seed_same_files_other_seed_differs(tiny_set, tmp_path):
    cfg, _ = tiny_set
    cfg2 = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    generate(cfg2, progress=False)
    assert (Path(cfg2.out) / "labels.csv").read_bytes() == (Path(cfg.out) / "labels.csv").read_bytes()
    m1, m2 = (json.loads((Path(c.out) / "manifest.json").read_text()) for c in (cfg, cfg2))
    assert m1["videos"] == m2["videos"] and m1["config_hash"] == m2["config_hash"]
    for p in plan_dataset(cfg):
        f1, _, a1, _ = decode(video_path(cfg.out, p.video_id))
        f2, _, a2, _ = decode(video_path(cfg2.out, p.video_id))
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(a1, a2)
    other = plan_dataset(dataclasses.replace(cfg, seed=1))
    assert [p.steps for p in other] != [p.steps for p in plan_dataset(cfg)]


def test_videos_match_their_plan(tiny_set):
    cfg, summary = tiny_set
    assert summary["generated"] == cfg.num_videos and summary["seconds_per_video_minute"] > 0
    fpseg, sr = round(cfg.fps * cfg.segment_seconds), cfg.audio_rate
    for p in plan_dataset(cfg):
        frames, keys, audio, rate = decode(video_path(cfg.out, p.video_id))
        assert frames.shape == (p.num_segments * fpseg, cfg.size, cfg.size, 3)
        assert list(np.flatnonzero(keys)) == list(range(0, len(frames), fpseg))
        assert rate == sr and abs(len(audio) / sr - p.num_segments * cfg.segment_seconds) < 0.1
        rend = VideoRenderer(p, cfg)
        seg_types = p.segment_types()
        for seg in (0, p.num_segments - 1):
            other = int(np.flatnonzero(seg_types != seg_types[seg])[0])
            got = blocks(frames[seg * fpseg:(seg + 1) * fpseg])
            own, alien = (np.abs(got - blocks(rend.frames(s))).mean() for s in (seg, other))
            assert own < 6 and own < alien / 3, (own, alien)
        for s in p.steps:
            lo, hi = int((s.start * cfg.segment_seconds + 0.2) * sr), int(((s.start + s.segments) * cfg.segment_seconds - 0.2) * sr)
            spec = np.abs(np.fft.rfft(audio[lo:hi]))
            peak = np.fft.rfftfreq(hi - lo, 1 / sr)[spec.argmax()]
            assert abs(peak - look(s.type).tone) < 8, (s, peak, look(s.type).tone)


def test_labels_balanced_per_split_and_generic_format():
    cfg = SynthConfig(num_videos=100)
    plans = plan_dataset(cfg)
    rows = list(csv.DictReader(io.StringIO(labels_csv(plans, cfg.tasks))))
    assert list(rows[0]) == ["video_id", "split", "task", "label", "target"]
    assert len(rows) == 100 * len(cfg.tasks) and all(r["target"] == "" for r in rows)
    assert Counter(p.split for p in plans) == {"train": 60, "val": 20, "test": 20}
    for split in ("train", "val", "test"):
        for task, k in (("order", 2), ("precedes", 2), ("count", cfg.count_max), ("appearance", 2)):
            counts = Counter(int(r["label"]) for r in rows if r["split"] == split and r["task"] == task)
            assert set(counts) == set(range(k)) and max(counts.values()) - min(counts.values()) <= 1


def _flip(p, task, label):
    return plan_steps(SynthConfig(), p.index, {**p.labels, task: label})


def _segment_counter(steps):
    return Counter(t for s in steps for t in [s.type] * s.segments)


def test_order_label_only_swaps_a_and_b():
    for p in plan_dataset(SynthConfig(num_videos=60)):
        s0, s1 = _flip(p, "order", 0), _flip(p, "order", 1)
        swap = {A: B, B: A}
        assert [swap.get(s.type, s.type) for s in s0] == [s.type for s in s1]
        assert Counter((s.type, s.segments, s.state) for s in s0) == Counter((s.type, s.segments, s.state) for s in s1)
        assert [s.state for s in s0] == [s.state for s in s1]
        for steps, first in ((s0, A), (s1, B)):
            pos = {s.type: i for i, s in enumerate(steps) if s.type in (A, B)}
            assert len(pos) == 2 and min(pos, key=pos.get) == first
            assert abs(pos[A] - pos[B]) - 1 >= SynthConfig().min_gap


def test_precedes_label_moves_c_and_d_only():
    gap = SynthConfig().min_gap
    for p in plan_dataset(SynthConfig(num_videos=60)):
        s0, s1 = _flip(p, "precedes", 0), _flip(p, "precedes", 1)
        assert Counter((s.type, s.segments) for s in s0) == Counter((s.type, s.segments) for s in s1)
        assert [s.type for s in s0 if s.type not in (C, D)] == [s.type for s in s1 if s.type not in (C, D)]
        pos = [i for i, s in enumerate(s0) if s.type in (C, D)]
        assert pos == [i for i, s in enumerate(s1) if s.type in (C, D)]
        t0, t1 = [s0[i].type for i in pos], [s1[i].type for i in pos]
        assert t0 == sorted(t0, key=lambda t: t != D)  # class 0: every D before every C
        assert precedes_far(pos, t1, gap) and not precedes_far(pos, t0, 0)


def test_count_keeps_total_e_time():
    cfg = SynthConfig(num_videos=60)
    for p in plan_dataset(cfg):
        flips = [_flip(p, "count", k) for k in range(cfg.count_max)]
        for k, steps in enumerate(flips):
            e_pos = [i for i, s in enumerate(steps) if s.type == E]
            assert len(e_pos) == k + 1 and all(np.diff(e_pos) >= 2)
        specials = [{t: n for t, n in _segment_counter(s).items() if t < NUM_SPECIAL} for s in flips]
        assert all(c == specials[0] for c in specials) and specials[0][E] == e_total_segments(cfg)
        assert len({sum(s.segments for s in steps) for steps in flips}) == 1


def test_direction_label_reverses_the_fillers():
    cfg = SynthConfig(num_videos=40, tasks=["order", "direction"])
    forward = []
    for p in plan_dataset(cfg):
        f0, f1 = ([(s.type, s.segments) for s in plan_steps(cfg, p.index, {**p.labels, "direction": k})
                   if s.type >= NUM_SPECIAL] for k in (0, 1))
        assert f1 == f0[::-1]
        forward += [(b[0] - a[0]) % cfg.filler_types == 1 for a, b in zip(f0, f0[1:])]
    assert np.mean(forward) > 1 - cfg.script_noise - 0.1


def test_no_merged_steps_scene_states_and_appearance():
    for p in plan_dataset(SynthConfig(num_videos=60, seed=3)):
        types = [s.type for s in p.steps]
        done = np.cumsum([0] + [t in (A, B) for t in types[:-1]])
        assert [s.state for s in p.steps] == [int(d) if t >= NUM_SPECIAL else 0 for d, t in zip(done, types)]
        assert all(a != b for a, b in zip(types, types[1:]))
        assert (F in types) == bool(p.labels["appearance"])
        assert p.steps[0].start == 0 and all(a.start + a.segments == b.start for a, b in zip(p.steps, p.steps[1:]))


def test_mean_pool_of_ideal_features_only_solves_appearance():
    """One-hot (type, scene state) per segment, mean-pooled: what any order-free pool of perfect features sees."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = SynthConfig(num_videos=600, tasks=["order", "precedes", "count", "direction", "appearance"])
    plans = plan_dataset(cfg)
    n_looks = 3 * (NUM_SPECIAL + cfg.filler_types)  # (type, scene state) pairs
    x = np.stack([np.bincount(3 * p.segment_types() + p.segment_states(), minlength=n_looks) / p.num_segments
                  for p in plans])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    acc = {t: cross_val_score(clf, x, [p.labels[t] for p in plans], cv=4).mean() for t in cfg.tasks}
    print(acc)
    assert acc["appearance"] > 0.95
    assert max(acc["order"], acc["precedes"], acc["direction"]) < 0.6 and acc["count"] < 1 / cfg.count_max + 0.1, acc


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="size"):
        plan_dataset(SynthConfig(size=33))
    with pytest.raises(ConfigError, match="tasks"):
        plan_dataset(SynthConfig(tasks=["order", "nope"]))
    with pytest.raises(ConfigError, match="fps"):
        plan_dataset(SynthConfig(fps=3, segment_seconds=0.5))
    with pytest.raises(ConfigError, match="filler_steps"):
        plan_dataset(SynthConfig(tasks=["order"], filler_steps=[0, 0], min_gap=5, num_videos=2))


def test_cli_resumes_and_refuses_other_config(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path), "--no-progress", "num_videos=2", "tasks=[order,appearance]",
            *(f"{k}={v}" for k, v in TINY.items() if k != "num_videos")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["generated"] == 2
    victim = video_path(tmp_path, "synth_00001")
    before = victim.read_bytes()
    victim.unlink()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["generated"] == 1 and out["skipped"] == 1 and victim.read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(DataError, match="another config"):
        generate(tiny(tmp_path, num_videos=2, tasks=["order", "appearance"], seed=5), progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["segment_seconds"] == 1.0


def test_cli_out_path_is_taken_literally(tmp_path, capsys):
    """--out is a path, not a YAML value: 'x: y' must not become a mapping, 'yes' not a boolean."""
    out = tmp_path / "runs: yes"
    args = ["synth", "--out", str(out), "--no-progress", "num_videos=1", "tasks=[appearance]",
            *(f"{k}={v}" for k, v in TINY.items() if k != "num_videos")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out) and (out / "labels.csv").is_file()


def test_ctrl_c_stops_parallel_rendering_promptly(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) must not wait for every queued video."""
    import os
    import signal
    import subprocess
    import sys
    import time

    n = 40
    cmd = [sys.executable, "-m", "lvmae.cli", "synth", "--out", str(tmp_path), "--no-progress", f"num_videos={n}",
           "workers=2", "tasks=[appearance]", "fps=4", "size=64", "audio=false", "filler_steps=[8,10]"]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list((tmp_path / "videos").glob("*.mp4")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    done = len(list((tmp_path / "videos").glob("*.mp4")))
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert done < n // 2, done  # before the fix the pool rendered all queued videos first
    assert not list(tmp_path.rglob("*.tmp"))
