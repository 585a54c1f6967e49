"""``lvmae probe``: frozen-backbone probing of one benchmark, every task, one command."""

from __future__ import annotations

import argparse

from lvmae.commands._common import add_config_args, config_from_args

HELP = "probe a pretrained LV-MAE (and raw-feature baselines) on LVU, COIN, Breakfast or your own labels"
DESCRIPTION = """\
Train linear and attentive probes on the frozen LV-MAE encoder and the raw-feature
baselines (mean-pooled embeddings + scikit-learn, attentive probe on raw embeddings)
for every task of a benchmark, with several seeds, model selection on validation and
test at the best-validation epoch. Writes results.md / results.csv (task x method,
mean ± std), results.json (every number and the config) and plots/ into run.out_dir,
and prints the table. Labelled videos without features are reported and skipped.
Without probe.checkpoint only the raw baselines run. Rerunning skips finished fits.
With probe.dense=true every stored segment gets a label instead (Breakfast action
segmentation, COIN steps, synthetic step timelines, generic interval files) and the
tables hold segment accuracy, edit and F1@{10,25,50} (docs/dense-probing.md).

examples:
  lvmae probe -c probe/lvu probe.labels=data/lvu_1.0 probe.store=feats/lvu \\
      probe.checkpoint=runs/paper/export run.out_dir=runs/paper/probe_lvu
  lvmae synth --out synth && lvmae extract synth/videos --out synth_feats
  lvmae probe -c probe/generic probe.labels=synth/labels.csv probe.store=synth_feats
  lvmae probe -c probe/breakfast_seg probe.labels=data/breakfast probe.store=feats/breakfast_1s \\
      probe.checkpoint=runs/paper/export
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    import logging

    from lvmae.probe import run_probe

    cfg = config_from_args(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = run_probe(cfg)
    with open(summary["files"]["markdown"], encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"\nwrote {cfg.run.out_dir}/results.md, results.csv, results.json and plots/")
    return 0
