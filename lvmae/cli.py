"""The ``lvmae`` command line: one entry point, one module per subcommand.

Subcommand modules live in :mod:`lvmae.commands` (``HELP``, ``DESCRIPTION`` with an
example, ``add_arguments(p)``, ``run(args) -> int``, optional ``ON_INTERRUPT``: the hint
printed after Ctrl-C, exit 130) and import their heavy
dependencies (torch, av, deepspeed) inside ``run`` so that ``lvmae --help`` is instant.
User errors (:class:`LvmaeError`, and OS errors such as a missing file or a full disk)
print one line and exit 2; any other exception is a bug: one line too, exit 1.
``LVMAE_TRACEBACK=1`` or ``lvmae --traceback COMMAND`` shows the traceback instead.
Exit codes: 0 ok, 1 internal error, 2 bad input / config / environment, 3 extraction
finished but some videos failed, 4 extraction where every video failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lvmae.errors import LvmaeError

COMMANDS = ("synth", "extract", "pretrain", "probe", "demo", "export", "config", "store")

EPILOG = """\
examples:
  lvmae demo                                   # synthetic end-to-end run on CPU
  lvmae extract videos/*.mp4 --out feats       # segment embeddings into a feature store
  lvmae pretrain -c tiny data.stores=[feats] run.out_dir=runs/tiny
  lvmae probe -c probe/generic probe.labels=labels.csv probe.store=feats probe.checkpoint=runs/tiny/export
  lvmae config -c paper model.depth=16           # print the resolved config

Every command takes -c/--config YAML files or shipped recipes (tiny, paper, demo, probe/lvu,
probe/coin, probe/breakfast, probe/generic), merged in order, and key=value overrides.
Errors are one line (exit 2; 1 for an internal error); --traceback or LVMAE_TRACEBACK=1 shows the
traceback. extract exits 3 when some videos failed, 4 when all did; 130 after Ctrl-C.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvmae",
        description="Long-video masked autoencoding over frozen segment embeddings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an error (same as LVMAE_TRACEBACK=1)")
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
    show = args.traceback or bool(os.environ.get("LVMAE_TRACEBACK"))
    try:
        return int(args._run(args) or 0)
    except LvmaeError as e:
        if show:
            raise
        print(f"lvmae {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing input, --out on a file, no permission, disk full: not a crash
        if show:
            raise
        where = f": {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
        print(f"lvmae {args.command}: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f"; {args._on_interrupt}" if args._on_interrupt else ""
        print(f"lvmae {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a library failing in a way not foreseen: still one line
        if show:
            raise
        print(f"lvmae {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(run again with --traceback or LVMAE_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(e: BaseException, limit: int = 500) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
