"""Decoding and segmenting real (tiny) video files: counts, timestamps, sampled frames, audio, text."""

import math

import av
import numpy as np
import pytest
from videos import (
    frame_index,
    make_audio_only,
    make_corrupt,
    make_empty,
    make_mkv_with_subtitles,
    make_vfr,
    make_video,
    truncate,
    write_srt,
)

from lvmae.errors import DataError
from lvmae.extraction.inputs import collect_videos
from lvmae.extraction.segments import iter_segments
from lvmae.extraction.subtitles import Cue, text_in
from lvmae.extraction.video import DecodeSpec, sample_times, segment_windows, to_rgb

FPS = 4


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("vids")
    return {
        "mp4": make_video(d / "a.mp4", seconds=13),
        "webm": make_video(d / "b.webm", seconds=13, audio=False),
        "avi": make_video(d / "c.avi", seconds=13),
        "wide": make_video(d / "wide.mkv", seconds=6, size=32, width=96),
        "short": make_video(d / "short.mp4", seconds=3),
        "tiny": make_video(d / "tiny.mp4", seconds=1),
        "audio_only": make_audio_only(d / "sound.m4a"),
        "corrupt": make_corrupt(d / "corrupt.mp4"),
        "empty": make_empty(d / "empty.avi"),
    }


def on_screen(t: float, fps: int = FPS) -> float:
    """Timestamp of the frame on screen at ``t`` for a constant-rate video starting at 0."""
    return math.floor(t * fps + 1e-9) / fps


def test_segment_windows_rule():
    assert segment_windows(13.0, 5, 5, 0.5) == [(0, 5), (5, 10), (10, 13.0)]  # 3 s >= 2.5: kept
    assert segment_windows(12.0, 5, 5, 0.5) == [(0, 5), (5, 10)]  # 2 s < 2.5: dropped
    assert segment_windows(10.0, 5, 5, 0.5) == [(0, 5), (5, 10)]
    assert segment_windows(12.0, 5, 5, 0.0) == [(0, 5), (5, 10), (10, 12.0)]
    assert segment_windows(12.0, 5, 5, 1.0) == [(0, 5), (5, 10)]
    assert segment_windows(3.0, 5, 5, 0.5) == [(0, 3.0)]  # shorter than a segment: one partial
    assert segment_windows(2.0, 5, 5, 0.5) == []  # too short
    # overlapping segments: at most one trailing partial one
    assert segment_windows(11.0, 4, 2, 0.5) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11.0)]


def test_sample_times_are_subinterval_centres():
    np.testing.assert_allclose(sample_times(5, 10, 4), [5.625, 6.875, 8.125, 9.375])
    np.testing.assert_allclose(sample_times(10, 13, 2), [10.75, 12.25])


@pytest.mark.parametrize("kind", ["mp4", "webm", "avi"])
def test_segments_times_and_frames(vids, kind):
    spec = DecodeSpec(seconds=5, stride=5, frames=8, image_size=32, sample_rate=16000)
    info = {}
    segs = list(iter_segments(vids[kind], spec, info))
    assert [(s.index, s.start, s.end) for s in segs] == [(0, 0, 5), (1, 5, 10), (2, 10, 13.0)]
    assert info["num_segments"] == 3 and info["duration"] == pytest.approx(13.0)
    for s in segs:
        expected = [on_screen(t) for t in sample_times(s.start, s.end, 8)]
        np.testing.assert_allclose(s.frame_times, expected)  # the last one is sampled over [10, 13)
        assert s.frames.shape == (8, 32, 32, 3) and s.frames.dtype == np.uint8
        assert [frame_index(f) for f in s.frames] == [round(t * FPS) for t in expected]
        if kind == "webm":
            assert s.audio is None
        else:
            assert s.audio.dtype == np.float32 and len(s.audio) == round((s.end - s.start) * 16000)



@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_variable_frame_rate_samples_the_frame_on_screen(tmp_path, ext):
    """Bursts, a 3-s still, irregular gaps: the sampled frame is the last one shown at or before t."""
    gaps = np.random.default_rng(0).choice([0.04, 0.1, 0.5, 3.0], 40, p=[0.5, 0.3, 0.15, 0.05])
    times = np.cumsum(np.r_[0.0, gaps])
    times = times[times < 12.0]
    path = make_vfr(tmp_path / f"vfr.{ext}", times.tolist())
    with av.open(str(path)) as c:
        decoded = [to_rgb(f, 32) for f in c.decode(video=0)]  # frame i, as the extractor converts it
    segs = list(iter_segments(path, DecodeSpec(frames=4, image_size=32, sample_rate=None)))
    assert len(segs) == 2 and len(decoded) == len(times)
    for s in segs:
        shown = np.searchsorted(times, sample_times(s.start, s.end, 4) + 1e-9, side="right") - 1
        np.testing.assert_allclose(s.frame_times, times[shown], atol=1e-3)
        for got, i in zip(s.frames, shown):
            np.testing.assert_array_equal(got, decoded[i])

