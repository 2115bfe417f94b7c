"""export and quantize on encoder-decoders (T5 plain and gated, Marian, BART, and a Marian that
Lepton built and trained): two ONNX graphs whose greedy and beam outputs equal PyTorch's, int8 and
4-bit variants on ONNX Runtime, artifacts that reload and generate the same. Tiny models from
tests/gen_tiny.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lepton
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes.ort_seq2seq import OrtSeq2SeqLM, Seq2SeqSettings, right_pad
from lepton.stages.export.onnx_seq2seq import check_parity, export_seq2seq
from tests.gen_tiny import SEQ2SEQ_CONFIGS, save_tiny_seq2seq, toy_pairs, write_pairs_tsv


def _recipe(model: object, tmp: Path, stages: list[dict], generation: dict | None = None) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"schema_version": 1, "model": model,
            "task": {"kind": "generation", "max_length": 32, "max_target_length": 32,
                     "generation": generation or {"strategy": "beam", "num_beams": 3, "max_new_tokens": 12}},
            "data": {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 200, 0))},
                     "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 10, 1))}},
            "stages": stages,
            "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False},
            "output": {"dir": str(tmp / "out")}}


@pytest.mark.parametrize("arch", sorted(SEQ2SEQ_CONFIGS))
def test_onnx_greedy_and_beam_outputs_equal_pytorch(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = save_tiny_seq2seq(tmp_path / arch, arch)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    out = tmp_path / "onnx"
    out.mkdir()
    export_seq2seq(model, out)
    assert not model.training  # the exporter leaves the model as it found it
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    graphs = OrtSeq2SeqLM(out)
    prompts = [a for a, _ in toy_pairs(6, 3)]
    report = check_parity(model, tok, graphs, prompts, max_new_tokens=10, num_beams=3)
    assert [report[k]["identical"] for k in ("greedy", "beam", "beam_early_stopping")] == [6, 6, 6]
    assert report["max_abs_logit_diff"] < 1e-4
    # the graphs' teacher-forced NLL of a target is PyTorch's
    target = [tok(text_target=t)["input_ids"] for _, t in toy_pairs(2, 3)]
    from lepton.tasks.prompt_encoding import GenEncoded, Truncation

    enc = GenEncoded([tok(p)["input_ids"] for p in prompts[:2]], target, Truncation(examples=2))
    nll, count = graphs.token_nll_sums(enc, int(model.config.pad_token_id))
    with torch.no_grad():
        for i in range(2):
            labels = torch.tensor([target[i]])
            loss = model(input_ids=torch.tensor([enc.input_ids[i]]), labels=labels).loss
            assert count[i] == len(target[i])
            assert nll[i] / count[i] == pytest.approx(float(loss), rel=1e-4)


@pytest.mark.parametrize("quant", [{"method": "dynamic_int8"}, {"method": "weight_only", "bits": 4, "group_size": 16}],
                         ids=["int8", "int4"])
def test_a_trained_model_exports_quantizes_and_its_artifacts_reload(quant: dict, tmp_path: Path) -> None:
    """Trained on the toy task (so outputs end with EOS and the beams finish early), then exported
    (the stage's parity gate checks greedy and beam search), int8 and 4-bit on ONNX Runtime."""
    stages = [{"kind": "finetune", "epochs": 10, "lr": 5e-3, "batch_size": 16, "warmup": 10},
              {"kind": "export", "parity_items": 8},
              {"kind": "quantize", "name": "quantized", "check_items": 8, **quant}]
    new = {"new": "marian", "preset": "tiny", "vocab_size": 120}
    report = lepton.run(parse_recipe(_recipe(new, tmp_path, stages), env={}), progress=False)
    summaries = {s["name"]: s["summary"] for s in report.stages}
    parity = summaries["export"]["parity"]
    assert parity["greedy"]["identical"] == parity["beam"]["identical"] == 8 and parity["num_beams"] == 3
    assert parity["beam_early_stopping"]["identical"] == 8
    quantized = summaries["quantized"]
    assert set(quantized) >= {"encoder", "decoder"}  # both graphs
    assert quantized["size_mb_after"] < quantized["size_mb_before"]
    assert quantized["vs_input"]["prompts"] == 8
    cards = {c.name: c for c in report.variants}
    # the fp32 graphs score exactly what PyTorch scores (same beam outputs, same target perplexity)
    assert cards["export"].quality.metrics["bleu"].value == cards["finetune"].quality.metrics["bleu"].value
    assert cards["export"].quality.metrics["target_perplexity"].value == pytest.approx(
        cards["finetune"].quality.metrics["target_perplexity"].value, rel=1e-4)

    saved = tmp_path / "out" / "model"
    manifest = json.loads((saved / "lepton.json").read_text())
    assert manifest["format"] == "onnx-seq2seq"
    tokenizer_json = json.loads((saved / "tokenizer.json").read_text())  # bare `tokenizers` users get no padding
    assert tokenizer_json["padding"] is None and tokenizer_json["truncation"] is None
    loaded = lepton.load(saved)
    prompts = [a for a, _ in toy_pairs(5, 7)]
    again = OrtSeq2SeqLM(saved)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved)
    ids, mask = right_pad([tok(p)["input_ids"] for p in prompts], 0)
    rows = again.generate_ids(ids, mask, Seq2SeqSettings(max_new_tokens=12, num_beams=3, early_stopping=True))
    assert any(len(r) < 11 for r in rows)  # hypotheses that ended with EOS, not at the length limit
    texts = [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
    assert [p["generated_text"] for p in loaded.predict(prompts)] == texts


def test_an_exported_encoder_decoder_refuses_sampling_with_the_setting_named(tmp_path: Path) -> None:
    folder = save_tiny_seq2seq(tmp_path / "m", "marian")
    stages = [{"kind": "export", "parity_items": 2}]
    recipe = _recipe(str(folder), tmp_path, stages, generation={"strategy": "sample", "max_new_tokens": 4})
    with pytest.raises(lepton.LeptonError, match="generation.strategy"):
        lepton.run(parse_recipe(recipe, env={}), progress=False)


def test_right_pad_and_empty_past_shapes() -> None:
    ids, mask = right_pad([[5, 6, 1], [7, 1]], 0)
    assert ids.tolist() == [[5, 6, 1], [7, 1, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert np.asarray(ids).dtype == np.int64


def test_the_server_translates_and_streams_on_pytorch_and_onnx(tmp_path: Path) -> None:
    """`lepton serve` of a translation model: /v1/completions answers what the model generates
    greedily, and the streamed pieces add up to the same text; for the PyTorch model and for its
    exported graphs (two requests at once too)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from lepton.serve.app import create_app
    from lepton.serve.settings import ServeSettings

    stages = [{"kind": "finetune", "epochs": 4, "lr": 5e-3, "batch_size": 16, "warmup": 10},
              {"kind": "export", "parity_items": 4}]
    new = {"new": "marian", "preset": "tiny", "vocab_size": 120}
    generation = {"strategy": "greedy", "max_new_tokens": 12}
    recipe = _recipe(new, tmp_path, stages, generation=generation)
    recipe["evaluate"]["baseline"] = False
    lepton.run(parse_recipe(recipe, env={}), progress=False)
    exported = tmp_path / "out" / "model"
    torch_recipe = _recipe(new, tmp_path / "t", stages[:1], generation=generation)
    lepton.run(parse_recipe(torch_recipe, env={}), progress=False)
    prompts = [a for a, _ in toy_pairs(3, 9)]
    for folder in (tmp_path / "t" / "out" / "model", exported):
        expected = [p["generated_text"] for p in lepton.load(folder).predict(prompts)]
        with TestClient(create_app(folder, ServeSettings())) as client:
            def ask(prompt: str) -> dict:
                got = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0})
                assert got.status_code == 200, got.text
                return got.json()

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(ask, prompts))
            assert [a["choices"][0]["text"].strip() for a in answers] == expected
            with client.stream("POST", "/v1/completions", json={"prompt": prompts[0], "max_tokens": 12,
                                                                "temperature": 0, "stream": True}) as resp:
                pieces = [json.loads(line[6:]) for line in resp.iter_lines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
            assert len(pieces) > 1
            assert "".join(c["choices"][0]["text"] for c in pieces if c["choices"]).strip() == expected[0]


@pytest.mark.parametrize("arch", sorted(SEQ2SEQ_CONFIGS))
def test_every_stage_on_each_family_saves_reloads_and_generates_the_same(arch: str, tmp_path: Path) -> None:
    """finetune, drop_layers, distill (token-level), export and int8 on tiny T5, Marian and BART:
    the saved artifact, reloaded, generates what the run's last variant generated."""
    folder = save_tiny_seq2seq(tmp_path / arch, arch)
    stages = [{"kind": "finetune", "name": "teacher", "epochs": 1, "lr": 1e-3, "batch_size": 16},
              {"kind": "drop_layers", "decoder_keep": [0]},
              {"kind": "distill", "teacher": "teacher", "epochs": 1, "batch_size": 16},
              {"kind": "export", "parity_items": 4},
              {"kind": "quantize", "method": "dynamic_int8", "check_items": 4}]
    recipe = _recipe(str(folder), tmp_path, stages, generation={"strategy": "greedy", "max_new_tokens": 8})
    recipe["evaluate"]["baseline"] = False
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    assert [s["kind"] for s in report.stages] == ["finetune", "drop_layers", "distill", "export", "quantize"]
    from lepton.tasks.text_metrics import text_scores

    last = report.variants[-1]
    saved = lepton.load(tmp_path / "out" / "model")
    assert json.loads((tmp_path / "out" / "model" / "lepton.json").read_text())["format"] == "onnx-seq2seq"
    pairs = toy_pairs(10, 1)  # data.dev, where the run scored its variants
    again = [p["generated_text"] for p in saved.predict([a for a, _ in pairs])]
    scores = text_scores(again, [b for _, b in pairs], resamples=100).metrics
    for metric in ("bleu", "chrf"):
        assert scores[metric].value == pytest.approx(last.quality.metrics[metric].value)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_the_serving_engine_batches_requests_of_different_lengths_exactly(runtime: str, tmp_path: Path) -> None:
    """Three sources of different lengths prefilled together, decoded in one batched step each
    time, and a fourth joining later (its own group): every request gets the tokens it gets alone."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lepton.serve.generation.seq2seq_engine import seq2seq_engine

    folder = save_tiny_seq2seq(tmp_path / "m", "marian")
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    if runtime == "onnx":
        out = tmp_path / "onnx"
        out.mkdir()
        export_seq2seq(model, out)
        model.config.save_pretrained(out)
        model = OrtSeq2SeqLM(out)
    prompts = [tok(a)["input_ids"] for a, _ in toy_pairs(4, 11)]
    assert len({len(p) for p in prompts[:3]}) > 1

    def alone(ids: list[int], steps: int) -> list[int]:
        engine = seq2seq_engine(model, 1)
        states, logits = engine.prefill([ids])
        got = [int(np.argmax(logits[0]))]
        for _ in range(steps - 1):
            got.append(int(np.argmax(engine.decode_step(states, [got[-1]])[0])))
        return got

    engine = seq2seq_engine(model, 1)
    states, logits = engine.prefill(prompts[:3])
    got = [[int(np.argmax(row))] for row in logits]
    for step in range(5):
        if step == 2:  # a request joins: a cache of another length, decoded beside the group
            late, first = engine.prefill([prompts[3]])
            states, got = states + late, got + [[int(np.argmax(first[0]))]]
        logits = engine.decode_step(states, [g[-1] for g in got])
        for g, row in zip(got, logits):
            g.append(int(np.argmax(row)))
    assert got[:3] == [alone(p, 6) for p in prompts[:3]]
    assert got[3] == alone(prompts[3], 4)
