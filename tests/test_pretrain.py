"""The pretrain stage (masked-LM on raw text) on tiny random-weight models."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

import lepton
from lepton.models import load_tokenizer
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.pretrain import (
    Pieces,
    PretrainConfig,
    TextConfig,
    _collator,
    masked_batch,
    masked_lm_model,
    pretrain,
    read_documents,
)
from lepton.tasks import TaskSpec
from lepton.tasks.loading import load_for_task
from tests.conftest import tiny_recipe, write_sentiment_tsv

FAST_EVAL = {"batch_sizes": [1], "latency_items": 5, "warmup": 0, "throughput_batches": 1,
             "bootstrap": 100, "fixed_length": None, "robustness": False, "memory": False, "rounds": 1}
SENTENCES = ["the movie was really good and the acting was great",
             "a dull plot and weak acting made the film boring",
             "the actors were superb and the story was lovely"]


def _corpus(path: Path, n: int = 120) -> Path:
    path.write_text("\n".join(SENTENCES[i % 3] for i in range(n)) + "\n")
    return path


def _bundle(model_dir: Path, source: str = "") -> ModelBundle:
    task = TaskSpec(kind="sequence_classification", labels=["0", "1"], raw_labels=["0", "1"], max_length=32)
    torch.manual_seed(0)
    model = load_for_task(str(model_dir), task)
    return ModelBundle(model=model, tokenizer=load_tokenizer(str(model_dir)), task=task, source=source)


def test_pretrain_creates_a_head_lowers_the_loss_and_keeps_the_task_head(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    bundle = _bundle(tiny_model_dir, source=str(tiny_model_dir))
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    ctx = RunContext(splits={}, seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path, progress=False)
    config = PretrainConfig(text=TextConfig(path=str(_corpus(tmp_path / "text.txt"))), epochs=4, lr=5e-3,
                            batch_size=16, held_out=0.1, pseudo_perplexity_sample=2)
    pretrain(bundle, config, ctx)
    summary = ctx.stage_summary
    assert summary["mlm_head"] == "created"  # the tiny checkpoint is a bare encoder
    assert summary["documents"] == {"train": 108, "held_out": 12}
    mlm = summary["masked_lm"]
    assert mlm["after"]["loss"] < mlm["before"]["loss"] - 1.0
    assert summary["pseudo_perplexity"]["after"] < summary["pseudo_perplexity"]["before"]
    after = bundle.model.state_dict()
    assert torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert torch.equal(after["bert.pooler.dense.weight"], before["bert.pooler.dense.weight"])
    assert not torch.equal(after["bert.encoder.layer.0.attention.self.query.weight"],
                           before["bert.encoder.layer.0.attention.self.query.weight"])
    assert set(after) == set(before)  # no MLM head in the task model


def test_mlm_head_is_tied_or_loaded_from_the_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    bundle = _bundle(tiny_model_dir)
    mlm, head = masked_lm_model(bundle, "stages.0")
    assert head == "created"
    assert mlm.bert is bundle.model.bert
    assert mlm.cls.predictions.decoder.weight is bundle.model.bert.embeddings.word_embeddings.weight

    with_head = tmp_path / "with-head"
    torch.manual_seed(1)
    BertForMaskedLM(bundle.model.config).save_pretrained(with_head)
    bundle.tokenizer.save_pretrained(with_head)
    mlm, head = masked_lm_model(_bundle(tiny_model_dir, source=str(with_head)), "stages.0")
    assert head == f"loaded from {with_head}"
    saved = BertForMaskedLM.from_pretrained(with_head)
    assert torch.equal(mlm.cls.predictions.transform.dense.weight, saved.cls.predictions.transform.dense.weight)


def test_whole_word_masking_masks_every_piece_of_a_word(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    text = "unbelievably incomprehensible antidisestablishmentarianism " * 6
    pieces = Pieces([text], tokenizer, 64)
    config = PretrainConfig(text=TextConfig(path="x"), whole_word_mask=True, mlm_probability=0.3)
    collator = _collator(tokenizer, config)
    collator.generator = torch.Generator().manual_seed(0)
    batch = masked_batch(pieces, [0], collator, tokenizer.pad_token_id, whole_word=True)
    masked = (batch["labels"][0] != -100).tolist()
    words: dict[int, set[bool]] = {}
    word, prev_end = -1, -1
    for pos, ((start, end), special) in enumerate(zip(pieces.offsets[0], pieces.special[0])):
        if special:
            continue
        if start != prev_end:
            word += 1
        prev_end = end
        words.setdefault(word, set()).add(masked[pos])
    assert any(True in v for v in words.values())
    assert all(len(v) == 1 for v in words.values())  # a word is masked whole or not at all


def test_text_sources(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first doc\n\n second doc \n")
    assert read_documents(TextConfig(path=str(lines)), "stages.0.text") == ["first doc", "second doc"]
    folder = tmp_path / "docs" / "sub"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("one")
    (folder / "b.txt").write_text("two\nlines")
    assert read_documents(TextConfig(path=str(tmp_path / "docs")), "s") == ["one", "two\nlines"]
    archive = tmp_path / "reviews.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in [("r/train/unsup/1.txt", b"great<br />film"), ("r/train/pos/2.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    docs = read_documents(TextConfig(path=str(archive), subdir="r/train", classes=["unsup"]), "s")
    assert docs == ["great film"]
    with pytest.raises(lepton.LeptonError, match="stages.0.text: subdir and classes apply to format folder"):
        read_documents(TextConfig(path=str(lines), subdir="x"), "stages.0.text")
    with pytest.raises(lepton.LeptonError, match="stages.0.text.path: not found"):
        read_documents(TextConfig(path=str(tmp_path / "none.txt")), "stages.0.text")


def test_pretrain_then_finetune_in_a_recipe(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_sentiment_tsv(tmp_path / "train.tsv", 64, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    recipe["evaluate"] = FAST_EVAL
    recipe["stages"].insert(0, {"kind": "pretrain", "text": {"path": str(_corpus(tmp_path / "t.txt", 60))},
                                "epochs": 1, "lr": 1e-3, "batch_size": 16, "whole_word_mask": True,
                                "pseudo_perplexity_sample": 0})
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    assert [s["kind"] for s in report.stages] == ["pretrain", "finetune"]
    summary = report.stages[0]["summary"]
    assert summary["masking"] == {"mlm_probability": 0.15, "whole_word": True}
    assert "pseudo_perplexity" not in summary and summary["steps"] == 4
    assert report.stages[1]["summary"]["steps"] == 8
    bad = dict(recipe, stages=[{**recipe["stages"][0], "metric": "accuracy"}])
    with pytest.raises(lepton.LeptonError, match="metric can only be 'loss'"):
        parse_recipe(bad, env={})


def test_masked_positions_loss_equals_the_full_models(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, DataCollatorForLanguageModeling

    from lepton.stages.pretrain import MaskedPositionsLM, masked_lm_model
    from lepton.tasks import TaskSpec

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model_dir))
    task = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    spec = TaskSpec(kind="sequence_classification", labels=["0", "1"], raw_labels=["0", "1"])
    mlm, _ = masked_lm_model(ModelBundle(model=task, tokenizer=tok, task=spec), "stages.0")
    mlm.eval()
    enc = tok(["a quiet film about two brothers and the sea", "good"], padding=True, return_tensors="pt")
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3)
    collator.generator = torch.Generator().manual_seed(3)
    batch = collator([{"input_ids": ids} for ids in enc["input_ids"].tolist()])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": enc["attention_mask"],
              "labels": batch["labels"]}
    assert int((batch["labels"] != -100).sum()) > 0
    full = mlm(**inputs).loss
    fast = MaskedPositionsLM(mlm)(**inputs).loss
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
    fast.backward()
    assert mlm.cls.predictions.transform.dense.weight.grad is not None
