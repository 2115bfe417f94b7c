"""The monitoring commands of README.md and docs/monitoring.md run as written, in the order
written, from a fresh checkout: each command is taken from the docs' code blocks verbatim and only
smoke limits are appended (a smaller stream, ``--smoke`` runs, the replay as fast as the model
goes and then exit, no HTTP port).

    pytest -m slow tests/test_monitor_docs_commands.py     (needs Financial PhraseBank and AG News
                                                           in ${LEPTON_DATA:-../shared/data})
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import data_root

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "docs" / "monitoring.md")
# What each command gets appended: later flags win in argparse, so these shrink what is written.
SMOKE = {
    "python": ["--background", "300", "--hours", "2"],
    "run": ["--smoke", "--no-progress"],
    "monitor": ["--speed", "0", "--exit-when-done", "--set", "server.enabled=false"],
}


def monitoring_commands() -> list[list[str]]:
    """The shell commands of every code block that runs ``lepton monitor``, in order (comments
    and ``pip install`` dropped, ``\\`` continuations joined)."""
    commands = []
    for doc in DOCS:
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M):
            if not re.search(r"^\s*lepton monitor ", block, re.M):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[:2] != ["pip", "install"]:
                    commands.append(words)
    return commands


def test_the_docs_hold_the_whole_monitoring_chain() -> None:
    heads = [" ".join(c[:2]) for c in monitoring_commands()]
    assert heads == ["python examples/monitor_news_stream.py", "lepton run", "lepton run", "lepton monitor"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_monitoring_commands_run_as_written(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    pytest.importorskip("onnxruntime")
    data = data_root()
    if not (data / "financial_phrasebank").is_dir() or not (data / "ag_news").is_dir():
        pytest.skip(f"Financial PhraseBank or AG News is not in LEPTON_DATA={data}")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # a fresh checkout: examples/, no runs/
    env = dict(os.environ, LEPTON_DATA=str(data.resolve()), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MONITOR_DATA", None)
    for words in monitoring_commands():
        if words[0] == "python":
            argv = [sys.executable, *words[1:], *SMOKE["python"]]
        else:
            assert words[0] == "lepton", words
            argv = [sys.executable, "-m", "lepton", *words[1:], *SMOKE[words[1]]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stderr[-3000:]}"
    db = tmp_path / "runs" / "monitor-news" / "monitor" / "monitor.db"
    import sqlite3

    stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM items").fetchone()[0]
    lines = sum(1 for _ in open(tmp_path / "runs" / "monitor-news-stream" / "stream.jsonl", encoding="utf-8"))
    assert stored == lines
