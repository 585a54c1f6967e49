"""``lvmae synth``: placeholder until its issue lands."""

from __future__ import annotations

import argparse

from lvmae.commands._common import add_config_args
from lvmae.errors import LvmaeError

HELP = "synth (not yet implemented)"
DESCRIPTION = HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    raise LvmaeError("'synth' is not implemented yet")
