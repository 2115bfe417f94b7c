"""Every recipe in examples/ runs as a smoke run (``--smoke``) on the real all-MiniLM-L6-v2.

About a minute each, so they are marked ``examples`` and left out of the default test run;
``.ci/run`` runs them with ``pytest -m examples``. Examples whose data is not built in are
skipped where ``${LEPTON_DATA}`` does not hold it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import lepton
from tests.conftest import data_root

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
_DATA_REF = re.compile(r"\$\{LEPTON_DATA:-[^}]*\}/([^\s\"',}]+)")


@pytest.mark.examples
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_as_a_smoke_run(path: Path, tmp_path: Path, monkeypatch) -> None:
    missing = [ref for ref in _DATA_REF.findall(path.read_text()) if not (data_root() / ref).exists()]
    if missing:
        pytest.skip(f"{path.name} reads {missing[0]} from LEPTON_DATA={data_root()}, which is not there")
    monkeypatch.setenv("LEPTON_DATA", str(data_root()))
    monkeypatch.chdir(tmp_path)
    if "search" in (yaml.safe_load(path.read_text()) or {}):
        return _search_smoke(path, tmp_path)
    report = lepton.run(path, overrides=["smoke=true"], out_dir=tmp_path / "out", progress=False)
    assert report.recipe["smoke"] is True
    assert report.variants, "no variant was measured"
    for card in report.variants:
        assert card.n_examples <= 64
        headline = card.quality.metrics[card.quality.headline]
        assert 0.0 <= headline.value <= 1.0
    assert (tmp_path / "out" / "model" / "lepton.json").is_file()
    lepton.load(tmp_path / "out" / "model")  # the artifact loads (and its checksums hold)


def _search_smoke(path: Path, tmp_path: Path) -> None:
    """A search recipe (lepton search): two smoke trials, any accuracy (64 rows train nothing)."""
    from lepton.search import search

    result = search(path, overrides=["smoke=true"], out_dir=tmp_path / "out", trials=2,
                    max_drop={"accuracy": 100.0}, progress=False)
    assert result.summary["trials_complete"] + result.summary["trials_failed"] == 2
    assert result.best_dir is not None, result.summary["failures"]
    lepton.load(result.best_dir / "model")
    lepton.load_recipe(result.best_dir / "recipe.yaml")  # the plain recipe is a valid recipe
