"""README.md model card: Hub front matter that parses, model-index from the final variant, a body
with the side-by-side table."""

from __future__ import annotations

import pytest
import yaml

from lepton.pipeline.model_card import hub_id, model_card
from lepton.pipeline.report import table_rows
from lepton.tasks.quality import token_quality
from tests.test_report_html import EVIL, build_report

HISTORY = [
    {"index": 0, "kind": "finetune", "name": "finetune", "settings": {"kind": "finetune", "epochs": 2},
     "started": "2025-01-01T00:00:00+00:00", "seconds": 12.5, "summary": {}},
    {"index": 1, "kind": "drop_layers", "name": "drop_layers", "settings": {"keep": [0, 2, 4]},
     "started": "2025-01-01T00:01:00+00:00", "seconds": 1.0, "summary": {}},
    {"index": 2, "kind": "quantize", "name": "quantize", "settings": {}, "started": "", "seconds": 2.0},
]


def manifest(source: str = "builtin:minilm-l6", **extra) -> dict:
    report = build_report()
    return {"history": HISTORY, "source_model": source, "recipe": report.recipe, **extra}


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_front_matter_parses_and_follows_the_hub_schema() -> None:
    meta, _ = split_card(model_card(build_report(), manifest()))
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["lepton", "text-classification"]
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    [entry] = meta["model-index"]
    assert entry["name"] == "sst2-minilm"
    [result] = entry["results"]
    assert result["task"] == {"type": "text-classification", "name": "Text Classification"}
    assert result["dataset"] == {"name": "sst2", "type": "sst2", "split": "dev"}
    for metric in result["metrics"]:
        assert set(metric) <= {"type", "value", "name", "args"} and isinstance(metric["value"], float)


def test_model_index_values_are_the_final_variants_metrics() -> None:
    report = build_report()
    meta, _ = split_card(model_card(report, manifest()))
    metrics = {m["name"]: m for m in meta["model-index"][0]["results"][0]["metrics"]}
    final = report.variants[-1].quality.metrics
    assert metrics["Accuracy"]["type"] == "accuracy"
    assert metrics["Accuracy"]["value"] == final["accuracy"].value == 0.8
    assert metrics["Macro F1"] == {"type": "f1", "value": final["macro_f1"].value, "name": "Macro F1",
                                   "args": {"average": "macro"}}
    assert len(metrics) == len(final)


def test_body_has_table_stages_ci_machine_loading_and_limitations() -> None:
    report = build_report()
    _, body = split_card(model_card(report, manifest()))
    header, rows = table_rows(report)
    assert "| " + " | ".join(header) + " |" in body
    for row in rows:
        assert "| " + " | ".join(row) + " |" in body
    assert "1. **finetune** (`finetune`, 12.5 s): epochs=2" in body
    assert "2. **drop_layers**" in body and "keep=[0, 2, 4]" in body and "3. **quantize**" in body
    assert "95% confidence intervals" in body and "percentile bootstrap" in body
    assert "## Machine" in body and "torch" in body
    assert "lepton.load(" in body and 'pipeline("text-classification"' in body
    assert "## Bias, risks and limitations" in body and "one dev split" in body and "machine" in body
    assert "Labels (2): `neg`, `pos`." in body


def test_base_model_only_for_hub_ids(tmp_path) -> None:
    assert hub_id("builtin:minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("builtin:unknown") is None
    assert hub_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    for path in ("./models/x", "/abs/model", "~/m", "a/b/c", "..", str(tmp_path)):
        assert hub_id(path) is None, path
    meta, body = split_card(model_card(build_report(), manifest(str(tmp_path))))
    assert "base_model" not in meta and str(tmp_path) in body
    meta, _ = split_card(model_card(build_report(), manifest("google-bert/bert-base-uncased")))
    assert meta["base_model"] == "google-bert/bert-base-uncased"


def test_token_classification_card() -> None:
    report = build_report()
    quality = token_quality([["B-PER", "I-PER", "O", "B-LOC"]] * 3, [["B-PER", "I-PER", "O", "O"]] * 3,
                            resamples=100)
    cards = [c.model_copy(update={"quality": quality, "comparison": None}) for c in report.variants]
    recipe = {**report.recipe, "name": None, "task": {"kind": "token_classification"},
              "data": {"dev": {"path": "data/conll2003/valid.txt"}}}
    report = report.model_copy(update={"variants": cards, "recipe": recipe})
    meta, body = split_card(model_card(report, manifest(recipe=recipe)))
    assert meta["pipeline_tag"] == "token-classification"
    assert meta["tags"] == ["lepton", "token-classification"]
    [entry] = meta["model-index"]
    assert entry["name"] == "minilm-l6-quantize"
    result = entry["results"][0]
    assert result["dataset"]["name"] == "conll2003"
    f1 = next(m for m in result["metrics"] if m["name"] == "Entity F1")
    assert f1["value"] == quality.metrics["entity_f1"].value
    assert 'aggregation_strategy="simple"' in body


def test_data_is_escaped_and_front_matter_survives_odd_names() -> None:
    report = build_report(last_name=EVIL + " | x: [y]")
    report = report.model_copy(update={"recipe": {**report.recipe, "name": 'a: "b" # c'}})
    meta, body = split_card(model_card(report, manifest(recipe=report.recipe)))
    assert meta["model-index"][0]["name"] == 'a: "b" # c'
    assert EVIL not in body and "&lt;script&gt;" in body
    table = [line for line in body.splitlines() if line.startswith("| &lt;script")]
    assert table and table[0].count(" | ") == len(table_rows(report)[0]) - 1  # the | is escaped


def test_one_variant_without_comparison_and_no_history() -> None:
    report = build_report()
    report = report.model_copy(update={"variants": report.variants[:1], "stages": []})
    meta, body = split_card(model_card(report, {"history": [], "source_model": "builtin:minilm-l6",
                                                "recipe": report.recipe}))
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 1.0
    assert "No stages" in body


def test_restructured_model_says_it_loads_only_through_lepton() -> None:
    _, body = split_card(model_card(build_report(), manifest(loads_in_transformers=False)))
    assert "loads only through `lepton.load`" in body and "from transformers import pipeline" not in body


def test_saved_model_carries_the_card_under_its_checksums(tiny_model_dir, tmp_path) -> None:
    from lepton.core.errors import ArtifactError
    from lepton.pipeline.artifact import read_manifest, save_artifact
    from tests.test_artifact import sequence_bundle

    card = model_card(build_report(), manifest())
    folder = save_artifact(sequence_bundle(tiny_model_dir), tmp_path / "model", model_card=card)
    assert (folder / "README.md").read_text(encoding="utf-8") == card
    assert "README.md" in read_manifest(folder)["files"]  # verified like the weights
    (folder / "README.md").write_text(card + "edited\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match="README.md: checksum mismatch"):
        read_manifest(folder)
