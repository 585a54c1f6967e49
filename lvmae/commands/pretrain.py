"""``lvmae pretrain``: pre-train LV-MAE on one or several feature stores."""

from __future__ import annotations

import argparse

from lvmae.commands._common import add_config_args, config_from_args

HELP = "pre-train LV-MAE on stored segment embeddings (DeepSpeed or plain PyTorch)"
DESCRIPTION = """\
Pre-train the masked autoencoder on random crops of the videos in data.stores.
Writes into run.out_dir: config.yaml (resolved), checkpoints/ (every
train.save_every steps and at the end, atomic, last train.keep_last kept),
metrics.jsonl, tb/ (TensorBoard), curves.png, summary.json and export/ (the encoder
alone, loadable without DeepSpeed). --resume continues from the newest checkpoint
whose files match its manifest, with the same LR schedule, data order and RNG state;
a run dir that holds checkpoints is never started over without --restart. Launch several processes with
the scripts in pretrain/ (deepspeed launcher or torchrun).

examples:
  lvmae pretrain -c tiny data.stores=[feats] run.out_dir=runs/tiny
  lvmae pretrain -c tiny data.stores=[feats] run.out_dir=runs/tiny --resume
  lvmae pretrain -c paper data.stores=[feats/a,feats/b] data.weights=[1,3] \\
      run.out_dir=runs/paper
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint that verifies (same as train.resume=true); "
                        "a finished run is left untouched")
    p.add_argument("--restart", action="store_true",
                   help="delete RUN's checkpoints and metrics and start at step 0 (same as train.restart=true)")
    # The deepspeed launcher appends --local_rank=N unless given --no_local_rank; LOCAL_RANK is read from the env.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import os

    from lvmae.train import pretrain

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    extra = (["train.resume=true"] if args.resume else []) + (["train.restart=true"] if args.restart else [])
    cfg = config_from_args(args, extra)
    summary = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "final_metrics"}, indent=2))
    return 0
