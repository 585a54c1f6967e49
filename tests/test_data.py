import numpy as np
import pytest
import torch
from pretrain_helpers import corrupt, make_store

from lvmae.config import DataConfig, MaskingConfig
from lvmae.data import (
    Crop,
    CropBatchSampler,
    CropDataset,
    MaskCollate,
    build_stream,
    draw_lengths,
    pad_batch,
    store_counts,
)
from lvmae.errors import DataError

LENGTHS = [3, 5, 8, 12, 20, 30, 41, 2, 17, 9]


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s", LENGTHS)


@pytest.mark.parametrize("policy", ["tile", "keep", "drop"])
def test_draw_lengths_stay_in_range(policy):
    rng = np.random.default_rng(0)
    n = rng.integers(1, 60, size=2000)
    length, start = draw_lengths(n, rng, 4, 32, policy)
    assert ((start >= 0) & (start + np.minimum(length, n) <= n)).all()
    long_enough = n >= 32
    assert ((length[long_enough] >= 4) & (length[long_enough] <= 32)).all()
    if policy == "tile":
        assert ((length >= 4) & (length <= 32)).all()
        assert (start[length > n] == 0).all()
    else:
        assert (length <= n).all() and (length[n < 4] == n[n < 4]).all()
    assert len(np.unique(length[long_enough])) > 20  # uniform draws, not a constant


def test_crop_reads_the_right_rows_and_tiles(store):
    ds = CropDataset([store], ["vision"], 2, 16, "tile")
    v = ds.video_ids[0].index("v6")  # 41 segments
    full = np.asarray(store.load("v6"), dtype=np.float32)
    item = ds[Crop(0, v, 10, 7, key=1)]
    np.testing.assert_array_equal(item["x"], full[7:17])
    assert item["video_id"] == "v6" and item["x"].dtype == np.float32
    short = ds.video_ids[0].index("v1")  # 5 segments, tiled to 12
    tiled = ds[Crop(0, short, 12, 0, key=2)]["x"]
    np.testing.assert_array_equal(tiled, np.concatenate([store.load("v1")] * 3)[:12].astype(np.float32))


def test_modalities_concatenate_in_config_order(tmp_path):
    s = make_store(tmp_path / "mm", [6, 9], dims={"vision": 8, "audio": 3})
    ds = CropDataset([s], ["audio", "vision"], 2, 8)
    assert ds.dims == [3, 8] and ds.dim == 11
    x = ds[Crop(0, 0, 4, 1, key=0)]["x"]
    np.testing.assert_array_equal(x[:, :3], np.asarray(s.load("v0", "audio"))[1:5].astype(np.float32))
    np.testing.assert_array_equal(x[:, 3:], np.asarray(s.load("v0", "vision"))[1:5].astype(np.float32))


def test_drop_policy_leaves_out_short_videos(store):
    ds = CropDataset([store], ["vision"], 4, 16, "drop")
    assert "v7" not in ds.video_ids[0] and "v0" not in ds.video_ids[0]  # 2 and 3 segments
    assert len(ds) == len(LENGTHS) - 2


def test_nan_in_features_names_the_video(store):
    corrupt(store, "v4")
    ds = CropDataset([store], ["vision"], 2, 16)
    with pytest.raises(DataError, match="'v4'.*NaN"):
        ds[Crop(0, ds.video_ids[0].index("v4"), 5, 0, key=0)]


def test_wrong_dims_are_errors(tmp_path, store):
    other = make_store(tmp_path / "other", [4, 4], dims={"vision": 7})
    with pytest.raises(DataError, match="disagree"):
        CropDataset([store, other], ["vision"])
    with pytest.raises(DataError, match="no \\['audio'\\]"):
        CropDataset([store], ["vision", "audio"])
    path = store.root / "features" / store.record("v2")["files"]["vision"]
    np.save(path, np.zeros((8, 5), np.float16))  # a file that no longer matches the store
    ds = CropDataset([store], ["vision"])
    with pytest.raises(DataError, match="'v2'.*shape"):
        ds[Crop(0, ds.video_ids[0].index("v2"), 4, 0, key=0)]


def _plan_ids(sampler, epoch):
    return [[(c.source, c.video, c.length, c.start) for c in b] for b in sampler.global_plan(epoch)]