def test_overlapping_stride_and_frame_count(vids):
    spec = DecodeSpec(seconds=4, stride=2, frames=3, image_size=16, sample_rate=None, min_last_fraction=0.5)
    segs = list(iter_segments(vids["mp4"], spec))
    assert [(s.start, s.end) for s in segs] == segment_windows(13.0, 4, 2, 0.5)
    for s in segs:
        assert s.frames.shape == (3, 16, 16, 3)
        assert [frame_index(f) for f in s.frames] == [round(on_screen(t) * FPS) for t in sample_times(s.start, s.end, 3)]


def test_audio_is_cut_on_segment_boundaries(vids):
    # the test audio is a ramp t / duration (exact in the avi's PCM track)
    spec = DecodeSpec(seconds=5, stride=5, frames=2, image_size=16, sample_rate=8000)
    for s in iter_segments(vids["avi"], spec):
        assert s.audio[0] == pytest.approx(s.start / 13.0, abs=2e-3)
        assert s.audio[-1] == pytest.approx(s.end / 13.0, abs=2e-3)
        assert len(s.audio) == round((s.end - s.start) * 8000)



@pytest.mark.parametrize("ext,spans,video_start", [
    ("mkv", [(1.0, 4.0), (7.0, 12.0)], 0.0),  # starts late, pauses 4-7 s
    ("mp4", [(0.0, 4.0), (7.0, 12.0)], 0.0),
    ("mkv", None, 1.5),  # audio begins 1.5 s before the picture
])
def test_audio_with_gaps_and_offsets_stays_on_the_video_clock(tmp_path, ext, spans, video_start):
    path = make_video(tmp_path / f"g.{ext}", seconds=12, audio_spans=spans, video_start=video_start)
    spans = spans or [(0.0, 12.0)]
    margin, tol = (0.005, 2e-4) if ext == "mkv" else (0.1, 1.5e-3)  # PCM is exact; AAC smears edges
    for s in iter_segments(path, DecodeSpec(image_size=16, sample_rate=8000)):
        t = video_start + s.start + np.arange(len(s.audio)) / 8000  # the audio track's clock
        inside = np.any([(t >= a) & (t < b) for a, b in spans], 0)
        want = np.where(inside, t / 12.0, 0.0)
        far = np.all([np.abs(t - e) > margin for ab in spans for e in ab], 0)
        bad = np.flatnonzero(far & (np.abs(s.audio - want) > tol))
        assert bad.size == 0, (s.index, t[bad[:3]], s.audio[bad[:3]], want[bad[:3]])

def test_centre_crop_and_squash(vids):
    # 96x32 frames: the left third holds the pattern, the rest is black
    crop = next(iter_segments(vids["wide"], DecodeSpec(frames=1, image_size=32, sample_rate=None)))
    squash = next(iter_segments(vids["wide"], DecodeSpec(frames=1, image_size=32, resize="squash", sample_rate=None)))
    assert crop.frames.shape == squash.frames.shape == (1, 32, 32, 3)
    assert crop.frames[0, :, :, 0].max() < 20  # the centre third is black
    assert squash.frames[0, :, :8, 0].mean() > crop.frames[0, :, :8, 0].mean() + 1  # squash keeps the left



@pytest.mark.parametrize("rotation,black", [(0, "right"), (90, "top"), (-90, "bottom"), (180, "left")])
def test_rotated_video_frames_are_upright(tmp_path, rotation, black):
    """Phones store portrait video as landscape plus a display rotation: frames come out as shown."""
    path = make_video(tmp_path / "r.mp4", seconds=3, size=32, width=48, audio=False, rotation=rotation)
    spec = DecodeSpec(seconds=2, frames=1, image_size=24, resize="squash", sample_rate=None)
    img = next(iter_segments(path, spec)).frames[0, ..., 0].astype(float)  # frame 4: red 32 left, black right
    edge = {"top": img[:6].mean(), "bottom": img[-6:].mean(), "left": img[:, :6].mean(), "right": img[:, -6:].mean()}
    facing = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[black]
    assert edge[black] < 6 and edge[facing] > 24, edge

def test_short_video_kept_as_one_partial_segment(vids):
    info = {}
    segs = list(iter_segments(vids["short"], DecodeSpec(image_size=16, sample_rate=None), info))
    assert [(s.start, s.end) for s in segs] == [(0, 3.0)]
    assert any(n.startswith("shorter than one segment") for n in info["notes"])


