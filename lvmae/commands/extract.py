"""``lvmae extract``: videos -> segment embeddings in a feature store."""

from __future__ import annotations

import argparse
import json
import sys

from lvmae.commands._common import add_config_args, config_from_args, literal, split_overrides
from lvmae.errors import LvmaeError

HELP = "embed video segments with frozen encoders into a feature store"
DESCRIPTION = """\
Cut each video into segments (extract.segment.*), embed every segment with the frozen
encoders (extract.encoder.*: vision efficientnet_lite0 | hf_clip, audio logmel, text
minilm | hf_text) and write them to a feature store. VIDEOS are video files, directories
(searched recursively) or .txt/.lst files listing videos (one path, or ID<TAB>PATH, a line).
Re-running the same command skips finished videos; unreadable, missing or too-short files
are recorded as failed with the reason and the run goes on. Exit status: 0 when every
listed video is in the store, 3 when some failed (in this run or before), 4 when all did,
2 for bad arguments or a full disk. Several ranks (--shard i/n, or
RANK/WORLD_SIZE from torchrun/deepspeed) can write into one store at once.

examples:
  lvmae extract videos/ --out feats
  lvmae extract list.txt --out feats extract.segment.seconds=4 extract.encoder.image_size=224
  lvmae extract breakfast/ --out bf --id-from relpath --shard 0/4
  lvmae extract clips/ --out clip_feats extract.encoder.vision=hf_clip extract.encoder.checkpoint=/models/clip-vit-b32
"""


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", metavar="STORE", help="feature store directory (default: extract.out)")
    p.add_argument("--shard", metavar="I/N", help="take every N-th video starting at I (default: RANK/WORLD_SIZE)")
    p.add_argument("--id-from", choices=("stem", "relpath"), help="video id: file stem (default) or path below the input dir")
    p.add_argument("--retry-failed", action="store_true", help="extract again the videos recorded as failed")
    p.add_argument("--workers", type=int, metavar="N", help="decode workers (extract.decode_workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    add_config_args(p, positional=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = ("lvmae extract VIDEOS... --out STORE [-c FILE] [--shard I/N] [--id-from stem|relpath] "
               "[--retry-failed] [--workers N] [--no-progress] [--json] [key=value ...]")
    _options(p)
    p.add_argument("items", nargs=argparse.REMAINDER, metavar="VIDEOS... [key=value ...]",
                   help="videos, directories or list files, then config overrides (options may come anywhere)")


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    """Options written after the videos (``lvmae extract a.mp4 --out s k=v``) land in ``items``."""
    inner = argparse.ArgumentParser(prog="lvmae extract", argument_default=argparse.SUPPRESS)
    _options(inner)
    inner.add_argument("items", nargs="*")
    return inner.parse_intermixed_args(args.items, namespace=args)


def run(args: argparse.Namespace) -> int:
    from lvmae.extraction.api import Extractor, exit_code, summary_line

    args = _reparse(args)
    videos, overrides = split_overrides(args.items)
    if not videos:
        raise LvmaeError("no VIDEOS given (files, directories or list files)")
    extra = [literal("extract.out", args.out)] if args.out is not None else []
    extra += [f"extract.{k}={v}" for k, v in (
        ("shard", args.shard), ("id_from", args.id_from),
        ("decode_workers", args.workers), ("retry_failed", args.retry_failed or None),
    ) if v is not None]
    cfg = config_from_args(argparse.Namespace(config=args.config, overrides=overrides), extra)
    progress = not args.no_progress and cfg.run.progress
    summary = Extractor(cfg.extract).run(videos, progress=progress)
    if not progress and not args.json:  # the progress bar printed them as they came
        for vid, reason in summary["failures"].items():
            print(f"extract: failed: {vid}: {reason}", file=sys.stderr)
    print(json.dumps(summary, indent=2) if args.json else summary_line(summary))
    return exit_code(summary)
