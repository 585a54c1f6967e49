"""The length benchmark's probe tables (tools/bench_length.py): probes at several lengths and the
oracle are aggregated per probe length, and JSON written before probes had lengths still renders.

The benchmark itself takes an hour; these tests touch only its aggregation and rendering.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_length  # noqa: E402


def _run(seed: int, link_at_32: float, link_at_512: float) -> dict:
    return {"variant": "default", "train_length": 32, "seed": seed, "loss": {"32": 0.6, "512": 0.66},
            "probe_by_length": {"32": {"link": {"lvmae_linear": link_at_32}},
                                "512": {"link": {"lvmae_linear": link_at_512, "lvmae_linear_windowed": 50.0}}}}


def test_probe_means_per_probe_length_and_old_json():
    means = bench_length._probe_means([_run(0, 60.0, 50.0), _run(1, 70.0, 54.0)])
    assert sorted(means) == [32, 512]
    assert means[32]["link"]["lvmae_linear"][0] == 65.0
    assert means[512]["link"]["lvmae_linear"] == (52.0, bench_length._mean_std([50.0, 54.0])[1])
    old = {"train_length": 32, "probe": {"order": {"raw_mean_sklearn": 65.0}}}  # before probe_by_length
    assert bench_length._probe_means([old]) == {512: {"order": {"raw_mean_sklearn": (65.0, 0.0)}}}


def test_render_has_a_table_per_probe_length_and_the_oracle():
    oracle = {"variant": "default-oracle", "train_length": 512, "seed": 0, "loss": {"512": 0.7},
              "probe_by_length": {"512": {"link": {"lvmae_attentive": 47.5}}}}
    text = bench_length.render({"benchmark": "length", "runs": [_run(0, 60.0, 50.0)], "oracle_runs": [oracle]})
    assert "at 32 segments (1x)" in text and "at 512 segments (16x)" in text
    assert "_windowed" not in text.split("at 512 segments")[0].split("at 32 segments")[1]  # no windows at 1x
    assert "Oracle" in text and "| link | 47.5 ± 0.0 |" in text and "held-out loss at 512: 0.700" in text
