"""``lvmae config``: print the resolved configuration."""

from __future__ import annotations

import argparse

from lvmae.commands._common import add_config_args, config_from_args

HELP = "print the resolved config (defaults <- YAML files <- overrides)"
DESCRIPTION = """\
Print the configuration a command would run with, after merging the schema
defaults, the YAML files given with -c (in order) and key=value overrides.
Unknown keys and wrongly typed values are reported by name.

example:
  lvmae config -c configs/paper.yaml model.depth=16 masking.ratio=0.4
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from lvmae.config import to_yaml

    print(to_yaml(config_from_args(args)), end="")
    return 0
