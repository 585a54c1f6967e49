"""Frozen-backbone probing: feature banks, linear/attentive heads, baselines, reports.

``run_probe(cfg)`` runs every task of a benchmark (see :mod:`lvmae.benchmarks`) with
the raw-feature baselines and the LV-MAE probes and writes the results tables; with
``probe.dense: true`` the tasks are per-segment labels (:mod:`lvmae.probe.dense`).
"""

from __future__ import annotations

from typing import Any


def run_probe(cfg: Any, encoder: Any = None) -> dict:
    """See :func:`lvmae.probe.runner.run_probe` (imported lazily: it pulls torch and sklearn);
    with ``probe.dense`` true, :func:`lvmae.probe.dense.run_dense` (one label per segment)."""
    if getattr(getattr(cfg, "probe", None), "dense", False):
        from lvmae.probe.dense import run_dense

        return run_dense(cfg, encoder)
    from lvmae.probe.runner import run_probe as _run

    return _run(cfg, encoder)


__all__ = ["run_probe"]
