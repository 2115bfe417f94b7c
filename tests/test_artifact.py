"""The saved model: same predictions after a round trip, loadable by plain transformers,
checksums that catch tampering, atomic replacement, and the Predictor on raw text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lepton
from lepton.core.errors import ArtifactError, LeptonError, StorageError
from lepton.models import load_tokenizer
from lepton.pipeline.artifact import MANIFEST, load_bundle, read_manifest, save_artifact
from lepton.pipeline.predictor import Predictor
from lepton.runtimes.bundle import ModelBundle, StageRecord
from lepton.tasks import TaskSpec, softmax
from lepton.tasks.loading import load_for_task
from tests.conftest import spec_for

TEXTS = ["a great and lovely film", "dull, boring and weak.", "ok",
         "the plot was quite superb really"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def sequence_bundle(model_dir: Path, labels: list[str] = ("neg", "pos"), *, seed: int = 0,
                    pair: bool = False) -> ModelBundle:
    torch.manual_seed(seed)  # the fresh classification head
    labels = list(labels)
    model = load_for_task(str(model_dir), spec_for("sequence_classification", labels))
    task = TaskSpec(kind="sequence_classification", labels=labels,
                    raw_labels=[str(i) for i in range(len(labels))], pair=pair)
    return ModelBundle(model=model, tokenizer=load_tokenizer(str(model_dir)), task=task,
                       source=str(model_dir))


def token_bundle(model_dir: Path, *, max_length: int = 128) -> ModelBundle:
    torch.manual_seed(0)
    model = load_for_task(str(model_dir), spec_for("token_classification", NER_LABELS))
    task = TaskSpec(kind="token_classification", labels=NER_LABELS, raw_labels=NER_LABELS,
                    max_length=max_length)
    return ModelBundle(model=model, tokenizer=load_tokenizer(str(model_dir)), task=task)


def logits_of(model, tokenizer, texts, pairs=None) -> torch.Tensor:
    enc = tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return model.eval()(**enc).logits


@pytest.fixture
def bundle(tiny_model_dir) -> ModelBundle:
    return sequence_bundle(tiny_model_dir)


@pytest.fixture
def saved(bundle, tmp_path) -> Path:
    return save_artifact(bundle, tmp_path / "model", recipe={"name": "unit"})


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------- round trip


def test_round_trip_gives_the_same_predictions(bundle, saved):
    expected = logits_of(bundle.model, bundle.tokenizer, TEXTS)
    predictor = lepton.load(saved)
    assert isinstance(predictor, Predictor)
    assert predictor.labels == ["neg", "pos"]
    assert predictor.task == bundle.task
    got = logits_of(predictor.bundle.model, predictor.bundle.tokenizer, TEXTS)
    assert torch.allclose(got, expected, atol=1e-5)

    results = predictor.predict(TEXTS)
    probs = softmax(expected.numpy())
    assert len(results) == len(TEXTS)
    for row, result in zip(probs, results):
        assert set(result) == {"label", "score", "scores"}
        assert result["label"] == ["neg", "pos"][int(np.argmax(row))]
        assert result["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert result["scores"]["neg"] == pytest.approx(float(row[0]), abs=1e-5)
        assert sum(result["scores"].values()) == pytest.approx(1.0)


def test_predict_batches_agree_and_single_text(bundle, saved):
    predictor = lepton.load(saved)
    whole = predictor.predict(TEXTS)
    in_twos = predictor.predict(TEXTS, batch_size=2)
    for a, b in zip(whole, in_twos):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    single = predictor.predict(TEXTS[1])
    assert len(single) == 1 and single[0]["score"] == pytest.approx(whole[1]["score"], abs=1e-5)
    assert predictor.predict([]) == []
    with pytest.raises(LeptonError, match="pass a text"):
        predictor.predict([("a pair", "not for this model")])


def test_manifest_lists_a_checksum_for_every_file(bundle, saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {MANIFEST}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    for name, digest in manifest["files"].items():  # the algorithm is named with each digest
        assert digest == {"sha256": hashlib.sha256((saved / name).read_bytes()).hexdigest()}, name
    assert manifest["schema_version"] == 1
    assert manifest["task"] == bundle.task.model_dump()
    assert manifest["recipe"] == {"name": "unit"}
    assert manifest["source_model"] == bundle.source
    assert manifest["lepton_version"] == lepton.__version__


def test_history_and_scorecards_are_kept(bundle, tmp_path):
    record = StageRecord(index=0, kind="finetune", name="finetune", settings={"epochs": 1},
                         started="2025-01-01T00:00:00+00:00", seconds=1.5, summary={"steps": 3})
    bundle.history.append(record)
    path = save_artifact(bundle, tmp_path / "model", scorecards=[{"name": "finetune"}])
    assert read_manifest(path)["scorecards"] == [{"name": "finetune"}]
    assert load_bundle(path).history == [record]


def test_loads_with_plain_transformers(bundle, saved):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.label2id == {"neg": 0, "pos": 1}
    expected = logits_of(bundle.model, bundle.tokenizer, TEXTS)
    assert torch.allclose(logits_of(model, tokenizer, TEXTS), expected, atol=1e-5)


def test_saved_files_are_as_readable_as_any_new_file(saved, tmp_path):
    # The model is meant to be shipped: it must not stay private to the saving user
    # (mkdtemp makes 0700 folders, safetensors writes 0600 files).
    (tmp_path / "ref-dir").mkdir()
    (tmp_path / "ref-file").write_text("x")
    dir_mode = (tmp_path / "ref-dir").stat().st_mode & 0o777
    file_mode = (tmp_path / "ref-file").stat().st_mode & 0o777
    assert saved.stat().st_mode & 0o777 == dir_mode
    for f in saved.iterdir():
        assert f.stat().st_mode & 0o777 == file_mode, f.name


# ------------------------------------------------------------------- integrity


def test_tampered_weights_fail_the_checksum(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: still a loadable file
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as info:
        lepton.load(saved)
    assert "model.safetensors" in str(info.value) and "checksum" in str(info.value)
    with pytest.raises(ArtifactError, match="checksum"):
        read_manifest(saved)
    read_manifest(saved, verify=False)  # the manifest itself is fine


def test_deleted_file_is_reported(saved):
    (saved / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError) as info:
        lepton.load(saved)
    assert "tokenizer.json" in str(info.value) and "missing" in str(info.value)


def test_folder_without_manifest(bundle, tmp_path):
    folder = tmp_path / "plain"
    bundle.model.save_pretrained(folder)
    with pytest.raises(ArtifactError) as info:
        lepton.load(folder)
    assert str(folder) in str(info.value) and MANIFEST in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match="no such model folder"):
        lepton.load(tmp_path / "absent")


def _edit_manifest(folder: Path, edit, *, redigest: bool = True) -> None:
    """Edit lepton.json; ``redigest``: as a careful forger would, recompute its own digest."""
    from lepton.pipeline.artifact import DIGEST_KEY, manifest_digest

    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    if redigest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def test_unknown_manifest_schema_version(saved):
    _edit_manifest(saved, lambda m: m.update(schema_version=99))
    with pytest.raises(ArtifactError) as info:
        lepton.load(saved)
    assert "schema_version 99" in str(info.value) and "not supported" in str(info.value)


def test_manifest_that_lists_no_files(saved):
    _edit_manifest(saved, lambda m: m.update(files={}))
    with pytest.raises(ArtifactError, match="lists no files"):
        lepton.load(saved)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null"])
def test_manifest_that_is_not_a_json_object(saved, text):
    (saved / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError) as info:
        lepton.load(saved)
    assert MANIFEST in str(info.value)


def test_manifest_with_a_malformed_task(saved):
    _edit_manifest(saved, lambda m: m.update(task={"kind": "regression"}))
    with pytest.raises(ArtifactError, match="task"):
        lepton.load(saved)


# ------------------------------------------------------------------- atomic replacement


def test_saving_over_an_artifact_replaces_it(tiny_model_dir, saved):
    other = sequence_bundle(tiny_model_dir, ["bad", "good", "meh"], seed=1)
    save_artifact(other, saved)
    predictor = lepton.load(saved)
    assert predictor.labels == ["bad", "good", "meh"]
    expected = logits_of(other.model, other.tokenizer, TEXTS)
    assert torch.allclose(logits_of(predictor.bundle.model, predictor.bundle.tokenizer, TEXTS),
                          expected, atol=1e-5)
    assert read_manifest(saved)["recipe"] is None  # nothing of the old manifest survives
    assert hidden_leftovers(saved.parent) == []


def test_failed_save_keeps_the_previous_artifact(tiny_model_dir, saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    other = sequence_bundle(tiny_model_dir, ["bad", "good", "meh"], seed=1)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(other.tokenizer, "save_pretrained", broken_save)
    with pytest.raises(StorageError, match="disk full"):  # one line naming the folder
        save_artifact(other, saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert lepton.load(saved).labels == ["neg", "pos"]
    assert hidden_leftovers(saved.parent) == []


def test_failed_first_save_leaves_nothing(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle.tokenizer, "save_pretrained", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_artifact(bundle, tmp_path / "out" / "model")
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------- token classification


@pytest.fixture
def tagger(tiny_model_dir, tmp_path) -> Predictor:
    path = save_artifact(token_bundle(tiny_model_dir), tmp_path / "ner")
    return lepton.load(path)


def _force(predictor: Predictor, label: str) -> None:
    """Make the random tagger predict ``label`` for every sub-token."""
    head = predictor.bundle.model.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[predictor.labels.index(label)] = 5.0


NER_TEXTS = ["Alice visited  Rome .", "  Bob\tmet Zoë in   São Paulo!  ", "x",
             "naïve café-owner from Berlin"]


def _check_structure(text: str, result: dict, labels: list[str]) -> None:
    words = list(re.finditer(r"\S+", text))
    assert result["tokens"] == [m.group() for m in words]
    assert len(result["tags"]) == len(result["tokens"])
    assert set(result["tags"]) <= set(labels)
    for ent in result["entities"]:
        a, b = ent["words"]
        assert 0 <= a < b <= len(words)
        assert ent["text"] == text[ent["start"]:ent["end"]]
        assert ent["start"] == words[a].start() and ent["end"] == words[b - 1].end()
        assert ent["entity"] in {"PER", "LOC"}
        assert 0.0 <= ent["score"] <= 1.0


def test_token_predictions_on_raw_text(tagger):
    results = tagger.predict(NER_TEXTS)  # random weights: check the shape, not the tags
    assert len(results) == len(NER_TEXTS)
    for text, result in zip(NER_TEXTS, results):
        _check_structure(text, result, NER_LABELS)


def test_entities_carry_offsets_into_the_text(tagger):
    _force(tagger, "B-LOC")  # every word its own LOC entity
    for text, result in zip(NER_TEXTS, tagger.predict(NER_TEXTS)):
        _check_structure(text, result, NER_LABELS)
        assert [e["text"] for e in result["entities"]] == text.split()
        assert result["tags"] == ["B-LOC"] * len(text.split())
        assert all(e["score"] > 0.9 for e in result["entities"])

    _force(tagger, "I-PER")  # one entity over the whole text, inner whitespace kept as written
    for text, result in zip(NER_TEXTS, tagger.predict(NER_TEXTS)):
        _check_structure(text, result, NER_LABELS)
        [entity] = result["entities"]
        assert entity["text"] == text.strip() and entity["entity"] == "PER"


def test_token_lists_and_empty_texts(tagger):
    _force(tagger, "B-PER")
    [tokens, empty, blank] = tagger.predict([["Alice", "and", "Bob"], "", "   "])
    assert tokens["tags"] == ["B-PER"] * 3
    assert [e["text"] for e in tokens["entities"]] == ["Alice", "and", "Bob"]
    assert all("start" not in e for e in tokens["entities"])  # no text, so no offsets
    assert empty == blank == {"tokens": [], "tags": [], "entities": []}
    with pytest.raises(LeptonError):
        tagger.predict([42])


def test_words_past_max_length_are_tagged_o(tiny_model_dir, tmp_path):
    path = save_artifact(token_bundle(tiny_model_dir, max_length=8), tmp_path / "short")
    predictor = lepton.load(path)
    _force(predictor, "B-LOC")
    text = " ".join(f"w{i}" for i in range(20))
    [result] = predictor.predict(text)
    assert len(result["tags"]) == 20
    assert result["tags"][0] == "B-LOC" and result["tags"][-1] == "O"
    for ent in result["entities"]:
        assert ent["text"] == text[ent["start"]:ent["end"]]


def test_token_model_loads_with_plain_transformers(tagger):
    from transformers import AutoModelForTokenClassification

    folder = Path(tagger.bundle.model.name_or_path)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(len(NER_LABELS))] == NER_LABELS


# ------------------------------------------------------------------- sentence pairs


def test_sentence_pair_predictor_needs_tuples(tiny_model_dir, tmp_path):
    bundle = sequence_bundle(tiny_model_dir, ["different", "same"], pair=True)
    predictor = lepton.load(save_artifact(bundle, tmp_path / "pairs"))
    assert predictor.task.pair
    with pytest.raises(LeptonError, match="pairs"):
        predictor.predict("only one sentence")
    with pytest.raises(LeptonError, match="pairs"):
        predictor.predict(["one", "two"])
    with pytest.raises(LeptonError, match="pairs"):
        predictor.predict([("one", "two", "three")])

    firsts, seconds = ["a cat sat", "it rained"], ["a cat was sitting", "the sun was out"]
    results = predictor.predict(list(zip(firsts, seconds)))
    expected = softmax(logits_of(bundle.model, bundle.tokenizer, firsts, seconds).numpy())
    got = [r["scores"]["same"] for r in results]
    assert got == pytest.approx(expected[:, 1].tolist(), abs=1e-5)
    [single] = predictor.predict((firsts[0], seconds[0]))
    assert single["scores"]["same"] == pytest.approx(float(expected[0, 1]), abs=1e-5)


def test_artifact_folder_can_move(saved, tmp_path):
    moved = tmp_path / "elsewhere" / "m"
    moved.parent.mkdir()
    shutil.move(str(saved), moved)
    assert lepton.load(moved).labels == ["neg", "pos"]
    assert not os.path.exists(saved)

