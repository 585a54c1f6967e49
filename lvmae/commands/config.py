"""``lvmae config``: print the resolved configuration (``--doc``: with each key's meaning)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from functools import cache

from lvmae.commands._common import add_config_args, config_from_args

HELP = "print the resolved config (defaults <- YAML files <- overrides)"
DESCRIPTION = """\
Print the configuration a command would run with, after merging the schema
defaults, the YAML files given with -c (in order) and key=value overrides.
Unknown keys and wrongly typed values are reported by name. With --doc every
key carries its meaning as a YAML comment (the output is still a valid -c file).

examples:
  lvmae config -c paper model.depth=16 masking.ratio=0.4
  lvmae config --doc > my_run.yaml        # a commented template to edit
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--doc", action="store_true", help="annotate each section and key with its documentation")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from lvmae.config import Config, to_yaml

    text = to_yaml(config_from_args(args))
    print(annotate(text, Config) if args.doc else text, end="")
    return 0


def annotate(yaml_text: str, root: type) -> str:
    """``yaml_text`` (OmegaConf's block style for ``root``) with ``  # doc`` after each documented key."""
    out, path = [], []
    for line in yaml_text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if m and not line.lstrip().startswith("-"):
            path = path[: len(m.group(1)) // 2] + [m.group(2)]
            doc = field_doc(root, tuple(path))
            if doc:
                line = f"{line}  # {doc}"
        out.append(line)
    return "\n".join(out) + "\n"


def field_doc(root: type, path: tuple[str, ...]) -> str:
    """A field's source comment, or for a section the first line of its class docstring."""
    cls = root
    for name in path[:-1]:
        cls = _hints(cls).get(name)
        if not dataclasses.is_dataclass(cls):
            return ""
    typ = _hints(cls).get(path[-1])
    if dataclasses.is_dataclass(typ):
        return (inspect.getdoc(typ) or "").split("\n\n")[0].replace("\n", " ")
    return _comments(cls).get(path[-1], "")


def _hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}


@cache
def _comments(cls: type) -> dict[str, str]:
    """{field: comment} from the class source: the comment after the field, else the comment lines above it."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):  # no source shipped: keys stay uncommented
        return {}
    node = ast.parse(textwrap.dedent("".join(lines))).body[0]
    found = {}
    for st in node.body:
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            src = lines[st.end_lineno - 1]
            above = []
            for prev in reversed(lines[: st.lineno - 1]):
                if not prev.strip().startswith("#"):
                    break
                above.insert(0, prev.strip().lstrip("#").strip())
            inline = src.split("  # ", 1)[1].strip() if "  # " in src else ""
            found[st.target.id] = inline or " ".join(above)
    return found
