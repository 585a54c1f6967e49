"""Every ```bash and ```python block of README.md and docs/*.md runs as a user would run it.

Each file's blocks run in order in one fresh temporary directory (later blocks see the files
earlier blocks wrote), with ``lvmae`` on PATH and ``LVMAE_REPO`` set to the repository root;
a python block runs in a fresh interpreter, like a snippet pasted into a new session. A block
preceded by the line ``<!-- not-run: REASON -->`` is skipped and listed here; a file holding
``<!-- docs-test: slow -->`` runs only with ``-m slow``. Generated tables must match their JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"bash", "python"}
NOT_RUN = re.compile(r"^<!-- not-run: (.+?) -->$")
MAX_NOT_RUN = 16  # not-run blocks are for GPU, network, real data sets, installs and hour-long runs only


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason, when the block is opted out


def blocks(path: Path) -> list[Block]:
    """Fenced blocks of a Markdown file (```lang ... ```), with their not-run reason if any."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        reason = NOT_RUN.match(prev.strip())
        out.append(Block(path, start + 1, m.group(1), "\n".join(body) + "\n", reason and reason.group(1)))
        i += 1
    return out


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    """A user's shell: no launcher variables (an in-process pretraining test leaves MASTER_PORT set,
    on a port its process group still holds)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update({"LVMAE_REPO": str(ROOT), "MPLBACKEND": "Agg",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    env.setdefault("OMP_NUM_THREADS", "1")  # the blocks' tiny models gain nothing from more
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code] if block.lang == "bash" else [sys.executable, "-"]
    stdin = block.code if block.lang == "python" else None
    return subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=600)


def _param(path: Path):
    slow = "<!-- docs-test: slow -->" in path.read_text(encoding="utf-8")
    return pytest.param(path, id=str(path.relative_to(ROOT)), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_code_blocks_run(path, tmp_path):
    todo = [b for b in blocks(path) if b.lang in RUN_LANGS and b.not_run is None]
    env, took = _env(), []
    for b in todo:
        t = time.perf_counter()
        r = run_block(b, tmp_path, env)
        took.append(f"line {b.line}: {time.perf_counter() - t:.1f} s")
        assert r.returncode == 0, (f"{path.name}:{b.line} ({b.lang}) exited {r.returncode}\n"
                                   f"--- block\n{b.code}--- stdout\n{r.stdout[-3000:]}--- stderr\n{r.stderr[-3000:]}")
    print(f"{path.name}: {len(todo)} blocks, " + ", ".join(took))


def test_not_run_blocks_are_few_and_say_why():
    skipped = [b for p in FILES for b in blocks(p) if b.not_run is not None]
    listing = "\n".join(f"{b.path.relative_to(ROOT)}:{b.line}: {b.not_run}" for b in skipped)
    print(f"{len(skipped)} not-run blocks:\n{listing}")
    assert all(b.lang in RUN_LANGS for b in skipped), "not-run is only for bash/python blocks:\n" + listing
    assert len(skipped) <= MAX_NOT_RUN, listing


def test_every_fence_has_a_language():
    """A block without a language is neither run nor shown as output: say ```text (or bash/python)."""
    bare = [f"{b.path.relative_to(ROOT)}:{b.line}" for p in FILES for b in blocks(p) if not b.lang]
    assert not bare, bare


def test_collector_sees_blocks_and_markers(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n```bash\necho hi > a.txt\n```\n\n<!-- not-run: needs a GPU -->\n```python\n"
                  "import nothing\n```\n```text\nout\n```\n```python\nprint(open('a.txt').read(), end='')\n```\n")
    found = blocks(md)
    assert [(b.lang, b.line, b.not_run) for b in found] == [
        ("bash", 3, None), ("python", 8, "needs a GPU"), ("text", 11, None), ("python", 14, None)]
    env = _env()
    assert run_block(found[0], tmp_path, env).returncode == 0
    assert run_block(found[3], tmp_path, env).stdout == "hi\n"  # later blocks see earlier files
    assert run_block(found[1], tmp_path, env).returncode != 0  # a broken block fails


def test_generated_tables_match_their_json():
    sys.path.insert(0, str(ROOT / "tools"))
    import render_docs

    assert render_docs.main(["--check"]) == 0, "run: python tools/render_docs.py"


def test_render_fills_a_block_from_json(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import render_docs

    (tmp_path / "d.json").write_text('{"command": "lvmae demo", "table": "| a |\\n|---|\\n| 1 |", '
                                     '"stage_seconds": {"synth": 3.2}, "hardware": {"cpu": "x86", "cores": 2, "torch_threads": 1}, '
                                     '"versions": {"torch": "2.13"}}')
    monkeypatch.setattr(render_docs, "ROOT", tmp_path)
    text = "a\n<!-- begin generated: demo d.json -->\nold\n<!-- end generated -->\nb\n"
    new = render_docs.render_text(text)
    assert new == ("a\n<!-- begin generated: demo d.json -->\n| a |\n|---|\n| 1 |\n\n"
                   "`lvmae demo` on x86, 2 cores, torch 2.13, 1 torch threads.\n<!-- end generated -->\nb\n")
    assert render_docs.render_text(new) == new
    assert "Not generated yet" in render_docs.render_text(text.replace("d.json", "missing.json"))


def test_sweep_block_orders_runs_by_loss_weight_and_names_a_missing_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import render_docs

    def run(weight, best, raw):
        return json.dumps({"seeds": [0, 1], "hardware": {"cpu": "x86", "cores": 2}, "versions": {"torch": "2.13"},
                           "config": {"model": {"visible_loss_weight": weight}},
                           "targets": {"order": {"best_lvmae": "lvmae_attentive", "best_lvmae_mean": best,
                                                 "raw_mean_sklearn": raw, "lvmae_minus_raw_mean": round(best - raw, 1)}}})

    (tmp_path / "a.json").write_text(run(0.5, 80.0, 50.0))
    (tmp_path / "b.json").write_text(run(0, 90.5, 50.0))
    monkeypatch.setattr(render_docs, "ROOT", tmp_path)
    new = render_docs.render_text("<!-- begin generated: demo_seeds_sweep a.json,b.json -->\n<!-- end generated -->\n")
    rows = [line for line in new.splitlines() if line.startswith("| 0")]
    assert rows == ["| 0 | 90.5 (+40.5, lvmae_attentive) |", "| 0.5 | 80.0 (+30.0, lvmae_attentive) |"]
    assert "Raw mean pooling: order 50.0." in new
    missing = render_docs.render_text("<!-- begin generated: demo_seeds_sweep a.json,c.json -->\n<!-- end generated -->\n")
    assert "c.json is missing" in missing and "a.json" not in missing.split("generated yet:")[1]
