"""Arguments and config loading shared by every subcommand."""

from __future__ import annotations

import argparse
import json

from lvmae.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """``-c FILE`` (repeatable) and trailing ``key=value`` overrides."""
    p.add_argument(
        "-c", "--config", action="append", default=[], metavar="FILE",
        help="YAML config file or shipped recipe (tiny, paper, demo, probe/lvu, ...); repeat to merge in order",
    )
    if positional:
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.depth=8")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate positional paths from ``key=value`` overrides (paths never contain '=' here)."""
    paths = [x for x in items if "=" not in x]
    overrides = [x for x in items if "=" in x]
    return paths, overrides


def literal(key: str, value: str) -> str:
    """``key=value`` override that keeps ``value`` a string (a path like ``a: b`` or ``yes`` is not YAML)."""
    return f"{key}={json.dumps(str(value))}"


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    overrides = list(getattr(args, "overrides", []) or [])
    return load_config(args.config, overrides + list(extra or []))
