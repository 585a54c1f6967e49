"""What keeps extraction memory flat in the video's length, checked by structure, not by RSS:
CPU forwards in small chunks, heap trims during a run, feature rows that own their memory,
audio held one segment at a time, decoded pictures freed without the cycle collector, and a
small default segment queue."""

import gc
import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from torch import nn
from videos import make_video, register_tiny

from lvmae.config import EncoderConfig, ExtractConfig
from lvmae.encoders.torch_module import CPU_CHUNK_FRAMES, TorchEncoder
from lvmae.extraction import api
from lvmae.extraction.audio import AudioCutter
from lvmae.extraction.segments import iter_segments
from lvmae.extraction.video import DecodeSpec

torch.set_num_threads(1)
register_tiny()


class _Recorder(nn.Module):
    """Frames ``[N, 3, H, W]`` (or clips ``[B, 3, K, H, W]``) -> per-sample means; records each N."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return torch.stack([x.mean(tuple(range(1, x.dim()))), x.amax(tuple(range(1, x.dim())))], -1)


@pytest.mark.parametrize("frame_level", [True, False])
def test_cpu_forwards_go_in_chunks_with_the_same_outputs(frame_level):
    rec = _Recorder()
    enc = TorchEncoder("rec", rec, frame_level=frame_level, dim=2, image_size=8)
    clips = torch.randint(0, 256, (8, 8, 8, 8, 3), dtype=torch.uint8)  # 8 segments of 8 frames
    out = enc.encode(clips)
    if frame_level:
        assert rec.sizes == [CPU_CHUNK_FRAMES] * (64 // CPU_CHUNK_FRAMES)
        frames = enc.preprocess(clips.reshape(64, 8, 8, 3))
        want = rec(frames).reshape(8, 8, 2).mean(1)
    else:
        assert rec.sizes == [CPU_CHUNK_FRAMES // 8] * (64 // CPU_CHUNK_FRAMES)
        want = rec(enc.preprocess(clips))
    torch.testing.assert_close(out, want)


def test_a_run_trims_the_heap_and_keeps_rows_in_one_array_per_modality(tmp_path, monkeypatch):
    video = make_video(tmp_path / "v.mp4", seconds=30)
    trims, buffers = [], []
    monkeypatch.setattr(api, "TRIM_EVERY_S", 0.0)
    monkeypatch.setattr(api, "release_heap", lambda: trims.append(1) or True)
    write = api._Run._maybe_write

    def spy(self, job):
        v = self.videos.get(job)
        if v is not None and v.complete:
            buffers.append(v.buffers)
        write(self, job)

    monkeypatch.setattr(api._Run, "_maybe_write", spy)
    cfg = ExtractConfig(encoder=EncoderConfig(vision="tiny", batch_frames=16))  # 2 segments a batch
    summary = api.extract([str(video)], tmp_path / "store", cfg, progress=False)
    assert summary["segments"] == 6 and len(trims) >= 2
    # one block per modality, not one small array per segment kept until the video is written
    assert len(buffers) == 1 and set(buffers[0]) == {"vision", "audio"}
    assert all(b.base is None and len(b) >= 6 for b in buffers[0].values())


def test_release_heap_works_here():
    assert api.release_heap() == (api._MALLOC_TRIM is not None)


def test_audio_is_held_one_segment_at_a_time(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=60, fps=1)
    cutter = AudioCutter(video, 16000, 0.0)
    held = []
    for start in range(0, 60, 5):
        x = cutter.cut(start, start + 5)
        assert len(x) == 5 * 16000
        held.append(len(cutter._buf))
    cutter.close()
    assert max(held) <= 5 * 16000 + 4096  # one segment and at most a few decoded frames, never the track


@pytest.mark.parametrize("rotation", [0, 90])
def test_decoded_pictures_are_freed_without_the_cycle_collector(tmp_path, rotation):
    """No sampled frame may sit in a reference cycle (reading PyAV's side data per frame made
    one): each would hold its decoded picture until the cycle collector ran."""
    video = make_video(tmp_path / "v.mp4", seconds=20, fps=5, audio=False, rotation=rotation)
    gc.collect()
    gc.disable()
    try:
        segs = list(iter_segments(video, DecodeSpec(image_size=16, sample_rate=None)))
        frames = sum(type(o) is av.VideoFrame for o in gc.get_objects())
    finally:
        gc.enable()
    assert len(segs) == 4
    assert frames <= 1  # the first frame, whose rotation is read once for the whole video


def test_default_segment_queue_is_a_few_batches():
    cfg = ExtractConfig()
    seg = cfg.segment
    per_segment = seg.frames * cfg.encoder.image_size ** 2 * 3 + seg.seconds * seg.audio_sample_rate * 4
    assert cfg.prefetch_segments <= 2 * (cfg.encoder.batch_frames // seg.frames)
    assert cfg.prefetch_segments * per_segment < 16e6


def test_memory_bench_passes_its_environment_and_names_it_in_the_table(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_extract_memory as bem

    seen, real_popen = {}, subprocess.Popen

    class _Popen:  # stands in for the extraction process: records its environment, exits at once
        def __init__(self, cmd, env, **kw):
            seen.update(env=env)
            self.pid = real_popen([sys.executable, "-c", "pass"]).pid
            kw["stdout"].write(json.dumps({"segments": 3}))

    monkeypatch.setattr(bem.subprocess, "Popen", _Popen)
    row = bem.measure(tmp_path / "v.mp4", tmp_path / "s", [], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert seen["env"]["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and row["segments"] == 3
    doc = {"hardware": {"cpu": "x", "cores": 2, "torch_threads": 1}, "versions": {"torch": "t", "av": "a"},
           "size": "160x120", "fps": 5, "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
           "runs": [{"minutes": 1.0, **row}], "kernel_peak_over_shortest_mb": {"1": 0.0}}
    assert "--minutes 1 --env GLIBC_TUNABLES=glibc.malloc.hugetlb=1`" in bem.render(doc)
    doc.update(size="1280x720", fps=30, env={}, overrides=["extract.prefetch_segments=4"])
    assert "--minutes 1 --size 1280x720 --fps 30 extract.prefetch_segments=4`" in bem.render(doc)
