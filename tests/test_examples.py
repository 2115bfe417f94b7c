"""Every recipe in examples/ runs as a smoke run (``--smoke``) on the real all-MiniLM-L6-v2.

About a minute each, so they are marked ``examples`` and left out of the default test run;
``.ci/run`` runs them with ``pytest -m examples``. Examples whose data is not built in are
skipped where ``${LEPTON_DATA}`` does not hold it. The monitor example's three files (a recipe
whose data a script prepares, its INT8 follow-up, and the monitor config) run as one chain.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lepton
from lepton.evaluation.scorecard import Report
from lepton.tasks import kind_of
from tests.conftest import data_root

ROOT = Path(__file__).resolve().parents[1]
MONITOR = ("monitor-news.yaml", "monitor-news-int8.yaml", "monitor-news-monitor.yaml")
CHAINED = ("multi30k-transformer-student.yaml",)  # reads another example's model: run as a chain below
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name not in MONITOR + CHAINED)
_DATA_REF = re.compile(r"\$\{LEPTON_DATA:-[^}]*\}/([^\s\"',};)]+)")


def _needs_data(path: Path) -> None:
    missing = [ref for ref in _DATA_REF.findall(path.read_text()) if not (data_root() / ref).exists()]
    if missing:
        pytest.skip(f"{path.name} reads {missing[0]} from LEPTON_DATA={data_root()}, which is not there")


def _check_smoke_report(report: Report, out: Path) -> None:
    assert report.recipe["smoke"] is True
    assert report.variants, "no variant was measured"
    for card in report.variants:
        assert card.n_examples <= 64
        headline = card.quality.metrics[card.quality.headline]
        info = next(m for m in kind_of(report.recipe["task"]["kind"]).metrics if m.name == card.quality.headline)
        assert 0.0 <= headline.value <= (info.upper if info.upper is not None else float("inf")), info
    assert (out / "model" / "lepton.json").is_file()
    lepton.load(out / "model")  # the artifact loads (and its checksums hold)


@pytest.mark.examples
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_as_a_smoke_run(path: Path, tmp_path: Path, monkeypatch) -> None:
    _needs_data(path)
    monkeypatch.setenv("LEPTON_DATA", str(data_root()))
    monkeypatch.chdir(tmp_path)
    if "search" in (yaml.safe_load(path.read_text()) or {}):
        return _search_smoke(path, tmp_path)
    report = lepton.run(path, overrides=["smoke=true"], out_dir=tmp_path / "out", progress=False)
    _check_smoke_report(report, tmp_path / "out")


def _search_smoke(path: Path, tmp_path: Path) -> None:
    """A search recipe (lepton search): two smoke trials, any accuracy (64 rows train nothing)."""
    from lepton.search import search

    result = search(path, overrides=["smoke=true"], out_dir=tmp_path / "out", trials=2,
                    max_drop={"accuracy": 100.0}, progress=False)
    assert result.summary["trials_complete"] + result.summary["trials_failed"] == 2
    assert result.best_dir is not None, result.summary["failures"]
    lepton.load(result.best_dir / "model")
    lepton.load_recipe(result.best_dir / "recipe.yaml")  # the plain recipe is a valid recipe


@pytest.mark.examples
def test_translation_example_chain_runs_as_smoke_runs(tmp_path: Path, monkeypatch) -> None:
    """The model Lepton trains from scratch, then its student (shallow decoder, sequence-level KD,
    ONNX, INT8) with that model as the starting point and the teacher."""
    teacher_recipe = ROOT / "examples" / "multi30k-transformer.yaml"
    _needs_data(teacher_recipe)
    monkeypatch.setenv("LEPTON_DATA", str(data_root()))
    monkeypatch.chdir(tmp_path)
    report = lepton.run(teacher_recipe, overrides=["smoke=true"], out_dir=tmp_path / "teacher", progress=False)
    _check_smoke_report(report, tmp_path / "teacher")
    teacher = str(tmp_path / "teacher" / "model")
    report = lepton.run(ROOT / "examples" / "multi30k-transformer-student.yaml",
                        overrides=["smoke=true", f"model={teacher}", f"stages.1.teacher={teacher}"],
                        out_dir=tmp_path / "student", progress=False)
    _check_smoke_report(report, tmp_path / "student")
    assert [c.name for c in report.variants] == ["pretrained", "shallow-decoder", "student", "export", "int8"]


@pytest.mark.examples
def test_monitor_example_chain_runs_as_smoke_runs(tmp_path: Path, monkeypatch) -> None:
    """The stream script's data, the multi-task recipe, its INT8 follow-up, the monitor config."""
    from lepton.monitor.config import load_config

    examples = ROOT / "examples"
    for name in MONITOR[:2]:
        _needs_data(examples / name)
    if not (data_root() / "financial_phrasebank").is_dir():
        pytest.skip(f"Financial PhraseBank is not in LEPTON_DATA={data_root()}")
    monkeypatch.setenv("LEPTON_DATA", str(data_root()))
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, str(examples / "monitor_news_stream.py"), "--out", "news",
                           "--background", "500", "--hours", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setenv("MONITOR_DATA", str(tmp_path / "news" / "data"))
    report = lepton.run(examples / MONITOR[0], overrides=["smoke=true"], out_dir=tmp_path / "fp32",
                        progress=False)
    _check_smoke_report(report, tmp_path / "fp32")
    report = lepton.run(examples / MONITOR[1], overrides=["smoke=true", f"model={tmp_path / 'fp32' / 'model'}"],
                        out_dir=tmp_path / "int8", progress=False)
    _check_smoke_report(report, tmp_path / "int8")
    config = load_config(examples / MONITOR[2])
    assert config.predict.topic.task == "agnews"
