"""A few end-to-end runs on the real all-MiniLM-L6-v2 and small slices of the real data sets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lepton
from lepton.pipeline.recipe import load_recipe

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sst2_main_recipe_slice_learns_and_saves(real_data: Path, tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "examples" / "sst2-minilm-finetune.yaml",
                         ["data.train.limit=600", "data.dev.limit=200", "data.dev.seed=0",
                          "stages.0.epochs=2", "stages.0.lr=1e-4", "evaluate.latency_items=10",
                          "evaluate.bootstrap=200", f"output.dir={tmp_path / 'out'}"],
                         env={"LEPTON_DATA": str(real_data)})
    report = lepton.run(recipe, progress=False)
    card = report.variants[-1]
    acc = card.quality.metrics["accuracy"]
    # 2 epochs over 600 sentences beat chance clearly (0.735 [0.675, 0.795] seen here).
    assert acc.value > 0.65
    assert acc.ci95_low < acc.value < acc.ci95_high
    assert card.efficiency.params > 22_000_000
    assert card.efficiency.latency_ms["b1_real"].p50 > 0
    assert card.efficiency.throughput["b32"] > 0
    assert report.environment.packages["torch"].startswith("2.13")

    model = lepton.load(tmp_path / "out" / "model")
    preds = model.predict(["a wonderful , moving film", "a dull , lifeless mess"])
    assert [p["label"] for p in preds] == ["positive", "negative"]

    # The same folder is an ordinary transformers model.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "model")
    with torch.inference_mode():
        logits = plain(**tok(["a wonderful , moving film"], return_tensors="pt")).logits
    assert plain.config.id2label[int(logits.argmax())] == "positive"
    table_rows = [line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
                  if line.startswith("| finetune | 0.")]
    assert len(table_rows) == 1


def test_conll_slice_token_classification(real_data: Path, tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "examples" / "conll2003-ner.yaml",
                         ["data.train.limit=300", "data.train.seed=0", "data.dev.limit=100",
                          "stages.0.epochs=1", "evaluate.latency_items=10", "evaluate.bootstrap=200",
                          "evaluate.batch_sizes=[1]", "evaluate.baseline=true", "evaluate.memory=false",
                          "evaluate.robustness=false", f"output.dir={tmp_path / 'out'}"],
                         env={"LEPTON_DATA": str(real_data)})
    report = lepton.run(recipe, progress=False)
    before, after = (v.quality for v in report.variants)
    assert [v.name for v in report.variants] == ["pretrained", "finetune"]
    assert after.headline == "entity_f1"
    assert {"PER", "ORG", "LOC", "MISC"} >= set(after.labels)
    # A random 9-way head tags about a ninth of the words right; one short epoch must do far better.
    assert after.metrics["token_accuracy"].value > before.metrics["token_accuracy"].value + 0.3
    assert report.variants[0].comparison.metric == "entity_f1"  # paired over sentences


def test_import_lepton_stays_lean() -> None:
    code = ("import sys, lepton; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'peft', "
            "'optuna', 'fastapi') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
