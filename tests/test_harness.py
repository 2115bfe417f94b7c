"""The evaluation standard: statistics that catch (and do not invent) differences, seeded
perturbations, interleaved efficiency, comparisons and gates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lepton.evaluation.harness import _label
from lepton.evaluation.perturb import PERTURBATIONS, perturb
from lepton.tasks.quality import paired_bootstrap, sequence_quality


def test_ci_contains_the_true_accuracy_of_a_known_process() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    correct = rng.random(3000) < 0.8  # true accuracy 0.8
    pred = np.where(correct, y, 1 - y)
    acc = sequence_quality(y, pred, ["a", "b"], resamples=1000, seed=0).metrics["accuracy"]
    assert acc.ci95_low < 0.8 < acc.ci95_high
    assert acc.ci95_high - acc.ci95_low < 0.04


def test_identical_models_show_no_significant_difference() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(872) < 0.85
    test = paired_bootstrap(correct, correct.copy(), resamples=1000, seed=0)
    assert test["delta"] == 0 and not test["significant"] and test["p_mcnemar"] == 1.0


def test_a_real_difference_is_detected() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(872) < 0.80
    b = a.copy()
    flip = np.flatnonzero(~a)[:60]  # b fixes 60 of a's errors: +6.9 points
    b[flip] = True
    test = paired_bootstrap(a, b, resamples=1000, seed=0)
    assert test["significant"] and test["delta"] > 0.05 and test["p_mcnemar"] < 1e-6


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_perturbations_are_seeded_and_change_text(kind: str) -> None:
    texts = ["the film is a quiet , moving portrait of grief and hope"] * 20
    one = perturb(texts, kind, seed=0, rate=0.3)
    assert one == perturb(texts, kind, seed=0, rate=0.3)
    assert one != perturb(texts, kind, seed=1, rate=0.3)
    assert sum(t != texts[0] for t in one) >= 10
    assert all(t.strip() for t in one)


def test_word_drop_never_empties_a_text() -> None:
    assert perturb(["one"], "word_drop", seed=0, rate=1.0) == ["one"]


def test_labels_say_smaller_not_faster() -> None:
    assert _label(1.01, 3.9) == "smaller, not faster"
    assert _label(2.0, 1.3) == "faster and smaller"
    assert _label(1.8, 1.0) == "faster"
    assert _label(1.02, 1.0) == "no gain"
    assert _label(0.5, 1.0) == "slower"
    # unstructured sparsity: same dense file, smaller once compressed, no faster
    assert _label(1.0, 1.0, 1.4) == "smaller when compressed, not faster"


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    import lepton
    from lepton.pipeline.recipe import parse_recipe
    from tests.conftest import tiny_recipe, write_sentiment_tsv

    tmp = tmp_path_factory.mktemp("harness")
    train = write_sentiment_tsv(tmp / "train.tsv", 80, seed=1)
    dev = write_sentiment_tsv(tmp / "dev.tsv", 60, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp / "out", epochs=2)
    recipe["evaluate"]["baseline"] = True
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    return tmp / "out", report


def test_run_reports_every_variant_interleaved_with_comparisons(saved_tiny) -> None:
    out, report = saved_tiny
    assert [v.name for v in report.variants] == ["pretrained", "finetune"]
    assert report.baseline == "finetune"
    base, pre = report.variants[1], report.variants[0]
    assert base.comparison is None
    c = pre.comparison
    assert c is not None and c.baseline == "finetune"
    assert c.delta == pytest.approx(pre.quality.metrics["accuracy"].value - base.quality.metrics["accuracy"].value)
    for card in report.variants:
        eff = card.efficiency
        assert eff.rounds == 3 and len(eff.latency_ms["b1_real"].round_medians) == 3
        assert eff.peak_rss_mb and eff.peak_rss_mb > 50 and "fresh process" in eff.peak_rss_note
        assert card.robustness is not None and set(card.robustness.perturbed) == set(PERTURBATIONS)
        assert card.calibration is not None and 0 <= card.calibration.ece <= 1
    md = (out / "report.md").read_text()
    assert "Against `finetune`" in md and "Robustness" in md and "Calibration" in md


def test_compare_identical_models_and_gates(saved_tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lepton.cli import main

    out, _ = saved_tiny
    twin = tmp_path / "twin" / "model"
    shutil.copytree(out / "model", twin)
    assert main(["-q", "compare", str(out / "model"), str(twin), "--json", "--max-drop", "accuracy=0"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in report["variants"]] == ["out", "twin"]
    comp = report["variants"][1]["comparison"]
    assert comp["delta"] == 0 and comp["verdict"] == "no significant change"
    assert main(["-q", "compare", str(out / "model"), str(twin), "--min-speedup", "50"]) == 1
    assert "gate failed: twin: speed-up" in capsys.readouterr().err
    assert main(["-q", "compare", str(out / "model"), "--max-drop", "acc=1"]) == 2
