"""``lvmae export``: write the encoder of a pretraining checkpoint as a standalone export."""

from __future__ import annotations

import argparse

HELP = "export the LV-MAE encoder of a checkpoint (safetensors + config.json, no DeepSpeed needed)"
DESCRIPTION = """\
Re-export the encoder from a pretraining run dir (its latest checkpoint) or from
one checkpoint dir (RUN/checkpoints/step_XXXXXXXX). Works for checkpoints of both
engines (DeepSpeed and plain PyTorch). The result loads with
lvmae.models.export.load_pretrained and is what probe.checkpoint expects.

examples:
  lvmae export runs/tiny --out runs/tiny/export
  lvmae export runs/tiny/checkpoints/step_00000100 --out exports/tiny_step100
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run dir (uses checkpoints/latest) or one checkpoint dir")
    p.add_argument("--out", required=True, help="directory to write encoder.safetensors + config.json to")


def run(args: argparse.Namespace) -> int:
    from lvmae.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0