def test_plan_is_seeded_and_ranks_are_disjoint(store):
    ds = CropDataset([store], ["vision"], 2, 16)
    a, b = CropBatchSampler(ds, 2, seed=3), CropBatchSampler(ds, 2, seed=3)
    assert _plan_ids(a, 0) == _plan_ids(b, 0)
    assert _plan_ids(a, 0) != _plan_ids(a, 1)
    assert _plan_ids(a, 0) != _plan_ids(CropBatchSampler(ds, 2, seed=4), 0)
    flat = [c for batch in _plan_ids(a, 0) for c in batch]
    assert sorted(c[1] for c in flat) == list(range(len(LENGTHS)))  # no weights: each video once
    ranks = [list(CropBatchSampler(ds, 2, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) >= 1
    keys = [{c.key for b in r for c in b} for r in ranks]
    assert not keys[0] & keys[1]


def test_sampler_resumes_mid_epoch(store):
    ds = CropDataset([store], ["vision"], 2, 16)
    s = CropBatchSampler(ds, 2, seed=1)
    s.set_state(2, 0)
    full = list(s)
    s.set_state(2, 3)
    assert list(s) == full[3:]


def test_bucketing_reduces_padding(tmp_path):
    lengths = list(np.random.default_rng(0).integers(2, 64, size=200))
    ds = CropDataset([make_store(tmp_path / "b", lengths)], ["vision"], 2, 64, "keep")

    def padding(bucket):
        plan = CropBatchSampler(ds, 8, seed=0, bucket_window=bucket).global_plan(0)
        return sum(max(c.length for c in b) * len(b) - sum(c.length for c in b) for b in plan)

    assert padding(16) < 0.3 * padding(None)


def test_weights_mix_stores(tmp_path):
    a = make_store(tmp_path / "a", [10] * 20, prefix="a")
    b = make_store(tmp_path / "b", [10] * 5, prefix="b")
    assert list(store_counts([20, 5], [])) == [20, 5]
    assert list(store_counts([20, 5], [1, 1])) == [12, 12]
    ds = CropDataset([a, b], ["vision"], 2, 8)
    plan = CropBatchSampler(ds, 4, seed=0, weights=[1.0, 3.0]).global_plan(0)
    sources = np.array([c.source for batch in plan for c in batch])
    assert abs((sources == 1).mean() - 0.75) < 0.1  # 5 videos repeated to 3/4 of the epoch
    off = CropBatchSampler(ds, 4, seed=0, weights=[1.0, 0.0]).global_plan(0)  # a store switched off
    assert {c.source for batch in off for c in batch} == {0} and len(off) == 25 // 4


def test_pad_and_collate(store):
    x, valid = pad_batch([np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)])
    assert x.shape == (2, 5, 4) and valid.sum(1).tolist() == [3, 5] and x[0, 3:].abs().sum() == 0
    ds = CropDataset([store], ["vision"], 4, 16)
    collate = MaskCollate(MaskingConfig(ratio=0.5), [0.5, 1.5])
    items = [ds[Crop(0, i, 6 + i, 0, key=11)] for i in range(3, 6)]
    b1, b2 = collate(items), collate(items)
    assert b1["x"].shape == (3, 11, 16) and b1["valid"].sum().item() == 9 + 10 + 11
    assert torch.equal(b1["masks"].mask, b2["masks"].mask)  # seeded by the crop key
    assert not (b1["masks"].mask & ~b1["valid"]).any() and b1["masks"].mask.any()
    assert set(b1["scale"].tolist()) <= {0.5, 1.5}
    assert b1["video_ids"] == [ds.video_ids[0][i] for i in range(3, 6)]
    assert MaskCollate(MaskingConfig(), [])(items)["scale"] is None


def test_stream_state_replays_the_same_batches(store):
    cfg = DataConfig(stores=[str(store.root)], min_len=2, max_len=12)
    first = build_stream(cfg, MaskingConfig(), [1.0], micro_batch=3, seed=5)
    batches = [next(first) for _ in range(9)]  # crosses epoch boundaries (3 batches per epoch)
    assert first.state_dict() == {"epoch": 2, "position": 3}
    again = build_stream(cfg, MaskingConfig(), [1.0], micro_batch=3, seed=5)
    for _ in range(4):
        next(again)
    state = again.state_dict()
    resumed = build_stream(cfg, MaskingConfig(), [1.0], micro_batch=3, seed=5)
    resumed.load_state_dict(state)
    for want in batches[4:]:
        got = next(resumed)
        assert got["video_ids"] == want["video_ids"]
        assert torch.equal(got["x"], want["x"]) and torch.equal(got["masks"].mask, want["masks"].mask)


def test_worker_processes_give_the_same_batches(store):
    cfg = DataConfig(stores=[str(store.root)], min_len=2, max_len=12)
    main_proc = build_stream(cfg, MaskingConfig(), [1.0], micro_batch=3, seed=5)
    workers = build_stream(DataConfig(**{**cfg.__dict__, "num_workers": 1}), MaskingConfig(), [1.0], 3, seed=5)
    for _ in range(4):  # crosses an epoch boundary with persistent workers
        a, b = next(main_proc), next(workers)
        assert a["video_ids"] == b["video_ids"] and torch.equal(a["x"], b["x"])
        assert torch.equal(a["masks"].ids_keep, b["masks"].ids_keep) and torch.equal(a["scale"], b["scale"])


def test_stream_leaves_the_global_rng_alone(store):
    """A resumed run re-creates the loader's iterator mid-epoch; were a seed drawn from the global
    RNG each time, dropout after a resume would differ from an unbroken run."""
    cfg = DataConfig(stores=[str(store.root)], min_len=2, max_len=12)
    stream = build_stream(cfg, MaskingConfig(), [1.0], micro_batch=3, seed=5)
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    for _ in range(4):  # crosses an epoch boundary (a new iterator)
        next(stream)
    stream.load_state_dict({"epoch": 1, "position": 2})  # a resume
    next(stream)
    assert torch.equal(torch.rand(3), want)
