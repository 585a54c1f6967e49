"""``lvmae demo``: the whole pipeline end to end on synthetic long videos, on CPU."""

from __future__ import annotations

import argparse

from lvmae.commands._common import add_config_args

HELP = "synthetic videos -> extract -> pretrain LV-MAE -> probe vs raw baselines, end to end on CPU"
DESCRIPTION = """\
Make synthetic long videos (tasks: order and count, whose labels a mean pool of
segment features cannot see, and appearance, which it can), embed their 5-s segments
with the default offline encoder, pre-train a tiny LV-MAE and probe it (linear and
attentive) beside mean-pooled raw-feature baselines (scikit-learn logistic regression,
linear probe). Prints the results table; writes it, the plots (pretraining loss and
retrieval, probe accuracy) and every number to --out. Nothing is downloaded.
Re-running the same command skips finished stages and resumes an interrupted one.

examples:
  lvmae demo
  lvmae demo --out /tmp/demo synth.num_videos=120 train.steps=300
"""

ON_INTERRUPT = "run the same command again to resume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lvmae_demo", help="output directory (default: ./lvmae_demo)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from lvmae.demo import demo_config, run_demo

    run_demo(demo_config(args.out, args.config, args.overrides or []))
    return 0