@pytest.mark.parametrize("kind,reason", [
    ("tiny", "too short"), ("audio_only", "no video stream"), ("corrupt", "cannot open"),
    ("empty", "empty file"),
])
def test_bad_files_raise_with_reason(vids, kind, reason):
    with pytest.raises(DataError, match=reason):
        list(iter_segments(vids[kind], DecodeSpec(image_size=16)))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(iter_segments(tmp_path / "nope.mp4", DecodeSpec()))


def test_truncated_file_fails_or_keeps_the_decodable_part(vids, tmp_path):
    src = make_video(tmp_path / "long.webm", seconds=20, audio=False)
    bad = truncate(src, tmp_path / "cut.webm", keep=0.5)
    with pytest.raises(DataError, match="truncated"):
        list(iter_segments(bad, DecodeSpec(image_size=16, sample_rate=None)))
    info = {}
    segs = list(iter_segments(bad, DecodeSpec(image_size=16, sample_rate=None, keep_truncated=True), info))
    assert 1 <= len(segs) < 4 and any("truncated" in n for n in info["notes"])



@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_audio_longer_than_video_is_not_truncation(tmp_path, ext):
    """The container's duration is the longest stream's: the video's own length decides."""
    path = make_video(tmp_path / f"v.{ext}", seconds=6, audio_seconds=14)
    info = {}
    segs = list(iter_segments(path, DecodeSpec(image_size=16), info))
    assert len(segs) == 1 and info["announced_duration"] == pytest.approx(6.0, abs=0.3)
    assert len(segs[0].audio) == 5 * 16000

def test_subtitles_from_sidecar_and_from_stream(tmp_path):
    cues = [(1.0, 2.5, "hello <i>world</i>"), (4.0, 6.0, "across the boundary"), (11.0, 11.5, "late")]
    srt = write_srt(tmp_path / "film.srt", cues)
    make_video(tmp_path / "film.mp4", seconds=13, audio=False)
    spec = DecodeSpec(image_size=16, sample_rate=None, text=True)
    info = {}
    texts = [s.text for s in iter_segments(tmp_path / "film.mp4", spec, info)]
    assert texts == ["hello world across the boundary", "across the boundary", "late"]
    assert info["text_source"] == "sidecar:film.srt"
    mkv = make_mkv_with_subtitles(tmp_path / "embedded.mkv", srt, seconds=13)
    info = {}
    assert [s.text for s in iter_segments(mkv, spec, info)] == texts
    assert info["text_source"].startswith("stream:")


def test_text_in_overlap_rule():
    cues = [Cue(0, 1, "a"), Cue(1, 2, "a"), Cue(4.99, 5.5, "b")]
    assert text_in(cues, 0, 5) == "a b" and text_in(cues, 5, 10) == "b" and text_in(cues, 6, 7) == ""


def test_collect_videos(tmp_path):
    (tmp_path / "P03" / "cam01").mkdir(parents=True)
    (tmp_path / "P04").mkdir()
    for p in ["P03/cam01/x.mp4", "P04/y.AVI", "P04/notes.txt.bak", "z.webm"]:
        (tmp_path / p).write_bytes(b"0")
    items = collect_videos([tmp_path], "relpath")
    assert [(i.video_id, i.path) for i in items] == [
        ("P03/cam01/x", str(tmp_path / "P03/cam01/x.mp4")), ("P04/y", str(tmp_path / "P04/y.AVI")),
        ("z", str(tmp_path / "z.webm"))]
    assert [i.video_id for i in collect_videos(tmp_path, "stem")] == ["x", "y", "z"]
    listing = tmp_path / "list.txt"
    listing.write_text("# videos\nP04/y.AVI\ncustom\tz.webm\nmissing.mp4\n")
    got = {i.video_id: i.path for i in collect_videos(listing)}
    assert set(got) == {"y", "custom", "missing"} and got["custom"] == str(tmp_path / "z.webm")
    (tmp_path / "P04" / "x.mp4").write_bytes(b"0")
    with pytest.raises(DataError, match="relpath"):
        collect_videos(tmp_path, "stem")  # two different x.mp4
    assert collect_videos([tmp_path / "nope.mp4"])[0].video_id == "nope"  # recorded as failed by the run


def test_memory_stays_flat_over_a_long_video(tmp_path):
    """Streaming: what is held after 10 segments is what is held after 80 (400 s of video)."""
    import tracemalloc

    path = make_video(tmp_path / "long.mkv", seconds=400, fps=1, size=32, audio_rate=8000)
    spec = DecodeSpec(seconds=5, stride=5, frames=4, image_size=32, sample_rate=8000)
    tracemalloc.start()
    try:
        held = {}
        for i, seg in enumerate(iter_segments(path, spec)):
            del seg
            if i + 1 in (10, 80):
                held[i + 1] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert i + 1 == 80
    assert held[80] - held[10] < 256 * 1024
