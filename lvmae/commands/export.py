"""``lvmae export``: write the encoder of a pretraining checkpoint as a standalone export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "export the LV-MAE encoder of a checkpoint (safetensors + config.json, no DeepSpeed needed)"
DESCRIPTION = """\
Re-export the encoder from a pretraining run dir (its latest checkpoint) or from
one checkpoint dir (RUN/checkpoints/step_XXXXXXXX). Works for checkpoints of both
engines (DeepSpeed and plain PyTorch). The result loads with
lvmae.models.export.load_pretrained (or lvmae.models.hub.LVMAEModel.from_pretrained) and is
what probe.checkpoint expects. A README.md model card (config, data, steps) is written beside
it; --probe adds a probing results table. --push-to-hub uploads the export to a Hugging Face
repository (needs `pip install lvmae[hf]` and `hf auth login`).

examples:
  lvmae export runs/tiny --out runs/tiny/export
  lvmae export runs/tiny/checkpoints/step_00000100 --out exports/tiny_step100
  lvmae export runs/paper --out runs/paper/export --probe runs/paper/probe_lvu/results.json \
      --push-to-hub me/lvmae-paper
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run dir (uses checkpoints/latest) or one checkpoint dir")
    p.add_argument("--out", required=True, help="directory to write encoder.safetensors + config.json to")
    p.add_argument("--probe", metavar="RESULTS_JSON", help="results.json of `lvmae probe`: its table goes in the card")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to this Hugging Face model repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")


def run(args: argparse.Namespace) -> int:
    from lvmae.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    if args.probe:
        add_probe_results(out, args.probe)
    print(f"wrote {out}")
    if args.push_to_hub:
        from lvmae.models.hub import LVMAEModel

        url = LVMAEModel.from_pretrained(out).push_to_hub(args.push_to_hub, private=args.private or None)
        print(f"pushed {out} to {url}")
    return 0


def add_probe_results(export: Path, results: str) -> None:
    """The Markdown table of a probe run's ``results.json`` into the export's card."""
    from lvmae.errors import DataError
    from lvmae.models.export import add_probe_table
    from lvmae.probe.report import markdown_table

    try:
        summary = json.loads(Path(results).read_text(encoding="utf-8"))
        table = markdown_table(summary)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"--probe {results}: not a readable results.json of `lvmae probe` ({e})") from None
    add_probe_table(export, table.replace("# Probing results", "Benchmark", 1))
