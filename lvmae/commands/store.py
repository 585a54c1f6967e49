"""``lvmae store check STORE``: read a whole feature store and report what is wrong with it."""

from __future__ import annotations

import argparse

HELP = "check a feature store: every file present, shape [segments, dim], no NaN/inf"
DESCRIPTION = """\
Reads every feature file of each STORE once: it must exist, have the shape its manifest
record says ([num_segments, dim]) and hold only finite numbers. Feature files that no
record names are listed too (left by an interrupted run; harmless). Prints a JSON report;
exits 0 when every store is sound, 3 when one has problems. Pretraining runs the same scan
first with data.check_stores=true.

examples:
  lvmae store check feats
  lvmae store check feats/a feats/b
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="scan stores for missing, misshapen or non-finite features")
    check.add_argument("stores", nargs="+", metavar="STORE")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from lvmae.data.checks import scan_store

    reports = [scan_store(s) for s in args.stores]
    print(json.dumps([r.to_dict() for r in reports], indent=2))
    for r in reports:
        state = "ok" if not r.problems else f"{len(r.problems)} problem(s), first: {r.problems[0]}"
        print(f"lvmae store check {r.store}: {r.videos} videos, {r.segments} segments: {state}", file=sys.stderr)
    return 3 if any(r.problems for r in reports) else 0
