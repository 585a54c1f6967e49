from pathlib import Path

import pytest

from lvmae.config import Config, load_config, save_config
from lvmae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.extract.segment.seconds == 5.0
    assert cfg.optim.betas == [0.9, 0.95]


def test_yaml_then_dotlist_override(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("model:\n  depth: 7\n  width: 64\nmasking:\n  ratio: 0.3\n")
    cfg = load_config([y], ["model.depth=9", "optim.betas=[0.8,0.9]"])
    assert cfg.model.depth == 9  # dotlist wins over YAML
    assert cfg.model.width == 64  # YAML wins over default
    assert cfg.masking.ratio == 0.3
    assert cfg.optim.betas == [0.8, 0.9]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="model.dpeth|dpeth"):
        load_config(overrides=["model.dpeth=3"])


def test_unknown_key_in_yaml_is_named(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("optim:\n  lr_typo: 1.0\n")
    with pytest.raises(ConfigError, match="lr_typo"):
        load_config([y])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="depth"):
        load_config(overrides=["model.depth=deep"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="divisible"):
        load_config(overrides=["model.width=100", "model.heads=3"])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(["/nonexistent/x.yaml"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["model.depth=3", "run.seed=5"])
    path = save_config(cfg, tmp_path)
    again = load_config([path])
    assert again == cfg


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/**/*.yaml")) + sorted(ROOT.glob("pretrain/**/*.yaml"))
                         + sorted(ROOT.glob("probe/**/*.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_loads(path):
    load_config([path])


@pytest.mark.parametrize("text, expect", [
    ("model: [\n", "line 2"),                         # YAML syntax error
    ("model:\n  depth: 2\n  depth: 3\n", "duplicate key"),
    ("3\n", "mapping"),                               # top level not a mapping
    ("- model\n", "mapping"),
    ("model:\n  dpeth: 3\n", "dpeth"),                # schema error: names the file too
])
def test_bad_yaml_file_is_a_config_error_naming_the_file(tmp_path, text, expect):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=expect) as e:
        load_config([y])
    assert "bad.yaml" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, expect", [
    ("probe.seeds=3", r"probe.seeds must be a list"),  # a scalar for a list field
    ("probe.seeds={a: 1}", r"override .probe.seeds=\{a: 1\}.*list or mapping"),  # a mapping for a list: TypeError inside OmegaConf
    ("run=3", r"'run' is a section"),                 # a value for a whole section
])
def test_shape_errors_say_what_was_expected(override, expect):
    with pytest.raises(ConfigError, match=expect) as e:
        load_config(overrides=[override])
    assert "AnyNode" not in str(e.value) and "subclass" not in str(e.value)


def test_every_key_printed_by_config_doc_is_documented(capsys):
    """``lvmae config --doc``: every leaf key (not only sections) carries a non-empty ``# comment``."""
    import re

    from lvmae.cli import main

    assert main(["config", "--doc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    path, undocumented, leaves = [], [], 0
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        if not m:
            continue  # list items ("- x", block style at the key's own indent)
        indent = len(m.group(1))
        path = path[: indent // 2] + [m.group(2)]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if re.match(rf"^ {{{indent + 2}}}[A-Za-z_]\w*:", nxt):
            continue  # a section header: its keys are the indented block below
        leaves += 1
        if not re.search(r"\s#\s*\S", m.group(3)):
            undocumented.append(".".join(path))
    assert leaves > 100
    assert not undocumented, f"{len(undocumented)} keys without documentation: {undocumented}"
