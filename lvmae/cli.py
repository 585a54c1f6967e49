"""The ``lvmae`` command line: one entry point, one module per subcommand.

Subcommand modules live in :mod:`lvmae.commands` (``HELP``, ``DESCRIPTION`` with an
example, ``add_arguments(p)``, ``run(args) -> int``, optional ``ON_INTERRUPT``: the hint
printed after Ctrl-C, exit 130) and import their heavy
dependencies (torch, av, deepspeed) inside ``run`` so that ``lvmae --help`` is instant.
User errors (:class:`LvmaeError`, and OS errors such as a missing file or a full disk)
print one line and exit 2; ``LVMAE_TRACEBACK=1`` shows the traceback of OS errors instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lvmae.errors import LvmaeError

COMMANDS = ("synth", "extract", "pretrain", "probe", "demo", "export", "config")

EPILOG = """\
examples:
  lvmae demo                                   # synthetic end-to-end run on CPU
  lvmae extract videos/*.mp4 --out feats       # segment embeddings into a feature store
  lvmae pretrain -c configs/tiny.yaml data.stores=[feats] run.out_dir=runs/tiny
  lvmae probe -c probe/lvu.yaml probe.store=feats probe.checkpoint=runs/tiny/export
  lvmae config -c configs/paper.yaml model.depth=16   # print the resolved config

Every command takes -c/--config YAML files (merged in order) and key=value overrides.
Errors are one line (exit 2); LVMAE_TRACEBACK=1 shows the traceback of file-system errors.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvmae",
        description="Long-video masked autoencoding over frozen segment embeddings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"lvmae.commands.{name}")
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _on_interrupt=getattr(mod, "ON_INTERRUPT", ""))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads OpenMP: idle threads sleep instead of spinning. Same speed on an idle
    # machine, 5x faster when another process shares the cores (see tests/test_cli.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except LvmaeError as e:
        print(f"lvmae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing input, --out on a file, no permission, disk full: not a crash
        if os.environ.get("LVMAE_TRACEBACK"):
            raise
        where = f": {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
        print(f"lvmae {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f"; {args._on_interrupt}" if args._on_interrupt else ""
        print(f"lvmae {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
