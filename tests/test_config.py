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


def test_recipes_by_name_anywhere(tmp_path, monkeypatch):
    from lvmae import recipes

    monkeypatch.chdir(tmp_path)  # no configs/ here: names resolve to the shipped files
    assert {"tiny", "paper", "demo", "probe/lvu", "probe/generic"} <= set(recipes.names())
    assert load_config(["tiny"]) == load_config(["tiny.yaml"]) == load_config([ROOT / "configs" / "tiny.yaml"])
    assert load_config(["paper"]).model.depth == 32
    assert load_config(["probe/lvu"]).probe.benchmark == "lvu"
    with pytest.raises(ConfigError, match="not found: tinyy .*shipped recipes: demo, "):
        load_config(["tinyy"])


def test_include_merges_first_and_is_overridden(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  depth: 3\n  width: 96\n")
    (tmp_path / "run.yaml").write_text("include: [tiny, base.yaml]\nmodel:\n  depth: 5\n")
    cfg = load_config([tmp_path / "run.yaml"], ["model.heads=3"])
    assert (cfg.model.depth, cfg.model.width, cfg.model.heads) == (5, 96, 3)
    assert cfg.optim.base_lr == load_config(["tiny"]).optim.base_lr  # from the recipe
    cpu = load_config([ROOT / "pretrain" / "tiny_cpu.yaml"])
    assert cpu.run.device == "cpu" and cpu.model == load_config(["tiny"]).model


def test_include_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config([tmp_path / "a.yaml"])
    (tmp_path / "c.yaml").write_text("include: [1]\n")
    with pytest.raises(ConfigError, match="c.yaml: include must be"):
        load_config([tmp_path / "c.yaml"])
    (tmp_path / "d.yaml").write_text("include: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found: .*missing.yaml"):
        load_config([tmp_path / "d.yaml"])
    (tmp_path / "e.yaml").write_text("include: tiny\nmodel:\n  depthh: 2\n")
    with pytest.raises(ConfigError, match="e.yaml.*depthh"):
        load_config([tmp_path / "e.yaml"])


def test_wheel_ships_the_recipes(tmp_path):
    """An installed wheel (not only the editable checkout) finds ``-c tiny``."""
    import subprocess
    import sys
    import zipfile

    from lvmae import recipes

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("lvmae-*.whl"))).namelist()
    assert {f"lvmae/recipes/{n}.yaml" for n in recipes.names()} <= set(names)


@pytest.mark.parametrize("override, expect", [
    ("extract.dtype=float64", "extract.dtype must be float16 or float32"),
    ("extract.segment.frames=0", "extract.segment.frames must be >= 1"),
    ("extract.id_from=name", "extract.id_from must be one of"),
    ("extract.prefetch_segments=0", "extract.prefetch_segments must be >= 1"),
])
def test_extract_settings_are_checked_when_the_config_loads(override, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, expect", [
    ("synth.tasks=[orderr]", "synth.tasks: unknown task"),
    ("synth.size=15", "synth.size must be even"),
    ("synth.filler_steps=[3,1]", "synth.filler_steps must be \\[min, max\\]"),
])
def test_synth_settings_are_checked_when_the_config_loads(override, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config(overrides=[override])
