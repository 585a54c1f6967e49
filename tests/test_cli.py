import subprocess
import sys

import pytest

from lvmae.cli import COMMANDS, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_subcommand_help_has_example(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    assert "example" in capsys.readouterr().out.lower()


def test_bad_config_is_one_line_no_traceback():
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "config", "model.nope=1"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "nope" in r.stderr


def test_missing_config_file_is_clear():
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "config", "-c", "missing.yaml"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr


def test_config_prints_resolved(capsys):
    assert main(["config", "model.depth=3"]) == 0
    assert "depth: 3" in capsys.readouterr().out


def test_model_code_imports_no_launcher_deps():
    code = ("import sys, lvmae.models, lvmae.config; "
            "import importlib.util as u; "
            "bad=[m for m in ('omegaconf','deepspeed') if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_os_errors_are_one_line_naming_the_path(tmp_path):
    """--out pointing at a file (FileExistsError), a read-only dir and the like are user errors, not crashes."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = subprocess.run([sys.executable, "-m", "lvmae.cli", "synth", "--out", str(afile / "sub"), "num_videos=1",
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(afile) in r.stderr and "Not a directory" in r.stderr


def test_ctrl_c_exits_130_with_a_resume_hint(monkeypatch, capsys):
    import lvmae.demo

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lvmae.demo, "run_demo", interrupted)
    assert main(["demo", "--out", "unused"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvmae demo: interrupted") and "again" in err and len(err.splitlines()) == 1


def test_config_doc_annotates_keys_and_stays_loadable(tmp_path, capsys):
    from lvmae.config import load_config

    assert main(["config", "--doc", "model.depth=3", "optim.betas=[0.8,0.9]"]) == 0
    text = capsys.readouterr().out
    assert "masking:  # Which segments the autoencoder must reconstruct" in text  # section: class docstring
    assert "  device: auto  # auto | cpu | cuda" in text  # field: inline comment
    assert "  short_policy: tile  # A video shorter than the drawn crop length" in text  # field: comment above
    (tmp_path / "doc.yaml").write_text(text)
    assert load_config([tmp_path / "doc.yaml"]) == load_config([], ["model.depth=3", "optim.betas=[0.8,0.9]"])


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(monkeypatch):
    """Spinning OpenMP threads made a tiny pretraining 5x slower beside one other busy process (50 s vs 10.5 s)."""
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["config", "run.seed=1"]) == 0 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["config", "run.seed=1"]) == 0 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    # The variable is read when torch loads OpenMP: the CLI must not have imported torch by then.
    code = "import sys, lvmae.cli; lvmae.cli.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
